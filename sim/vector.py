"""Functional reference of the vector unit: lane-parallel int32 operations over SRAM words.

This module is the definition of what the vector unit computes, bit for bit, and of its command
and result formats. It imports no Amaranth: the RTL (`d1tile.hw.vector`) takes the formats'
`.layout` from here, and the cycle model and the compiler call the arithmetic.

A word is `cfg.lanes` (= N) signed int32 lanes, little-endian (lane i = bytes 4i..4i+3, see
`d1tile.formats.word_from_lanes`). Per lane i, with a_i and b_i the lanes of `a` and `b`:

* ADD: a_i + b_i, wrapped to int32.
* MUL: the low 32 bits of a_i * b_i (wrapping).
* MAX: signed max(a_i, b_i).
* RELU: max(a_i, 0) (`b` is ignored).
* REQUANT: q_i = clamp((a_i * scale + r) >> shift, lo, 127), where the product is exact
  (signed 32 x unsigned 16 bits), r = 1 << (shift - 1) if shift > 0 else 0, `>>` is arithmetic
  (floor), so ties round towards +infinity; lo = 0 if relu else -128. Byte slot*N + i of the
  result is q_i as int8, every other byte is 0, and the byte mask has exactly bytes
  slot*N .. slot*N + N - 1 set. Four REQUANTs with slots 0..3 into the same SRAM word pack four
  int32 words into one int8 word: the matrix unit's operand layout (4 vectors of N int8).

ADD, MUL, MAX and RELU write the whole word (mask all ones); `scale`, `shift`, `slot` and `relu`
are ignored by them. Op codes outside `VecOp` (5..7) produce data 0 and mask 0: a result that
writes nothing. The sequencer rejects such codes before they reach the unit; the unit still
answers them one for one so that its stream never loses a beat.

Timing (the RTL's contract, used by the cycle model and the testbenches): a command accepted in
cycle t has its result valid from cycle t + `VECTOR_LATENCY`; the unit accepts one command per
cycle while its result is taken (`cmd.ready = ~result.valid | result.ready`).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from d1tile.formats import (VECOP_BITS, BitFormat, Field, VecOp, lanes_from_word,
                            word_from_bytes, word_from_lanes)
from d1tile.params import TileConfig


__all__ = [
    "VECTOR_LATENCY", "SCALE_BITS", "SHIFT_BITS", "SLOT_BITS",
    "vector_cmd_format", "vector_result_format",
    "vector_op", "vector_execute", "requantize", "requantize_lane", "vector_ideal_cycles",
]

VECTOR_LATENCY = 1
"""Cycles from a command's acceptance to its result being valid (the result is registered)."""

SCALE_BITS = 16   # REQUANT multiplier, unsigned
SHIFT_BITS = 6    # REQUANT right shift, unsigned, 0..63
SLOT_BITS = 2     # REQUANT destination: which quarter of the word receives the N int8 results

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@cache
def vector_cmd_format(cfg: TileConfig) -> BitFormat:
    """One vector-unit command: the op, two operand words and the REQUANT parameters."""
    return BitFormat("vector_cmd", [
        Field("op", VECOP_BITS),
        Field("a", cfg.word_bits),
        Field("b", cfg.word_bits),
        Field("scale", SCALE_BITS),
        Field("shift", SHIFT_BITS),
        Field("slot", SLOT_BITS),
        Field("relu", 1),
    ])


@cache
def vector_result_format(cfg: TileConfig) -> BitFormat:
    """One vector-unit result: a word to write and its byte enables (bit j enables byte j)."""
    return BitFormat("vector_result", [
        Field("data", cfg.word_bits),
        Field("mask", cfg.word_bytes),
    ])


def vector_ideal_cycles(n: int) -> int:
    """Cycles to run `n` back-to-back commands with no stall: from the cycle the first command is
    accepted up to and including the cycle the last result is taken (one command per cycle, the
    last result `VECTOR_LATENCY` cycles after the last command)."""
    if n < 0:
        raise ValueError(f"n={n} must not be negative")
    return n + VECTOR_LATENCY if n else 0


def requantize_lane(a: int, scale: int, shift: int, relu: int) -> int:
    """REQUANT of one int32 lane, in exact Python integers (see the module docstring)."""
    rounding = 1 << (shift - 1) if shift > 0 else 0
    q = (a * scale + rounding) >> shift
    return max(0 if relu else INT8_MIN, min(INT8_MAX, q))


def vector_op(cfg: TileConfig, op: int, a: int, b: int, scale: int = 0, shift: int = 0,
              slot: int = 0, relu: int = 0) -> tuple[int, int]:
    """Execute one command on word integers; returns `(data, mask)` as unsigned integers.

    Every argument must fit its field of `vector_cmd_format(cfg)` (words are unsigned
    `cfg.word_bits`-bit integers); otherwise `FormatError` (a `ValueError`) names the field.
    """
    vector_cmd_format(cfg).pack(op=op, a=a, b=b, scale=scale, shift=shift, slot=slot, relu=relu)
    n = cfg.lanes
    full_mask = (1 << cfg.word_bytes) - 1
    la = [int(x) for x in lanes_from_word(a, n)]
    lb = [int(x) for x in lanes_from_word(b, n)]
    if op == VecOp.ADD:
        return word_from_lanes(x + y for x, y in zip(la, lb)), full_mask
    if op == VecOp.MUL:
        return word_from_lanes(x * y for x, y in zip(la, lb)), full_mask
    if op == VecOp.MAX:
        return word_from_lanes(max(x, y) for x, y in zip(la, lb)), full_mask
    if op == VecOp.RELU:
        return word_from_lanes(max(x, 0) for x in la), full_mask
    if op == VecOp.REQUANT:
        q = [requantize_lane(x, scale, shift, relu) for x in la]
        return word_from_bytes(q) << (8 * n * slot), ((1 << n) - 1) << (n * slot)
    return 0, 0


def vector_execute(cfg: TileConfig, cmd: int) -> int:
    """Execute one packed command (`vector_cmd_format(cfg)`); returns the packed result
    (`vector_result_format(cfg)`). This is what the unit does to one stream beat."""
    data, mask = vector_op(cfg, **vector_cmd_format(cfg).unpack(cmd))
    return vector_result_format(cfg).pack(data=data, mask=mask)


def requantize(acc, scale, shift, relu=False) -> np.ndarray:
    """REQUANT of whole arrays, NumPy-vectorised; bit-identical to `vector_op`'s REQUANT.

    `acc` is an integer array of int32 values (any integer dtype); `scale` (0..65535), `shift`
    (0..63) and `relu` (bool) are scalars or arrays broadcastable against `acc`. Returns an int8
    array of the broadcast shape. Non-integer input raises `TypeError`; values outside their
    ranges raise `ValueError` naming the argument.
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
