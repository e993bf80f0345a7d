"""The numeric contract of the floating-point datapath, as NumPy references that reproduce the
RTL bit for bit.

Formats are IEEE 754 binary layouts: FP32 (1-8-23) and BF16 (1-8-7, the high half of an FP32).
Every function here takes and returns raw bits (`uint32` / `uint16` arrays), so that signed
zeros and NaN encodings are explicit; `f32_value` and `bf16_value` read bits as the datapath
reads them. The contract, the same in the RTL (`d1tile.hw.fp`), the cycle model and the
interpreter (docs/numerics.md is the long form, with the reasons):

* **Rounding**: to nearest, ties to even (RNE), everywhere but the stochastic conversion to
  BF16 (`bf16_from_f32_sr`).
* **Subnormals are flushed**, inputs and results. An operand whose exponent field is 0 reads as
  a zero of its sign (denormals-are-zero). A result whose magnitude, rounded to the target
  precision as if the exponent were unbounded, is below the smallest normal 2**-126 becomes a
  zero of the result's sign (flush-to-zero, **tininess judged after rounding**): so
  2**-126 - 2**-151 (a tie that rounds up to 2**-126) is kept, anything smaller is flushed.
* **Overflow** goes to an infinity of the result's sign (RNE never saturates).
* **NaN**: a NaN operand, Inf - Inf and 0 x Inf give the **one canonical NaN** 0x7FC00000
  (FP32) / 0x7FC0 (BF16); no payload or NaN sign is propagated. Comparisons treat NaN as
  unordered (`fp32_max` returns the canonical NaN if either operand is NaN).
* **Zeros**: an exact zero sum is +0 unless both addends are -0; a product's sign is the XOR of
  its operands' signs.
* **The matrix unit's multiply-accumulate is fused**: a BF16 x BF16 product has at most 16
  significant bits and is formed exactly (with an unbounded exponent); it is added to the FP32
  accumulator with one rounding. The K products of a MATMUL are added one after another, k = 0
  first (`bf16_matmul`); nothing is reassociated.
* **The vector unit's multiply-add is not fused**: `fp32_axpy(a, q, b)` = `fp32_add(fp32_mul(a,
  q), b)`, two roundings.

Why float64 reproduces these bits: the exact product of two FP32 (or BF16) values has at most
48 significant bits and an exponent within float64's range, so it is exact in float64; the
float64 sum of two values of at most 24 significant bits, rounded once more to 24 bits, is the
sum rounded once (double rounding is innocuous when the wider precision p >= 2q + 2: 53 >= 50,
Figueroa 1995). `f32_result` then rounds with NumPy's float64 -> float32 cast (RNE) and applies
the flush rule on the float64 value (|x| < 2**-126 - 2**-151 is exactly "rounds below 2**-126").
`tests/test_numerics.py` checks all of it against exact rational arithmetic (`fractions`).

Stochastic rounding uses a per-lane xorshift32 generator (`rng_seed_states`, `rng_next`), the
same in the RTL and the models.

This module imports no Amaranth.
"""

from __future__ import annotations

import struct
import sys
from functools import cache

import numpy as np
import ml_dtypes


__all__ = [
    "F32_SIGN", "F32_NAN", "BF16_NAN", "F32_NEG_ZERO", "F32_NEG_INF", "MIN_NORMAL",
    "f32_bits", "bf16_bits", "f32_value", "bf16_value", "f32_result", "f32_canonical",
    "fp32_add", "fp32_sub", "fp32_mul", "fp32_max", "fp32_relu", "fp32_mask", "fp32_axpy",
    "fp32_sum", "fp32_max_reduce",
    "bf16_mac", "bf16_mac_block", "bf16_matmul",
    "bf16_from_f32_rne", "bf16_from_f32_sr", "f32_from_bf16",
    "f32_from_int", "int_from_f32", "FLOAT_LANES", "read_floats", "round_floats",
    "RNG_INCREMENT", "rng_seed_states", "rng_next", "xorshift32",
    "SPECIAL_FP32", "random_fp32",
]

F32_SIGN = 0x8000_0000
F32_EXP = 0x7F80_0000
F32_MANT = 0x007F_FFFF
F32_NAN = 0x7FC0_0000
"""The canonical FP32 NaN, the only NaN the datapath produces."""
F32_NEG_ZERO = 0x8000_0000
F32_NEG_INF = 0xFF80_0000
BF16_NAN = 0x7FC0
"""The canonical BF16 NaN."""
MIN_NORMAL = 2.0 ** -126
_FLUSH_BELOW = 2.0 ** -126 - 2.0 ** -151
"""A float64 x rounds (RNE, 24 bits, unbounded exponent) below 2**-126 iff |x| < this."""


# -- bits and values -------------------------------------------------------------------------

def f32_bits(values) -> np.ndarray:
    """float values -> their FP32 bits as uint32 (NumPy rounding; for building test data)."""
    return np.asarray(values, dtype=np.float32).view(np.uint32).copy()


def bf16_bits(values) -> np.ndarray:
    """float values -> BF16 bits as uint16 (ml_dtypes' RNE; for building test data)."""
    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16).copy()


def _u32(bits) -> np.ndarray:
    # Bits that already are a uint32 array are taken as they are (no copy: nothing here writes
    # to its arguments); anything else goes through uint64, so that Python integers of 32 bits
    # are accepted whatever their sign bit.
    if type(bits) is np.ndarray and bits.dtype == np.uint32:
        return bits
    return np.asarray(bits, dtype=np.uint64).astype(np.uint32)


def _u16(bits) -> np.ndarray:
    if type(bits) is np.ndarray and bits.dtype == np.uint16:
        return bits
    return np.asarray(bits, dtype=np.uint64).astype(np.uint16)


_DAZ_MASK = np.full(1 << 9, 0xFFFF_FFFF, dtype=np.uint32)
_DAZ_MASK[0] = _DAZ_MASK[1 << 8] = F32_SIGN
"""Indexed by the sign and exponent (bits >> 23): what an operand's bits are ANDed with as the
datapath reads them: the sign alone where the exponent field is 0 (a subnormal or a zero reads as
a zero of its sign), all bits elsewhere. One table lookup instead of a compare and a select."""


def f32_value(bits) -> np.ndarray:
    """FP32 bits as the datapath reads them, as float64: subnormals are zeros of their sign,
    every NaN is NaN."""
    bits = _u32(bits)
    if bits.ndim == 0:               # keep a 0-d array (NumPy turns 0-d results into scalars)
        return f32_value(bits.reshape(1)).reshape(())
    flushed = bits & _DAZ_MASK.take(bits >> 23)
    with np.errstate(invalid="ignore"):          # signalling NaNs: any NaN reads as NaN
        return flushed.view(np.float32).astype(np.float64)


@cache
def _bf16_values() -> np.ndarray:
    """`bf16_value` of every BF16 pattern (65,536 float64, 512 KiB, made at the first use): BF16
    operands are read with one table lookup."""
    values = f32_value(np.arange(1 << 16, dtype=np.uint32) << 16)
    values.flags.writeable = False
    return values


def bf16_value(bits) -> np.ndarray:
    """BF16 bits as the datapath reads them, as float64 (subnormals are zeros of their sign)."""
    bits = _u16(bits)
    if bits.ndim == 0:
        return _bf16_values()[bits.reshape(1)].reshape(())
    return _bf16_values()[bits]


def f32_result(x) -> np.ndarray:
    """Round float64 values to FP32 bits under the contract: RNE, flush to zero after rounding,
    overflow to infinity, the canonical NaN.

    `x` must be the exact result of an operation, or a float64 rounding of it for which double
    rounding is innocuous (a sum of two values of at most 24 significant bits; see the module
    docstring): that is how every function of this module calls it."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:                  # keep a 0-d array (NumPy turns 0-d results into scalars)
        return f32_result(x.reshape(1)).reshape(())
    # Flushed values become zeros of their sign before the cast, which keeps the sign; NaN is
    # not below the threshold. Flushes and NaNs are rare: each costs a select only when present.
    small = np.abs(x) < _FLUSH_BELOW
    if small.any():
        x = np.where(small, np.copysign(0.0, x), x)
    with np.errstate(over="ignore", invalid="ignore"):
        bits = x.astype(np.float32).view(np.uint32)
    nan = np.isnan(x)
    if nan.any():
        bits = np.where(nan, np.uint32(F32_NAN), bits)
    return bits


def f32_canonical(bits) -> np.ndarray:
    """An FP32 operand as the datapath passes it on: subnormals flushed, NaNs canonical."""
    return f32_result(f32_value(bits))


# -- FP32 arithmetic (the vector unit) --------------------------------------------------------

def fp32_add(a, b) -> np.ndarray:
    """a + b."""
    with np.errstate(invalid="ignore"):
        return f32_result(f32_value(a) + f32_value(b))


def fp32_sub(a, b) -> np.ndarray:
    """a - b (= a + (-b): the sign of b flipped, which also flips a flushed or zero b)."""
    return fp32_add(a, _u32(b) ^ np.uint32(F32_SIGN))


def fp32_mul(a, b) -> np.ndarray:
    """a x b (the exact product, rounded once)."""
    with np.errstate(invalid="ignore"):
        return f32_result(f32_value(a) * f32_value(b))


def fp32_max(a, b) -> np.ndarray:
    """max(a, b): the canonical NaN if either is NaN; +0 is larger than -0."""
    x, y = f32_value(a), f32_value(b)
    ca, cb = f32_result(x), f32_result(y)
    with np.errstate(invalid="ignore"):
        pick_a = (x > y) | ((x == y) & ~np.signbit(x))
    out = np.where(pick_a, ca, cb)
    return np.where(np.isnan(x) | np.isnan(y), np.uint32(F32_NAN), out).astype(np.uint32)


def fp32_relu(a) -> np.ndarray:
    """max(a, +0): NaN stays (canonical) NaN, -0 and negative values become +0."""
    return fp32_max(a, np.zeros_like(_u32(a)))


def fp32_mask(a, b) -> np.ndarray:
    """The ReLU backward mask: a (canonical) where b > 0, else +0 (NaN b is not > 0)."""
    with np.errstate(invalid="ignore"):
        keep = f32_value(b) > 0
    return np.where(keep, f32_canonical(a), np.uint32(0)).astype(np.uint32)


def fp32_axpy(a, q, b) -> np.ndarray:
    """a x q + b, not fused: the product is rounded to FP32 before the add."""
    return fp32_add(fp32_mul(a, q), b)


def fp32_sum(words) -> np.ndarray:
    """Lane-wise sum of the rows of `words` (shape (n, lanes)), added in order from row 0, the
    first added to -0 (so the sum of one row is that row, canonical)."""
    words = _u32(words)
    acc = np.full(words.shape[1:], F32_NEG_ZERO, dtype=np.uint32)
    for row in words:
        acc = fp32_add(acc, row)
    return acc


def fp32_max_reduce(words) -> np.ndarray:
    """Lane-wise maximum of the rows of `words` (shape (n, lanes)), from -Inf, row 0 first."""
    words = _u32(words)
    acc = np.full(words.shape[1:], F32_NEG_INF, dtype=np.uint32)
    for row in words:
        acc = fp32_max(acc, row)
    return acc


# -- BF16 x BF16 -> FP32 (the matrix unit) ----------------------------------------------------

def bf16_mac(acc, a, b) -> np.ndarray:
    """acc + a x b with one rounding (a fused multiply-add): `acc` FP32 bits, `a`, `b` BF16
    bits, broadcast together (the matrix unit applies it to the N x N outer product)."""
    with np.errstate(invalid="ignore"):
        return f32_result(f32_value(acc) + bf16_value(a) * bf16_value(b))


def bf16_mac_block(acc, a, b) -> np.ndarray:
    """K multiply-accumulates of outer products, in order: `acc` (M, N) FP32 bits, `a` (K, M)
    and `b` (K, N) BF16 bits; the same bits as K calls `acc = bf16_mac(acc, a[k][:, None],
    b[k][None, :])`, k = 0 first (K = 0 returns `acc` itself).

    Faster than those calls, with the same arithmetic: the K exact products are formed at once
    (float64, one array), and the accumulator is carried from step to step as the float64 of
    its FP32 value rather than as bits, since reading back the bits `f32_result` gives is
    exact: a rounded, flushed FP32 value converts to float64 and back unchanged, and a NaN
    stays a NaN (made canonical by the last step's `f32_result`). A step is then one add, the
    flush test and the cast to float32 (RNE; overflow to infinity)."""
    a, b = _u16(a), _u16(b)
    if not len(a):
        return acc
    value = f32_value(acc)
    total = np.empty_like(value)
    size = np.empty_like(value)
    small = np.empty(value.shape, dtype=bool)
    rounded = np.empty(value.shape, dtype=np.float32)
    step = max(1, _PRODUCTS_AT_ONCE // max(1, value.size))
    with np.errstate(over="ignore", invalid="ignore"):     # 0 x Inf, Inf - Inf; overflow
        for k in range(0, len(a), step):
            products = (bf16_value(a[k:k + step])[:, :, None]
                        * bf16_value(b[k:k + step])[:, None, :])
            magnitudes = np.abs(products)
            flushes = bool(np.any((magnitudes < _NO_FLUSH_PRODUCT) & (magnitudes > 0)))
            for product in products:
                np.add(value, product, out=total)
                if flushes:
                    np.abs(total, out=size)
                    np.less(size, _FLUSH_BELOW, out=small)
                    if small.any():              # a zero of the sign (NaN is not small)
                        np.copysign(0.0, total, out=total, where=small)
                rounded[...] = total             # the FP32 rounding: a cast
                value[...] = rounded
    return f32_result(value)


_PRODUCTS_AT_ONCE = 1 << 18
"""`bf16_mac_block` forms the products of this many multiply-accumulates at once (2 MiB of
float64): all K of a matrix unit's block, a slice of K for a large reference product."""

_NO_FLUSH_PRODUCT = 2.0 ** -100
"""No sum of an FP32 accumulator and a BF16 x BF16 product p with p = 0 or |p| >= 2**-100 is
flushed, so `bf16_mac_block` tests for flushes only in blocks that have a product between 0
and this. The accumulator v is 0, Inf, NaN or normal (|v| >= 2**-126). p = 0: the sum is v. If
|v| < 2**-101, |v + p| > 2**-101. Otherwise v is a multiple of its ulp, 2**(e_v - 23) >=
2**-124, and p, of significands m_a m_b < 2**16 times 2**(e_a + e_b - 14) with 2**-100 <= |p| <
2**(e_a + e_b + 2), a multiple of 2**(e_a + e_b - 14) >= 2**-115: their sum is a multiple of
2**-124, 0 or above the flush threshold (and its float64 rounding too)."""


def bf16_matmul(a, b, acc=None) -> np.ndarray:
    """A @ B as the matrix unit computes it: `a` (M, K) and `b` (K, N) BF16 bits, `acc` (M, N)
    FP32 bits to start from (default: -0, what `clear` loads, so the first step gives the
    product itself). The K products are accumulated one after another, k = 0 first, each with
    `bf16_mac` (`bf16_mac_block`); never `a @ b`, whose summation order is the BLAS
    library's."""
    a, b = _u16(a), _u16(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"bf16_matmul: shapes {a.shape} @ {b.shape} do not match")
    out = (np.full((a.shape[0], b.shape[1]), F32_NEG_ZERO, dtype=np.uint32) if acc is None
           else _u32(acc).copy())
    return bf16_mac_block(out, a.T, b)


# -- conversions --------------------------------------------------------------------------------

def bf16_from_f32_rne(bits) -> np.ndarray:
    """FP32 -> BF16, round to nearest even; subnormal input flushed, overflow to infinity, the
    canonical NaN. (A normal FP32 rounds to a normal BF16: the exponent ranges are the same.)"""
    value = f32_value(bits).astype(np.float32)
    out = value.astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.where(np.isnan(value), np.uint16(BF16_NAN), out).astype(np.uint16)


def bf16_from_f32_sr(bits, rand16) -> np.ndarray:
    """FP32 -> BF16 with stochastic rounding: the magnitude's low 16 bits are dropped and it is
    rounded up (away from zero) when the 16-bit random value is below the dropped bits, so with
    probability dropped / 2**16 (D1's CFloat conversion, cvfpu's rule). Subnormal input
    flushed; a round-up of the largest finite value gives infinity; Inf stays Inf (nothing is
    dropped); NaN becomes the canonical NaN."""
    canonical = f32_canonical(bits)
    dropped = canonical & 0xFFFF
    up = _u32(rand16) < dropped
    out = ((canonical >> 16) + up.astype(np.uint32)).astype(np.uint16)
    nan = (canonical & 0x7FFF_FFFF) > F32_EXP
    return np.where(nan, np.uint16(BF16_NAN), out).astype(np.uint16)


def f32_from_bf16(bits) -> np.ndarray:
    """BF16 -> FP32, exact; a subnormal BF16 becomes a zero of its sign, NaN the canonical NaN."""
    return f32_canonical(_u16(bits).astype(np.uint32) << 16)


def f32_from_int(values) -> np.ndarray:
    """Integers (int32 range) -> FP32, RNE (exact up to 2**24 in magnitude); 0 -> +0."""
    return f32_result(np.asarray(values, dtype=np.int64).astype(np.float64))


def int_from_f32(bits, lo: int, hi: int) -> np.ndarray:
    """FP32 -> integers: rounded to nearest even, saturated to [lo, hi] (infinities too), NaN
    -> 0. Returns int64."""
    value = f32_value(bits)
    with np.errstate(invalid="ignore"):
        rounded = np.clip(np.rint(value), lo, hi)
    return np.where(np.isnan(value), 0, rounded).astype(np.int64)


# -- the contract on Python floats, for a few lanes at a time ---------------------------------------
#
# The vector unit works on N lanes (8 on the default tile) one element per cycle, where NumPy's
# cost per call, not per lane, is what the cycle model pays. These helpers apply the same
# contract to Python floats (C doubles: the float64 of the functions above), with `struct`'s
# native 'f' format for the conversions between FP32 bits and floats: its unpack is the C cast
# float -> double and its pack the C cast double -> float (round to nearest even, overflow to
# infinity), the casts NumPy's `astype` makes. `d1tile.sim.vector` builds the unit's ops from
# them; `tests/test_vector.py` checks every op against the NumPy references above.

_NAN = float("nan")


def _native_floats_convert_as_numpy() -> bool:
    """Whether this Python's native 'f' struct format converts as `f32_value` and `f32_result`
    need (little-endian words, RNE, overflow to infinity without an exception, Python's NaN to
    the canonical NaN): checked once, at import. Where it does not, `FLOAT_LANES` is False and
    the models use the NumPy references."""
    try:
        return (sys.byteorder == "little"
                and struct.pack("2f", 2.0 ** 128, -(2.0 ** 128 - 2.0 ** 103))
                == struct.pack("<2I", 0x7F80_0000, F32_NEG_INF)
                and struct.pack("2f", 1 + 2.0 ** -24, 1 + 3 * 2.0 ** -24)
                == struct.pack("<2I", 0x3F80_0000, 0x3F80_0002)
                and struct.pack("f", _NAN) == struct.pack("<I", F32_NAN)
                and struct.unpack("f", struct.pack("<I", 0x0000_0001))[0] == 2.0 ** -149)
    except (OverflowError, struct.error):
        return False


FLOAT_LANES = _native_floats_convert_as_numpy()
"""Whether `read_floats` / `round_floats` with struct's native 'f' format reproduce the NumPy
references on this platform (see `_native_floats_convert_as_numpy`)."""


def read_floats(values) -> list:
    """FP32 operands as the datapath reads them, from the Python floats struct's native 'f'
    format unpacks their bits to: subnormals become zeros of their sign (`f32_value`; 0.0 x v
    keeps v's sign), NaNs stay NaN."""
    return [0.0 * v if -MIN_NORMAL < v < MIN_NORMAL else v for v in values]


def round_floats(values) -> list:
    """`f32_result` on Python floats up to the final cast: the floats that struct's native 'f'
    format packs to the contract's FP32 bits. A value below the flush threshold becomes a zero
    of its sign, a NaN Python's NaN (which packs to the canonical NaN); the pack itself rounds
    to nearest even and overflows to infinity. Like `f32_result`, for exact results or sums of
    two FP32 values (module docstring)."""
    return [_NAN if v != v else 0.0 * v if -_FLUSH_BELOW < v < _FLUSH_BELOW else v
            for v in values]


# -- the stochastic-rounding generator ----------------------------------------------------------

RNG_INCREMENT = 0x9E37_79B9
"""Lane l of a generator seeded with s starts from s + (l + 1) * RNG_INCREMENT (mod 2**32)."""


def xorshift32(state: int) -> int:
    """One step of Marsaglia's xorshift32 (13, 17, 5): a bijection of the nonzero 32-bit values."""
    state ^= (state << 13) & 0xFFFF_FFFF
    state ^= state >> 17
    state ^= (state << 5) & 0xFFFF_FFFF
    return state


def rng_seed_states(seed: int, lanes: int) -> list[int]:
    """The lane states after seeding with `seed` (32 bits): (seed + (l + 1) * RNG_INCREMENT)
    mod 2**32, and RNG_INCREMENT where that is 0 (xorshift32 would stay at 0 forever)."""
    if not 0 <= seed < 1 << 32:
        raise ValueError(f"seed={seed} must be a 32-bit unsigned value")
    states = []
    for lane in range(lanes):
        state = (seed + (lane + 1) * RNG_INCREMENT) & 0xFFFF_FFFF
        states.append(state or RNG_INCREMENT)
    return states


def rng_next(states: list[int]) -> tuple[list[int], np.ndarray]:
    """Advance every lane once: (the new states, their low 16 bits, the random values one
    stochastic conversion of a word uses, lane by lane)."""
    new = [xorshift32(s) for s in states]
    return new, np.array([s & 0xFFFF for s in new], dtype=np.uint32)


# -- operands at the contract's edges, for tests and random programs ----------------------------

SPECIAL_FP32 = (
    0x0000_0000, 0x8000_0000, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_1234, 0x7F80_0001,
    0xFFBF_FFFF, 0x0000_0001, 0x807F_FFFF, 0x0080_0000, 0x8080_0000, 0x0080_0001, 0x7F7F_FFFF,
    0xFF7F_FFFF, 0x3F80_0000, 0xBF80_0000, 0x3F80_0001, 0xBF80_0001, 0x3F7F_FFFF, 0x3380_0000,
    0x4B00_0000, 0x4B00_0001, 0x4B80_0000, 0xCF00_0000, 0x4EFF_FFFF, 0x4F00_0000, 0x3F00_0000,
    0xBF40_0000, 0x4040_0000, 0x42FF_0000, 0xC300_8000, 0x3F7F_8000, 0x0080_8000, 0x3F80_8000,
    0x3F81_8000,
)
"""FP32 values at the edges of the contract: zeros of both signs, infinities, NaNs with payloads
(quiet, signalling, negative), subnormals, the smallest and largest normals, 1 and its
neighbours, 2**-24 (half an ulp of 1), 2**23 and 2**24 (the integer limits), +-2**31 and below,
0.5 and -0.75 (ties of the integer conversions), 127.5 and -128.5 (int8 ties), values whose
low 16 bits are exactly half a BF16 ulp (ties of the BF16 conversion)."""


def random_fp32(rng, special: float = 0.15) -> int:
    """Random FP32 bits biased to the contract's edges: `special` of them from `SPECIAL_FP32`,
    a third of the rest with exponents at both ends of the range, around 1, at the integer
    limits and the specials (0, 255), the others of moderate size; mantissas sometimes all
    zeros or ones. `rng` is a `random.Random`."""
    r = rng.random()
    if r < special:
        return rng.choice(SPECIAL_FP32)
    sign = rng.getrandbits(1) << 31
    if r < special + (1 - special) / 3:
        exp = rng.choice((0, 1, 2, 125, 126, 127, 128, 150, 157, 158, 253, 254, 255))
    else:
        exp = rng.randint(110, 145)
    mant = rng.getrandbits(23) if rng.random() < 0.8 else rng.choice((0, 1, 0x7FFFFF, 0x400000))
    return sign | exp << 23 | mant
