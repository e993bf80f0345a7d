"""Functional reference of the matrix unit and its timing description.

The matrix unit is an N x N array of multiply-accumulate cells (N = `cfg.mac_dim`). One operand
beat carries a column vector `a` (N elements) and a row vector `b` (N elements) and adds their
outer product to the accumulators:

    acc[i][j] = (clear_bits if clear else acc[i][j]) + a[i] * b[j]

so C = A @ B, with A of shape (N, K) and B of shape (K, N), takes the K beats
`a = A[:, k], b = B[k, :]` (see `outer_product_beats`), `clear` set on the first one.

Each beat carries its operand type (`d1tile.dtypes.ElemType`: INT8 or BF16); what the type means
(widths, packing, the reference arithmetic, the pipeline depth) is its entry in
`d1tile.dtypes.MATRIX_TYPES`. The accumulators are N x N 32-bit registers: int32 for INT8 beats
(wrapping), FP32 for BF16 beats (`d1tile.numerics.bf16_mac`: the exact product added with one
rounding). `clear` starts a beat from the type's `clear_bits` (0, or -0.0) instead of the
accumulator. This module keeps the accumulators as raw bits (uint32), so a type change without
`clear` reinterprets them, as the hardware does.

Timing (the contract of `d1tile.hw.matrix.MatrixUnit`; cycle t is the cycle in which a stream
handshake happens, i.e. valid and ready both high):

* an operand beat accepted in cycle t is in the accumulators from cycle t + `acc_latency(dtype)`
  (`ACC_LATENCY` = 2, for every type); the unit accepts a beat every cycle, it never stalls;
* `busy[k]` is high in cycles t+1 .. t + acc_latency - 1 of every accepted beat t into bank k
  (`busy_at`);
* a readout request of bank k is accepted only in a cycle where `busy[k]` is low and the output
  register is free or being drained, and its row is on `rd_data` `READOUT_LATENCY` (= 1) cycle
  later (beats into the other bank do not hold it up);
* an operand beat and a readout request of its bank accepted in the same cycle: the readout
  sees the accumulators before that beat.

The accumulators are `ACC_BANKS` (2) banks of N x N; every beat names its bank, every readout
request its bank and row. One array of multipliers and adders serves both banks.

This module imports no Amaranth: the cycle-level model and the compiler use it.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..contracts import READOUT_LATENCY
from ..dtypes import MATRIX_TYPES, ElemType, MatrixType, matrix_type
from ..isa import ACC_BANKS
from ..params import TileConfig


__all__ = [
    "MatrixUnitRef", "outer_product_beats", "matmul_reference",
    "ACC_LATENCY", "READOUT_LATENCY", "acc_latency", "busy_at", "earliest_readout_cycle",
    "first_row_cycle", "tile_count", "tile_period", "tiled_matmul_cycles", "ideal_cycles",
]


# -- timing ------------------------------------------------------------------------------------

def acc_latency(dtype=ElemType.INT8) -> int:
    """Cycles from an accepted operand beat to the accumulators holding it."""
    return matrix_type(dtype).pipeline_depth


ACC_LATENCY = acc_latency(ElemType.INT8)
"""`acc_latency` of every type: 2 (the unit's timing does not depend on the type)."""
assert all(t.pipeline_depth == ACC_LATENCY for t in MATRIX_TYPES.values())


def busy_at(cycle: int, beat_cycles: Iterable[int], dtype=ElemType.INT8) -> bool:
    """Whether `busy` is high in `cycle`, given the cycles in which operand beats were accepted:
    some beat t has t < cycle < t + acc_latency."""
    depth = acc_latency(dtype)
    return any(t < cycle < t + depth for t in beat_cycles)


def earliest_readout_cycle(last_beat_cycle: int, dtype=ElemType.INT8) -> int:
    """The first cycle a readout request can be accepted after the beat of `last_beat_cycle`
    (when no later beat is sent): the cycle the beat reaches the accumulators."""
    return last_beat_cycle + acc_latency(dtype)


def first_row_cycle(last_beat_cycle: int, dtype=ElemType.INT8) -> int:
    """The first cycle `rd_data` can be valid with a row that includes the last beat."""
    return earliest_readout_cycle(last_beat_cycle, dtype) + READOUT_LATENCY


# -- a tiled matrix product on one unit ----------------------------------------------------------

def tile_count(cfg: TileConfig, m: int, n: int) -> int:
    """Output tiles of an (m x k) @ (k x n) product on the N x N unit (m and n padded up to
    multiples of N)."""
    return math.ceil(m / cfg.mac_dim) * math.ceil(n / cfg.mac_dim)


def tile_period(cfg: TileConfig, k: int, dtype=ElemType.INT8) -> int:
    """Cycles between the first operand beats of two consecutive tiles under the fastest
    schedule the unit allows: k beats back to back, the N readout requests from the cycle the
    last beat reaches the accumulators, and the next tile's first beat in the same cycle as the
    last request (a beat sent earlier would hold `busy` high and block that request):
    k + acc_latency + N - 2."""
    return k + acc_latency(dtype) + cfg.mac_dim - 2


def tiled_matmul_cycles(cfg: TileConfig, m: int, k: int, n: int, dtype=ElemType.INT8) -> int:
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

class MatrixUnitRef:
    """What the matrix unit computes, beat by beat, without timing.

    `mac(a, b, clear, dtype, bank)` applies one operand beat of type `dtype` (INT8: int8 values,
    BF16: BF16 bit patterns) to accumulator bank `bank`; `read_row(i, bank)` returns row i of a
    bank as N 32-bit lanes (raw bits, uint32: int32 two's complement or FP32, as the beats that
    made them). The accumulators start at zero (as after reset). Bad operands (wrong length, out
    of the type's range, not integers), types the unit lacks and banks outside
    0..ACC_BANKS - 1 raise ValueError naming them.
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self._acc = [np.zeros((cfg.mac_dim, cfg.mac_dim), dtype=np.uint32)
                     for _ in range(ACC_BANKS)]

    @property
    def n(self) -> int:
        return self._cfg.mac_dim

    def _bank(self, bank) -> int:
        if not isinstance(bank, (int, np.integer)) or not 0 <= bank < ACC_BANKS:
            raise ValueError(f"accumulator bank {bank!r} is outside 0..{ACC_BANKS - 1}")
        return int(bank)

    def bank_acc(self, bank: int = 0) -> np.ndarray:
        """A copy of the accumulator bits of `bank`, shape (N, N), uint32."""
        return self._acc[self._bank(bank)].copy()

    @property
    def acc(self) -> np.ndarray:
        """A copy of bank 0's accumulator bits, shape (N, N), uint32."""
        return self.bank_acc(0)

    def values(self, dtype=ElemType.INT8, bank: int = 0) -> np.ndarray:
        """A bank's accumulators as results of type `dtype`: int32 values (INT8), FP32 bits
        (BF16)."""
        return matrix_type(dtype).values(self._acc[self._bank(bank)]).copy()

    def reset(self):
        for acc in self._acc:
            acc[:] = 0

    def _base(self, spec: MatrixType, clear: bool, bank: int) -> np.ndarray:
        acc = self._acc[bank]
        return np.full_like(acc, spec.clear_bits) if clear else acc

    def mac(self, a, b, clear: bool = False, dtype=ElemType.INT8, bank: int = 0):
        """acc[bank] = (clear_bits if clear else acc[bank]) + outer(a, b), in the type's
        arithmetic."""
        spec = matrix_type(dtype)
        bank = self._bank(bank)
        a = spec.check_operand("a", a, self.n)
        b = spec.check_operand("b", b, self.n)
        self._acc[bank] = spec.beat(self._base(spec, clear, bank), a, b)

    def mac_block(self, a, b, clear: bool = False, dtype=ElemType.INT8, bank: int = 0):
        """K beats at once into `bank`: rows a[k], b[k] of two (K, N) arrays, `clear` on the
        first; the same accumulators as K calls of `mac`. Bad operands raise ValueError as in
        `mac`."""
        spec = matrix_type(dtype)
        bank = self._bank(bank)
        a = self._block_operand(spec, "a", a)
        b = self._block_operand(spec, "b", b)
        if a.shape != b.shape:
            raise ValueError(f"operands a {a.shape} and b {b.shape} differ in shape")
        if not len(a):
            if clear:
                raise ValueError("clear needs at least one beat")
            return
        self._acc[bank] = spec.block(self._base(spec, clear, bank), a, b)

    def _block_operand(self, spec: MatrixType, name: str, values) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 2 or arr.shape[1] != self.n:
            raise ValueError(f"operand block {name} has shape {arr.shape}, expected (K, {self.n})")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"operand block {name} has dtype {arr.dtype}, expected integers for "
                             f"{spec.name}")
        lo, hi = spec.operand_range
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"operand block {name} has values outside the {spec.name} range "
                             f"{lo}..{hi}")
        return arr

    def read_row(self, i: int, bank: int = 0, col: bool = False) -> np.ndarray:
        """Row i of accumulator bank `bank` (a copy): N lanes of raw bits, uint32; with `col`,
        column i (lane j = acc[j][i], the transposed readout)."""
        if not isinstance(i, (int, np.integer)) or not 0 <= i < self.n:
            raise ValueError(f"row {i!r} is outside 0..{self.n - 1}")
        acc = self._acc[self._bank(bank)]
        return (acc[:, int(i)] if col else acc[int(i)]).copy()

    def run(self, beats: Iterable[tuple[Sequence[int], Sequence[int], bool]],
            dtype=ElemType.INT8, bank: int = 0) -> np.ndarray:
        """Apply `(a, b, clear)` beats of one type in order to `bank`; return that bank's
        accumulators as the type's results (`values`)."""
        for a, b, clear in beats:
            self.mac(a, b, clear, dtype, bank)
        return self.values(dtype, bank)


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


def matmul_reference(A, B, dtype=ElemType.INT8) -> np.ndarray:
    """A @ B as the unit computes it after `clear`: INT8 (int8 values): int32 with wrapping, by
    an exact int64 product; BF16 (BF16 bits): FP32 bits, the K products added one after another
    from k = 0 (`d1tile.numerics.bf16_matmul`; never a BLAS product, whose order differs)."""
    return matrix_type(dtype).matmul(A, B)
