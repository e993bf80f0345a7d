"""Element types, defined once: the table every layer takes widths, packing and reference
arithmetic from.

* `ElemType` is the 2-bit code of an element type in instructions (MATMUL's `type`, FCVT's
  `stype` / `dtype`): INT8, INT32, BF16, FP32.
* `ELEMENTS[t]` (`Element`) says how values of type t sit in an SRAM word: `bits` each, element
  k at bits [k * bits, (k + 1) * bits) (little-endian), so a word of N lanes holds
  `groups` = 32 / bits groups of N elements (`per_word(cfg)` elements). Integers are
  two's complement; floats are IEEE 754 bits (`d1tile.numerics` is their arithmetic).
* `MATRIX_TYPES[t]` (`MatrixType`) says what the matrix unit does with operands of type t:
  int8 x int8 -> int32 (wrapping) and bf16 x bf16 -> fp32 (`d1tile.numerics.bf16_mac`). An
  SRAM word holds `vectors_per_word(cfg)` operand vectors of N elements (4 for int8, 2 for
  bf16): one per beat, one beat per cycle, N x N MACs per beat for either type. The N x N
  accumulators are 32-bit registers; the type of a MATMUL says how their bits are read and
  written (an int8 MATMUL without `clear` after a bf16 one adds to the FP32 bits as if they
  were an int32). MREAD writes them out as they are: a row is N 32-bit lanes, one word.

The RTL (`d1tile.hw.matrix`, `d1tile.hw.mxu`), the cycle model (`d1tile.sim.matrix`,
`d1tile.sim.mxu`), the interpreter and the compiler's packing and cost functions all take these
entries; nothing else in the project says "4 operand vectors per word".

This module imports no Amaranth.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import numerics
from .params import TileConfig


__all__ = [
    "ElemType", "TYPE_BITS", "Element", "ELEMENTS", "element",
    "MatrixType", "MATRIX_TYPES", "matrix_type",
]


class ElemType(enum.IntEnum):
    """An element type's code in instruction fields (2 bits)."""
    INT8 = 0
    INT32 = 1
    BF16 = 2
    FP32 = 3


TYPE_BITS = 2


@dataclass(frozen=True)
class Element:
    """How values of one type sit in SRAM words (see the module docstring).

    `values` converts raw element bits (unsigned) to what the references compute with: signed
    integers for INT8 / INT32, the bits themselves (uint16 / uint32) for BF16 / FP32."""
    type: ElemType
    name: str
    bits: int
    is_float: bool

    @property
    def groups(self) -> int:
        """Groups of N elements (one per lane's width) in a word of N 32-bit lanes."""
        return 32 // self.bits

    def per_word(self, cfg: TileConfig) -> int:
        """Elements in one SRAM word."""
        return self.groups * cfg.lanes

    def unpack(self, cfg: TileConfig, word: int) -> np.ndarray:
        """The elements of a word, element 0 first: int64 for integer types, unsigned bits
        (uint16 / uint32) for floats."""
        raw = int(word).to_bytes(cfg.word_bytes, "little")
        if self.is_float:
            return np.frombuffer(raw, dtype=f"<u{self.bits // 8}").copy()
        return np.frombuffer(raw, dtype=f"<i{self.bits // 8}").astype(np.int64)

    def pack(self, cfg: TileConfig, values) -> int:
        """A word from `per_word(cfg)` elements (integers are wrapped to `bits`; fewer values
        leave the high elements zero)."""
        arr = np.asarray(values, dtype=np.int64).ravel()
        if arr.size > self.per_word(cfg):
            raise ValueError(f"{arr.size} {self.name} values do not fit a {cfg.word_bits}-bit "
                             f"word ({self.per_word(cfg)} at most)")
        raw = (arr & ((1 << self.bits) - 1)).astype(f"<u{self.bits // 8}").tobytes()
        return int.from_bytes(raw, "little")

    def group(self, cfg: TileConfig, word: int, g: int) -> np.ndarray:
        """Group g (elements gN .. gN + N - 1) of a word."""
        n = cfg.lanes
        return self.unpack(cfg, word)[g * n:(g + 1) * n]


ELEMENTS: dict[ElemType, Element] = {
    ElemType.INT8: Element(ElemType.INT8, "int8", 8, False),
    ElemType.INT32: Element(ElemType.INT32, "int32", 32, False),
    ElemType.BF16: Element(ElemType.BF16, "bf16", 16, True),
    ElemType.FP32: Element(ElemType.FP32, "fp32", 32, True),
}


def element(code) -> Element:
    """The entry of an `ElemType` (or its integer code); ValueError naming an unknown one."""
    try:
        return ELEMENTS[ElemType(code)]
    except (ValueError, TypeError):
        raise ValueError(f"element type {code!r} is not one of "
                         f"{', '.join(f'{t.name} ({t.value})' for t in ElemType)}") from None


# -- the matrix unit's types ---------------------------------------------------------------------

def _wrap32(values: np.ndarray) -> np.ndarray:
    return ((np.asarray(values, dtype=np.int64) + (1 << 31)) % (1 << 32) - (1 << 31))


def _int8_beat(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = acc.view(np.int32).astype(np.int64) + np.outer(a.astype(np.int64), b.astype(np.int64))
    return _wrap32(total).astype(np.int32).view(np.uint32)


def _int8_block(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Integer addition is associative (the int32 wrap included): K beats are one exact sum,
    # a^T @ b in int64 (|sum| < 2**14 * K, exact), wrapped once.
    total = acc.view(np.int32).astype(np.int64) + a.astype(np.int64).T @ b.astype(np.int64)
    return _wrap32(total).astype(np.int32).view(np.uint32)


def _bf16_beat(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return numerics.bf16_mac(acc, a[:, None], b[None, :])


def _bf16_block(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Floating-point addition is not associative: beat after beat, in order (`bf16_mac_block`
    # is K calls of `bf16_mac`, faster).
    return numerics.bf16_mac_block(acc, a, b)


@dataclass(frozen=True)
class MatrixType:
    """What the matrix unit does with one operand type (module docstring).

    operand, acc : element types of the operands and of the accumulators.
    pipeline_depth : cycles from an accepted beat to the accumulators holding it (the product
        register stage, then the accumulate stage); the same for every type, so the engine's
        timing does not depend on the type.
    clear_bits : the accumulator bits a beat with `clear` adds to: 0 (int32 zero) or -0.0
        (FP32 0x80000000, the additive identity, so that the first beat gives its product
        exactly, a -0 product included).
    beat : reference of one beat, (acc bits (N, N) uint32, a (N,), b (N,)) -> new acc bits.
    block : K beats at once, (acc bits, a (K, N), b (K, N)) -> acc bits: the same as K calls of
        `beat` in order (one exact sum for integers; a loop for floats).
    """
    operand: ElemType
    acc: ElemType
    pipeline_depth: int
    clear_bits: int
    beat: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    block: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

    @property
    def name(self) -> str:
        return ELEMENTS[self.operand].name

    @property
    def operand_bits(self) -> int:
        return ELEMENTS[self.operand].bits

    def vectors_per_word(self, cfg: TileConfig) -> int:
        """Operand vectors (beats) per SRAM word: 4 for int8, 2 for bf16."""
        return ELEMENTS[self.operand].groups

    def operand_vectors(self, cfg: TileConfig, word: int) -> np.ndarray:
        """The operand vectors of a word, shape (vectors_per_word, N): vector j is elements
        jN .. jN + N - 1 (int8 values, or BF16 bits)."""
        return ELEMENTS[self.operand].unpack(cfg, word).reshape(-1, cfg.mac_dim)

    def pack_vectors(self, cfg: TileConfig, vectors) -> int:
        """The word holding `vectors` (at most vectors_per_word of N elements), vector 0 in the
        low bits."""
        return ELEMENTS[self.operand].pack(cfg, vectors)

    def check_operand(self, name: str, values, n: int) -> np.ndarray:
        """`values` as an int64 array of shape (n,), or ValueError naming what is wrong (shape,
        non-integer elements, the first element outside the type's range: -128..127 for int8,
        the 16-bit patterns 0..65535 for bf16)."""
        arr = np.asarray(values)
        if arr.shape != (n,):
            raise ValueError(f"operand {name} has shape {arr.shape}, expected ({n},)")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"operand {name} has dtype {arr.dtype}, expected integers for "
                             f"{self.name}")
        lo, hi = self.operand_range
        bad = np.flatnonzero((arr < lo) | (arr > hi))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"operand {name}[{i}]={int(arr[i])} is outside the {self.name} "
                             f"range {lo}..{hi}")
        return arr.astype(np.int64)

    @property
    def operand_range(self) -> tuple[int, int]:
        """Inclusive range of an operand element: signed values for integers, bit patterns for
        floats."""
        bits = self.operand_bits
        if ELEMENTS[self.operand].is_float:
            return 0, (1 << bits) - 1
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def values(self, acc_bits: np.ndarray) -> np.ndarray:
        """Accumulator bits as this type's results: int32 values, or FP32 bits (uint32)."""
        acc_bits = np.asarray(acc_bits, dtype=np.uint32)
        return acc_bits if ELEMENTS[self.acc].is_float else acc_bits.view(np.int32)

    def matmul(self, a, b) -> np.ndarray:
        """A @ B as the unit computes it from `clear`: `a` (M, K) and `b` (K, N) operand
        elements (int8 values, BF16 bits); int32 values (wrapping) or FP32 bits, the K products
        added in order. The one reference of a product every layer uses."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"{self.name} matmul: shapes {a.shape} @ {b.shape} do not match")
        base = np.full((a.shape[0], b.shape[1]), self.clear_bits, dtype=np.uint32)
        return self.values(self.block(base, a.T, b))

    def exact(self, a, b) -> np.ndarray:
        """A @ B without the accumulator's wrap (integer types): int64, for references that
        must prove no sum overflows (`d1tile.sw.quant`)."""
        if ELEMENTS[self.acc].is_float:
            raise ValueError(f"{self.name}: a floating-point product has no exact form here")
        return np.asarray(a, dtype=np.int64) @ np.asarray(b, dtype=np.int64)


MATRIX_TYPES: dict[ElemType, MatrixType] = {
    ElemType.INT8: MatrixType(ElemType.INT8, ElemType.INT32, pipeline_depth=2, clear_bits=0,
                              beat=_int8_beat, block=_int8_block),
    ElemType.BF16: MatrixType(ElemType.BF16, ElemType.FP32, pipeline_depth=2,
                              clear_bits=numerics.F32_NEG_ZERO, beat=_bf16_beat,
                              block=_bf16_block),
}
"""Operand type -> what the matrix unit does with it. Other codes in MATMUL's `type` field
(INT32, FP32) fault TYPE."""


def matrix_type(code) -> MatrixType:
    """The matrix-unit entry of an operand type; ValueError naming a type the unit lacks."""
    try:
        key = ElemType(code)
    except (ValueError, TypeError):
        raise ValueError(f"matrix type {code!r} is not an element type code") from None
    if key not in MATRIX_TYPES:
        raise ValueError(f"the matrix unit has no {key.name} operands; it multiplies "
                         f"{', '.join(t.name for t in MATRIX_TYPES)}")
    return MATRIX_TYPES[key]
