"""Quantisation: requantisation parameters, the integer reference against a straightforward
independent implementation (pure Python loops over the quantised ops, with the vector unit's
per-lane REQUANT for gemm and conv, and IEEE float32 scalars rounded to nearest even for the
vector unit's FP32 add and average), and the toy models' int8 accuracy against the float
reference."""

from __future__ import annotations

from fractions import Fraction
from math import floor

import numpy as np
import pytest

from d1tile.sim.vector import requantize_lane
from d1tile.sw.errors import CompileError
from d1tile.sw import toy_models
from d1tile.sw.graph_api import GraphBuilder
from d1tile.sw.onnx_frontend import load_onnx
from d1tile.sw.quant import (MAX_SHIFT, calibrate, dequantize, int32_accumulators, quant_report,
                             quantize, quantize_tensor, requant_params, run_float, run_int8,
                             run_quantized)


RNG = np.random.default_rng(99)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# --- the independent reference: loops, Python ints, one lane at a time -------------------------

def naive_gemm(q, x):
    """Over the last axis of x [B, ..., K]."""
    out = np.zeros(x.shape[:-1] + (q.weight.shape[1],), np.int64)
    for idx in np.ndindex(*x.shape[:-1]):
        for f in range(q.weight.shape[1]):
            acc = int(q.bias[f]) + sum(int(x[idx + (k,)]) * int(q.weight[k, f])
                                       for k in range(x.shape[-1]))
            out[idx + (f,)] = requantize_lane(acc, q.scale, q.shift, q.relu)
    return out


def _in_bounds(x, c, h, w):
    return 0 <= h < x.shape[2] and 0 <= w < x.shape[3]


def _out_size(n, k, s, d, lo, hi, ceil_mode=False):
    """ONNX's window count along one axis (a last ceil_mode window that would start in the end
    padding is dropped)."""
    span = n + lo + hi - (k - 1) * d - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= n + lo else out


def naive_conv(q, x):
    """Groups: output channel o reads input channels g cg .. (g + 1) cg - 1 of its group g."""
    o_, cg, kh, kw = q.weight.shape
    (sh, sw), (pt, pl, pb, pr) = q.attrs["strides"], q.attrs["pads"]
    dh, dw = q.attrs.get("dilations", (1, 1))
    og = o_ // q.attrs.get("group", 1)
    oh_ = _out_size(x.shape[2], kh, sh, dh, pt, pb)
    ow_ = _out_size(x.shape[3], kw, sw, dw, pl, pr)
    out = np.zeros((x.shape[0], o_, oh_, ow_), np.int64)
    for b in range(x.shape[0]):
        for o in range(o_):
            for oh in range(oh_):
                for ow in range(ow_):
                    acc = int(q.bias[o])
                    for c in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                h, w = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                if _in_bounds(x, c, h, w):
                                    acc += (int(x[b, (o // og) * cg + c, h, w])
                                            * int(q.weight[o, c, i, j]))
                    out[b, o, oh, ow] = requantize_lane(acc, q.scale, q.shift, q.relu)
    return out


def _pool_windows(q, x):
    """Yield (b, c, oh, ow, values inside the input, taps inside the padded extent, output
    size)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = q.attrs["kernel"], q.attrs["strides"], q.attrs["pads"]
    dh, dw = q.attrs.get("dilations", (1, 1))
    ceil_mode = q.attrs.get("ceil_mode", False)
    oh_ = _out_size(x.shape[2], kh, sh, dh, pt, pb, ceil_mode)
    ow_ = _out_size(x.shape[3], kw, sw, dw, pl, pr, ceil_mode)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for oh in range(oh_):
                for ow in range(ow_):
                    taps = [(oh * sh - pt + i * dh, ow * sw - pl + j * dw) for i in range(kh)
                            for j in range(kw)]
                    vals = [int(x[b, c, h, w]) for h, w in taps if _in_bounds(x, c, h, w)]
                    padded = sum(1 for h, w in taps if -pt <= h < x.shape[2] + pb
                                 and -pl <= w < x.shape[3] + pr)
                    yield b, c, oh, ow, vals, padded, (oh_, ow_)


def naive_maxpool(q, x):
    out = None
    for b, c, oh, ow, vals, _, size in _pool_windows(q, x):
        out = np.zeros(x.shape[:2] + size, np.int64) if out is None else out
        out[b, c, oh, ow] = max(vals)
    return out


def f32_to_int8(value) -> int:
    """An FP32 value to int8 as FCVT does: round half to even (Python's round), saturate."""
    return max(-128, min(127, round(float(value))))


def naive_avgpool(q, x):
    """FP32 sum of the window's int8 values, times FP32(1 / divisor), to int8."""
    out = None
    for b, c, oh, ow, vals, padded, size in _pool_windows(q, x):
        out = np.zeros(x.shape[:2] + size, np.int64) if out is None else out
        count = padded if q.attrs["count_include_pad"] else len(vals)
        total = np.float32(0)
        for v in vals:
            total = np.float32(total + np.float32(v))
        out[b, c, oh, ow] = f32_to_int8(np.float32(total * np.float32(1 / count)))
    return out


def naive_add(q, *xs):
    """FP32(a) x q_a + FP32(b) x q_b (or + the constant), ReLU, to int8: float32 scalars."""
    out = np.zeros(xs[0].shape, np.int64)
    const = None if q.const is None else np.broadcast_to(q.const, xs[0].shape[1:])
    for idx in np.ndindex(*xs[0].shape):
        acc = None
        for k, x in zip(q.factors, xs):
            term = np.float32(np.float32(int(x[idx])) * np.float32(k))
            acc = term if acc is None else np.float32(acc + term)
        if const is not None:
            acc = np.float32(acc + np.float32(const[idx[1:]]))
        if q.relu:
            acc = max(acc, np.float32(0))
        out[idx] = f32_to_int8(acc)
    return out


NAIVE = {
    "gemm": naive_gemm, "conv": naive_conv, "maxpool": naive_maxpool, "avgpool": naive_avgpool,
    "add": naive_add,
    "relu": lambda q, x: np.maximum(x, 0),
    "flatten": lambda q, x: x.reshape(len(x), -1),
    "reshape": lambda q, x: x.reshape((len(x),) + tuple(q.attrs["shape"][1:])),
}


def naive_run(qgraph, x):
    """The whole quantised graph, op by op, through NAIVE."""
    values = {qgraph.inputs[0]: quantize_tensor(x, qgraph.scales[qgraph.inputs[0]])}
    for q in qgraph.ops:
        values[q.output] = NAIVE[q.op](q, *[values[i] for i in q.inputs]).astype(np.int8)
    return values


def quantized(graph, calib):
    return quantize(graph, calibrate(graph, calib))


def assert_bit_exact(qgraph, x):
    want = naive_run(qgraph, x)
    got = run_int8(qgraph, x, keep=True)
    for name, value in want.items():
        assert got[name].dtype == np.int8
        np.testing.assert_array_equal(got[name], value, err_msg=name)


# --- requantisation parameters -----------------------------------------------------------------

def test_requant_params_range_and_accuracy():
    for m in np.exp(RNG.uniform(np.log(2.0 ** -40), np.log(2.0 ** 15), 2000)):
        scale, shift = requant_params(m)
        assert 0 < scale < 2 ** 16 and 0 <= shift <= MAX_SHIFT
        if m >= 2.0 ** -31:   # the full 16 bits are used
            assert scale >= 2 ** 15
            assert abs(scale / 2 ** shift - m) <= m * 2.0 ** -15
    assert requant_params(1.0) == (2 ** 15, 15)
    assert requant_params(0.25) == (2 ** 15, 17)


@pytest.mark.parametrize("m,message", [
    (2.0 ** 16, r"^fc: multiplier 6.554e\+04 is too large"),
    (2.0 ** -50, r"^fc: multiplier 8.882e-16 is too small"),
    (0.0, r"^fc: multiplier 0.0 must be positive"),
    (float("nan"), r"^fc: multiplier nan must be positive"),
])
def test_requant_params_rejects(m, message):
    with pytest.raises(CompileError, match=message):
        requant_params(m, "fc")


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 16, 25, 49])
def test_average_rounds_half_up_for_odd_and_power_of_two_counts(count):
    scale, shift = requant_params(1 / count)
    for acc in range(-128 * count, 127 * count + 1):
        assert requantize_lane(acc, scale, shift, 0) == floor(Fraction(acc, count) + Fraction(1, 2))


# --- bit-exactness of the integer reference ----------------------------------------------------

def test_gemm_chain_bit_exact():
    g = GraphBuilder()
    x = g.input("x", (4, 13))
    h = g.relu(g.gemm(x, rand(13, 9), rand(9, scale=0.3), name="fc1"))
    y = g.gemm(h, rand(9, 5), rand(5), name="fc2")
    qgraph = quantized(g.build([y]), rand(64, 13))
    assert [q.name for q in qgraph.ops] == ["fc1+relu1", "fc2"] and qgraph.ops[0].relu
    assert_bit_exact(qgraph, rand(6, 13, scale=1.3))   # includes values beyond calibration


@pytest.mark.parametrize("strides,pads", [((1, 1), (1, 1, 1, 1)), ((2, 2), (0, 1, 2, 1)),
                                          ((2, 1), (0, 0, 0, 0))])
def test_conv_bit_exact(strides, pads):
    g = GraphBuilder()
    x = g.input("x", (2, 3, 7, 6))
    y = g.conv(x, rand(4, 3, 3, 3), rand(4), strides=strides, pads=pads)
    qgraph = quantized(g.build([y]), rand(16, 3, 7, 6))
    assert_bit_exact(qgraph, rand(3, 3, 7, 6))
    acc = int32_accumulators(qgraph, rand(3, 3, 7, 6))[y.name]
    assert acc.dtype == np.int32


@pytest.mark.parametrize("op,kernel,strides,pads,include", [
    ("maxpool", 2, 2, 0, None), ("maxpool", 3, 2, (1, 0, 1, 2), None),
    ("avgpool", 2, 2, 0, False), ("avgpool", 3, 1, 1, False), ("avgpool", 3, 2, 1, True),
    ("avgpool", (2, 3), 1, (1, 0, 0, 2), False),
])
def test_pools_bit_exact(op, kernel, strides, pads, include):
    g = GraphBuilder()
    x = g.input("x", (2, 3, 7, 6))
    c = g.conv(x, rand(4, 3, 1, 1), name="mix")    # a quantised, signed input to pool
    extra = {} if include is None else {"count_include_pad": include}
    y = getattr(g, op)(c, kernel, strides, pads, **extra)
    qgraph = quantized(g.build([y]), rand(16, 3, 7, 6))
    pool = qgraph.ops[-1]
    assert pool.op == op and qgraph.scales[pool.output] == qgraph.scales[pool.inputs[0]]
    assert_bit_exact(qgraph, rand(3, 3, 7, 6))


def test_add_relu_flatten_reshape_bit_exact():
    g = GraphBuilder()
    x = g.input("x", (2, 8))
    a = g.gemm(x, rand(8, 8), name="a")
    b = g.gemm(x, rand(8, 8, scale=0.2), name="b")     # a much smaller scale than a's
    s = g.relu(g.add(a, b, name="sum"))
    r = g.reshape(s, (2, 2, 4))
    t = g.add(g.relu(g.flatten(r)), rand(1, 8, scale=3.0), name="shifted")
    qgraph = quantized(g.build([t]), rand(64, 8))
    summed = qgraph.op("sum")
    assert summed.relu and len(summed.factors) == 2
    s_y = qgraph.scales[summed.output]
    assert summed.factors == tuple(qgraph.scales[i] / s_y for i in summed.inputs)
    shifted = qgraph.op("shifted")
    assert shifted.inputs == [qgraph.ops[-2].output] and shifted.const.shape == (8,)
    assert_bit_exact(qgraph, rand(5, 8, scale=1.5))


def test_conv_then_plane_constant_and_global_avgpool_bit_exact():
    g = GraphBuilder()
    x = g.input("x", (2, 3, 5, 5))
    c = g.add(g.conv(x, rand(4, 3, 3, 3), rand(4), name="conv"), rand(4, 3, 3), name="plane")
    y = g.avgpool(g.relu(c), 3)
    qgraph = quantized(g.build([g.flatten(y)]), rand(16, 3, 5, 5))
    assert [q.op for q in qgraph.ops] == ["conv", "add", "avgpool", "flatten"]
    assert qgraph.op("plane").const.shape == (4, 3, 3)
    assert_bit_exact(qgraph, rand(3, 3, 5, 5))


def test_results_do_not_depend_on_the_batch():
    toy = toy_models.cnn_model()
    graph = load_onnx(toy.model)
    qgraph = quantized(graph, toy.calib_x)
    whole = run_int8(qgraph, toy.test_x[:20])["logits"]
    one_by_one = np.concatenate([run_int8(qgraph, toy.test_x[i:i + 1])["logits"]
                                 for i in range(20)])
    np.testing.assert_array_equal(whole, one_by_one)


# --- the toy models ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_toy_model_int8_accuracy(name):
    toy = toy_models.TOY_MODELS[name]()
    graph = load_onnx(toy.model)
    qgraph = quantized(graph, toy.calib_x)
    report = quant_report(graph, qgraph, toy.test_x, toy.test_y)
    assert report.float_accuracy == pytest.approx(toy.float_accuracy)
    assert report.int8_accuracy >= report.float_accuracy - 0.03, str(report)
    assert report.agreement >= 0.97, str(report)
    assert report.max_abs_error < 0.25 * report.max_abs_value, str(report)
    assert qgraph.outputs == ["logits"] and [n.op for n in qgraph.host_nodes] == ["softmax"]
    for q in qgraph.ops:
        if q.requantizes:
            assert 0 < np.min(q.scale) and np.max(q.scale) < 2 ** 16
            assert 0 <= np.min(q.shift) and np.max(q.shift) <= MAX_SHIFT
        if q.weight is not None:
            assert q.weight.dtype == np.int8 and np.abs(q.weight.astype(int)).max() <= 127
            assert q.bias.dtype == np.int32
    assert_bit_exact(qgraph, toy.test_x[:6])


def test_host_softmax_runs_on_dequantised_logits():
    toy = toy_models.mlp_model()
    graph = load_onnx(toy.model)
    qgraph = quantized(graph, toy.calib_x)
    probs = run_quantized(qgraph, toy.test_x)["probs"]
    logits = dequantize(run_int8(qgraph, toy.test_x)["logits"], qgraph.scales["logits"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True))
    text = str(qgraph)
    assert "fc1+relu1" in text and "host   probs = softmax(logits)" in text


# --- quantisation errors -----------------------------------------------------------------------

def test_missing_scale_is_a_compile_error():
    g = GraphBuilder()
    x = g.input("x", (2, 4))
    graph = g.build([g.gemm(x, rand(4, 3), name="fc")])
    with pytest.raises(CompileError,
                       match=r"^tensor 'x': no int8 scale \(the model's Q/DQ pairs give none"):
        quantize(graph, {})


def test_bias_that_cannot_fit_int32_is_a_compile_error():
    g = GraphBuilder()
    x = g.input("x", (2, 4))
    graph = g.build([g.gemm(x, rand(4, 3) * 1e-6, np.full(3, 1e6), name="fc")])
    with pytest.raises(CompileError, match=r"^node 'fc' \(gemm\): the bias reaches .* may "
                                           r"overflow int32"):
        quantized(graph, rand(8, 4))


def test_out_of_range_multiplier_is_a_compile_error():
    g = GraphBuilder()
    x = g.input("x", (2, 4))
    graph = g.build([g.gemm(x, rand(4, 3), name="fc")])
    scales = calibrate(graph, rand(8, 4))
    scales["fc"] = 1e-12
    with pytest.raises(CompileError, match=r"^node 'fc' \(gemm\): multiplier .* is too large"):
        quantize(graph, scales)


def test_run_checks_its_inputs():
    g = GraphBuilder()
    x = g.input("x", (2, 4))
    graph = g.build([g.relu(x)])
    with pytest.raises(ValueError, match=r"input 'x' has shape \[2, 5\]; expected \[batch, 4\]"):
        run_float(graph, rand(2, 5))
