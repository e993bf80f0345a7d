"""The floating-point RTL (`d1tile.hw.fp`) against the numeric reference (`d1tile.numerics`),
bit for bit, in Amaranth's simulator: random operands biased to the corner cases (zeros of both
signs, subnormals, infinities, NaNs with payloads, the largest and smallest normals, exact
cancellation, ties, products at the flush threshold and at overflow). The same functions are
checked at scale on Verilator through the matrix and vector unit benches."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from conftest import SESSION_SEED
from d1tile import numerics as nx
from d1tile.hw import fp


VECTORS = int(os.environ.get("D1TILE_FP_VECTORS", "1600"))
"""Random vectors per test (more for a long run: D1TILE_FP_VECTORS=100000)."""


def rand32(rng: random.Random) -> int:
    return nx.random_fp32(rng)


def operand_pairs(rng: random.Random, count: int):
    pairs = []
    for k in range(count):
        a = rand32(rng)
        kind = k % 4
        if kind == 0:
            b = rand32(rng)
        elif kind == 1:                      # cancellation: b close to -a
            b = (a ^ 0x8000_0000) + rng.randint(-2, 2) & 0xFFFF_FFFF
        elif kind == 2:                      # b half an ulp of a (ties), or near it
            e = max(1, ((a >> 23) & 0xFF) - 24 + rng.randint(-1, 1))
            b = rng.getrandbits(1) << 31 | min(e, 254) << 23 | rng.choice([0, 0, 1, 0x7FFFFF])
        else:                                # products near the flush threshold / overflow
            ea = rng.randint(1, 254)
            eb = max(1, min(254, rng.choice([127 - ea + 127 - 127, 254 - ea + 127]) +
                            rng.randint(-1, 1)))
            a = rng.getrandbits(1) << 31 | ea << 23 | rng.getrandbits(23)
            b = rng.getrandbits(1) << 31 | eb << 23 | rng.getrandbits(23)
        pairs.append((a, b))
    return pairs


def simulate(build, inputs, vectors):
    """Run a combinational module: `build(m, *input signals)` returns {name: output}; every
    vector of `vectors` sets the inputs; returns {name: [values]}."""
    m = Module()
    signals = [Signal(width, name=name) for name, width in inputs]
    outputs = build(m, *signals)
    got = {name: [] for name in outputs}

    async def bench(ctx):
        for vector in vectors:
            for sig, value in zip(signals, vector):
                ctx.set(sig, value)
            for name, out in outputs.items():
                got[name].append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


def as_u32(values):
    return [v & 0xFFFF_FFFF for v in values]


def check(name, got, expected, vectors):
    got = [int(g) for g in got]
    expected = [int(e) for e in np.asarray(expected).ravel()]
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not bad, (f"{name}: {len(bad)} of {len(got)} differ (seed {SESSION_SEED}); first: "
                     f"operands {[hex(v) for v in vectors[bad[0]]]}, RTL {got[bad[0]]:#x}, "
                     f"reference {expected[bad[0]]:#x}")


def test_add_mul_max_match_the_reference():
    rng = random.Random(SESSION_SEED)
    vectors = operand_pairs(rng, VECTORS)

    def build(m, a, b):
        x = fp.unpack_fp32(m, a, "x")
        y = fp.unpack_fp32(m, b, "y")
        return {"add": fp.fp_add(m, x, y, "add"), "mul": fp.fp_mul(m, x, y, "mul"),
                "max": fp.fp32_max(m, a, b, "max"), "canon": fp.fp32_canonical(m, a, "canon"),
                "gt0": fp.fp32_gt_zero(a)}

    got = simulate(build, [("a", 32), ("b", 32)], vectors)
    a = [v[0] for v in vectors]
    b = [v[1] for v in vectors]
    check("add", got["add"], nx.fp32_add(a, b), vectors)
    check("mul", got["mul"], nx.fp32_mul(a, b), vectors)
    check("max", got["max"], nx.fp32_max(a, b), vectors)
    check("canonical", got["canon"], nx.f32_canonical(a), vectors)
    check("> 0", got["gt0"], nx.f32_value(a) > 0, vectors)
    # the corner cases were reached
    results = np.array(got["add"] + got["mul"], dtype=np.uint64)
    exps = (results >> 23) & 0xFF
    assert (results == nx.F32_NAN).sum() > 10 and (exps == 0xFF).sum() > 30
    assert ((exps == 0) & (results & 0x7FFF_FFFF == 0)).sum() > 30 and (exps == 1).sum() > 5


def test_bf16_fused_multiply_add_matches_the_reference():
    rng = random.Random(SESSION_SEED + 1)
    vectors = []
    for _ in range(VECTORS):
        acc = rand32(rng)
        a, b = rand32(rng) >> 16, rand32(rng) >> 16
        if rng.random() < 0.2:               # a tie: the product is half an ulp of acc
            e = rng.randint(30, 220)
            acc = rng.getrandbits(1) << 31 | e << 23 | rng.getrandbits(23)
            a, b = (rng.getrandbits(1) << 15) | (e - 24) << 7, 127 << 7
        vectors.append((acc, a, b))

    def build(m, acc, a, b):
        x = fp.unpack_fp32(m, acc, "acc")
        pa = fp.unpack_bf16(m, a, "a")
        pb = fp.unpack_bf16(m, b, "b")
        product = fp.bf16_product(m, pa, pb, pa.sig[16:24] * pb.sig[16:24], "p")
        return {"mac": fp.fp_add(m, x, product, "mac")}

    got = simulate(build, [("acc", 32), ("a", 16), ("b", 16)], vectors)
    acc, a, b = zip(*vectors)
    check("bf16 mac", got["mac"], nx.bf16_mac(acc, a, b), vectors)


def test_conversions_match_the_reference():
    rng = random.Random(SESSION_SEED + 2)
    vectors = [(rand32(rng), rng.getrandbits(16), rng.getrandbits(16),
                rng.choice([rng.getrandbits(32), rng.choice([0, 1, 0xFFFF_FFFF, 0x8000_0000,
                                                             0x7FFF_FFFF, 1 << 24, (1 << 24) + 1,
                                                             0xFF00_0001])]))
               for _ in range(VECTORS)]
    vectors += [(v, 0, 0, 0) for v in nx.SPECIAL_FP32]

    def build(m, a, r, h, i):
        return {"rne": fp.bf16_from_fp32_rne(m, a, "rne"),
                "sr": fp.bf16_from_fp32_sr(m, a, r, "sr"),
                "widen": fp.fp32_from_bf16(m, h, "widen"),
                "itof": fp.fp32_from_int(m, i, "itof"),
                "ftoi": fp.int_from_fp32(m, a, -2**31, 2**31 - 1, "ftoi"),
                "ftoi8": fp.int_from_fp32(m, a, -128, 127, "ftoi8")}

    got = simulate(build, [("a", 32), ("r", 16), ("h", 16), ("i", 32)], vectors)
    a, r, h, i = (list(col) for col in zip(*vectors))
    ints = np.array(i, dtype=np.uint32).view(np.int32)
    check("fp32 -> bf16 rne", got["rne"], nx.bf16_from_f32_rne(a), vectors)
    check("fp32 -> bf16 sr", got["sr"], nx.bf16_from_f32_sr(a, r), vectors)
    check("bf16 -> fp32", got["widen"], nx.f32_from_bf16(h), vectors)
    check("int32 -> fp32", got["itof"], nx.f32_from_int(ints), vectors)
    check("fp32 -> int32", as_u32(got["ftoi"]),
          nx.int_from_f32(a, -2**31, 2**31 - 1).astype(np.int64) & 0xFFFF_FFFF, vectors)
    check("fp32 -> int8", as_u32(got["ftoi8"]),
          nx.int_from_f32(a, -128, 127).astype(np.int64) & 0xFFFF_FFFF, vectors)


def test_leading_zeros():
    vectors = [(v,) for v in [0, 1, 2, 3, 1 << 26, (1 << 27) - 1, 12345]]
    got = simulate(lambda m, v: {"lz": fp.leading_zeros(m, v, "lz")}, [("v", 27)], vectors)
    assert got["lz"] == [27, 26, 25, 25, 0, 0, 27 - (12345).bit_length()]
