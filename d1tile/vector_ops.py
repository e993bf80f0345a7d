"""The vector unit's operations, defined once: a table (`VECTOR_OPS`) of what each op reads,
writes and computes, and the unit's command and result formats.

The unit works on SRAM words of N 32-bit lanes. An op reads its `a` operand as elements of type
`src` and writes elements of type `dst` (`d1tile.dtypes.ELEMENTS`): element i of an instruction
takes group i % groups(src) of source word a + i // groups(src) (N elements) and its result is
group i % groups(dst) of destination word dst + i // groups(dst), written under that group's
byte mask. So the same rule packs four int32 accumulator rows into one int8 operand word
(REQUANT), two FP32 rows into one BF16 operand word, and unpacks them again; `read_shift` and
`write_shift` are the log2 of those ratios. Binary ops read `b` as FP32 / INT32 lanes, one word
per element (or one fixed word, `bfix`). A *reduction* folds its n elements lane by lane, in
order from element 0, starting from `identity`, and writes one word after the last element.

| code | op | a -> result | instruction |
| --- | --- | --- | --- |
| 0 | ADD, MUL, MAX | int32 lanes, wrapping; MUL keeps the low 32 bits | VEC vop 0..2 |
| 3 | RELU | max(a, 0) | VEC vop 3 |
| 4 | REQUANT | int32 -> int8: clamp((a * scale + r) >> shift), 4 per word | VEC vop 4 |
| 8..13 | FADD, FSUB, FMUL, FMAX, FMASK, FAXPY | FP32: a + b, a - b, a * b, max, (b > 0 ? a : +0), a * q + b (not fused) | FVEC fop 0..5 |
| 14, 15 | FRELU, FSCALE | FP32: max(a, +0), a * q | FVEC fop 6, 7 |
| 16, 17 | FSUM, FMAXR | FP32 reductions over n words: sum from -0, max from -Inf | FVEC fop 8, 9 |
| 24, 25 | CVT_F32_BF16, CVT_F32_BF16_SR | FP32 -> BF16, RNE / stochastic, 2 per word | FCVT FP32 -> BF16 |
| 26 | CVT_BF16_F32 | BF16 -> FP32, exact | FCVT BF16 -> FP32 |
| 27, 29 | CVT_I32_F32, CVT_I8_F32 | int -> FP32 (RNE), then * q | FCVT INT32/INT8 -> FP32 |
| 28, 30 | CVT_F32_I32, CVT_F32_I8 | FP32 * q, then RNE to an integer, saturating, NaN -> 0 | FCVT FP32 -> INT32/INT8 |

Other codes (5..7, 18..23, 31) write nothing (mask 0); the sequencer never issues them. The
floating-point arithmetic is `d1tile.numerics` (the numeric contract). `q` is the FP32 scalar
SETR sets; `scale`, `shift`, `relu` are SETQ's.

The references here work on whole lanes (NumPy arrays); `d1tile.sim.vector.vector_op` applies
them to words (groups, masks, the reduction and generator state), the RTL
(`d1tile.hw.vector`) implements them gate by gate. This module imports no Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import numpy as np

from . import numerics as nx
from .dtypes import ELEMENTS, ElemType
from .formats import BitFormat, Field
from .params import TileConfig


__all__ = [
    "VectorOp", "VECTOR_OPS", "NO_OP", "vector_op_of", "OP_BITS", "SCALE_BITS", "SHIFT_BITS", "SLOT_BITS",
    "FSCALE_BITS", "SEED_BITS", "VECTOR_LATENCY", "vector_cmd_format", "vector_result_format",
    "Params", "requantize", "requantize_lane", "INT8_MIN", "INT8_MAX", "INT32_MIN", "INT32_MAX",
]

OP_BITS = 5       # the unit's op code
SCALE_BITS = 16   # REQUANT multiplier, unsigned
SHIFT_BITS = 6    # REQUANT right shift, unsigned, 0..63
SLOT_BITS = 2     # element index mod 4: which group of the source and destination words
FSCALE_BITS = 32  # q, the FP32 scalar of FAXPY, FSCALE and the integer conversions
SEED_BITS = 32    # the stochastic-rounding generator's seed

VECTOR_LATENCY = 1
"""Cycles from a command's acceptance to its result being valid (the result is registered)."""

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass(frozen=True)
class Params:
    """The per-instruction parameters an op may read: SETQ's scale, shift, relu; SETR's q."""
    scale: int = 0
    shift: int = 0
    relu: int = 0
    q: int = 0


def _wrap32(values) -> np.ndarray:
    return (np.asarray(values, dtype=np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)


def requantize(acc, scale, shift, relu=False) -> np.ndarray:
    """REQUANT of whole arrays: clamp((acc * scale + r) >> shift, lo, 127) as int8, with
    r = 1 << (shift - 1) (0 for shift 0), `>>` arithmetic (ties round towards +infinity) and
    lo = 0 with relu, else -128.

    `acc` is an integer array of int32 values (any integer dtype); `scale` (0..65535), `shift`
    (0..63) and `relu` (bool) are scalars or arrays broadcastable against `acc`. Non-integer
    input raises `TypeError`; values outside their ranges raise `ValueError` naming the
    argument.
    """
    acc = np.asarray(acc)
    scale = np.asarray(scale)
    shift = np.asarray(shift)
    relu = np.asarray(relu)
    for name, arr, lo, hi in (("acc", acc, INT32_MIN, INT32_MAX),
                              ("scale", scale, 0, (1 << SCALE_BITS) - 1),
                              ("shift", shift, 0, (1 << SHIFT_BITS) - 1)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise TypeError(f"requantize: {name} must be integers, not dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
            raise ValueError(f"requantize: {name} has values outside {lo}..{hi} "
                             f"(min {int(arr.min())}, max {int(arr.max())})")
    acc = acc.astype(np.int64)
    scale = scale.astype(np.int64)
    shift = shift.astype(np.int64)
    # |acc * scale| < 2**47 and the rounding term is at most 2**62, so int64 never overflows.
    rounding = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    q = np.right_shift(acc * scale + rounding, shift)
    lo = np.where(relu.astype(bool), 0, INT8_MIN)
    return np.clip(q, lo, INT8_MAX).astype(np.int8)


def requantize_lane(a: int, scale: int, shift: int, relu: int) -> int:
    """REQUANT of one int32 lane, in exact Python integers (`requantize`'s definition)."""
    rounding = 1 << (shift - 1) if shift > 0 else 0
    q = (a * scale + rounding) >> shift
    return max(0 if relu else INT8_MIN, min(INT8_MAX, q))


@dataclass(frozen=True)
class VectorOp:
    """One vector-unit operation (module docstring).

    lanes : the reference, on N lanes at a time: `lanes(a, b, params)` for ordinary ops
        (`b` is None for unary ones), `lanes(acc, a)` for reductions (the fold step),
        `lanes(a, rand)` for stochastic ones (`rand`: the N 16-bit random values of this
        element). Integer types are given and return signed values, float types raw bits.
    """
    code: int
    name: str
    src: ElemType
    dst: ElemType
    lanes: Callable = field(repr=False)
    binary: bool = False
    reduce: bool = False
    identity: int = 0
    stochastic: bool = False
    reads: tuple = ()          # the parameters it reads: "scale", "shift", "relu", "q"

    @property
    def read_shift(self) -> int:
        """log2 of the elements per source word: element i reads word a + (i >> read_shift)."""
        return ELEMENTS[self.src].groups.bit_length() - 1

    @property
    def write_shift(self) -> int:
        """log2 of the elements per destination word (0 for a reduction's single word)."""
        return 0 if self.reduce else ELEMENTS[self.dst].groups.bit_length() - 1

    def source_words(self, n: int) -> int:
        """Words an instruction of n elements reads from a."""
        return (n + (1 << self.read_shift) - 1) >> self.read_shift

    def dest_words(self, n: int) -> int:
        """Words an instruction of n elements writes (1 for a reduction)."""
        return 1 if self.reduce else (n + (1 << self.write_shift) - 1) >> self.write_shift

    def writes(self, n: int) -> int:
        """Results (masked writes) an instruction of n elements makes: n, or 1 for a reduction."""
        return 1 if self.reduce else n


def _i(fn):
    """An int32 op: the lanes wrap to int32."""
    return lambda a, b, p: _wrap32(fn(np.asarray(a, np.int64), b if b is None
                                      else np.asarray(b, np.int64)))


_OPS = [
    VectorOp(0, "ADD", ElemType.INT32, ElemType.INT32, _i(lambda a, b: a + b), binary=True),
    VectorOp(1, "MUL", ElemType.INT32, ElemType.INT32, _i(lambda a, b: a * b), binary=True),
    VectorOp(2, "MAX", ElemType.INT32, ElemType.INT32, _i(np.maximum), binary=True),
    VectorOp(3, "RELU", ElemType.INT32, ElemType.INT32, _i(lambda a, b: np.maximum(a, 0))),
    VectorOp(4, "REQUANT", ElemType.INT32, ElemType.INT8,
             lambda a, b, p: requantize(np.asarray(a, np.int64), p.scale, p.shift, p.relu),
             reads=("scale", "shift", "relu")),
    VectorOp(8, "FADD", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_add(a, b),
             binary=True),
    VectorOp(9, "FSUB", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_sub(a, b),
             binary=True),
    VectorOp(10, "FMUL", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_mul(a, b),
             binary=True),
    VectorOp(11, "FMAX", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_max(a, b),
             binary=True),
    VectorOp(12, "FMASK", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_mask(a, b),
             binary=True),
    VectorOp(13, "FAXPY", ElemType.FP32, ElemType.FP32,
             lambda a, b, p: nx.fp32_axpy(a, p.q, b), binary=True, reads=("q",)),
    VectorOp(14, "FRELU", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_relu(a)),
    VectorOp(15, "FSCALE", ElemType.FP32, ElemType.FP32, lambda a, b, p: nx.fp32_mul(a, p.q),
             reads=("q",)),
    VectorOp(16, "FSUM", ElemType.FP32, ElemType.FP32, lambda acc, a: nx.fp32_add(acc, a),
             reduce=True, identity=nx.F32_NEG_ZERO),
    VectorOp(17, "FMAXR", ElemType.FP32, ElemType.FP32, lambda acc, a: nx.fp32_max(acc, a),
             reduce=True, identity=nx.F32_NEG_INF),
    VectorOp(24, "CVT_F32_BF16", ElemType.FP32, ElemType.BF16,
             lambda a, b, p: nx.bf16_from_f32_rne(a)),
    VectorOp(25, "CVT_F32_BF16_SR", ElemType.FP32, ElemType.BF16,
             lambda a, rand: nx.bf16_from_f32_sr(a, rand), stochastic=True),
    VectorOp(26, "CVT_BF16_F32", ElemType.BF16, ElemType.FP32,
             lambda a, b, p: nx.f32_from_bf16(a)),
    VectorOp(27, "CVT_I32_F32", ElemType.INT32, ElemType.FP32,
             lambda a, b, p: nx.fp32_mul(nx.f32_from_int(a), p.q), reads=("q",)),
    VectorOp(28, "CVT_F32_I32", ElemType.FP32, ElemType.INT32,
             lambda a, b, p: nx.int_from_f32(nx.fp32_mul(a, p.q), INT32_MIN, INT32_MAX),
             reads=("q",)),
    VectorOp(29, "CVT_I8_F32", ElemType.INT8, ElemType.FP32,
             lambda a, b, p: nx.fp32_mul(nx.f32_from_int(a), p.q), reads=("q",)),
    VectorOp(30, "CVT_F32_I8", ElemType.FP32, ElemType.INT8,
             lambda a, b, p: nx.int_from_f32(nx.fp32_mul(a, p.q), INT8_MIN, INT8_MAX),
             reads=("q",)),
]

VECTOR_OPS: dict[int, VectorOp] = {op.code: op for op in _OPS}
"""Unit op code -> its definition. Codes absent here are undefined (the unit writes nothing)."""

assert all(0 <= code < 1 << OP_BITS for code in VECTOR_OPS)

NO_OP = max(set(range(1 << OP_BITS)) - set(VECTOR_OPS))
"""An op code that names no op (31): what an undefined FCVT conversion, or an instruction outside
the vector family, decodes to."""


def vector_op_of(name: str) -> VectorOp:
    """The op called `name` (case-insensitive); ValueError listing the known names."""
    for op in _OPS:
        if op.name == name.upper():
            return op
    raise ValueError(f"unknown vector op {name!r}; known: {', '.join(o.name for o in _OPS)}")


@cache
def vector_cmd_format(cfg: TileConfig) -> BitFormat:
    """One vector-unit command: the op, two operand words, the parameters, the element's slot
    (index mod 4: the source and destination groups) and whether it is the first / last
    element of its instruction (a reduction starts from `identity` at `first` and emits its
    result at `last`)."""
    return BitFormat("vector_cmd", [
        Field("op", OP_BITS),
        Field("a", cfg.word_bits),
        Field("b", cfg.word_bits),
        Field("scale", SCALE_BITS),
        Field("shift", SHIFT_BITS),
        Field("slot", SLOT_BITS),
        Field("relu", 1),
        Field("q", FSCALE_BITS),
        Field("first", 1),
        Field("last", 1),
    ])


@cache
def vector_result_format(cfg: TileConfig) -> BitFormat:
    """One vector-unit result: a word to write and its byte enables (bit j enables byte j)."""
    return BitFormat("vector_result", [
        Field("data", cfg.word_bits),
        Field("mask", cfg.word_bytes),
    ])
