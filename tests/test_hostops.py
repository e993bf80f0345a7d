"""The host's softmax cross-entropy (`d1tile.hostops.softmax_xent_f32`), the one floating-point
path of training that runs on the host: against float64 on ordinary logits, exact on ties, and
its corner cases (infinities, NaN, subnormals, huge logits), each row on its own."""

import math

import numpy as np
import pytest

from conftest import bench_seed
from d1tile import numerics
from d1tile.hostops import softmax_xent_f32

f32 = np.float32


def run(z, labels, inv_b=1.0):
    per, dz = softmax_xent_f32(numerics.f32_bits(np.asarray(z, dtype=np.float64)), labels,
                               f32(inv_b))
    return per, numerics.f32_value(dz)


def test_close_to_float64_on_ordinary_logits():
    rng = np.random.default_rng(bench_seed())
    z = (rng.standard_normal((16, 10)) * 4).astype(np.float32)
    y = rng.integers(0, 10, size=16)
    per, dz = run(z, y, 1 / 16)
    for b in range(16):
        zs = [float(v) for v in z[b]]
        m = max(zs)
        s = math.fsum(math.exp(v - m) for v in zs)
        assert per[b] == pytest.approx(math.log(s) - (zs[y[b]] - m), rel=1e-5, abs=1e-6)
        for j in range(10):
            want = (math.exp(zs[j] - m) / s - (j == y[b])) / 16
            assert dz[b, j] == pytest.approx(want, rel=1e-5, abs=1e-8), (b, j)


@pytest.mark.parametrize("value", [0.0, 5.0, -7.25])
def test_ties_give_the_uniform_distribution_exactly(value):
    """F equal logits: e = 1 each, s = F exactly, so the loss is log(F) and dz is
    fl(1/F) (minus 1 at the label) times 1/B, in float32."""
    f, inv_b = 10, f32(0.125)
    per, dz = run(np.full((2, f), value), [3, 0], inv_b)
    p = f32(1) / f32(f)
    assert per.tolist() == [f32(np.log(f32(f)))] * 2
    want = np.full((2, f), p * inv_b, dtype=np.float32)
    want[0, 3] = want[1, 0] = (p - f32(1)) * inv_b
    assert np.array_equal(dz, want)


def test_minus_infinity_is_a_zero_probability():
    per, dz = run([[-np.inf, 0.0, 0.0], [0.0, 0.0, -np.inf]], [1, 2])
    assert per[0] == f32(np.log(f32(2)))                 # the label is not the -inf class
    assert dz[0].tolist() == [0.0, -0.5, 0.5]
    assert per[1] == np.inf                              # the label has probability 0
    assert dz[1].tolist() == [0.5, 0.5, -1.0]


def test_plus_infinity_and_nan_spoil_their_row_only():
    rows = [[np.inf, 1.0, 2.0], [1.0, np.nan, 0.0], [1.0, 2.0, 3.0]]
    per, dz = run(rows, [0, 0, 2])
    assert np.isnan(per[0]) and np.isnan(dz[0, 0])       # inf - inf
    assert np.isnan(per[1]) and np.isnan(dz[1]).all()
    alone_per, alone_dz = run([rows[2]], [2])
    assert per[2] == alone_per[0] and np.array_equal(dz[2], alone_dz[0])


def test_subnormal_logits_are_zeros_and_huge_ones_do_not_overflow():
    """The datapath reads subnormal FP32 as zero (`numerics.f32_value`), so the host does
    too; logits near FP32's largest give exp(z - m) = 0 for the far ones, never inf/inf."""
    tiny = np.array([[1, 0x80000001, 0]], dtype=np.uint32)      # +min subnormal, -min, +0
    per, dz = softmax_xent_f32(tiny, [0], f32(1))
    zero_per, zero_dz = softmax_xent_f32(np.zeros((1, 3), dtype=np.uint32), [0], f32(1))
    assert per.tolist() == zero_per.tolist() and np.array_equal(dz, zero_dz)
    per, dz = run([[3e38, -3e38, 3e38]], [0])
    assert per[0] == f32(np.log(f32(2)))
    assert dz[0].tolist() == [-0.5, 0.0, 0.5]
