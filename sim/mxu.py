"""Cycle-exact model of the matrix engine (`d1tile.hw.mxu.MatrixEngine`), and its timing.

The matrix engine runs the sequencer's MATMUL and MREAD instructions on the node's matrix unit.
It owns node SRAM read port 1 and write port 1 and a `MatrixUnit`; the sequencer starts it
through two engine command interfaces (`start`, `instr`, `idle` each): MATRIX for MATMUL,
READOUT for MREAD. The two halves run side by side, each on the accumulator bank its
instruction names (the sequencer keeps them on different banks: `d1tile.isa`).

MATMUL a, b, kw, clear, type, bank
    For w in 0..kw-1 it reads word A = SRAM[a+w] and word B = SRAM[b+w] (A first, one read port)
    and sends V operand beats from the pair, V = the type's vectors per word
    (`d1tile.dtypes.MatrixType.vectors_per_word`: 4 for INT8, 2 for BF16): beat j has `a` =
    operand vector j of A (elements jN .. jN+N-1), `b` = the same vector of B
    (`operand_vectors`), and the instruction's type; `clear` is set on the very first beat when
    the instruction's flag is, and the bank. So a MATMUL adds outer products,
    acc[bank] += sum_w sum_j outer(A_w[j], B_w[j]), in the type's arithmetic, beat after beat.
MREAD dst, row0, nrows, bank
    For r in 0..nrows-1 it requests row (row0 + r) mod N of accumulator bank `bank` from the unit
    and writes it to SRAM[dst + r] (all bytes).

Per-cycle rules (state = the registers listed in `MatrixEngineModel`; every SRAM request, the
operand beat, `idle` and `busy` are functions of the state only):

MATMUL
    * Two pair slots (A and B word registers each); pair w lives in slot w % 2. `rword`/`rhalf`
      name the next word to read (half 0 = A, half 1 = B); `c` is the pair being beaten,
      `beat` its beat index, `lpairs` the number of pairs whose B word has landed.
    * Read request (port 1): while `rword < kw` and the target slot is free by the time the word
      lands: `rword != c + 2`, or `beat >= V - 2` (then pair c leaves the slot at
      the end of its last beat, the edge at which a read granted now lands, or earlier). The
      address is `(a if half 0 else b) + rword`, modulo `cfg.sram_words`. A refused read is held
      (same address) until granted: the condition never becomes false before the grant.
    * A granted read's word arrives on the port's `data` the next cycle and is latched at the end
      of that cycle into its slot half (`pend` remembers slot and half).
    * Beat: sent in every cycle where `lpairs > c` (the pair is complete); the matrix unit never
      refuses one. After beat `V - 1` of pair c, c advances.
    * Start-up: started in cycle s, the reads of A0 and B0 are granted in s+1 and s+2 (when
      unrefused) and the first beat is sent in s + 4 (`MATMUL_FIRST_BEAT`); then one beat per
      cycle as long as the two reads of pair w+2 are granted in time: for INT8 (V = 4) within
      the 5 cycles from beat 2 of pair w to beat 2 of pair w+1, so up to 3 refused read cycles
      per word cost nothing; for BF16 (V = 2) the read port is busy every cycle in the steady
      state (two words per two beats), so every refused read costs a beat.
    * `idle` is high again IN the cycle of the last beat (every read has landed by then and the
      beat cannot be refused), so back-to-back MATMULs issue every `matmul_cycles(kw, type)` =
      V * kw + 3 cycles, against the ideal V * kw: the same MACs per cycle for both types.
MREAD
    * Row request (to the unit's `rd_req`): while fewer than nrows rows were requested; row
      (row0 + requested) mod N of the bank. The unit accepts it when no beat into that bank is
      in flight and its row register is empty or being written this cycle.
    * Write request (port 1): while the unit's row register holds a row: address
      `dst + written` (mod `cfg.sram_words`), data the row (N int32 lanes = one word), mask all
      ones. `rd_data.ready` = the write grant, so a refused write is held (same address, same
      data) and stalls the next row request.
    * `idle` rises in the cycle after the last write is granted: started in cycle s with the unit
      idle, the writes are granted in s+2 .. s+nrows+1 when unrefused, `idle` is high in
      s + nrows + 2 (`mread_cycles`). Started while the unit is still busy with the beats of a
      MATMUL into the same bank (the MREAD issued in the last-beat cycle), the first row request
      waits until the last beat has reached the accumulators: `acc_latency - 1` more cycles.
      Beats into the other bank do not hold it up: that is how a readout overlaps the next
      tile's MATMUL.

Commands: each half's `start` is taken only in a cycle where its `idle` is high; the command is
latched at the end of that cycle and that `idle` is low from the next. MATMUL with kw = 0 (or on
the READOUT bus), MREAD with nrows = 0 (or on the MATRIX bus) and any other opcode are ignored
(the half stays idle). Fields are otherwise not checked (the sequencer validates instructions):
addresses wrap modulo `cfg.sram_words`, rows modulo N.

`busy` (the `busy_matrix` counter's event) is `not idle or not rd_idle`: either half busy.

The model imports no Amaranth: the cycle model of the node uses it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..contracts import MATMUL_FIRST_BEAT
from ..dtypes import MATRIX_TYPES, ElemType, matrix_type
from ..isa import ACC_BANKS, Opcode, decode
from ..params import TileConfig
from .matrix import ACC_LATENCY, MatrixUnitRef


__all__ = [
    "MatrixEngineModel", "MATMUL_FIRST_BEAT", "check_engine_cfg",
    "operand_vectors", "matmul_cycles", "mread_cycles", "ideal_matmul_cycles",
    "matmul_reference_words",
]


def check_engine_cfg(cfg) -> None:
    """The configuration check of the matrix engine, RTL and model alike."""
    if not isinstance(cfg, TileConfig):
        raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")


def operand_vectors(cfg: TileConfig, word: int, dtype=ElemType.INT8) -> np.ndarray:
    """The operand vectors of an SRAM word for a MATMUL of type `dtype`, shape (V, N): vector j
    is elements jN .. jN+N-1 (int8 values, or BF16 bits; `d1tile.dtypes`)."""
    return matrix_type(dtype).operand_vectors(cfg, word)


def ideal_matmul_cycles(cfg: TileConfig, kw: int, dtype=ElemType.INT8) -> int:
    """One beat per cycle and no overhead: V * kw (V = the type's vectors per word)."""
    return matrix_type(dtype).vectors_per_word(cfg) * kw


def matmul_cycles(cfg: TileConfig, kw: int, dtype=ElemType.INT8) -> int:
    """Cycles from a MATMUL's start cycle to the first cycle `idle` is high again (its last-beat
    cycle), i.e. the issue interval of back-to-back MATMULs, when no read is refused:
    MATMUL_FIRST_BEAT + V * kw - 1 (INT8: 4 kw + 3, BF16: 2 kw + 3)."""
    if kw < 1:
        raise ValueError(f"kw={kw} must be at least 1")
    return MATMUL_FIRST_BEAT + ideal_matmul_cycles(cfg, kw, dtype) - 1


def mread_cycles(nrows: int, unit_busy: int = 0) -> int:
    """Cycles from an MREAD's start cycle to the first cycle `idle` is high again, when no write
    is refused: nrows + 2, plus `unit_busy`, the cycles after the start cycle in which the matrix
    unit is still busy with earlier beats (`acc_latency - 1` for an MREAD started in the
    last-beat cycle of a MATMUL, 0 from one cycle later on for INT8)."""
    if nrows < 1:
        raise ValueError(f"nrows={nrows} must be at least 1")
    return nrows + 2 + unit_busy


def matmul_reference_words(cfg: TileConfig, a_words, b_words, dtype=ElemType.INT8, *,
                           acc=None, clear: bool = True) -> np.ndarray:
    """The accumulator bits (N x N, uint32) after a MATMUL of type `dtype` over the words
    `a_words`, `b_words`, from `acc` (bits; zeros if None) or, with `clear`, from the type's
    clear value: every beat of every word pair in order, by the type's reference
    (`d1tile.dtypes.MatrixType.block`), independent of the engine model."""
    spec = matrix_type(dtype)
    a = np.concatenate([spec.operand_vectors(cfg, w) for w in a_words])
    b = np.concatenate([spec.operand_vectors(cfg, w) for w in b_words])
    n = cfg.mac_dim
    if clear:
        base = np.full((n, n), spec.clear_bits, dtype=np.uint32)
    else:
        base = np.zeros((n, n), dtype=np.uint32) if acc is None else np.asarray(acc, np.uint32)
    return spec.block(base, a, b)


_MAX_PENDING = 4096
"""Beats queued for the accumulators beyond which `tick` applies them (bounds the memory)."""


@lru_cache(maxsize=4096)
def _decoded(word: int):
    """`decode`, remembered: programs start the same few instruction words again and again."""
    return decode(word)


class MatrixEngineModel:
    """The matrix engine, cycle for cycle: the engine's registers, the `MatrixUnit`'s timing
    (product stages, `busy`, readout register) and its accumulators (`MatrixUnitRef`).

    Two-phase API (see the module docstring for the rules):

    * outputs of the current cycle, from state only: `idle` (the MATMUL half's), `rd_idle`
      (the MREAD half's), `busy`, `sram_reads()` (one entry,
      read port 1: address or None), `sram_writes()` (one entry, write port 1:
      `(addr, data, mask)` or None), and for testbenches `beat()` (the operand beat sent to the
      unit: `(a, b, clear, type)` or None; its bank is `mbank`) and `row_request()` (row index
      on the unit's `rd_req` or None; its bank is `rbank`);
    * `tick(...)`: the clock edge, with this cycle's inputs.

    `run_alone(...)` advances many cycles at once while the engine is alone on the SRAM (the
    node's cycle model uses it to skip the cycles of a MATMUL in which nothing else happens);
    `snapshot()` / `restore()` save and restore the registers around it.

    `cycle` counts ticks; `beats`, `rows_written`, `read_refusals`, `write_refusals` count events.

    The accumulators are `unit` (a `MatrixUnitRef`, both banks). Beats that reached them are
    applied to it lazily, many at a time (`MatrixUnitRef.mac_block`), when a bank is read: the
    operand words are kept, not unpacked beat by beat.
    """

    def __init__(self, cfg: TileConfig):
        check_engine_cfg(cfg)
        self._cfg = cfg
        self._n = cfg.mac_dim
        self._words = cfg.sram_words
        self._word_bytes = cfg.word_bytes
        self._full_mask = (1 << cfg.word_bytes) - 1
        self._unit = MatrixUnitRef(cfg)
        self._stages = ACC_LATENCY - 1
        # per type: (vectors per word, bytes per vector, NumPy element type of an operand)
        self._layout = {t: (spec.vectors_per_word(cfg), cfg.mac_dim * spec.operand_bits // 8,
                            "<i1" if spec.operand == ElemType.INT8 else "<u2")
                        for t, spec in MATRIX_TYPES.items()}
        self.reset()

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def unit(self) -> MatrixUnitRef:
        """The matrix unit's accumulators, up to date (every beat that reached them applied)."""
        for bank in range(ACC_BANKS):
            self._flush(bank)
        return self._unit

    def reset(self):
        """The state after reset (accumulators zero, like the RTL's reset)."""
        self._unit.reset()
        # per bank: beats in the accumulators, not yet applied to `_unit`
        self._pending: list = [[] for _ in range(ACC_BANKS)]
        self._flushes = 0
        self.matmul_on = False        # the MATMUL half runs an instruction
        self.mread_on = False         # the MREAD half runs one
        # MATMUL registers (`mtype` its type, `vpw` that type's beats per word pair)
        self.mbank = 0
        self.a = self.b = self.kw = 0
        self.clear = False
        self.mtype = ElemType.INT8
        self.vpw = self._layout[ElemType.INT8][0]
        self.rword = 0
        self.rhalf = 0
        self.c = 0
        self.beat_index = 0
        self.lpairs = 0
        self.pend: tuple[int, int] | None = None      # (slot, half) of the word arriving now
        self.slots = [[0, 0], [0, 0]]                  # slot -> [A word, B word]
        # MREAD registers
        self.rbank = 0
        self.rcol = False         # MREAD tr: columns instead of rows
        self.dst = self.row0 = self.nrows = 0
        self.requested = 0
        self.written = 0
        # matrix unit timing: beats in the product stages (newest first), readout register.
        # A beat is (A word, B word, vector index j, clear, type, bank).
        self.pipe: list = [None] * self._stages
        self.rd_word: int | None = None
        # statistics
        self.cycle = 0
        self.beats = 0
        self.rows_written = 0
        self.read_refusals = 0
        self.write_refusals = 0

    # -- the accumulators ------------------------------------------------------------------

    def _flush(self, bank: int) -> None:
        """Apply a bank's pending beats to the unit: from the last beat with `clear` on (which
        discards what came before), each run of beats of one type as one block
        (`MatrixUnitRef.mac_block`: one exact sum for INT8, beat after beat for BF16)."""
        pending = self._pending[bank]
        if not pending:
            return
        first = 0
        for k in range(len(pending) - 1, -1, -1):
            if pending[k][3]:
                first = k
                break
        k, end = first, len(pending)
        while k < end:
            dtype = pending[k][4]
            run = k
            while run < end and pending[run][4] == dtype:
                run += 1
            a, b = self._operand_block(pending, k, run, dtype)
            self._unit.mac_block(a, b, clear=pending[k][3], dtype=dtype, bank=bank)
            k = run
        pending.clear()
        self._flushes += 1

    def _operand_block(self, pending: list, k: int, end: int, dtype) -> tuple:
        """The (K, N) operand arrays of the pending beats k..end-1, all of type `dtype`."""
        vpw, vbytes, element = self._layout[dtype]
        nbytes, last = self._word_bytes, vpw - 1
        a_parts, b_parts = [], []
        while k < end:
            a, b, j = pending[k][:3]
            tail = k + last
            if j == 0 and tail < end and pending[tail][2] == last and pending[tail][0] == a \
                    and pending[tail][1] == b:
                # The beats of one word pair (they are sent in a row): the whole words.
                a_parts.append(a.to_bytes(nbytes, "little"))
                b_parts.append(b.to_bytes(nbytes, "little"))
                k += vpw
            else:
                a_parts.append(a.to_bytes(nbytes, "little")[j * vbytes:(j + 1) * vbytes])
                b_parts.append(b.to_bytes(nbytes, "little")[j * vbytes:(j + 1) * vbytes])
                k += 1
        n = self._n
        return (np.frombuffer(b"".join(a_parts), dtype=element).reshape(-1, n),
                np.frombuffer(b"".join(b_parts), dtype=element).reshape(-1, n))

    def _read_row(self, row: int, bank: int, col: bool = False) -> int:
        self._flush(bank)
        # `word_from_lanes` of the row's uint32 lanes: their little-endian bytes
        return int.from_bytes(self._unit.read_row(row, bank, col).astype("<u4").tobytes(),
                              "little")

    # -- outputs from state ----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """The MATMUL half's `idle` (the MATRIX engine's)."""
        if not self.matmul_on:
            return True
        return self.c + 1 == self.kw and self.beat_index == self.vpw - 1

    @property
    def rd_idle(self) -> bool:
        """The MREAD half's `idle` (the READOUT engine's)."""
        return not self.mread_on

    @property
    def busy(self) -> bool:
        return not self.idle or self.mread_on

    @property
    def still(self) -> bool:
        """Both halves idle with nothing in flight (no beat in the unit, no row, no read
        arriving): a tick without a start changes nothing but `cycle`."""
        return (not self.matmul_on and not self.mread_on and self.rd_word is None
                and self.pend is None and not self.unit_busy)

    @property
    def unit_busy(self) -> bool:
        """The matrix unit's `busy`: a beat is in its product stages."""
        for stage in self.pipe:
            if stage is not None:
                return True
        return False

    def bank_busy(self, bank: int) -> bool:
        """The matrix unit's `bank_busy[bank]`: a beat into `bank` is in its product stages."""
        for stage in self.pipe:
            if stage is not None and stage[5] == bank:
                return True
        return False

    def _read_address(self) -> int | None:
        if not self.matmul_on or self.rword == self.kw:
            return None
        if self.rword == self.c + 2 and self.beat_index < self.vpw - 2:
            return None
        base = self.b if self.rhalf else self.a
        return (base + self.rword) % self._words

    def sram_reads(self) -> list:
        """[address or None] for read port 1."""
        return [self._read_address()]

    def _write_request(self):
        if not self.mread_on or self.rd_word is None:
            return None
        return ((self.dst + self.written) % self._words, self.rd_word, self._full_mask)

    def sram_writes(self) -> list:
        """[(addr, data, mask) or None] for write port 1."""
        return [self._write_request()]

    def _beat(self):
        """This cycle's beat in the internal form (A word, B word, j, clear, type, bank), or
        None."""
        if not self.matmul_on or self.lpairs == self.c:
            return None
        slot = self.slots[self.c & 1]
        j = self.beat_index
        return slot[0], slot[1], j, self.clear and self.c == 0 and j == 0, self.mtype, self.mbank

    def beat(self):
        """The operand beat of this cycle, `(a, b, clear, type)` (a and b: N int8 values or
        BF16 bit patterns), or None."""
        beat = self._beat()
        if beat is None:
            return None
        a, b, j, clear, dtype, _ = beat
        return (operand_vectors(self._cfg, a, dtype)[j], operand_vectors(self._cfg, b, dtype)[j],
                clear, dtype)

    def row_request(self) -> int | None:
        """The row index on the unit's `rd_req` this cycle (valid), or None."""
        if not self.mread_on or self.requested == self.nrows:
            return None
        return (self.row0 + self.requested) % self._n

    def row_ready(self, write_granted: bool) -> bool:
        """The unit's `rd_req.ready` this cycle, given write port 1's grant: no beat into the
        MREAD's bank in flight, and its row register empty or being written now."""
        return not self.bank_busy(self.rbank) and (self.rd_word is None or bool(write_granted))

    # -- the clock edge --------------------------------------------------------------------

    def tick(self, start: bool = False, instr: int = 0, read_grants=(False,),
             write_grants=(False,), read_data=(None,), rd_start: bool = False, rd_instr: int = 0):
        """Advance one cycle.

        start, instr : the sequencer's MATRIX command interface this cycle (`instr` is the raw
            64-bit word; it matters only with `start`). A start while not `idle` is ignored.
        rd_start, rd_instr : the READOUT command interface, the same way (`rd_idle`).
        read_grants : [bool], the grant (`ready`) of read port 1's request of this cycle.
        write_grants : [bool], the grant of write port 1's request of this cycle.
        read_data : [int or None], the word arriving on read port 1 this cycle, i.e. from the
            read granted in the previous cycle (None if there was none).

        Raises ValueError when the inputs contradict the state: a grant without a request, data
        without a grant in the previous cycle, or no data after one.
        """
        read_granted = bool(read_grants[0])
        write_granted = bool(write_grants[0])
        data = read_data[0]
        if not self.matmul_on and not self.mread_on and not read_granted and not write_granted \
                and data is None and self.pend is None and self.rd_word is None:
            # Nothing but the product stages can move (the common case of an idle engine).
            if not start and not rd_start:
                self._shift_pipe(None)
                self.cycle += 1
                return
        read_addr = self._read_address()
        write_req = self._write_request()
        if read_granted and read_addr is None:
            raise ValueError(f"cycle {self.cycle}: read port 1 granted without a request")
        if write_granted and write_req is None:
            raise ValueError(f"cycle {self.cycle}: write port 1 granted without a request")
        if (data is None) != (self.pend is None):
            state = "missing" if data is None else "given"
            raise ValueError(f"cycle {self.cycle}: read data {state} but a read was "
                             f"{'' if self.pend else 'not '}granted last cycle")
        if read_addr is not None and not read_granted:
            self.read_refusals += 1
        if write_req is not None and not write_granted:
            self.write_refusals += 1
        was_idle, was_rd_idle = self.idle, self.rd_idle
        beat = self._beat()
        row = self.row_request()

        # The matrix unit at the edge: a readout accepted now sees the accumulators before the
        # beat that reaches them at this edge (the RTL registers the row from `acc`).
        row_accepted = row is not None and self.row_ready(write_granted)
        if write_granted:
            self.rd_word = None
        if row_accepted:
            self.rd_word = self._read_row(row, self.rbank, self.rcol)
        self._shift_pipe(beat)

        # MATMUL registers
        if self.pend is not None:
            slot, half = self.pend
            self.slots[slot][half] = data
            if half:
                self.lpairs += 1
        if read_granted:
            self.pend = (self.rword & 1, self.rhalf)
            if self.rhalf:
                self.rword += 1
            self.rhalf ^= 1
        else:
            self.pend = None
        if beat is not None:
            self.beats += 1
            if self.beat_index == self.vpw - 1:
                self.beat_index = 0
                self.c += 1
                if self.c == self.kw:
                    self.matmul_on = False
            else:
                self.beat_index += 1

        # MREAD registers
        if row_accepted:
            self.requested += 1
        if write_granted:
            self.written += 1
            self.rows_written += 1
            if self.written == self.nrows:
                self.mread_on = False

        if start and was_idle:
            self._start(instr)
        if rd_start and was_rd_idle:
            self._start_read(rd_instr)
        for bank in range(ACC_BANKS):
            if len(self._pending[bank]) > _MAX_PENDING:
                self._flush(bank)
        self.cycle += 1

    def _shift_pipe(self, beat) -> None:
        """The product stages at the edge: `beat` enters, the oldest beat reaches the
        accumulators (it is queued for the next `_flush`)."""
        pipe = self.pipe
        if self._stages:
            leaving = pipe[-1]
            if len(pipe) == 1:
                pipe[0] = beat
            else:
                pipe[1:] = pipe[:-1]
                pipe[0] = beat
        else:
            leaving = beat
        if leaving is not None:
            self._pending[leaving[5]].append(leaving)

    def _shift_pipe_many(self, beats: list) -> None:
        """`_shift_pipe` for each of `beats` (none None, all into the running MATMUL's bank) in
        turn."""
        pipe, stages = self.pipe, self._stages
        if len(beats) < stages:
            for beat in beats:
                self._shift_pipe(beat)
            return
        for beat in reversed(pipe):
            if beat is not None:
                self._pending[beat[5]].append(beat)
        pending = self._pending[self.mbank]
        if stages:
            pending.extend(beats[:-stages])
            pipe[:] = beats[:-stages - 1:-1]
        else:
            pending.extend(beats)

    def _start(self, instr: int):
        ins = _decoded(instr)
        if ins.op == Opcode.MATMUL and ins.kw and ins.type in self._layout:
            self.matmul_on = True
            self.a, self.b, self.kw, self.clear = ins.a, ins.b, ins.kw, bool(ins.clear)
            self.mtype = ElemType(ins.type)
            self.mbank = ins.bank
            self.vpw = self._layout[self.mtype][0]
            self.rword = self.rhalf = self.c = self.beat_index = self.lpairs = 0

    def _start_read(self, instr: int):
        ins = _decoded(instr)
        if ins.op == Opcode.MREAD and ins.nrows:
            self.mread_on = True
            self.dst, self.row0, self.nrows, self.rbank = ins.dst, ins.row0, ins.nrows, ins.bank
            self.rcol = bool(ins.tr)
            self.requested = self.written = 0

    # -- many cycles at once ---------------------------------------------------------------

    def can_run_alone(self) -> bool:
        """Whether `run_alone` applies: a MATMUL runs, and no MREAD."""
        return self.matmul_on and not self.mread_on and self.rd_word is None

    def run_alone(self, memory: list, data: int | None, limit: int | None = None
                  ) -> tuple[int, list[int], int | None]:
        """Advance a MATMUL cycle by cycle as `tick` would if the engine were alone on the SRAM:
        every read granted at once, the word from `memory` (the SRAM, which nothing writes
        meanwhile), no start. `data` is the word arriving in the first cycle (the read granted
        in the cycle before), None if none. Stops at the first cycle in which `idle` is high
        (the last beat's; the caller steps that one), or after `limit` cycles.

        Returns (cycles advanced, the offsets of the cycles in which a read was granted, the
        address of the read granted in the last of them or None): the caller accounts the
        grants and delivers that word in the next cycle."""
        if not self.can_run_alone():
            raise ValueError("run_alone needs a running MATMUL and no MREAD")
        kw, words = self.kw, self._words
        a, b, slots, clear = self.a, self.b, self.slots, self.clear
        rword, rhalf, c, j, lpairs, pend = (self.rword, self.rhalf, self.c, self.beat_index,
                                            self.lpairs, self.pend)
        pipe, stages, pending = self.pipe, self._stages, self._pending
        vpw, dtype, bank = self.vpw, self.mtype, self.mbank
        last = vpw - 1
        reads: list[int] = []
        addr = None
        t = 0
        while not (c + 1 == kw and j == last) and (limit is None or t < limit):
            if (vpw >= 3 and j == 0 and rhalf == 0 and rword == c + 2 < kw and lpairs == c + 1
                    and pend == ((c + 1) & 1, 1)):
                # The steady state at the first beat of pair c (types of 3 or more beats per
                # word: INT8): pair c+1's B word arrives now, pair c+2's words are read in
                # beats V-2 and V-1. It repeats, pair after pair, until the last pair is read:
                # jump over whole pairs at once. (BF16's two beats per word keep the read port
                # busy every cycle; it takes the cycle-by-cycle path below.)
                blocks = kw - 2 - c
                if limit is not None:
                    blocks = min(blocks, (limit - t) // vpw)
                if blocks > 0:
                    a_words = [slots[c & 1][0], slots[(c + 1) & 1][0]]
                    b_words = [slots[c & 1][1], data]
                    a_words.extend(memory[(a + q) % words] for q in range(c + 2, c + blocks + 2))
                    b_words.extend(memory[(b + q) % words] for q in range(c + 2, c + blocks + 2))
                    beats = [(a_words[k], b_words[k], i, clear and c + k == 0 and i == 0, dtype,
                              bank) for k in range(blocks) for i in range(vpw)]
                    self._shift_pipe_many(beats)
                    for k in range(blocks):
                        reads.append(t + vpw * k + vpw - 2)
                        reads.append(t + vpw * k + vpw - 1)
                    self.beats += len(beats)
                    t += len(beats)
                    c += blocks
                    rword, lpairs = c + 2, c + 1
                    pend = ((c + 1) & 1, 1)
                    slots[c & 1][0], slots[c & 1][1] = a_words[blocks], b_words[blocks]
                    slots[(c + 1) & 1][0] = a_words[blocks + 1]
                    slots[(c + 1) & 1][1] = b_words[blocks - 1]
                    data = b_words[blocks + 1]
                    addr = (b + c + 1) % words
                    continue
            beat = (slots[c & 1][0], slots[c & 1][1], j, clear and c == 0 and j == 0, dtype,
                    bank) if lpairs != c else None
            if rword != kw and not (rword == c + 2 and j < vpw - 2):
                addr = ((b if rhalf else a) + rword) % words
                reads.append(t)
                read = True
            else:
                addr = None
                read = False
            # the edge
            if stages:
                leaving = pipe[-1]
                pipe[1:] = pipe[:-1]
                pipe[0] = beat
            else:
                leaving = beat
            if leaving is not None:
                pending[leaving[5]].append(leaving)
            if pend is not None:
                slots[pend[0]][pend[1]] = data
                if pend[1]:
                    lpairs += 1
            if read:
                pend = (rword & 1, rhalf)
                data = memory[addr]
                if rhalf:
                    rword += 1
                rhalf ^= 1
            else:
                pend = None
                data = None
            if beat is not None:
                self.beats += 1
                if j == last:
                    j = 0
                    c += 1
                else:
                    j += 1
            t += 1
        self.rword, self.rhalf, self.c, self.beat_index, self.lpairs, self.pend = (
            rword, rhalf, c, j, lpairs, pend)
        self.cycle += t
        return t, reads, addr

    def snapshot(self) -> tuple:
        """The registers, for `restore` after `run_alone` (the instruction's fields are not
        saved: `run_alone` does not start one). The accumulators need no saving: the beats
        that reach them are only queued (`_flush` applies them when they are read), and a
        restore drops the ones queued since."""
        return (self.matmul_on, self.rword, self.rhalf, self.c, self.beat_index, self.lpairs,
                self.pend, [list(slot) for slot in self.slots], list(self.pipe), self.cycle,
                self.beats, self._flushes, [len(p) for p in self._pending])

    def restore(self, saved: tuple) -> None:
        """Back to the registers of `snapshot()`. Raises RuntimeError if the accumulators were
        read since (the beats queued since have been applied, and cannot be taken back)."""
        (self.matmul_on, self.rword, self.rhalf, self.c, self.beat_index, self.lpairs, self.pend,
         slots, pipe, self.cycle, self.beats, flushes, pending) = saved
        if flushes != self._flushes:
            raise RuntimeError("matrix engine: the accumulators were read after the snapshot")
        self.slots = [list(slot) for slot in slots]
        self.pipe = list(pipe)
        for queue, length in zip(self._pending, pending):
            del queue[length:]

    def describe(self) -> str:
        """The state in one line, for hang and mismatch reports."""
        parts = []
        if self.matmul_on:
            parts.append(f"MATMUL a={self.a} b={self.b} kw={self.kw} type={self.mtype.name} "
                         f"bank={self.mbank}: next read word {self.rword} "
                         f"half {self.rhalf}, pair {self.c} beat {self.beat_index}, "
                         f"{self.lpairs} pairs landed")
        if self.mread_on:
            parts.append(f"MREAD dst={self.dst} row0={self.row0} nrows={self.nrows} "
                         f"bank={self.rbank}: {self.requested} requested, {self.written} written")
        return "; ".join(parts) or "idle"
