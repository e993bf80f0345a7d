"""The vector engine: what `VEC` computes (`execute_vec`) and a cycle-exact model of the engine
that runs it (`VectorEngineModel`, the reference of `d1tile.hw.vpu.VectorEngine`).

`VEC vop, dst, a, b, n, bfix` applies the vector unit (`d1tile.sim.vector`) to n words: element
i takes a_i = SRAM[a + i] and, for the binary ops (ADD, MUL, MAX: `BINARY_VECOPS`),
b_i = SRAM[b] if bfix else SRAM[b + i], with the REQUANT parameters (scale, shift, relu) that
SETQ had set when the VEC started, and slot i % 4. The result goes to SRAM[dst + i] under its
byte mask (all bytes), or for REQUANT to SRAM[dst + i // 4] under the mask of slot i % 4, so four
int32 words pack into one int8 operand word.

The engine, per cycle (cycle s = the `start` cycle; all of this is also the RTL's contract)
-----------------------------------------------------------------------------------------------
State: `busy`, the latched command, per read port (a = node read port 2, b = port 3) a request
counter (`ra`, `rb`: elements requested and granted so far), an *in-flight* flag (the port was
granted last cycle, so its word is on the port's `data` now), and a two-entry operand buffer;
a slot counter (commands sent to the vector unit, mod 4); a write counter `wi`; and the vector
unit's result register (`valid`, `data`, `mask`).

* Outputs, from state only (Moore):
  - read a: requested while busy, `ra < n` and `buffer_a + in_flight_a < 2`; address a + ra.
  - read b: the same with `rb < b_reads` and buffer b, address b + rb, where b_reads = n for a
    binary op, 1 with bfix (b is read ONCE and kept in the buffer for all n elements), and 0 for
    RELU and REQUANT (unary ops read no b).
  - write: requested while the vector unit's result register is valid; address dst + wi
    (REQUANT: dst + wi // 4), the result's data and byte mask.
  - `idle` = not busy; `busy` is also the `busy_vector` counter event.
* Paired reads: the two ports are independent. Each holds a refused request (same address)
  until it is granted; the other port keeps going as long as its own buffer has room, so a
  refused b does not stop a (a runs at most two elements ahead of b, and vice versa).
  `buffer + in_flight < 2` counts a read in flight as a buffer entry, so an arriving word always
  has a place, and it keeps a refused request asserted (that sum cannot grow without a grant).
* Vector unit command: valid when busy, an a operand is available (buffer a non-empty or a word
  arriving) and so is b (binary ops only). The operand is the oldest buffer entry, or the
  arriving word when the buffer is empty (bypass: no cycle is lost to buffering). It is taken
  when the unit's result register is empty or its write is granted this cycle
  (`~result.valid | write.ready`): a refused write stalls the unit, and the read buffers fill.
* An arriving word that is not consumed by the bypass goes into the buffer. With bfix the b word
  is never consumed: it stays in buffer b for the whole instruction.
* Writes: one per element (REQUANT too: four masked writes build one destination word). When the
  write of element n - 1 is granted, busy falls: `idle` is high from the next cycle, when every
  write of the instruction has landed. (n = 0, which the sequencer rejects, makes the engine busy
  for one cycle and write nothing.)
* `start` with `idle`: the engine latches `instr` (the VEC fields; its opcode bits are not
  looked at), `scale`, `shift` and `relu` at the end of that cycle and empties its buffers.
  `start` while busy is ignored (the sequencer never does it).

Timing with no conflicts: reads of element 0 in cycle s + 1, its command in s + 2, its write in
s + 3, one element per cycle after that; the last write in s + n + 2 and `idle` again in cycle
s + n + 3 (`vec_cycles(n)` = n + 3 cycles from a start to the first cycle the next VEC can start,
of which `vec_busy_cycles(n)` = n + 2 are busy; the ideal is n, one element per cycle). When a
binary op's a and b words share a bank the bank serves one read per cycle: 2n + 3.

Addresses are taken modulo `cfg.sram_words` (the sequencer has checked the ranges with
`isa.validate`). Bad op codes (5..7, rejected by the sequencer) read a only and write nothing
(mask 0), one element per cycle.

Ordering inside one VEC: element i's operands are read before element i's result is written,
and elements are read in order; nothing orders the read of a later element against that write.
So a destination range may coincide with a source range element for element (dst == a, or
dst == b without bfix: in place) or start below it (dst <= a, dst <= b), and the result is the
element-by-element one of `execute_vec` and of the functional interpreter (`sim.interp`). Any
other overlap gives timing-dependent results. With bfix and b inside the destination range the
engine uses the old b for every element (b is read once, before any write) while `sim.interp`
re-reads b per element; both are for the compiler to avoid.

This module imports no Amaranth.
"""

from __future__ import annotations

from d1tile.formats import VecOp
from d1tile.params import TileConfig

from .isa import BINARY_VECOPS, FORMATS, Opcode, requant_words
from .vector import SCALE_BITS, SHIFT_BITS, vector_op


__all__ = [
    "OPERAND_BUFFER", "VEC_START_LATENCY", "vec_cycles", "vec_busy_cycles", "vec_ideal_cycles",
    "vec_fields", "vec_write_range", "execute_vec", "VectorEngineModel",
]

OPERAND_BUFFER = 2
"""Operand words each read port may hold, counting a read in flight: 2 is the least that keeps
one element per cycle with a one-cycle SRAM read latency and a bypass from the read port."""

VEC_START_LATENCY = 3
"""Cycles from the `start` cycle to the first write request (no conflicts): reads in s + 1,
command in s + 2, write in s + 3."""

_VEC = FORMATS[Opcode.VEC]


def vec_cycles(n: int, shared_bank: bool = False) -> int:
    """Cycles from a VEC's `start` cycle to the first cycle `idle` is high again, with no SRAM
    conflict from other ports: the issue-to-issue period of back-to-back VECs of n elements.

    n + 3, or 2n + 3 with `shared_bank`: a binary op without bfix whose a_i and b_i are always in
    the same bank needs two reads of one bank per element (port a wins each tie, runs two elements
    ahead, then b catches up), so two cycles per element, the bank's limit."""
    if n < 0:
        raise ValueError(f"n={n} must not be negative")
    if n == 0:
        return 2
    return (2 * n if shared_bank else n) + VEC_START_LATENCY


def vec_busy_cycles(n: int, shared_bank: bool = False) -> int:
    """Cycles `busy` is high for one VEC of n elements (see `vec_cycles`)."""
    return vec_cycles(n, shared_bank) - 1


def vec_ideal_cycles(n: int) -> int:
    """The ideal: one element per cycle."""
    if n < 0:
        raise ValueError(f"n={n} must not be negative")
    return n


def vec_fields(instr: int) -> dict:
    """The VEC fields of a 64-bit instruction word (opcode bits ignored, like the engine)."""
    return _VEC.unpack(int(instr) & ((1 << _VEC.width) - 1))


def vec_write_range(fields: dict) -> tuple[int, int]:
    """The destination words [lo, hi) a VEC writes (before the modulo of the SRAM size)."""
    n = fields["n"]
    words = requant_words(n) if fields["vop"] == VecOp.REQUANT else n
    return fields["dst"], fields["dst"] + words


def execute_vec(cfg: TileConfig, memory: list, instr: int, scale: int = 0, shift: int = 0,
                relu: int = 0) -> None:
    """Apply one VEC to `memory` (a list of `cfg.sram_words` word integers), in place.

    The functional reference of the engine: element by element, read a_i (and b_i), compute with
    `vector_op`, merge the result into the destination word under its byte mask. With bfix, b is
    read once before the first element (as the engine does). See the module docstring for which
    source/destination overlaps this order describes faithfully.
    """
    f = vec_fields(instr)
    words = cfg.sram_words
    if len(memory) != words:
        raise ValueError(f"memory has {len(memory)} words, expected {words} ({cfg.name})")
    op, n = f["vop"], f["n"]
    binary = op in BINARY_VECOPS
    requant = op == VecOp.REQUANT
    b_fixed = memory[f["b"] % words] if binary and f["bfix"] else 0
    for i in range(n):
        a_word = memory[(f["a"] + i) % words]
        if not binary:
            b_word = 0
        elif f["bfix"]:
            b_word = b_fixed
        else:
            b_word = memory[(f["b"] + i) % words]
        data, mask = vector_op(cfg, op, a_word, b_word, scale, shift, i % 4, relu)
        addr = (f["dst"] + (i >> 2 if requant else i)) % words
        memory[addr] = _merge(memory[addr], data, mask)


def _merge(old: int, data: int, mask: int) -> int:
    bits = 0
    k = 0
    while mask:
        if mask & 1:
            bits |= 0xFF << (8 * k)
        mask >>= 1
        k += 1
    return (old & ~bits) | (data & bits)


class VectorEngineModel:
    """Cycle-exact model of `d1tile.hw.vpu.VectorEngine` (see the module docstring for the rules).

    Two phases per cycle:

    1. Outputs from state: `idle`, `busy`, `sram_reads()` -> `[addr_a, addr_b]` (node read ports
       2 and 3; an address or None), `sram_writes()` -> `[(addr, data, mask)]` or `[None]` (node
       write port 2).
    2. `tick(read_grants, write_grants, read_data, start, instr, scale, shift, relu)`: the clock
       edge, given this cycle's inputs:

       - `read_grants`: 2 bools, the SRAM's grants (`ready`) of this cycle's `sram_reads()`
         (ignored for a port that did not request);
       - `write_grants`: 1 bool, the grant of this cycle's `sram_writes()[0]`;
       - `read_data`: 2 entries, the word on each read port's `data` this cycle, i.e. the word of
         a read granted in the PREVIOUS cycle (`SRAMModel.read_data[2]`, `[3]` saved from the
         previous `step`), or None. A word must be given when one is due (ValueError otherwise);
       - `start`, `instr` (64-bit VEC word), `scale`, `shift`, `relu`: the sequencer's command
         interface this cycle (`start` is ignored while busy).

    Debug: `describe()`; `elements` counts commands sent to the vector unit, `writes` the granted
    writes, `stall_cycles` the busy cycles in which no command could be sent.
    """

    __slots__ = (
        "_cfg", "_words", "_busy", "_op", "_binary", "_bfix", "_requant", "_dst", "_a", "_b",
        "_n", "_b_reads", "_scale", "_shift", "_relu", "_ra", "_rb", "_inflight_a",
        "_inflight_b", "_buf_a", "_buf_b", "_slot", "_wi", "_res_valid", "_res_data",
        "_res_mask", "elements", "writes", "stall_cycles",
    )

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self._words = cfg.sram_words
        self._busy = False
        self._op = 0
        self._binary = False
        self._bfix = False
        self._requant = False
        self._dst = self._a = self._b = self._n = self._b_reads = 0
        self._scale = self._shift = self._relu = 0
        self._ra = self._rb = 0
        self._inflight_a = self._inflight_b = False
        self._buf_a: list[int] = []
        self._buf_b: list[int] = []
        self._slot = 0
        self._wi = 0
        self._res_valid = False
        self._res_data = 0
        self._res_mask = 0
        self.elements = 0
        self.writes = 0
        self.stall_cycles = 0

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    # -- outputs (state only) ----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._busy

    @property
    def busy(self) -> bool:
        """The `busy_vector` counter event of this cycle."""
        return self._busy

    @property
    def still(self) -> bool:
        """Idle with nothing in flight: a tick without `start` changes nothing."""
        return not (self._busy or self._inflight_a or self._inflight_b or self._res_valid)

    def _read_a(self) -> bool:
        return (self._busy and self._ra < self._n
                and len(self._buf_a) + self._inflight_a < OPERAND_BUFFER)

    def _read_b(self) -> bool:
        return (self._busy and self._rb < self._b_reads
                and len(self._buf_b) + self._inflight_b < OPERAND_BUFFER)

    def sram_reads(self) -> list:
        """`[addr or None, addr or None]`: this cycle's requests on node read ports 2 (a), 3 (b)."""
        return [(self._a + self._ra) % self._words if self._read_a() else None,
                (self._b + self._rb) % self._words if self._read_b() else None]

    def _write_addr(self) -> int:
        return (self._dst + (self._wi >> 2 if self._requant else self._wi)) % self._words

    def sram_writes(self) -> list:
        """`[(addr, data, mask)]` or `[None]`: this cycle's request on node write port 2."""
        if not self._res_valid:
            return [None]
        return [(self._write_addr(), self._res_data, self._res_mask)]

    # -- clock edge --------------------------------------------------------------------------

    def tick(self, read_grants=(False, False), write_grants=(False,), read_data=(None, None),
             start: bool = False, instr: int = 0, scale: int = 0, shift: int = 0,
             relu: int = 0) -> None:
        """One clock edge; see the class docstring for the arguments."""
        data_a, data_b = read_data
        if self._inflight_a and data_a is None:
            raise ValueError("vector engine: a word is due on read port a (granted last cycle) "
                             "but read_data[0] is None")
        if self._inflight_b and data_b is None:
            raise ValueError("vector engine: a word is due on read port b (granted last cycle) "
                             "but read_data[1] is None")
        req_a = self._read_a()
        req_b = self._read_b()
        grant_a = req_a and bool(read_grants[0])
        grant_b = req_b and bool(read_grants[1])
        write_fire = self._res_valid and bool(write_grants[0])

        # The vector unit's command handshake.
        buf_a, buf_b = self._buf_a, self._buf_b
        avail_a = bool(buf_a) or self._inflight_a
        avail_b = (not self._binary) or bool(buf_b) or self._inflight_b
        cmd_valid = self._busy and avail_a and avail_b
        cmd_ready = (not self._res_valid) or write_fire
        fire = cmd_valid and cmd_ready
        if self._busy and not fire:
            self.stall_cycles += 1

        if fire:
            op_a = buf_a[0] if buf_a else data_a
            op_b = (buf_b[0] if buf_b else data_b) if self._binary else 0
            self._res_data, self._res_mask = vector_op(
                self._cfg, self._op, op_a, op_b, self._scale, self._shift, self._slot,
                self._relu)
            self.elements += 1
        if cmd_ready:
            self._res_valid = fire

        # Operand buffers: the oldest entry is consumed first; an arriving word the bypass did
        # not consume is appended. With bfix, b is never consumed.
        if fire and buf_a:
            buf_a.pop(0)
            if self._inflight_a:
                buf_a.append(data_a)
        elif self._inflight_a and not fire:
            buf_a.append(data_a)
        consume_b = fire and self._binary and not self._bfix
        if consume_b and buf_b:
            buf_b.pop(0)
            if self._inflight_b:
                buf_b.append(data_b)
        elif self._inflight_b and not consume_b:
            buf_b.append(data_b)

        if fire:
            self._slot = (self._slot + 1) & 3
        self._inflight_a = grant_a
        self._inflight_b = grant_b
        self._ra += grant_a
        self._rb += grant_b

        if write_fire:
            self.writes += 1
            self._wi += 1
        if self._busy and (self._n == 0 or (write_fire and self._wi == self._n)):
            self._busy = False
        elif start and not self._busy:
            self._latch(instr, scale, shift, relu)

    def _latch(self, instr: int, scale: int, shift: int, relu: int) -> None:
        if not 0 <= scale < 1 << SCALE_BITS or not 0 <= shift < 1 << SHIFT_BITS \
                or relu not in (0, 1, False, True):
            raise ValueError(f"vector engine: SETQ parameters scale={scale} shift={shift} "
                             f"relu={relu} do not fit 16, 6 and 1 bits")
        f = vec_fields(instr)
        self._busy = True
        self._op = f["vop"]
        self._binary = self._op in BINARY_VECOPS
        self._bfix = bool(f["bfix"])
        self._requant = self._op == VecOp.REQUANT
        self._dst, self._a, self._b, self._n = f["dst"], f["a"], f["b"], f["n"]
        n = self._n
        self._b_reads = (min(n, 1) if self._bfix else n) if self._binary else 0
        self._scale, self._shift, self._relu = int(scale), int(shift), int(relu)
        self._ra = self._rb = 0
        self._buf_a.clear()
        self._buf_b.clear()
        self._slot = 0
        self._wi = 0

    def describe(self) -> str:
        """The engine's state in one line, for hang reports and failure messages."""
        if not self._busy:
            return "vector engine: idle"
        try:
            op = VecOp(self._op).name
        except ValueError:
            op = f"op {self._op}"
        return (f"vector engine: VEC {op} dst={self._dst} a={self._a} b={self._b} n={self._n} "
                f"bfix={int(self._bfix)}; reads a {self._ra}/{self._n} b {self._rb}/"
                f"{self._b_reads}, buffered {len(self._buf_a)}+{len(self._buf_b)}, in flight "
                f"{int(self._inflight_a)}+{int(self._inflight_b)}, writes {self._wi}/{self._n}, "
                f"result {'valid' if self._res_valid else 'empty'}")
