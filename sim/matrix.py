"""Functional reference of the matrix unit, its data-type table and its timing description.

The matrix unit is an N x N array of multiply-accumulate cells (N = `cfg.mac_dim`). One operand
beat carries a column vector `a` (N elements) and a row vector `b` (N elements) and adds their
outer product to the accumulators:

    acc[i][j] = (0 if clear else acc[i][j]) + a[i] * b[j]

so C = A @ B, with A of shape (N, K) and B of shape (K, N), takes the K beats
`a = A[:, k], b = B[k, :]` (see `outer_product_beats`), `clear` set on the first one.

What depends on the data type (operand and accumulator widths, pipeline depth, the arithmetic)
lives in one table, `DTYPES`, keyed by `d1tile.formats.MatrixDType`. Adding BF16 x BF16 -> FP32
means adding an entry here (with its reference multiply and accumulate), and a cell in
`d1tile.hw.matrix.MAC_CELLS`; the array, the readout and the timing below do not change.

Timing (the contract of `d1tile.hw.matrix.MatrixUnit`; cycle t is the cycle in which a stream
handshake happens, i.e. valid and ready both high):

* an operand beat accepted in cycle t is in the accumulators from cycle t + `acc_latency(dtype)`
  (`ACC_LATENCY` = 2 for INT8); the unit accepts a beat every cycle, it never stalls;
* `busy` is high in cycles t+1 .. t + acc_latency - 1 of every accepted beat t (`busy_at`);
* a readout request is accepted only in a cycle where `busy` is low and the output register is
  free or being drained, and its row is on `rd_data` `READOUT_LATENCY` (= 1) cycle later;
* an operand beat and a readout request accepted in the same cycle: the readout sees the
  accumulators before that beat.

This module imports no Amaranth: the cycle-level model and the compiler use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..formats import MatrixDType
from ..params import TileConfig


__all__ = [
    "DTypeSpec", "DTYPES", "dtype_spec",
    "MatrixUnitRef", "outer_product_beats", "matmul_reference", "validate_operand",
    "ACC_LATENCY", "READOUT_LATENCY", "acc_latency", "busy_at", "earliest_readout_cycle",
    "first_row_cycle", "tile_count", "tile_period", "tiled_matmul_cycles", "ideal_cycles",
]


# -- data types --------------------------------------------------------------------------------

def _wrap(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap of integers to `bits` bits (what a `bits`-wide adder does)."""
    half = 1 << (bits - 1)
    return (np.asarray(values, dtype=np.int64) + half) % (1 << bits) - half


def _int8_outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # int8 * int8 fits int16 exactly; int64 keeps the sum exact until the wrap.
    return np.outer(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


def _int32_accumulate(acc: np.ndarray, products: np.ndarray) -> np.ndarray:
    return _wrap(np.asarray(acc, dtype=np.int64) + products, 32).astype(np.int32)


def _int8_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # sum_k outer(a[k], b[k]) = a^T @ b, exact in int64 (|sum| < 2**14 * K).
    return np.asarray(a, dtype=np.int64).T @ np.asarray(b, dtype=np.int64)


@dataclass(frozen=True)
class DTypeSpec:
    """What one matrix data type means, for the reference, the RTL and the compiler.

    operand_bits, operand_signed : one operand element; the RTL element shape is
        `signed(operand_bits)` when `operand_signed`, else `unsigned(operand_bits)` (raw bits,
        as a floating-point type would use).
    acc_bits, acc_signed : one accumulator / readout element, likewise.
    pipeline_depth : cycles from an accepted operand beat to the accumulators holding it
        (product register stages + 1 accumulate stage). At least 1.
    operand_range : inclusive (min, max) of the values an operand may take.
    numpy_operand, numpy_acc : the NumPy dtypes of operands and accumulators.
    outer : reference product, (a: N, b: N) -> (N, N) products, exact.
    accumulate : reference accumulate, (acc: (N, N), products) -> new acc (with the rounding or
        wrapping of the accumulator type).
    block : the summed products of K beats, (a: (K, N), b: (K, N)) -> (N, N), exact, for a type
        whose accumulation is associative (integers that wrap), so that K beats may be applied
        as one `accumulate`; None for a type that rounds at every beat (floating point).
    """
    name: str
    operand_bits: int
    operand_signed: bool
    acc_bits: int
    acc_signed: bool
    pipeline_depth: int
    operand_range: tuple[int, int]
    numpy_operand: str
    numpy_acc: str
    outer: Callable[[np.ndarray, np.ndarray], np.ndarray]
    accumulate: Callable[[np.ndarray, np.ndarray], np.ndarray]
    block: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def product_stages(self) -> int:
        """Register stages between the operands and the accumulator input."""
        return self.pipeline_depth - 1


DTYPES: dict[MatrixDType, DTypeSpec] = {
    MatrixDType.INT8: DTypeSpec(
        name="int8", operand_bits=8, operand_signed=True, acc_bits=32, acc_signed=True,
        # Stage 1 registers the N*N products, stage 2 accumulates: an 8x8 multiply and a 32-bit
        # add do not share a cycle, so neither sets the clock alone.
        pipeline_depth=2, operand_range=(-128, 127), numpy_operand="int8", numpy_acc="int32",
        outer=_int8_outer, accumulate=_int32_accumulate, block=_int8_block),
}


def dtype_spec(dtype) -> DTypeSpec:
    """The table entry of `dtype` (a `MatrixDType` or its integer value).

    Raises ValueError naming the value when it is not a known, implemented data type.
    """
    try:
        key = MatrixDType(dtype)
    except (ValueError, TypeError):
        raise ValueError(f"dtype {dtype!r} is not a MatrixDType; known: "
                         f"{', '.join(d.name for d in MatrixDType)}") from None
    if key not in DTYPES:
        raise ValueError(f"dtype {key.name} has no entry in the matrix data-type table; "
                         f"implemented: {', '.join(d.name for d in DTYPES)}")
    return DTYPES[key]


# -- timing ------------------------------------------------------------------------------------

READOUT_LATENCY = 1
"""Cycles from an accepted readout request to its row being valid on `rd_data`."""


def acc_latency(dtype=MatrixDType.INT8) -> int:
    """Cycles from an accepted operand beat to the accumulators holding it."""
    return dtype_spec(dtype).pipeline_depth


ACC_LATENCY = acc_latency(MatrixDType.INT8)
"""`acc_latency` of INT8, the only type implemented: 2."""


def busy_at(cycle: int, beat_cycles: Iterable[int], dtype=MatrixDType.INT8) -> bool:
    """Whether `busy` is high in `cycle`, given the cycles in which operand beats were accepted:
    some beat t has t < cycle < t + acc_latency."""
    depth = acc_latency(dtype)
    return any(t < cycle < t + depth for t in beat_cycles)


def earliest_readout_cycle(last_beat_cycle: int, dtype=MatrixDType.INT8) -> int:
    """The first cycle a readout request can be accepted after the beat of `last_beat_cycle`
    (when no later beat is sent): the cycle the beat reaches the accumulators."""
    return last_beat_cycle + acc_latency(dtype)


def first_row_cycle(last_beat_cycle: int, dtype=MatrixDType.INT8) -> int:
    """The first cycle `rd_data` can be valid with a row that includes the last beat."""
    return earliest_readout_cycle(last_beat_cycle, dtype) + READOUT_LATENCY


# -- a tiled matrix product on one unit ----------------------------------------------------------

def tile_count(cfg: TileConfig, m: int, n: int) -> int:
    """Output tiles of an (m x k) @ (k x n) product on the N x N unit (m and n padded up to
    multiples of N)."""
    return math.ceil(m / cfg.mac_dim) * math.ceil(n / cfg.mac_dim)


def tile_period(cfg: TileConfig, k: int, dtype=MatrixDType.INT8) -> int:
    """Cycles between the first operand beats of two consecutive tiles under the fastest
    schedule the unit allows: k beats back to back, the N readout requests from the cycle the
    last beat reaches the accumulators, and the next tile's first beat in the same cycle as the
    last request (a beat sent earlier would hold `busy` high and block that request):
    k + acc_latency + N - 2."""
    return k + acc_latency(dtype) + cfg.mac_dim - 2


def tiled_matmul_cycles(cfg: TileConfig, m: int, k: int, n: int, dtype=MatrixDType.INT8) -> int:
    """Cycles, first operand beat to last row read (both counted), of the schedule of
    `tile_period` with no back-pressure on `rd_data`: (tiles - 1) * period + k + acc_latency + N.
    """
    for name, value in (("m", m), ("k", k), ("n", n)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"dimension {name}={value!r} must be a positive integer")
    tiles = tile_count(cfg, m, n)
    return (tiles - 1) * tile_period(cfg, k, dtype) + k + acc_latency(dtype) + cfg.mac_dim


def ideal_cycles(cfg: TileConfig, m: int, k: int, n: int) -> float:
    """Cycles at one full outer product per cycle and no padding: m * k * n / N^2."""
    return m * k * n / cfg.macs_per_cycle


# -- functional reference ------------------------------------------------------------------------

def validate_operand(spec: DTypeSpec, name: str, values, n: int) -> np.ndarray:
    """`values` as an int64 array of shape (n,), or ValueError naming what is wrong (shape,
    element type, the first element outside the type's range)."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"operand {name} has shape {arr.shape}, expected ({n},)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"operand {name} has dtype {arr.dtype}, expected integers for "
                         f"{spec.name}")
    lo, hi = spec.operand_range
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"operand {name}[{i}]={int(arr[i])} is outside {spec.name} range "
                         f"{lo}..{hi}")
    return arr.astype(np.int64)


class MatrixUnitRef:
    """What the matrix unit computes, beat by beat, without timing.

    `mac(a, b, clear)` applies one operand beat; `read_row(i)` returns accumulator row i.
    Accumulators start at zero (as after reset) and wrap like the hardware's (int32 for INT8).
    Bad operands (wrong length, out of range, not integers) raise ValueError naming them.
    """

    def __init__(self, cfg: TileConfig, dtype=MatrixDType.INT8):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self._spec = dtype_spec(dtype)
        self._dtype = MatrixDType(dtype)
        self._acc = np.zeros((cfg.mac_dim, cfg.mac_dim), dtype=self._spec.numpy_acc)

    @property
    def n(self) -> int:
        return self._cfg.mac_dim

    @property
    def dtype(self) -> MatrixDType:
        return self._dtype

    @property
    def spec(self) -> DTypeSpec:
        return self._spec

    @property
    def acc(self) -> np.ndarray:
        """A copy of the accumulators, shape (N, N)."""
        return self._acc.copy()

    def reset(self):
        self._acc[:] = 0

    def mac(self, a, b, clear: bool = False):
        """acc = (0 if clear else acc) + outer(a, b)."""
        a = validate_operand(self._spec, "a", a, self.n)
        b = validate_operand(self._spec, "b", b, self.n)
        base = np.zeros_like(self._acc) if clear else self._acc
        self._acc = self._spec.accumulate(base, self._spec.outer(a, b))

    def mac_block(self, a, b, clear: bool = False):
        """K beats at once: rows a[k], b[k] of two (K, N) arrays, `clear` on the first; the same
        accumulators as K calls of `mac`. Bad operands raise ValueError as in `mac`."""
        a = self._block_operand("a", a)
        b = self._block_operand("b", b)
        if a.shape != b.shape:
            raise ValueError(f"operands a {a.shape} and b {b.shape} differ in shape")
        if not len(a):
            if clear:
                raise ValueError("clear needs at least one beat")
            return
        if self._spec.block is None:
            for k in range(len(a)):
                self.mac(a[k], b[k], clear and k == 0)
            return
        base = np.zeros_like(self._acc) if clear else self._acc
        self._acc = self._spec.accumulate(base, self._spec.block(a, b))

    def _block_operand(self, name: str, values) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 2 or arr.shape[1] != self.n:
            raise ValueError(f"operand block {name} has shape {arr.shape}, expected (K, {self.n})")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"operand block {name} has dtype {arr.dtype}, expected integers for "
                             f"{self._spec.name}")
        lo, hi = self._spec.operand_range
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"operand block {name} has values outside {self._spec.name} range "
                             f"{lo}..{hi}")
        return arr

    def read_row(self, i: int) -> np.ndarray:
        """Accumulator row i (a copy), N values."""
        if not isinstance(i, (int, np.integer)) or not 0 <= i < self.n:
            raise ValueError(f"row {i!r} is outside 0..{self.n - 1}")
        return self._acc[int(i)].copy()

    def run(self, beats: Iterable[tuple[Sequence[int], Sequence[int], bool]]) -> np.ndarray:
        """Apply `(a, b, clear)` beats in order; return the accumulators."""
        for a, b, clear in beats:
            self.mac(a, b, clear)
        return self.acc


def outer_product_beats(A, B) -> list[tuple[np.ndarray, np.ndarray]]:
    """The K operand beats `(A[:, k], B[k, :])` that compute A @ B, for A of shape (N, K) and
    B of shape (K, N). Raises ValueError on mismatched or empty shapes."""
    A = np.asarray(A)
    B = np.asarray(B)
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"A and B must be 2-D, got shapes {A.shape} and {B.shape}")
    if A.shape[1] != B.shape[0] or A.shape[0] != B.shape[1]:
        raise ValueError(f"shapes {A.shape} @ {B.shape} are not (N, K) @ (K, N)")
    if A.shape[1] == 0:
        raise ValueError("K = 0: a product needs at least one beat")
    return [(A[:, k].copy(), B[k, :].copy()) for k in range(A.shape[1])]


def matmul_reference(A, B, dtype=MatrixDType.INT8) -> np.ndarray:
    """A @ B in the accumulator type (int32 with wrapping for INT8), by NumPy directly."""
    spec = dtype_spec(dtype)
    exact = np.asarray(A, dtype=np.int64) @ np.asarray(B, dtype=np.int64)
    return _wrap(exact, spec.acc_bits).astype(spec.numpy_acc)
