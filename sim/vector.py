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

import struct
from functools import cache, lru_cache
from math import copysign

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ELEMENTS
from d1tile.params import TileConfig
from d1tile.vector_ops import (INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, OP_BITS, SCALE_BITS,
                               SHIFT_BITS, SLOT_BITS, VECTOR_LATENCY, VECTOR_OPS, Params,
                               requantize, requantize_lane, vector_cmd_format,
                               vector_result_format)


__all__ = [
    "VECTOR_LATENCY", "SCALE_BITS", "SHIFT_BITS", "SLOT_BITS", "INT8_MIN", "INT8_MAX",
    "INT32_MIN", "INT32_MAX", "vector_cmd_format", "vector_result_format", "VectorUnitState",
    "vector_op", "vector_op_reference", "vector_kernel", "vector_execute", "requantize",
    "requantize_lane", "vector_ideal_cycles",
]


class VectorUnitState:
    """The vector unit's registers besides its result register: the reduction accumulator
    (`acc`, N lanes of 32-bit bits; `acc_word`, the same as one word integer, lane 0 in the low
    bits, which is how the unit's ops keep it) and the stochastic-rounding generator's lane
    states (`rng`, seeded with 0 after reset; `reseed` is what the unit's `reseed` input
    does)."""

    def __init__(self, cfg: TileConfig, seed: int = 0):
        self.lanes = cfg.lanes
        self.acc_word = 0
        self.rng = numerics.rng_seed_states(seed, cfg.lanes)

    @property
    def acc(self) -> np.ndarray:
        return np.frombuffer(self.acc_word.to_bytes(4 * self.lanes, "little"), dtype="<u4") \
            .astype(np.uint32)

    @acc.setter
    def acc(self, lanes) -> None:
        lanes = np.asarray(lanes, dtype=np.uint32)
        self.acc_word = int.from_bytes(lanes.astype("<u4").tobytes(), "little")

    def reseed(self, seed: int) -> None:
        self.rng = numerics.rng_seed_states(seed, self.lanes)

    def copy(self) -> "VectorUnitState":
        other = object.__new__(VectorUnitState)
        other.lanes, other.acc_word, other.rng = self.lanes, self.acc_word, list(self.rng)
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

    The result is `vector_op_reference`'s (the definition), computed by the op's kernel
    (`vector_kernel`), which callers that guarantee the fields' ranges (the engine model) call
    directly.
    """
    vector_cmd_format(cfg).pack(op=op, a=a, b=b, scale=scale, shift=shift, slot=slot, relu=relu,
                                q=q, first=first, last=last)
    spec = VECTOR_OPS.get(op)
    if spec is None:
        return 0, 0
    if (spec.reduce or spec.stochastic) and state is None:
        raise ValueError(f"vector op {spec.name} needs the unit's state (VectorUnitState)")
    return vector_kernel(cfg, int(op))(int(a), int(b), int(slot), int(first), int(last),
                                       int(scale), int(shift), int(relu), int(q), state)


def vector_op_reference(cfg: TileConfig, op: int, a: int, b: int, scale: int = 0,
                        shift: int = 0, slot: int = 0, relu: int = 0, q: int = 0, first: int = 1,
                        last: int = 1, state: VectorUnitState | None = None
                        ) -> tuple[int, int] | None:
    """`vector_op` by its definition: the op's lane reference (`VECTOR_OPS[op].lanes`, NumPy
    on whole lanes) applied to the words' groups (module docstring). The kernels `vector_op`
    runs must give the same results; `tests/test_vector.py` compares them op by op."""
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


# -- kernels: the ops on Python scalars -----------------------------------------------------------
#
# `vector_op_reference` applies NumPy lane references to 8 lanes (default tile) per command, so
# its cost is NumPy's per call: tens of microseconds an element. A kernel computes the same
# bits with `struct` and Python scalars, one word in and one out, in a few microseconds: the
# integer ops in exact Python integers, the FP32 ops with `numerics.read_floats` /
# `round_floats` (the contract on Python floats) and the BF16 conversions on the bits.

def vector_kernel(cfg: TileConfig, op: int):
    """The kernel of unit op code `op` (any 5-bit code): a function `(a, b, slot, first, last,
    scale, shift, relu, q, state) -> (data, mask) or None` of plain integers that gives
    `vector_op`'s result without checking the fields (the caller guarantees them: words of
    `cfg.word_bits` bits, parameters in their widths, slot 0..3, a state for reductions and
    stochastic conversions). An undefined code gives (0, 0)."""
    return _kernels(cfg)[op]


@cache
def _kernels(cfg: TileConfig) -> tuple:
    """Every code's kernel for `cfg` (an undefined code's gives (0, 0); where
    `numerics.FLOAT_LANES` is false, every op's is `vector_op_reference`'s computation)."""
    kernels = [_no_op] * (1 << OP_BITS)
    for code, spec in VECTOR_OPS.items():
        if numerics.FLOAT_LANES:
            kernels[code] = _MAKERS[spec.name](cfg, spec)
        else:
            kernels[code] = _reference_kernel(cfg, code)
    return tuple(kernels)


def _no_op(a, b, slot, first, last, scale, shift, relu, q, state):
    return 0, 0


def _reference_kernel(cfg: TileConfig, code: int):
    def kernel(a, b, slot, first, last, scale, shift, relu, q, state):
        return vector_op_reference(cfg, code, a, b, scale, shift, slot, relu, q, first, last,
                                   state)
    return kernel


_F32_EXP, _F32_MANT, _F32_SIGN = 0x7F80_0000, 0x007F_FFFF, 0x8000_0000
_NAN = float("nan")
_Q = struct.Struct("f")


@lru_cache(maxsize=256)
def _q_value(q: int) -> float:
    """SETR's q (FP32 bits) as the datapath reads it, a Python float."""
    return numerics.read_floats(_Q.unpack(q.to_bytes(4, "little")))[0]


def _f32_max(x: list, y: list) -> list:
    """`numerics.fp32_max` on read floats: NaN if either is NaN; x where x > y, or equal and x
    not -0 (so +0 is larger than -0); else y."""
    return [_NAN if p != p or r != r else p if p > r or (p == r and copysign(1.0, p) > 0) else r
            for p, r in zip(x, y)]


def _make_fp32(cfg: TileConfig, spec):
    """The FP32 -> FP32 ops (FADD .. FSCALE, FSUM, FMAXR): whole words of N lanes."""
    lanes, nbytes = cfg.lanes, cfg.word_bytes
    floats_of = struct.Struct(f"{lanes}f")
    unpack, pack = floats_of.unpack, floats_of.pack
    read, rounded, from_bytes = numerics.read_floats, numerics.round_floats, int.from_bytes
    full = (1 << nbytes) - 1

    def floats(word):
        return read(unpack(word.to_bytes(nbytes, "little")))

    def word(values):
        return from_bytes(pack(*rounded(values)), "little")

    name = spec.name
    if name in ("FSUM", "FMAXR"):
        identity = sum(spec.identity << (32 * lane) for lane in range(lanes))
        fold = ((lambda x, y: [p + r for p, r in zip(x, y)]) if name == "FSUM" else _f32_max)

        def reduce(a, b, slot, first, last, scale, shift, relu, q, state):
            acc = word(fold(floats(identity if first else state.acc_word), floats(a)))
            state.acc_word = acc
            return (acc, full) if last else None
        return reduce

    if name == "FAXPY":
        def faxpy(a, b, slot, first, last, scale, shift, relu, q, state):
            qv = _q_value(q)
            product = unpack(pack(*rounded([p * qv for p in floats(a)])))  # rounded to FP32
            return word([p + r for p, r in zip(product, floats(b))]), full
        return faxpy

    binary = {
        "FADD": lambda x, y: [p + r for p, r in zip(x, y)],
        "FSUB": lambda x, y: [p + -r for p, r in zip(x, y)],          # a + (-b)
        "FMUL": lambda x, y: [p * r for p, r in zip(x, y)],
        "FMAX": _f32_max,
        "FMASK": lambda x, y: [p if r > 0 else 0.0 for p, r in zip(x, y)],
    }
    if name in binary:
        fn = binary[name]

        def kernel(a, b, slot, first, last, scale, shift, relu, q, state):
            return word(fn(floats(a), floats(b))), full
        return kernel
    if name == "FRELU":
        def frelu(a, b, slot, first, last, scale, shift, relu, q, state):
            return word([p if p > 0 or p != p else 0.0 for p in floats(a)]), full
        return frelu
    if name == "FSCALE":
        def fscale(a, b, slot, first, last, scale, shift, relu, q, state):
            qv = _q_value(q)
            return word([p * qv for p in floats(a)]), full
        return fscale
    raise AssertionError(f"no FP32 kernel for {name}")


def _make_int32(cfg: TileConfig, spec):
    """ADD, MUL, MAX, RELU on int32 lanes (wrapping), and REQUANT (int32 -> int8 slot)."""
    lanes, nbytes = cfg.lanes, cfg.word_bytes
    signed, unsigned = struct.Struct(f"{lanes}i"), struct.Struct(f"{lanes}I")
    from_bytes = int.from_bytes
    full = (1 << nbytes) - 1
    name = spec.name
    if name in ("ADD", "MUL"):
        op = (lambda p, r: (p + r) & 0xFFFF_FFFF) if name == "ADD" else \
            (lambda p, r: (p * r) & 0xFFFF_FFFF)     # the low 32 bits, signed or not

        def wrapping(a, b, slot, first, last, scale, shift, relu, q, state):
            x = unsigned.unpack(a.to_bytes(nbytes, "little"))
            y = unsigned.unpack(b.to_bytes(nbytes, "little"))
            return from_bytes(unsigned.pack(*[op(p, r) for p, r in zip(x, y)]), "little"), full
        return wrapping
    if name == "MAX":
        def imax(a, b, slot, first, last, scale, shift, relu, q, state):
            x = signed.unpack(a.to_bytes(nbytes, "little"))
            y = signed.unpack(b.to_bytes(nbytes, "little"))
            return from_bytes(signed.pack(*[max(p, r) for p, r in zip(x, y)]), "little"), full
        return imax
    if name == "RELU":
        def irelu(a, b, slot, first, last, scale, shift, relu, q, state):
            x = signed.unpack(a.to_bytes(nbytes, "little"))
            return from_bytes(signed.pack(*[p if p > 0 else 0 for p in x]), "little"), full
        return irelu
    if name == "REQUANT":
        int8s = struct.Struct(f"{lanes}b")
        shifts, masks = _slots(lanes, 8)

        def requant(a, b, slot, first, last, scale, shift, relu, q, state):
            x = signed.unpack(a.to_bytes(nbytes, "little"))
            rounding = 1 << (shift - 1) if shift > 0 else 0
            lo = 0 if relu else INT8_MIN
            out = [min(INT8_MAX, max(lo, (p * scale + rounding) >> shift)) for p in x]
            g = slot & 3
            return from_bytes(int8s.pack(*out), "little") << shifts[g], masks[g]
        return requant
    raise AssertionError(f"no int32 kernel for {name}")


def _slots(lanes: int, bits: int) -> tuple[tuple, tuple]:
    """Per group of N elements of `bits` bits: its shift in a word, its byte mask."""
    groups = 32 // bits
    group_bits = lanes * bits
    return (tuple(g * group_bits for g in range(groups)),
            tuple(((1 << (group_bits // 8)) - 1) << (g * group_bits // 8)
                  for g in range(groups)))


def _make_convert(cfg: TileConfig, spec):
    """The conversions (FCVT): FP32 <-> BF16, int32 / int8 -> FP32 (then * q), FP32 * q ->
    int32 / int8 (RNE, saturating, NaN -> 0)."""
    lanes, nbytes = cfg.lanes, cfg.word_bytes
    floats_of = struct.Struct(f"{lanes}f")
    unpack, pack = floats_of.unpack, floats_of.pack
    read, rounded, from_bytes = numerics.read_floats, numerics.round_floats, int.from_bytes
    unsigned = struct.Struct(f"{lanes}I")
    halves_out, halves_in = struct.Struct(f"{lanes}H"), struct.Struct(f"{2 * lanes}H")
    full = (1 << nbytes) - 1
    name = spec.name

    if name == "CVT_F32_BF16":
        shifts, masks = _slots(lanes, 16)

        def rne(a, b, slot, first, last, scale, shift, relu, q, state):
            out = []
            for x in unsigned.unpack(a.to_bytes(nbytes, "little")):
                exp = x & _F32_EXP
                if not exp:                                   # a zero of its sign (DAZ)
                    out.append((x >> 16) & 0x8000)
                elif exp == _F32_EXP and x & _F32_MANT:       # NaN
                    out.append(numerics.BF16_NAN)
                else:   # round to nearest even on the low 16 bits; a carry out gives Inf
                    out.append((x + 0x7FFF + ((x >> 16) & 1)) >> 16)
            g = slot & 1
            return from_bytes(halves_out.pack(*out), "little") << shifts[g], masks[g]
        return rne

    if name == "CVT_F32_BF16_SR":
        shifts, masks = _slots(lanes, 16)

        def stochastic(a, b, slot, first, last, scale, shift, relu, q, state):
            states = []
            for s in state.rng:                              # numerics.xorshift32, each lane
                s ^= (s << 13) & 0xFFFF_FFFF
                s ^= s >> 17
                s ^= (s << 5) & 0xFFFF_FFFF
                states.append(s)
            state.rng = states
            out = []
            for x, s in zip(unsigned.unpack(a.to_bytes(nbytes, "little")), states):
                exp = x & _F32_EXP
                if not exp:
                    x &= _F32_SIGN
                elif exp == _F32_EXP and x & _F32_MANT:
                    out.append(numerics.BF16_NAN)
                    continue
                # up (away from zero) when the random value is below the dropped bits
                out.append((x >> 16) + ((s & 0xFFFF) < (x & 0xFFFF)))
            g = slot & 1
            return from_bytes(halves_out.pack(*out), "little") << shifts[g], masks[g]
        return stochastic

    if name == "CVT_BF16_F32":
        def widen(a, b, slot, first, last, scale, shift, relu, q, state):
            g = slot & 1
            out = []
            for h in halves_in.unpack(a.to_bytes(nbytes, "little"))[g * lanes:(g + 1) * lanes]:
                exp = h & 0x7F80
                if not exp:
                    out.append((h & 0x8000) << 16)
                elif exp == 0x7F80 and h & 0x7F:
                    out.append(numerics.F32_NAN)
                else:
                    out.append(h << 16)
            return from_bytes(unsigned.pack(*out), "little"), full
        return widen

    if name in ("CVT_I32_F32", "CVT_I8_F32"):
        ints = struct.Struct(f"{lanes}i" if name == "CVT_I32_F32" else f"{4 * lanes}b")
        groups = 1 if name == "CVT_I32_F32" else 4

        def from_int(a, b, slot, first, last, scale, shift, relu, q, state):
            g = slot % groups
            values = ints.unpack(a.to_bytes(nbytes, "little"))[g * lanes:(g + 1) * lanes]
            exact = unpack(pack(*[float(v) for v in values]))        # to FP32, RNE
            qv = _q_value(q)
            return from_bytes(pack(*rounded([v * qv for v in exact])), "little"), full
        return from_int

    if name in ("CVT_F32_I32", "CVT_F32_I8"):
        if name == "CVT_F32_I32":
            lo, hi, out_of, bits = INT32_MIN, INT32_MAX, struct.Struct(f"{lanes}i"), 32
        else:
            lo, hi, out_of, bits = INT8_MIN, INT8_MAX, struct.Struct(f"{lanes}b"), 8
        shifts, masks = _slots(lanes, bits)

        def to_int(a, b, slot, first, last, scale, shift, relu, q, state):
            qv = _q_value(q)
            x = read(unpack(a.to_bytes(nbytes, "little")))
            product = unpack(pack(*rounded([p * qv for p in x])))    # rounded to FP32
            # round() is to nearest even; saturated (infinities too); NaN -> 0
            out = [0 if v != v else hi if v >= hi else lo if v <= lo else round(v)
                   for v in product]
            g = slot % len(shifts)
            return from_bytes(out_of.pack(*out), "little") << shifts[g], masks[g]
        return to_int
    raise AssertionError(f"no conversion kernel for {name}")


_MAKERS = {
    **{name: _make_int32 for name in ("ADD", "MUL", "MAX", "RELU", "REQUANT")},
    **{name: _make_fp32 for name in ("FADD", "FSUB", "FMUL", "FMAX", "FMASK", "FAXPY", "FRELU",
                                     "FSCALE", "FSUM", "FMAXR")},
    **{name: _make_convert for name in ("CVT_F32_BF16", "CVT_F32_BF16_SR", "CVT_BF16_F32",
                                        "CVT_I32_F32", "CVT_F32_I32", "CVT_I8_F32",
                                        "CVT_F32_I8")},
}
"""Op name -> the function that builds its kernel for a configuration."""
