"""The vector engine: what the vector instructions compute (`execute_vec`) and a cycle-exact
model of the engine that runs them (`VectorEngineModel`, the reference of
`d1tile.hw.vpu.VectorEngine`). docs/vector.md is the long form.

The vector family (`d1tile.isa.VECTOR_FAMILY`): `VEC vop`, `FVEC fop` and `FCVT stype, dtype,
sr` each name one op of `d1tile.vector_ops.VECTOR_OPS` (`isa.vector_fields` gives its code and
operands, `vec_fields` here the engine's view). An instruction of n elements applies the vector
unit (`d1tile.sim.vector.vector_op`) n times: element i takes word a + (i >> read_shift) (group
i % groups(src) of it), for binary ops b_i = SRAM[b] if bfix else SRAM[b + i], the SETQ values
(scale, shift, relu) and SETR's q latched when the instruction started, slot i % 4, first
(i == 0) and last (i == n - 1). Its result goes to word dst + (i >> write_shift) under its byte
mask (a group of the word: REQUANT and FP32 -> INT8 pack four elements per word, FP32 -> BF16
two). A reduction (FSUM, FMAXR) folds its n elements into the unit's accumulator and gives ONE
result, the whole word, with its last element: one write, to dst. A stochastic conversion
(CVT_F32_BF16_SR) advances the unit's generator once per element; the generator's lane states
persist from instruction to instruction and are reloaded with `rng_seed_states(seed, N)` when an
instruction starts with `reseed` (the sequencer raises it after a SETR SEED).

The engine, per cycle (cycle s = the `start` cycle; all of this is also the RTL's contract)
-----------------------------------------------------------------------------------------------
State: `busy`, the latched command (op code, binary, bfix, read_shift, write_shift, dst, a, b,
n, the index of its last write: n - 1, or 0 for a reduction; the SETQ values and q), per read
port (a = node read port 2, b = port 3) a request counter (`ra`, `rb`: elements requested and
granted so far), an *in-flight* flag (the port was granted last cycle, so its word is on the
port's `data` now), and a two-entry operand buffer; an element counter `ei` (commands sent to
the vector unit: slot = ei % 4, first = ei == 0, last = ei == n - 1); a write counter `wi`; the
vector unit (its result register `valid`, `data`, `mask`, and its state: the reduction
accumulator and the generator, `unit_state`).

* Outputs, from state only (Moore):
  - read a: requested while busy, `ra < n` and `buffer_a + in_flight_a < 2`; address
    a + (ra >> read_shift): one read per ELEMENT, so an op that reads 2 (BF16) or 4 (INT8)
    elements per word reads each word 2 or 4 times, and the timing is that of every other op.
  - read b: the same with `rb < b_reads` and buffer b, address b + rb, where b_reads = n for a
    binary op, 1 with bfix (b is read ONCE and kept in the buffer for all n elements), and 0 for
    unary ops (they read no b).
  - write: requested while the vector unit's result register is valid; address
    dst + (wi >> write_shift), the result's data and byte mask.
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
  A reduction's elements before the last give no result (the result register stays empty).
* An arriving word that is not consumed by the bypass goes into the buffer. With bfix the b word
  is never consumed: it stays in buffer b for the whole instruction.
* Writes: one per element, or one for a reduction. When the instruction's last write is granted
  (write n - 1, or a reduction's only write), busy falls: `idle` is high from the next cycle,
  when every write of the instruction has landed. (n = 0, which the sequencer rejects, makes
  the engine busy for one cycle and write nothing.)
* `start` with `idle`: the engine decodes `instr` (the opcode bits select VEC, FVEC or FCVT; any
  other opcode runs as n = 0: busy one cycle, nothing read or written), latches it with `scale`,
  `shift`, `relu` and `q` (SETR's `fscale`) at the end of that cycle and empties its buffers;
  with `reseed` it also reseeds the unit's generator from `seed` in that cycle (the unit
  receives no command while the engine is idle, so the reseed precedes the instruction's first
  element). `start` while busy is ignored, its `reseed` too (the sequencer never does it).

Timing with no conflicts: reads of element 0 in cycle s + 1, its command in s + 2, its write in
s + 3, one element per cycle after that; the last write in s + n + 2 and `idle` again in cycle
s + n + 3 (`vec_cycles(n)` = n + 3 cycles from a start to the first cycle the next instruction
can start, of which `vec_busy_cycles(n)` = n + 2 are busy; the ideal is n, one element per
cycle). The same for every op: a reduction's single write comes in s + n + 2, when the last
element's result is ready. When a binary op's a and b words share a bank the bank serves one read
per cycle: 2n + 3.

Addresses are taken modulo `cfg.sram_words` (the sequencer has checked the ranges with
`isa.validate`). Undefined op codes (rejected by the sequencer) read a only and write nothing
(mask 0), one element per cycle.

Ordering inside one instruction: element i's operands are read before element i's result is
written, and elements are read in order; nothing orders the read of a later element against that
write. So a destination range may coincide with a source range element for element or start
below it, when the op reads one source word per element (`isa.validate`'s rule), and the result
is the element-by-element one of `execute_vec` and of the functional interpreter. A reduction
writes after all its reads, so its destination may overlap anything. With bfix and b inside the
destination range the engine uses the old b for every element (b is read once, before any
write); the sequencer faults such instructions.

This module imports no Amaranth.
"""

from __future__ import annotations

from functools import lru_cache

from d1tile import isa
from d1tile.contracts import OPERAND_BUFFER
from d1tile.isa import VECTOR_FAMILY
from d1tile.params import TileConfig
from d1tile.vector_ops import (FSCALE_BITS, NO_OP, SCALE_BITS, SEED_BITS, SHIFT_BITS, SLOT_BITS,
                               VECTOR_OPS)

from .vector import VectorUnitState, vector_kernel, vector_op


__all__ = [
    "OPERAND_BUFFER", "VEC_START_LATENCY", "NO_OP_CODE", "vec_cycles", "vec_busy_cycles",
    "vec_ideal_cycles", "vec_fields", "vec_write_range", "execute_vec", "VectorEngineModel",
]

VEC_START_LATENCY = 3
"""Cycles from the `start` cycle to the first write request (no conflicts): reads in s + 1,
command in s + 2, write in s + 3."""

NO_OP_CODE = NO_OP
"""The unit op code of an instruction that names no op (`d1tile.vector_ops.NO_OP`)."""


def vec_cycles(n: int, shared_bank: bool = False) -> int:
    """Cycles from a vector instruction's `start` cycle to the first cycle `idle` is high again,
    with no SRAM conflict from other ports: the issue-to-issue period of back-to-back
    instructions of n elements, whatever the op (reductions and conversions included).

    n + 3, or 2n + 3 with `shared_bank`: a binary op without bfix whose a_i and b_i are always in
    the same bank needs two reads of one bank per element (port a wins each tie, runs two elements
    ahead, then b catches up), so two cycles per element, the bank's limit."""
    if n < 0:
        raise ValueError(f"n={n} must not be negative")
    if n == 0:
        return 2
    return (2 * n if shared_bank else n) + VEC_START_LATENCY


def vec_busy_cycles(n: int, shared_bank: bool = False) -> int:
    """Cycles `busy` is high for one instruction of n elements (see `vec_cycles`)."""
    return vec_cycles(n, shared_bank) - 1


def vec_ideal_cycles(n: int) -> int:
    """The ideal: one element per cycle."""
    if n < 0:
        raise ValueError(f"n={n} must not be negative")
    return n


def vec_fields(instr: int) -> dict:
    """The engine's view of a 64-bit vector-family word (`isa.vector_fields`): `opcode`, `code`
    (the unit op code; `NO_OP_CODE` for an opcode outside the family), `dst`, `a`, `b`, `n`,
    `bfix`, and the op's `binary`, `reduce`, `read_shift`, `write_shift` (all 0 for an undefined
    code). An opcode outside VEC/FVEC/FCVT gives n = 0 (the engine does nothing with it)."""
    return dict(_vec_fields_checked(int(instr)))


@lru_cache(maxsize=4096)
def _vec_fields(word: int) -> dict:
    """`vec_fields` of a checked word, remembered (programs start the same few instruction
    words again and again); the engine reads it, never writes it."""
    decoded = isa.decode(word)
    opcode = word & 0xF
    if decoded.op not in VECTOR_FAMILY:
        return dict(opcode=opcode, code=NO_OP_CODE, dst=0, a=0, b=0, n=0, bfix=0, binary=0,
                    reduce=0, read_shift=0, write_shift=0)
    v = isa.vector_fields(decoded.op, decoded, isa.PY)
    spec = VECTOR_OPS.get(v.code)
    return dict(opcode=opcode, code=int(v.code), dst=v.dst, a=v.a, b=v.b, n=v.n,
                bfix=int(v.bfix), binary=int(bool(spec and spec.binary)),
                reduce=int(bool(spec and spec.reduce)),
                read_shift=spec.read_shift if spec else 0,
                write_shift=spec.write_shift if spec else 0)


def _vec_fields_checked(word: int) -> dict:
    if word < 0 or word >> isa.INSTR_BITS:
        raise ValueError(f"instruction word {word:#x} is not a {isa.INSTR_BITS}-bit value")
    return _vec_fields(word)


def vec_write_range(fields: dict) -> tuple[int, int]:
    """The destination words [lo, hi) an instruction writes (`vec_fields`; before the modulo of
    the SRAM size): one word for a reduction, else ceil(n / elements per destination word)."""
    n, dst = fields["n"], fields["dst"]
    if fields["reduce"]:
        return dst, dst + (1 if n else 0)
    shift = fields["write_shift"]
    return dst, dst + ((n + (1 << shift) - 1) >> shift)


def _check_param(name: str, value, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"vector engine: {name}={value!r} does not fit {bits} bits unsigned")
    return value


def execute_vec(cfg: TileConfig, memory: list, instr: int, scale: int = 0, shift: int = 0,
                relu: int = 0, q: int = 0, state: VectorUnitState | None = None) -> None:
    """Apply one VEC, FVEC or FCVT to `memory` (a list of `cfg.sram_words` word integers), in
    place.

    The functional reference of the engine: element by element, read a's word and (binary ops)
    b's, compute with `vector_op`, merge the result into the destination word under its byte
    mask; a reduction writes once, after its last element. With bfix, b is read once before the
    first element (as the engine does). See the module docstring for which source/destination
    overlaps this order describes faithfully.

    `state` is the vector unit's (`VectorUnitState`: the generator lane states, which a
    stochastic conversion advances, and the accumulator); it is required for stochastic ops
    (ValueError naming the op), and a reduction without one uses a fresh one. Reseeding
    (`state.reseed(seed)`) is the caller's, before the call. `scale`, `shift`, `relu`, `q` must
    fit their 16, 6, 1 and 32 bits (ValueError naming the value); an opcode outside the vector
    family raises ValueError.
    """
    words = cfg.sram_words
    if len(memory) != words:
        raise ValueError(f"memory has {len(memory)} words, expected {words} ({cfg.name})")
    f = vec_fields(instr)
    if f["code"] == NO_OP_CODE and isa.decode(int(instr)).op not in VECTOR_FAMILY:
        raise ValueError(f"instruction {int(instr):#018x} (opcode {f['opcode']}) is not one of "
                         f"{', '.join(op.name for op in VECTOR_FAMILY)}")
    for name, value, bits in (("scale", scale, SCALE_BITS), ("shift", shift, SHIFT_BITS),
                              ("relu", int(relu) if isinstance(relu, bool) else relu, 1),
                              ("q", q, FSCALE_BITS)):
        _check_param(name, value, bits)
    spec = VECTOR_OPS.get(f["code"])
    if spec is not None and spec.stochastic and state is None:
        raise ValueError(f"execute_vec: {spec.name} needs the vector unit's state "
                         f"(VectorUnitState) for its generator")
    if state is None:
        state = VectorUnitState(cfg)
    op, n = f["code"], f["n"]
    binary = f["binary"]
    b_fixed = memory[f["b"] % words] if binary and f["bfix"] else 0
    for i in range(n):
        a_word = memory[(f["a"] + (i >> f["read_shift"])) % words]
        if not binary:
            b_word = 0
        elif f["bfix"]:
            b_word = b_fixed
        else:
            b_word = memory[(f["b"] + i) % words]
        out = vector_op(cfg, op, a_word, b_word, scale, shift, i % (1 << SLOT_BITS), int(relu), q,
                        int(i == 0), int(i == n - 1), state)
        if out is None:          # a reduction before its last element
            continue
        data, mask = out
        addr = (f["dst"] + (0 if f["reduce"] else i >> f["write_shift"])) % words
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
    2. `tick(read_grants, write_grants, read_data, start, instr, scale, shift, relu, q=0,
       seed=0, reseed=False)`: the clock edge, given this cycle's inputs:

       - `read_grants`: 2 bools, the SRAM's grants (`ready`) of this cycle's `sram_reads()`
         (ignored for a port that did not request);
       - `write_grants`: 1 bool, the grant of this cycle's `sram_writes()[0]`;
       - `read_data`: 2 entries, the word on each read port's `data` this cycle, i.e. the word of
         a read granted in the PREVIOUS cycle (`SRAMModel.read_data[2]`, `[3]` saved from the
         previous `step`), or None. A word must be given when one is due (ValueError otherwise);
       - `start`, `instr` (a 64-bit VEC, FVEC or FCVT word), `scale`, `shift`, `relu` (SETQ's),
         `q` (SETR's FP32 scalar, the sequencer's `fscale`), `seed` and `reseed` (SETR's seed
         and the pending-reseed flag): the sequencer's command interface this cycle (`start`,
         and with it `reseed`, is ignored while busy).

    `unit_state` is the vector unit's `VectorUnitState` (accumulator and generator lane states,
    as the RTL's registers hold them). Debug: `describe()`; `elements` counts commands sent to
    the vector unit, `writes` the granted writes, `stall_cycles` the busy cycles in which no
    command could be sent.
    """

    __slots__ = (
        "_cfg", "_words", "_busy", "_op", "_binary", "_bfix", "_read_shift",
        "_write_shift", "_dst", "_a", "_b", "_n", "_b_reads", "_last_write", "_scale", "_shift",
        "_relu", "_q", "_ra", "_rb", "_inflight_a", "_inflight_b", "_buf_a", "_buf_b", "_ei",
        "_wi", "_res_valid", "_res_data", "_res_mask", "unit_state", "_kernel", "elements",
        "writes", "stall_cycles",
    )

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self._words = cfg.sram_words
        self._busy = False
        self._op = 0
        self._binary = self._bfix = False
        self._read_shift = self._write_shift = 0
        self._dst = self._a = self._b = self._n = self._b_reads = self._last_write = 0
        self._scale = self._shift = self._relu = self._q = 0
        self._ra = self._rb = 0
        self._inflight_a = self._inflight_b = False
        self._buf_a: list[int] = []
        self._buf_b: list[int] = []
        self._ei = 0
        self._wi = 0
        self._res_valid = False
        self._res_data = 0
        self._res_mask = 0
        self.unit_state = VectorUnitState(cfg)
        self._kernel = vector_kernel(cfg, 0)
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
        return [(self._a + (self._ra >> self._read_shift)) % self._words if self._read_a()
                else None,
                (self._b + self._rb) % self._words if self._read_b() else None]

    def _write_addr(self) -> int:
        return (self._dst + (self._wi >> self._write_shift)) % self._words

    def sram_writes(self) -> list:
        """`[(addr, data, mask)]` or `[None]`: this cycle's request on node write port 2."""
        if not self._res_valid:
            return [None]
        return [(self._write_addr(), self._res_data, self._res_mask)]

    def requests(self) -> tuple:
        """`(*sram_reads(), sram_writes()[0])` in one call: what the node's `outputs` asks
        every cycle."""
        if self._busy:
            words = self._words
            buffered_a = len(self._buf_a) + self._inflight_a
            read_a = ((self._a + (self._ra >> self._read_shift)) % words
                      if self._ra < self._n and buffered_a < OPERAND_BUFFER else None)
            read_b = ((self._b + self._rb) % words
                      if self._rb < self._b_reads
                      and len(self._buf_b) + self._inflight_b < OPERAND_BUFFER else None)
        else:
            read_a = read_b = None
        if not self._res_valid:
            return read_a, read_b, None
        return read_a, read_b, (self._write_addr(), self._res_data, self._res_mask)

    # -- clock edge --------------------------------------------------------------------------

    def tick(self, read_grants=(False, False), write_grants=(False,), read_data=(None, None),
             start: bool = False, instr: int = 0, scale: int = 0, shift: int = 0,
             relu: int = 0, q: int = 0, seed: int = 0, reseed: bool = False) -> None:
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

        result = None
        if fire:
            op_a = buf_a[0] if buf_a else data_a
            op_b = (buf_b[0] if buf_b else data_b) if self._binary else 0
            ei = self._ei
            # The op's kernel (`vector_op` without its checks: the latched fields are in range)
            result = self._kernel(op_a, op_b, ei % (1 << SLOT_BITS), int(ei == 0),
                                  int(ei + 1 == self._n), self._scale, self._shift, self._relu,
                                  self._q, self.unit_state)
            if result is not None:
                self._res_data, self._res_mask = result
            self.elements += 1
        if cmd_ready:
            self._res_valid = result is not None

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
            self._ei += 1
        self._inflight_a = grant_a
        self._inflight_b = grant_b
        self._ra += grant_a
        self._rb += grant_b

        if write_fire:
            self.writes += 1
            self._wi += 1
        if self._busy and (self._n == 0 or (write_fire and self._wi == self._last_write + 1)):
            self._busy = False
        elif start and not self._busy:
            self._latch(instr, scale, shift, relu, q, seed, reseed)

    def _latch(self, instr, scale, shift, relu, q, seed, reseed) -> None:
        if not 0 <= scale < 1 << SCALE_BITS or not 0 <= shift < 1 << SHIFT_BITS \
                or relu not in (0, 1, False, True):
            raise ValueError(f"vector engine: SETQ parameters scale={scale} shift={shift} "
                             f"relu={relu} do not fit 16, 6 and 1 bits")
        _check_param("q", q, FSCALE_BITS)
        _check_param("seed", seed, SEED_BITS)
        f = _vec_fields_checked(int(instr))      # `vec_fields`, not copied: only read
        self._busy = True
        self._op = f["code"]
        self._kernel = vector_kernel(self._cfg, self._op)
        self._binary = bool(f["binary"])
        self._bfix = bool(f["bfix"])
        self._read_shift, self._write_shift = f["read_shift"], f["write_shift"]
        self._dst, self._a, self._b, self._n = f["dst"], f["a"], f["b"], f["n"]
        n = self._n
        self._b_reads = (min(n, 1) if self._bfix else n) if self._binary else 0
        self._last_write = 0 if f["reduce"] else n - 1
        self._scale, self._shift, self._relu, self._q = int(scale), int(shift), int(relu), int(q)
        self._ra = self._rb = 0
        self._buf_a.clear()
        self._buf_b.clear()
        self._ei = 0
        self._wi = 0
        if reseed:
            self.unit_state.reseed(seed)

    def describe(self) -> str:
        """The engine's state in one line, for hang reports and failure messages."""
        if not self._busy:
            return "vector engine: idle"
        spec = VECTOR_OPS.get(self._op)
        op = spec.name if spec else f"op {self._op}"
        writes = self._last_write + 1
        return (f"vector engine: {op} dst={self._dst} a={self._a} b={self._b} n={self._n} "
                f"bfix={int(self._bfix)}; reads a {self._ra}/{self._n} b {self._rb}/"
                f"{self._b_reads}, buffered {len(self._buf_a)}+{len(self._buf_b)}, in flight "
                f"{int(self._inflight_a)}+{int(self._inflight_b)}, elements {self._ei}/"
                f"{self._n}, writes {self._wi}/{writes}, "
                f"result {'valid' if self._res_valid else 'empty'}")

