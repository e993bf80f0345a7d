"""The node's instruction set: the one definition of its encoding, validity rules and hazard
ranges. The RTL decoder (`d1tile.hw.sequencer`) is generated from the same rules as
`validate` and `hazard_ranges` (they are written once, over an `ops` backend that is either
Python integers or Amaranth values: `PY`, and `d1tile.hw.sequencer`'s), and the cycle model,
the functional interpreter (`d1tile.sim.interp`) and the assembler (`d1tile.sw.asm`) use this
module.

Instructions are 64-bit words; bits 3..0 are the opcode, the fields follow from bit 4 upwards in
the order listed in `FORMATS`. The registers besides SRAM are SETQ's requantisation parameters
and SETR's FP32 scalar and generator seed, the matrix unit's `ACC_BANKS` accumulator banks, and
the sequencer's loop stack and STEP offsets.

Hardware loops: `LOOP count, body` runs the `body` instructions after it `count` times (0: skips
them) on a stack of at most `LOOP_DEPTH` open loops; the back edge costs no cycle (when the
body's last instruction issues, the next pc is the body's first). `STEP s0, s1, s2, level` adds
s_k x i to the k-th address field (`ADDRESS_SLOTS`) of the next instruction that issues, i being
the iteration (0, 1, ...) of the open loop `level` (0: the innermost); consecutive STEPs add up,
so one instruction can advance with several loops; arithmetic is modulo 2**16 (a stride of
0xFFFF steps down by one), and the stepped instruction is checked and run as if it had been
written with those fields (`stepped`). `LoopControl` holds the rules that the cycle model and the
interpreter share (the RTL sequencer implements them and is checked against the model).

Accumulator banks: MATMUL adds into the bank it names, MREAD reads out the bank it names, on
two engines of their own (MATRIX and READOUT), so that one bank is read out while the next
product accumulates into the other. The sequencer orders them like SRAM ranges: bank b is the
pseudo-range [ACC_RANGE_BASE + b, ACC_RANGE_BASE + b + 1), above every SRAM address, that a
MATMUL writes and an MREAD reads (`ranges_of`), so an MREAD of a bank waits for the MATMUL
accumulating into it (STALL_HAZARD), a MATMUL into a bank waits for the MREAD reading it, and
a MATMUL and an MREAD of different banks run side by side.

| opcode | instruction | unit | effect |
| --- | --- | --- | --- |
| 0 | `NOP` | sequencer | nothing |
| 1 | `HALT` | sequencer | wait until every unit is idle, report DONE to the host, stop |
| 2 | `MATMUL a, b, kw, clear, type, bank` | matrix | V * kw outer products from words a.. (A^T) and b.. (B) into accumulator bank `bank`, V = 4 (INT8) or 2 (BF16) vectors per word |
| 3 | `MREAD dst, row0, nrows, bank, tr` | readout | rows row0.. of accumulator bank `bank` (N 32-bit lanes each) to words dst..; with `tr`, columns row0.. instead (the transpose: lane i of word r = acc[i][row0 + r]) |
| 4 | `VEC vop, dst, a, b, n, bfix` | vector | n integer vector-unit ops (`VecOp`), word by word |
| 5 | `SETQ scale, shift, relu` | sequencer | set the REQUANT parameters of later vector instructions |
| 6 | `SEND src, n, x, y, dst, counter` | DMA | push words src.. to node (x, y) words dst.., then bump its counter |
| 7 | `WAIT counter, value` | sequencer | block until counter >= value, then subtract value |
| 8 | `FVEC fop, dst, a, b, n, bfix` | vector | n FP32 vector-unit ops (`FVecOp`), or a reduction of n words |
| 9 | `FCVT stype, dtype, sr, dst, a, n` | vector | n conversions between element types (`CONVERSIONS`) |
| 10 | `SETR reg, value` | sequencer | set the FP32 scalar q (reg 0) or reseed the stochastic-rounding generator (reg 1) |
| 11 | `LOOP count, body` | sequencer | run the next `body` instructions `count` times (hardware loop) |
| 12 | `STEP s0, s1, s2, level` | sequencer | advance the next instruction's address fields by s_k x (iteration of loop `level`) |
| 13 | `MCAST src, n, col, first, last, dst, counter` | DMA | multicast: push words src.. to words dst.. of the nodes first..last of the node's own row (col = 0) or column (col = 1), one packet (`d1tile.formats.Multicast`), each receiver's counter bumped; shaped with a span, to a rectangle |
| 14 | `SHAPE extra, sstride, dstride, zero, span, span_first, span_last` | sequencer | set the DMA shape register that shaped SENDs and MCASTs use (2-D strided, gather, scatter and zero-fill transfers; rectangle multicasts) |
| 15 | undefined | | fault UNDEFINED |

Shaped transfers (strided and gather DMA): SEND and MCAST have a `shaped` bit. With it, the
transfer takes the shape register (SHAPE's fields; START clears it to all zeros, which is the
plain transfer): rows = extra + 1 rows of n words each, row r read from src + r * sstride ..
(or, with `zero`, rows of zero words, no SRAM read: padding) and written at dst + r * dstride
on each receiver. The rows leave as one WRITE packet of rows * n words when the destination is
contiguous (dstride = n, or one row), else as one packet of n words per row, the counter
bumped by the last only (`dma_packets`): one bump per transfer either way. sstride = 0 repeats
a row (a broadcast), sstride = 1 with n = 1 gathers a column of a row-major array (a transpose
at word granularity). The sequencer hands the engine the `EFFECTIVE_BITS` word (the shape in
bits 64..), so that the shape a transfer runs with is the one of its issue.

Rectangle multicast: a shaped MCAST whose shape has `span` = 1 delivers to the rectangle of its
own range first..last (along its row, col = 0, or its column, col = 1) times span_first..
span_last along the other dimension (`mcast_rectangle`): as one COLUMN multicast per column of
the rectangle, west to east, each column's packets as the shape gives them (the source read
again for each column), so every receiver gets the transfer once and its counter one bump.
Each column's packets travel X to their column and then south, so the deadlock argument of the
column multicast holds (docs/architecture.md). A shaped SEND with `span` set faults.

Validity (checked when the instruction reaches issue; an invalid instruction faults the node,
which stops and reports the fault, the pc and the offending value to the host). The checks of
each opcode run in the order of `_CHECKS`; the first that fails names the fault:

* MATMUL: `type` has a `d1tile.dtypes.MATRIX_TYPES` entry (else TYPE, value type); kw >= 1
  (else FIELD, value kw); a + kw and b + kw <= sram_words (else ADDRESS, value a or b).
* MREAD: nrows >= 1 and row0 + nrows <= mac_dim (else FIELD, value row0 + nrows);
  dst + nrows <= sram_words (else ADDRESS, value dst).
* VEC, FVEC, FCVT (the vector family; each names a vector-unit op of `d1tile.vector_ops`): the
  op exists (VEC's vop, FVEC's fop: else FIELD, value the field; FCVT's (stype, dtype, sr): else
  TYPE, value stype | dtype << 2 | sr << 4); n >= 1 (else FIELD, value n); the source words
  (a + ceil(n / elements per source word)), b's words for binary ops (b + (1 if bfix else n))
  and the destination words (dst + ceil(n / elements per destination word), dst + 1 for a
  reduction) fit the SRAM (else ADDRESS, value a, b or dst, in that order); and the
  destination does not run ahead of a source (else FIELD, value dst): it may overlap the a
  words only if it starts at or below them and the op reads one source word per element, the
  b words only if it starts at or below them, and a fixed b must lie outside it. (The engine
  reads ahead of its writes, so a later element must never read what an earlier one wrote.) A
  reduction writes once, after its last read, so its destination may overlap anything.
* SEND: x <= cols and y < rows (else NODE, value x | y << SEND_X_BITS, `node_fault_value`;
  x == cols is the host: the
  packet leaves through the east edge of the sender's own row, whatever y, and the host
  appends its words to the sender's stream, `RunResult.streams`); no span (else FIELD, value 1);
  then the extent (`dma_extent`,
  with the shape of a shaped SEND): src + extra * sstride + n <= sram_words unless `zero`
  (else ADDRESS, value src), dst + extra * dstride + n <= sram_words (else ADDRESS, value
  dst), and a one-packet transfer of at most 65535 words (else FIELD, value n; only an SRAM
  of 2**16 words can fail it). n = 0 sends no data, only the counter bump (a signal).
* SETR: reg is 0 (q) or 1 (seed) (else FIELD, value reg).
* MCAST: first <= last (else FIELD, value first); last < cols (a row) or < rows (a column)
  (else NODE, value last); with a span, span_first <= span_last (else FIELD, value
  span_first) and span_last < rows (a row) or < cols (a column) (else NODE, value span_last);
  then the extent, as SEND's.
* LOOP: body >= 1 (else FIELD, value 0). Then, against the loop stack (`LoopControl.fault`, so
  the same whatever the count): fewer than LOOP_DEPTH loops open (else LOOP, value
  LOOP_DEPTH); the body ends inside the imem, pc + body < imem_words, and strictly inside the
  enclosing loop's body, before its last instruction (else LOOP, value body).
* STEP: level < LOOP_DEPTH (else FIELD, value level); then the loop `level` is open (else
  LOOP, value level).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from .dtypes import MATRIX_TYPES, TYPE_BITS, ElemType
from .formats import SYNC_COUNTER_ID_BITS, BitFormat, Field
from .params import COORD_BITS, TileConfig
from .vector_ops import FSCALE_BITS, NO_OP, VECTOR_OPS, VectorOp


__all__ = [
    "Opcode", "Unit", "UNIT_OF", "FaultCode", "VecOp", "FVecOp", "SetrReg", "CONVERSIONS",
    "FORMATS", "INSTR_BITS", "ADDR_BITS", "SYNC_COUNTERS", "SYNC_COUNTER_BITS", "VECTOR_FAMILY",
    "Instruction", "encode", "decode", "validate", "Ranges", "hazard_ranges", "overlaps",
    "vector_op", "requant_words", "BINARY_VECOPS", "PY", "ACC_BANKS", "ACC_RANGE_BASE",
    "LOOP_DEPTH", "ADDRESS_SLOTS", "stepped", "LoopControl", "mcast_receivers",
    "SHAPE_FORMAT", "SHAPE_FIELDS", "SHAPE_BITS", "mcast_rectangle", "SHAPED_OPS", "EFFECTIVE_BITS", "DmaExtent", "dma_extent",
    "dma_packets", "dma_source", "COORD_BITS", "SEND_X_BITS", "SEND_MAX_WORDS",
    "node_fault_value",
]

INSTR_BITS = 64
ADDR_BITS = 16            # SRAM word address fields; TileConfig keeps sram_words <= 2**16
SYNC_COUNTERS = 1 << SYNC_COUNTER_ID_BITS   # the WAIT / SEND synchronisation counters: 32
SYNC_COUNTER_BITS = 16    # each wraps at 2**16 (the performance counters are formats.PERF_COUNTER_BITS)
ACC_BANKS = 2             # accumulator banks of the matrix unit (MATMUL's and MREAD's `bank`)
ACC_RANGE_BASE = 1 << ADDR_BITS
"""The hazard pseudo-address of accumulator bank 0 (bank b is ACC_RANGE_BASE + b): above every
SRAM word, so banks and SRAM ranges never meet."""
LOOP_DEPTH = 4            # loops open at once (the sequencer's loop stack)
SEND_X_BITS = COORD_BITS + 1
"""SEND's x: a node's column 0..cols-1, or cols, the host edge (so 6 bits for 32 columns).
Every other node coordinate of an instruction is `COORD_BITS` (`d1tile.params`) wide."""
DMA_N_BITS = 11
"""SEND's and MCAST's n, the words of one transfer (of one row of a shaped one): 1..2047.
Narrowed from 12 bits when the coordinates grew from 4 bits (grids up to 15 x 15) to
`COORD_BITS` = 5 and `SEND_X_BITS` = 6 (up to 32 x 32), to keep both formats in 64 bits
(docs/architecture.md, "Scale")."""
SEND_MAX_WORDS = (1 << DMA_N_BITS) - 1
"""The most words one SEND or MCAST (one row of a shaped one) names."""


def node_fault_value(x, y):
    """The value of a SEND's NODE fault: x | y << SEND_X_BITS (x, y: the SEND's fields)."""
    return x | (y << SEND_X_BITS)


class Opcode(enum.IntEnum):
    NOP = 0
    HALT = 1
    MATMUL = 2
    MREAD = 3
    VEC = 4
    SETQ = 5
    SEND = 6
    WAIT = 7
    FVEC = 8
    FCVT = 9
    SETR = 10
    LOOP = 11
    STEP = 12
    MCAST = 13
    SHAPE = 14


class Unit(enum.IntEnum):
    """Who executes an instruction. Each of MATRIX, VECTOR, DMA and READOUT runs one
    instruction at a time, beside the others; SEQUENCER instructions complete in the cycle they
    issue. MATRIX (MATMUL) and READOUT (MREAD) are the two halves of the matrix engine: they
    share the matrix unit, each owns one of its accumulator banks at a time."""
    SEQUENCER = 0
    MATRIX = 1
    VECTOR = 2
    DMA = 3
    READOUT = 4     # MREAD: accumulator rows to SRAM, beside the MATRIX engine's MATMULs


UNIT_OF = {
    Opcode.NOP: Unit.SEQUENCER, Opcode.HALT: Unit.SEQUENCER, Opcode.SETQ: Unit.SEQUENCER,
    Opcode.WAIT: Unit.SEQUENCER, Opcode.SETR: Unit.SEQUENCER, Opcode.LOOP: Unit.SEQUENCER,
    Opcode.STEP: Unit.SEQUENCER, Opcode.SHAPE: Unit.SEQUENCER, Opcode.MATMUL: Unit.MATRIX,
    Opcode.MREAD: Unit.READOUT, Opcode.VEC: Unit.VECTOR, Opcode.FVEC: Unit.VECTOR,
    Opcode.FCVT: Unit.VECTOR, Opcode.SEND: Unit.DMA, Opcode.MCAST: Unit.DMA,
}

VECTOR_FAMILY = (Opcode.VEC, Opcode.FVEC, Opcode.FCVT)
"""The instructions the vector engine runs: each names one op of `d1tile.vector_ops`."""


class FaultCode(enum.IntEnum):
    NONE = 0
    UNDEFINED = 1   # opcode 15
    ADDRESS = 2     # an SRAM range beyond sram_words
    NODE = 3        # SEND to a node outside the grid
    FIELD = 4       # a field out of its range (kw = 0, rows beyond the array, bad vector op)
    PC = 5          # the pc ran past the end of the instruction memory (no HALT)
    TYPE = 6        # an element type the matrix unit lacks, or a conversion FCVT lacks
    LOOP = 7        # loops nested too deep or badly, or a STEP naming a loop that is not open


class VecOp(enum.IntEnum):
    """VEC's `vop`: integer ops on int32 lanes (`d1tile.vector_ops` codes 0..4)."""
    ADD = 0      # a + b, wrapping int32
    MUL = 1      # a * b, low 32 bits (wrapping)
    MAX = 2      # max(a, b)
    RELU = 3     # max(a, 0)
    REQUANT = 4  # int32 -> int8: saturate((a * scale + round) >> shift), into byte slot i % 4


class FVecOp(enum.IntEnum):
    """FVEC's `fop`: FP32 ops (`d1tile.vector_ops` code 8 + fop)."""
    FADD = 0     # a + b
    FSUB = 1     # a - b
    FMUL = 2     # a * b
    FMAX = 3     # max(a, b)
    FMASK = 4    # a where b > 0, else +0 (the ReLU backward mask)
    FAXPY = 5    # a * q + b, two roundings
    FRELU = 6    # max(a, +0)
    FSCALE = 7   # a * q
    FSUM = 8     # dst = sum of the n words a.., lane by lane, in order
    FMAXR = 9    # dst = max of the n words a.., lane by lane


FVEC_BASE = 8


class SetrReg(enum.IntEnum):
    """SETR's `reg`."""
    SCALE = 0    # q := value (FP32 bits), latched by later vector instructions
    SEED = 1     # the stochastic-rounding generator is reseeded with value at the next start


CONVERSIONS: dict[tuple[ElemType, ElemType, int], int] = {
    (ElemType.FP32, ElemType.BF16, 0): 24,
    (ElemType.FP32, ElemType.BF16, 1): 25,
    (ElemType.BF16, ElemType.FP32, 0): 26,
    (ElemType.INT32, ElemType.FP32, 0): 27,
    (ElemType.FP32, ElemType.INT32, 0): 28,
    (ElemType.INT8, ElemType.FP32, 0): 29,
    (ElemType.FP32, ElemType.INT8, 0): 30,
}
"""FCVT's (stype, dtype, sr) -> the vector-unit op code. `sr` = 1 (stochastic rounding) exists
only for FP32 -> BF16; every other combination faults TYPE."""

_CONVERSION_KEYS = {s | d << 2 | r << 4: code for (s, d, r), code in CONVERSIONS.items()}


def _fmt(name, *fields) -> BitFormat:
    return BitFormat(name, [Field("op", 4), *fields])


A = ADDR_BITS
FORMATS: dict[Opcode, BitFormat] = {
    Opcode.NOP: _fmt("NOP"),
    Opcode.HALT: _fmt("HALT"),
    Opcode.MATMUL: _fmt("MATMUL", Field("a", A), Field("b", A), Field("kw", 16), Field("clear", 1),
                        Field("type", TYPE_BITS), Field("bank", 1)),
    Opcode.MREAD: _fmt("MREAD", Field("dst", A), Field("row0", 8), Field("nrows", 8),
                       Field("bank", 1), Field("tr", 1)),
    Opcode.VEC: _fmt("VEC", Field("vop", 3), Field("bfix", 1), Field("dst", A), Field("a", A),
                     Field("b", A), Field("n", 8)),
    Opcode.SETQ: _fmt("SETQ", Field("scale", 16), Field("shift", 6), Field("relu", 1)),
    Opcode.SEND: _fmt("SEND", Field("src", A), Field("n", DMA_N_BITS),
                      Field("x", SEND_X_BITS), Field("y", COORD_BITS),
                      Field("dst", A), Field("counter", SYNC_COUNTER_ID_BITS), Field("shaped", 1)),
    Opcode.WAIT: _fmt("WAIT", Field("counter", SYNC_COUNTER_ID_BITS),
                      Field("value", SYNC_COUNTER_BITS)),
    Opcode.FVEC: _fmt("FVEC", Field("fop", 4), Field("bfix", 1), Field("dst", A), Field("a", A),
                      Field("b", A), Field("n", 7)),
    Opcode.FCVT: _fmt("FCVT", Field("stype", TYPE_BITS), Field("dtype", TYPE_BITS),
                      Field("sr", 1), Field("dst", A), Field("a", A), Field("n", 8)),
    Opcode.SETR: _fmt("SETR", Field("reg", 2), Field("value", FSCALE_BITS)),
    Opcode.LOOP: _fmt("LOOP", Field("count", 16), Field("body", 16)),
    Opcode.STEP: _fmt("STEP", Field("s0", A), Field("s1", A), Field("s2", A),
                      Field("level", (LOOP_DEPTH - 1).bit_length())),
    Opcode.MCAST: _fmt("MCAST", Field("src", A), Field("n", DMA_N_BITS), Field("col", 1),
                       Field("first", COORD_BITS), Field("last", COORD_BITS), Field("dst", A),
                       Field("counter", SYNC_COUNTER_ID_BITS), Field("shaped", 1)),
    Opcode.SHAPE: _fmt("SHAPE", Field("extra", 12), Field("sstride", A), Field("dstride", A),
                       Field("zero", 1), Field("span", 1),
                       Field("span_first", COORD_BITS), Field("span_last", COORD_BITS)),
}
assert all(f.width <= INSTR_BITS for f in FORMATS.values()), \
    {op.name: f.width for op, f in FORMATS.items() if f.width > INSTR_BITS}

SHAPE_FORMAT = BitFormat("dma_shape", list(FORMATS[Opcode.SHAPE].fields[1:]))
"""The DMA shape register (SHAPE's fields without the opcode): a shaped SEND or MCAST moves
extra + 1 rows of n words, row r from src + r * sstride (zeros if `zero`) to
dst + r * dstride; an MCAST with `span` goes to a rectangle (`mcast_rectangle`). All zero
(the value after START) is the plain one-row transfer."""
SHAPE_FIELDS = tuple(f.name for f in SHAPE_FORMAT.fields)
SHAPE_BITS = SHAPE_FORMAT.width
SHAPED_OPS = (Opcode.SEND, Opcode.MCAST)
EFFECTIVE_BITS = INSTR_BITS + SHAPE_BITS
"""Width of an instruction as the sequencer hands it to its engine: a shaped SEND or MCAST
carries the shape register in bits INSTR_BITS.. (`LoopControl.effective`); every other word is
its 64 bits."""

ADDRESS_SLOTS: dict[Opcode, tuple[str, ...]] = {
    Opcode.MATMUL: ("a", "b"),
    Opcode.MREAD: ("dst",),
    Opcode.VEC: ("dst", "a", "b"),
    Opcode.FVEC: ("dst", "a", "b"),
    Opcode.FCVT: ("dst", "a"),
    Opcode.SEND: ("src", "dst"),
    Opcode.MCAST: ("src", "dst"),
}
"""The address fields a STEP advances, in the order of its s0, s1, s2 (an instruction with
fewer slots ignores the rest; the other opcodes have none)."""
_ADDR_MASK = (1 << A) - 1

BINARY_VECOPS = frozenset(v for v in VecOp if VECTOR_OPS[v].binary)


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction: `op` is an `Opcode`, or None for an undefined opcode (`raw` keeps
    the word); `fields` maps field names (without `op`) to values."""
    op: Opcode | None
    fields: dict
    raw: int

    def __getattr__(self, name):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self):
        if self.op is None:
            return f".word {self.raw:#018x}"
        args = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.op.name} {args}".strip()


def encode(op: Opcode, **fields) -> int:
    """The 64-bit word of an instruction; a field that does not fit raises FormatError."""
    return FORMATS[Opcode(op)].pack(op=int(op), **fields)


def decode(word: int) -> Instruction:
    """The instruction a word stands for. A word wider than INSTR_BITS is an effective SEND or
    MCAST (`LoopControl.effective`): its shape (`SHAPE_FORMAT`) joins the fields."""
    word = int(word)
    code = word & 0xF
    wide = word >> INSTR_BITS
    if word < 0 or (wide and (code not in SHAPED_OPS or wide >> SHAPE_BITS)):
        raise ValueError(f"instruction word {word:#x} is wider than {INSTR_BITS} bits")
    try:
        op = Opcode(code)
    except ValueError:
        return Instruction(None, {}, word)
    values = FORMATS[op].unpack(word & ((1 << FORMATS[op].width) - 1))
    del values["op"]
    if wide:
        values.update(SHAPE_FORMAT.unpack(wide))
    return Instruction(op, values, word)


def requant_words(n: int) -> int:
    """Destination words of a REQUANT over n source words."""
    return VECTOR_OPS[VecOp.REQUANT].dest_words(n)


# -- the rules, written once over an `ops` backend ------------------------------------------------
#
# A rule is an expression over an instruction's fields (`x.kw`, ...) that uses only +, >>, <<,
# |, &, comparisons and the backend's `mux`, `lookup`, `any`, `not_`: the same text evaluates
# to Python integers (`PY`, for `validate` and `hazard_ranges`) or builds Amaranth logic (the
# RTL decoder's backend). Comparisons give bools in Python and 1-bit values in Amaranth, and
# `&` / `|` combine both.

class _PyOps:
    """The Python backend of the rules."""

    @staticmethod
    def mux(cond, if_true, if_false):
        return if_true if cond else if_false

    @staticmethod
    def lookup(table: dict, key, default):
        return table.get(int(key), default)

    @staticmethod
    def any(conds):
        return any(conds)

    @staticmethod
    def not_(cond):
        return not cond


PY = _PyOps()


class DmaExtent(NamedTuple):
    """What a SEND or MCAST moves, with its shape (`dma_extent`)."""
    rows: object          # extra + 1
    zero: object          # the rows are zeros (no SRAM read)
    src_end: object       # one past the last source word read (src + extra * sstride + n)
    dst_end: object       # one past the last destination word written
    single: object        # one packet of rows * n words (extra = 0 or dstride = n), else one
                          # packet of n words per row, only the last bumping the counter


def dma_extent(x, ops=PY) -> DmaExtent:
    """The extent of a SEND or MCAST `x` (its fields, with the shape fields of an effective
    word; without them, the plain one-row transfer)."""
    extra = getattr(x, "extra", 0)
    sstride, dstride = getattr(x, "sstride", 0), getattr(x, "dstride", 0)
    return DmaExtent(extra + 1, getattr(x, "zero", 0), x.src + extra * sstride + x.n,
                     x.dst + extra * dstride + x.n, (extra == 0) | (dstride == x.n))


def dma_packets(x) -> list[tuple[int, int, bool]]:
    """The WRITE packets of a SEND or MCAST (Python ints): (dst, length, bump) each, in order."""
    e = dma_extent(x)
    if e.single:
        return [(x.dst, e.rows * x.n, True)]
    dstride = x.dstride
    return [(x.dst + r * dstride, x.n, r == e.rows - 1) for r in range(e.rows)]


def dma_source(x) -> list[int] | None:
    """The SRAM addresses a SEND or MCAST reads, in order (None: zero rows, nothing read)."""
    e = dma_extent(x)
    if e.zero:
        return None
    sstride = getattr(x, "sstride", 0)
    return [x.src + r * sstride + k for r in range(e.rows) for k in range(x.n)]

_BINARY = {code: 1 for code, op in VECTOR_OPS.items() if op.binary}
_REDUCE = {code: 1 for code, op in VECTOR_OPS.items() if op.reduce}
_READ_SHIFT = {code: op.read_shift for code, op in VECTOR_OPS.items() if op.read_shift}
_WRITE_SHIFT = {code: op.write_shift for code, op in VECTOR_OPS.items() if op.write_shift}


class VecFields(NamedTuple):
    """A vector-family instruction seen uniformly (for FCVT, b = bfix = 0)."""
    code: object          # the vector-unit op code
    defined: object       # the op exists
    undefined: tuple      # (FaultCode, value) when it does not
    dst: object
    a: object
    b: object
    n: object
    bfix: object


def vector_fields(op: Opcode, x, ops) -> VecFields:
    """The vector-unit op and operands of a VEC, FVEC or FCVT (`x`: its fields)."""
    if op == Opcode.VEC:
        defined = ops.any([x.vop == v for v in VecOp])
        return VecFields(x.vop, defined, (FaultCode.FIELD, x.vop), x.dst, x.a, x.b, x.n, x.bfix)
    if op == Opcode.FVEC:
        defined = ops.any([x.fop == f for f in FVecOp])
        return VecFields(x.fop + FVEC_BASE, defined, (FaultCode.FIELD, x.fop), x.dst, x.a, x.b,
                         x.n, x.bfix)
    key = x.stype | (x.dtype << 2) | (x.sr << 4)
    defined = ops.any([key == k for k in _CONVERSION_KEYS])
    code = ops.lookup(_CONVERSION_KEYS, key, NO_OP)
    return VecFields(code, defined, (FaultCode.TYPE, key), x.dst, x.a, 0, x.n, 0)


class VecShape(NamedTuple):
    binary: object
    reduce: object
    read_shift: object
    write_shift: object
    source: tuple         # [lo, hi) of the a words
    other: tuple          # [lo, hi) of the b words (empty for unary ops)
    dest: tuple           # [lo, hi) of the destination words


def _ceil_shift(n, shift, ops):
    return ops.mux(shift == 0, n, ops.mux(shift == 1, (n + 1) >> 1, (n + 3) >> 2))


def vector_shape(v: VecFields, ops) -> VecShape:
    """The ranges a vector-family instruction reads and writes."""
    binary = ops.lookup(_BINARY, v.code, 0)
    reduce = ops.lookup(_REDUCE, v.code, 0)
    rs = ops.lookup(_READ_SHIFT, v.code, 0)
    ws = ops.lookup(_WRITE_SHIFT, v.code, 0)
    source = (v.a, v.a + _ceil_shift(v.n, rs, ops))
    other = (ops.mux(binary, v.b, 0), ops.mux(binary, v.b + ops.mux(v.bfix, 1, v.n), 0))
    dest = (v.dst, v.dst + ops.mux(reduce, 1, _ceil_shift(v.n, ws, ops)))
    return VecShape(binary, reduce, rs, ws, source, other, dest)


def _meet(p, q):
    """Two half-open ranges share a word (an empty range meets nothing)."""
    return (p[0] < p[1]) & (q[0] < q[1]) & (p[0] < q[1]) & (q[0] < p[1])


def _vector_checks(op, cfg, x, ops):
    words = cfg.sram_words
    v = vector_fields(op, x, ops)
    s = vector_shape(v, ops)
    runs_ahead = ops.not_(s.reduce) & (
        (_meet(s.dest, s.source) & ((s.read_shift != 0) | (v.dst > v.a)))
        | (s.binary & ops.not_(v.bfix) & _meet(s.dest, s.other) & (v.dst > v.b))
        | (s.binary & v.bfix & (v.dst <= v.b) & (v.b < s.dest[1])))
    return [
        (ops.not_(v.defined), *v.undefined),
        (v.n == 0, FaultCode.FIELD, v.n),
        (s.source[1] > words, FaultCode.ADDRESS, v.a),
        (s.binary & (s.other[1] > words), FaultCode.ADDRESS, v.b),
        (s.dest[1] > words, FaultCode.ADDRESS, v.dst),
        (runs_ahead, FaultCode.FIELD, v.dst),
    ]


def _matmul_checks(op, cfg, x, ops):
    words = cfg.sram_words
    return [
        (ops.not_(ops.any([x.type == t for t in MATRIX_TYPES])), FaultCode.TYPE, x.type),
        (x.kw == 0, FaultCode.FIELD, x.kw),
        (x.a + x.kw > words, FaultCode.ADDRESS, x.a),
        (x.b + x.kw > words, FaultCode.ADDRESS, x.b),
    ]


def _mread_checks(op, cfg, x, ops):
    return [
        ((x.nrows == 0) | (x.row0 + x.nrows > cfg.mac_dim), FaultCode.FIELD, x.row0 + x.nrows),
        (x.dst + x.nrows > cfg.sram_words, FaultCode.ADDRESS, x.dst),
    ]


def _dma_checks(cfg, x, ops):
    e = dma_extent(x, ops)
    return [
        (ops.not_(e.zero) & (e.src_end > cfg.sram_words), FaultCode.ADDRESS, x.src),
        (e.dst_end > cfg.sram_words, FaultCode.ADDRESS, x.dst),
        # one packet's length field (only an SRAM of 2**16 words can reach it)
        (e.single & (e.dst_end - x.dst > 0xFFFF), FaultCode.FIELD, x.n),
    ]


def _send_checks(op, cfg, x, ops):
    return [
        ((x.x > cfg.cols) | (x.y >= cfg.rows), FaultCode.NODE, node_fault_value(x.x, x.y)),
        (getattr(x, "span", 0) == 1, FaultCode.FIELD, 1),
        *_dma_checks(cfg, x, ops),
    ]


def _mcast_checks(op, cfg, x, ops):
    span = getattr(x, "span", 0) == 1
    span_first, span_last = getattr(x, "span_first", 0), getattr(x, "span_last", 0)
    return [
        (x.first > x.last, FaultCode.FIELD, x.first),
        (x.last >= ops.mux(x.col, cfg.rows, cfg.cols), FaultCode.NODE, x.last),
        (span & (span_first > span_last), FaultCode.FIELD, span_first),
        (span & (span_last >= ops.mux(x.col, cfg.cols, cfg.rows)), FaultCode.NODE, span_last),
        *_dma_checks(cfg, x, ops),
    ]


def _setr_checks(op, cfg, x, ops):
    return [(x.reg > max(SetrReg), FaultCode.FIELD, x.reg)]


def _loop_checks(op, cfg, x, ops):
    return [(x.body == 0, FaultCode.FIELD, 0)]


def _step_checks(op, cfg, x, ops):
    return [(x.level >= LOOP_DEPTH, FaultCode.FIELD, x.level)]


_CHECKS = {
    Opcode.MATMUL: _matmul_checks, Opcode.MREAD: _mread_checks, Opcode.VEC: _vector_checks,
    Opcode.FVEC: _vector_checks, Opcode.FCVT: _vector_checks, Opcode.SEND: _send_checks,
    Opcode.MCAST: _mcast_checks,
    Opcode.SETR: _setr_checks, Opcode.LOOP: _loop_checks, Opcode.STEP: _step_checks,
}


def checks(op: Opcode, cfg: TileConfig, x, ops=PY) -> list:
    """The validity checks of opcode `op` in priority order: (failed, FaultCode, value) each,
    as values of the `ops` backend. Opcodes without checks give []."""
    rules = _CHECKS.get(op)
    return rules(op, cfg, x, ops) if rules else []


def ranges_of(op: Opcode, x, ops=PY) -> tuple:
    """(read0, read1, write), each (lo, hi), of a unit instruction, in the `ops` backend."""
    if op == Opcode.MATMUL:
        return (x.a, x.a + x.kw), (x.b, x.b + x.kw), (ACC_RANGE_BASE + x.bank,
                                                       ACC_RANGE_BASE + x.bank + 1)
    if op == Opcode.MREAD:
        return ((ACC_RANGE_BASE + x.bank, ACC_RANGE_BASE + x.bank + 1), (0, 0),
                (x.dst, x.dst + x.nrows))
    if op in VECTOR_FAMILY:
        s = vector_shape(vector_fields(op, x, ops), ops)
        return s.source, s.other, s.dest
    if op in SHAPED_OPS:
        e = dma_extent(x, ops)
        return (x.src, ops.mux(e.zero, x.src, e.src_end)), (0, 0), (0, 0)
    return (0, 0), (0, 0), (0, 0)


def validate(cfg: TileConfig, instr: Instruction) -> tuple[FaultCode, int]:
    """(FaultCode.NONE, 0), or the fault this instruction raises and the offending value."""
    if instr.op is None:
        return FaultCode.UNDEFINED, instr.raw & 0xF
    for failed, code, value in checks(instr.op, cfg, instr):
        if failed:
            return code, int(value)
    return FaultCode.NONE, 0


def vector_op(instr: Instruction) -> VectorOp | None:
    """The vector-unit op a VEC / FVEC / FCVT names (None if undefined, or not one)."""
    if instr.op not in VECTOR_FAMILY:
        return None
    v = vector_fields(instr.op, instr, PY)
    return VECTOR_OPS.get(v.code) if v.defined else None


def mcast_rectangle(instr: Instruction, node: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1): the columns x0..x1 and rows y0..y1 an MCAST (its effective word)
    issued on `node` = (x, y) delivers to. Without a span: first..last of the node's row
    (col = 0) or column (col = 1); with one, span_first..span_last along the other dimension."""
    x, y = node
    here = (x, x) if instr.col else (y, y)
    other = (instr.span_first, instr.span_last) if getattr(instr, "span", 0) else here
    run = (instr.first, instr.last)
    return (*other, *run) if instr.col else (*run, *other)


def mcast_receivers(instr: Instruction, node: tuple[int, int]) -> list[tuple[int, int]]:
    """The nodes an MCAST issued on `node` = (x, y) delivers to, in delivery order: column by
    column from west to east, each from north to south (`mcast_rectangle`)."""
    x0, x1, y0, y1 = mcast_rectangle(instr, node)
    return [(c, r) for c in range(x0, x1 + 1) for r in range(y0, y1 + 1)]


def stepped(word: int, offsets) -> int:
    """The instruction `word` with STEP offsets (o0, o1, o2) added to its address fields
    (`ADDRESS_SLOTS`), each modulo 2**16; other words are returned unchanged."""
    if not any(offsets):
        return word
    code = word & 0xF
    slots = ADDRESS_SLOTS.get(code) if code in Opcode._value2member_map_ else None
    if not slots:
        return word
    fmt = FORMATS[Opcode(code)]
    for name, offset in zip(slots, offsets):
        lsb = fmt.offsets[name]
        value = ((word >> lsb) + offset) & _ADDR_MASK
        word = word & ~(_ADDR_MASK << lsb) | value << lsb
    return word


_SHAPED_BIT = {op: FORMATS[op].offsets["shaped"] for op in SHAPED_OPS}


class LoopControl:
    """The sequencer's loop stack, STEP offsets and DMA shape register, and the rules that
    use them (module docstring): `effective(word)` is the instruction a word at pc stands for now (`stepped` by
    the pending offsets), `fault(instr, pc)` the loop fault it raises ((FaultCode.NONE, 0) if
    none; `validate`'s faults come first), and `issue(instr, pc)` applies an issued
    instruction (not HALT) and returns the next pc. `reset()` (START) closes every loop.

    A loop level is [start, end, count, iteration]: the body is imem[start..end], `iteration`
    counts from 0. When the instruction at the innermost loop's `end` issues, the next pc is
    `start` with iteration + 1, or end + 1 with the loop closed after its last iteration."""

    __slots__ = ("cfg", "loops", "offsets", "shape")

    def __init__(self, cfg: TileConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.loops: list[list[int]] = []
        self.offsets = (0, 0, 0)
        self.shape = 0          # the DMA shape register (`SHAPE_FORMAT`), 0 after START

    @property
    def depth(self) -> int:
        return len(self.loops)

    def effective(self, word: int) -> int:
        """The word stepped by the pending offsets; a shaped SEND or MCAST also carries the
        shape register above bit INSTR_BITS (`EFFECTIVE_BITS` wide)."""
        word = stepped(word, self.offsets)
        if self.shape and word & 0xF in SHAPED_OPS and word >> _SHAPED_BIT[word & 0xF] & 1:
            word |= self.shape << INSTR_BITS
        return word

    def iteration(self, level: int) -> int:
        return self.loops[-1 - level][3]

    def fault(self, instr: Instruction, pc: int) -> tuple[FaultCode, int]:
        if instr.op == Opcode.LOOP:
            end = pc + instr.body
            if len(self.loops) >= LOOP_DEPTH:
                return FaultCode.LOOP, LOOP_DEPTH
            if end >= self.cfg.imem_words or (self.loops and end >= self.loops[-1][1]):
                return FaultCode.LOOP, instr.body
        elif instr.op == Opcode.STEP and instr.level >= len(self.loops):
            return FaultCode.LOOP, instr.level
        return FaultCode.NONE, 0

    def issue(self, instr: Instruction, pc: int) -> int:
        op = instr.op
        if op == Opcode.STEP:
            i = self.iteration(instr.level)
            self.offsets = tuple((o + s * i) & _ADDR_MASK for o, s in
                                 zip(self.offsets, (instr.s0, instr.s1, instr.s2)))
        else:
            self.offsets = (0, 0, 0)
        if op == Opcode.SHAPE:
            self.shape = instr.raw >> 4 & ((1 << SHAPE_BITS) - 1)
        if op == Opcode.LOOP:
            if instr.count == 0:
                return pc + 1 + instr.body
            self.loops.append([pc + 1, pc + instr.body, instr.count, 0])
            return pc + 1
        loops = self.loops
        if loops and pc == loops[-1][1]:
            top = loops[-1]
            if top[3] + 1 < top[2]:
                top[3] += 1
                return top[0]
            loops.pop()
        return pc + 1


@dataclass(frozen=True)
class Ranges:
    """The SRAM word ranges [lo, hi) an instruction reads and writes while its unit runs it.
    Empty ranges have lo == hi."""
    read0: tuple[int, int] = (0, 0)
    read1: tuple[int, int] = (0, 0)
    write: tuple[int, int] = (0, 0)


def hazard_ranges(instr: Instruction) -> Ranges:
    """The ranges the sequencer tracks for a valid unit instruction (see `overlaps`)."""
    if instr.op is None:
        return Ranges()
    read0, read1, write = ranges_of(instr.op, instr)
    return Ranges(tuple(read0), tuple(read1), tuple(write))


def overlaps(new: Ranges, running: Ranges) -> bool:
    """True when `new` may not issue while `running` is in progress on another unit:
    new writes what running reads or writes, or new reads what running writes."""
    return bool(_meet(new.write, running.read0) or _meet(new.write, running.read1)
                or _meet(new.write, running.write) or _meet(new.read0, running.write)
                or _meet(new.read1, running.write))
