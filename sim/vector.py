"""Functional reference of the vector unit: what one command computes, bit for bit.

The unit takes one command per cycle (`d1tile.vector_ops.vector_cmd_format`: an op code, two
operand words, the SETQ/SETR parameters, the element's slot and first/last flags) and produces at
most one result (`vector_result_format`: a word and its byte mask). What each op computes is its
entry in `d1tile.vector_ops.VECTOR_OPS` (the table, with the lane references and the element
types that say which group of a word is read and written); `vector_op` applies an entry to
words:

* the a lanes are group `slot % groups(src)` of word `a`, as `src` elements (`d1tile.dtypes`);
  b (binary ops) is a whole word of 32-bit lanes of the same kind;
* the result lanes go to group `slot % groups(dst)` of the data word, and the mask enables
  exactly that group's bytes (all of them for 32-bit results). REQUANT (int32 -> int8) thus
  fills byte slot i % 4, FP32 -> BF16 half i % 2, as the instructions' element index i says;
* a reduction (FSUM, FMAXR) folds the lanes into the unit's accumulator (`VectorUnitState.acc`):
  starting from the op's identity at `first`, it gives a result (the whole word) only at
  `last`, and nothing (None) for the other elements;
* a stochastic conversion advances the unit's generator (`VectorUnitState.rng`, one xorshift32
  per lane, `d1tile.numerics.rng_next`) once per element and rounds with its 16-bit values;
* an undefined op code gives data 0 and mask 0 (a result that writes nothing): the sequencer
  rejects such codes before they reach the unit, which still answers them one for one so that
  its stream never loses a beat.

Timing (the RTL's contract, used by the cycle model and the testbenches): a command accepted in
cycle t has its result valid from cycle t + `VECTOR_LATENCY`; the unit accepts one command per
cycle while its result is taken (`cmd.ready = ~result.valid | result.ready`).

This module imports no Amaranth.
"""

from __future__ import annotations

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ELEMENTS
from d1tile.params import TileConfig
from d1tile.vector_ops import (INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, SCALE_BITS, SHIFT_BITS,
                               SLOT_BITS, VECTOR_LATENCY, VECTOR_OPS, Params, requantize,
                               requantize_lane, vector_cmd_format, vector_result_format)


__all__ = [
    "VECTOR_LATENCY", "SCALE_BITS", "SHIFT_BITS", "SLOT_BITS", "INT8_MIN", "INT8_MAX",
    "INT32_MIN", "INT32_MAX", "vector_cmd_format", "vector_result_format", "VectorUnitState",
    "vector_op", "vector_execute", "requantize", "requantize_lane", "vector_ideal_cycles",
]


class VectorUnitState:
    """The vector unit's registers besides its result register: the reduction accumulator
    (`acc`, N lanes of 32-bit bits) and the stochastic-rounding generator's lane states (`rng`,
    seeded with 0 after reset; `reseed` is what the unit's `reseed` input does)."""

    def __init__(self, cfg: TileConfig, seed: int = 0):
        self.lanes = cfg.lanes
        self.acc = np.zeros(cfg.lanes, dtype=np.uint32)
        self.rng = numerics.rng_seed_states(seed, cfg.lanes)

    def reseed(self, seed: int) -> None:
        self.rng = numerics.rng_seed_states(seed, self.lanes)

    def copy(self) -> "VectorUnitState":
        other = object.__new__(VectorUnitState)
        other.lanes, other.acc, other.rng = self.lanes, self.acc.copy(), list(self.rng)
        return other


def vector_ideal_cycles(n: int) -> int:
    """Cycles to run `n` back-to-back commands with no stall: from the cycle the first command is
    accepted up to and including the cycle the last result is taken (one command per cycle, the
    last result `VECTOR_LATENCY` cycles after the last command)."""
    if n < 0:
        raise ValueError(f"n={n} must not be negative")
    return n + VECTOR_LATENCY if n else 0


def vector_op(cfg: TileConfig, op: int, a: int, b: int, scale: int = 0, shift: int = 0,
              slot: int = 0, relu: int = 0, q: int = 0, first: int = 1, last: int = 1,
              state: VectorUnitState | None = None) -> tuple[int, int] | None:
    """Execute one command on word integers; returns `(data, mask)` as unsigned integers, or
    None when the command gives no result (a reduction before its last element).

    Every argument must fit its field of `vector_cmd_format(cfg)` (words are unsigned
    `cfg.word_bits`-bit integers); otherwise `FormatError` (a `ValueError`) names the field.
    Reductions and stochastic conversions need the unit's `state` (ValueError without it),
    which they update.
    """
    vector_cmd_format(cfg).pack(op=op, a=a, b=b, scale=scale, shift=shift, slot=slot, relu=relu,
                                q=q, first=first, last=last)
    spec = VECTOR_OPS.get(op)
    if spec is None:
        return 0, 0
    if (spec.reduce or spec.stochastic) and state is None:
        raise ValueError(f"vector op {spec.name} needs the unit's state (VectorUnitState)")
    src, dst = ELEMENTS[spec.src], ELEMENTS[spec.dst]
    lanes_a = src.group(cfg, a, slot % src.groups)
    if spec.reduce:
        base = (np.full(cfg.lanes, spec.identity, dtype=np.uint32) if first else state.acc)
        state.acc = np.asarray(spec.lanes(base, lanes_a), dtype=np.uint32)
        if not last:
            return None
        result = state.acc
    elif spec.stochastic:
        state.rng, rand = numerics.rng_next(state.rng)
        result = spec.lanes(lanes_a, rand)
    else:
        lanes_b = src.unpack(cfg, b) if spec.binary else None
        result = spec.lanes(lanes_a, lanes_b, Params(scale, shift, relu, q))
    group = slot % dst.groups
    group_bits = cfg.lanes * dst.bits
    data = dst.pack(cfg, result) << (group * group_bits)
    mask = ((1 << (group_bits // 8)) - 1) << (group * group_bits // 8)
    return data, mask


def vector_execute(cfg: TileConfig, cmd: int, state: VectorUnitState | None = None) -> int | None:
    """Execute one packed command (`vector_cmd_format(cfg)`); returns the packed result
    (`vector_result_format(cfg)`), or None when the command gives none. This is what the unit
    does to one stream beat."""
    out = vector_op(cfg, **vector_cmd_format(cfg).unpack(cmd), state=state)
    if out is None:
        return None
    data, mask = out
    return vector_result_format(cfg).pack(data=data, mask=mask)
