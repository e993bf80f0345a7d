"""The ONNX package's own operator test cases (`onnx.backend.test.case.node`: the wheel does not
ship the data folder, the module generates the cases) for every op the compiler claims, compiled
with int8 and run on the cycle model (docs/compiler_frontend.md, "Conformance").

Each case is one node with its inputs and expected outputs. The harness makes the first graph
input the activation and freezes the others (weights, biases, shapes: what the compiler needs
as constants) into initializers with the case's values, calibrates on the input itself, and
runs the default tile. A case is then either *refused* (a `CompileError`, one line naming the
node and the reason) or *matched*: the tile's int8 outputs equal the integer reference bit for
bit, and the outputs (dequantised, host ops applied) are within the bound derived below of the
expected ones. Anything else (a wrong answer, any other exception) fails the test.

The bound, per output element, from the per-tensor int8 steps (s_x input, s_W weight, s_y
output; rounding to nearest, so each quantised value is within half a step), for the op the
case lowers to:

* gemm / conv (and a BatchNormalization folded into one): y = sum_k w_k x_k + b against
  s_y round(m' acc) with acc = sum W_q x_q + b_q and m' the REQUANT multiplier:
  |dy| <= (s_x / 2) sum_k |w_k| + (s_W / 2) sum_k |x^_k| + s_x s_W / 2 (the bias) + s_y / 2 +
  eps |acc s_x s_W|, where x^ is the dequantised input and eps the multiplier's relative error
  (|m' - m| / m: 16-bit scale and a shift);
* add of a constant (the vector unit: FP32(a_q) x FP32(s_a / s_y) + FP32(c / s_y), rounded to
  nearest even): s_a / 2 + s_y / 2 + 4 x 2^-24 (|a^| + |c|) (four FP32 roundings);
* maxpool, relu, flatten, reshape (int8 values moved or compared): s_x / 2;
* avgpool (the FP32 sum of the int8 taps, exact, times FP32(1 / count), rounded to nearest
  even): s_x / 2 + s_y / 2 + 2 x 2^-24 |x^| (the mean of values each within s_x / 2);
* softmax (on the host, after the tile): half the largest input error (sum_j |dp_i / dz_j| =
  2 p_i (1 - p_i) <= 1/2), s_x / 4 when its input comes straight from the host.

bf16 (`run_case_bf16`): bit-exact with the BF16/FP32 reference, and within `bf16_bound`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from functools import cache

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from d1tile.params import TileConfig
from d1tile.sw.compiler import compile_model, execute
from d1tile.sw.errors import CompileError
from d1tile.sw.quant import _conv_product, _max_scale, finish_on_host, run_float
from d1tile.sw.runtime import get_device

CLAIMED = ["Add", "AveragePool", "BatchNormalization", "Conv", "Flatten", "Gemm",
           "GlobalAveragePool", "GlobalMaxPool", "MatMul", "MaxPool", "Relu", "Reshape",
           "Softmax"]
CFG = TileConfig.preset("default")


def collect() -> list:
    """The operator test cases of the claimed ops (one node each), by name."""
    from onnx.backend.test.case import node as cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # some generators divide by zero on purpose
        found = cases.collect_testcases(None)
    return sorted((c for c in found if c.kind == "node" and len(c.model.graph.node) == 1
                   and c.model.graph.node[0].op_type in CLAIMED), key=lambda c: c.name)


def frozen(case):
    """(model, x, expected outputs): inputs after the first become initializers."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, expected = case.data_sets[0]
    graph_inputs = list(model.graph.input)
    for vi, value in zip(graph_inputs[1:], inputs[1:]):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
        model.graph.input.remove(vi)
    return model, inputs[0], expected


F32_EPS = 2.0 ** -24
"""The relative error of one FP32 rounding to nearest."""


def _requant_eps(op) -> float:
    if not op.requantizes or np.ndim(op.scale):
        return 0.0
    return abs(op.scale / 2.0 ** op.shift - op.multiplier) / op.multiplier


def bound(compiled, x) -> dict:
    """The derived bound (module docstring) for every tensor, per element, as far as the graph
    goes: each op's bound on its output, with its input's error carried through where the op
    only moves or compares values (a chain of one tile op and host ops, as these cases are)."""
    q = compiled.qgraph
    graph = q.graph
    s = q.scales
    err = {name: np.full(graph.shape(name), s[name] / 2) for name in q.inputs}
    for op in q.ops:
        src = op.inputs[0]
        assert src in q.inputs or op.op in ("maxpool", "relu", "flatten", "reshape"), \
            f"no bound for {op.op} after another tile op"
        sx, sy = s[src], s[op.output]
        xhat = np.abs(np.clip(np.rint(np.asarray(x, np.float64) / sx), -128, 127) * sx)
        if op.op in ("gemm", "conv"):
            node = graph.node(op.name.split("+")[0])
            w = np.abs(graph.initializers[node.inputs[1]].astype(np.float64))
            b = np.abs(graph.initializers[node.inputs[2]].astype(np.float64))
            sw = _max_scale(graph.initializers[node.inputs[1]])     # the weight step, as quantised
            if op.op == "gemm":
                sum_w = np.ones_like(xhat) @ w
                sum_x = xhat @ np.ones_like(w)
            else:
                sum_w = _conv_product(np.ones_like(xhat), w, op.attrs)
                sum_x = _conv_product(xhat, np.ones_like(w), op.attrs)
                b = b[:, None, None]
            # sum x^ w^ - sum x w = sum x^ (w^ - w) + sum w (x^ - x); |acc s_x s_W| bounded by
            # sum |x^| |w^| + |b^|
            acc = sum_x * ((w.max() if w.size else 0.0) + sw / 2) + b + sx * sw / 2
            err[op.output] = (sx / 2 * sum_w + sw / 2 * sum_x + sx * sw / 2 + sy / 2
                              + _requant_eps(op) * acc)
        elif op.op == "add" and len(op.inputs) == 1:
            # FP32(x_q) x FP32(s_x / s_y) + FP32(c / s_y), rounded to nearest: the input's half
            # step, the output's half step, and four FP32 roundings (q, the product, the
            # constant, the sum: 2^-22 relative) of |x^| + |c|
            c = np.abs(op.const) * sy
            err[op.output] = np.broadcast_to(sx / 2 + sy / 2 + F32_EPS * 4 * (np.abs(xhat) + c),
                                             graph.shape(op.output)).copy()
        elif op.op in ("maxpool", "relu", "flatten", "reshape"):
            err[op.output] = np.full(graph.shape(op.output), np.max(err[src]))
        elif op.op == "avgpool":
            # the FP32 sum of int8 values is exact; FP32(1 / count) and the product round
            err[op.output] = np.full(graph.shape(op.output), np.max(err[src]) + sy / 2
                                     + F32_EPS * 2 * xhat.max())
        else:
            raise AssertionError(f"no bound for {op.op}")
    for node in q.host_nodes:
        assert node.op == "softmax", node.op
        err[node.output] = np.full(graph.shape(node.output), np.max(err[node.inputs[0]]) / 2)
    return err


def run_case(case) -> tuple[str, str]:
    """("matched" or "refused", the detail); raises AssertionError for a wrong answer."""
    model, x, expected = frozen(case)
    try:
        compiled = compile_model(model, CFG, x)
    except CompileError as e:
        assert "\n" not in str(e), str(e)
        return "refused", str(e)
    run = execute(compiled, get_device("model", CFG), x)
    assert run.max_abs_diff == 0, f"{case.name}: the tile differs from the integer reference"
    outputs = finish_on_host(compiled.qgraph, run.outputs)
    tol = bound(compiled, x)
    worst = 0.0
    for vi, want in zip(case.model.graph.output, expected):
        got = outputs[vi.name]
        assert got.shape == want.shape, (case.name, got.shape, want.shape)
        excess = np.abs(got - want) - tol[vi.name]
        assert np.all(excess <= 1e-6 * (1 + np.abs(want))), \
            f"{case.name}: {vi.name} is off by {np.max(np.abs(got - want)):.4g}, beyond the bound"
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(tol[vi.name], 1e-30))))
    return "matched", f"error at most {worst:.2f} of the bound"


BF16_U = 2.0 ** -8
"""The unit roundoff of BF16 (8 significant bits), rounding to nearest."""


def bf16_bound(compiled, x) -> dict:
    """Per graph output element, the bound of the bf16 pipeline (module docstring, "bf16"):
    (3 u + K 2^-24) M, with M the op's value on |x| and the absolute weights (`run_float` on
    them: sum |x| |w| + |b| for a gemm or conv, |a| + |b| for an add, the largest or the mean
    |x| of a window) and K the input's elements per sample (+ 1 for the bias); half the input's
    bound after a host softmax."""
    graph = compiled.graph.copy()
    graph.initializers = {k: np.abs(v) for k, v in graph.initializers.items()}
    name = graph.inputs[0]
    magnitude = run_float(graph, {name: np.abs(np.asarray(x, np.float32))}, keep=True)
    k = int(np.prod(graph.shape(name)[1:])) + 1
    rel = 3 * BF16_U + k * F32_EPS
    host = {node.output: node for node in compiled.qgraph.host_nodes}
    out = {}
    for o in graph.outputs:
        if o in host:
            out[o] = np.full(graph.shape(o), rel * np.max(magnitude[host[o].inputs[0]]) / 2)
        else:
            out[o] = rel * np.asarray(magnitude[o], np.float64)
    return out


def run_case_bf16(case) -> tuple[str, str]:
    """The case in bf16: refused, or bit-exact with the BF16/FP32 reference and within
    `bf16_bound` of the expected outputs."""
    model, x, expected = frozen(case)
    try:
        compiled = compile_model(model, CFG, None, dtype="bf16")
    except CompileError as e:
        assert "\n" not in str(e), str(e)
        return "refused", str(e)
    run = execute(compiled, get_device("model", CFG), x)
    assert run.bit_exact, f"{case.name}: the tile differs from the bf16 reference"
    outputs = finish_on_host(compiled.qgraph, run.outputs)
    tol = bf16_bound(compiled, x)
    worst = 0.0
    for vi, want in zip(case.model.graph.output, expected):
        got = outputs[vi.name]
        excess = np.abs(got - want) - tol[vi.name]
        assert np.all(excess <= 1e-30), \
            f"{case.name}: {vi.name} is off by {np.max(np.abs(got - want)):.4g} in bf16"
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(tol[vi.name], 1e-30))))
    return "matched", f"error at most {worst:.2f} of the bound"


def test_onnx_operator_cases_in_bf16():
    """The same cases in bf16: every one that int8 matches is matched here too (bit-exact with
    the bf16 reference, within the bf16 bound), none wrong or crashing; prints the counts."""
    outcomes = {case.name: run_case_bf16(case) for case in collect()}
    counts = Counter(kind for kind, _ in outcomes.values())
    print(f"\nONNX operator cases in bf16: {len(outcomes)}, matched {counts['matched']}, "
          f"refused {counts['refused']}")
    for name, (kind, detail) in sorted(outcomes.items()):
        print(f"  {name}: {kind}: {detail}")
    # bf16 runs nothing on the host's behalf: a softmax straight on the input is refused
    # (int8 quantises the input on the tile's behalf and matches those)
    host_only = "a host op reads a graph input directly; nothing would run on the tile"
    missing = [n for n, kind in int8_outcomes().items() if kind[0] == "matched"
               and outcomes[n][0] != "matched" and host_only not in outcomes[n][1]]
    assert not missing, [(n, outcomes[n]) for n in missing]
    assert counts["matched"] >= 55


@cache
def int8_outcomes() -> dict:
    """Every case's int8 outcome (`run_case`), computed once for both tests."""
    return {case.name: run_case(case) for case in collect()}


def test_onnx_operator_cases():
    """Every case of the claimed ops is matched or refused, none wrong or crashing; prints the
    counts and the refusal reasons (docs/compiler_frontend.md quotes them)."""
    outcomes = int8_outcomes()
    counts = Counter(kind for kind, _ in outcomes.values())
    by_op = Counter()
    for case in collect():
        by_op[(case.model.graph.node[0].op_type, outcomes[case.name][0])] += 1
    print(f"\nONNX operator cases: {len(outcomes)}, matched {counts['matched']}, "
          f"refused {counts['refused']}")
    for op in CLAIMED:
        print(f"  {op:20s} matched {by_op[(op, 'matched')]:2d}, refused "
              f"{by_op[(op, 'refused')]:2d}")
    for name, (kind, detail) in sorted(outcomes.items()):
        print(f"  {name}: {kind}: {detail}")
    assert len(outcomes) >= 100
    # What the support table (docs/compiler_frontend.md) claims must be matched, not refused:
    # every 2-D convolution case, Gemm with alpha, beta and transB, global pools, softmax
    # along a non-batch axis, relu, the batch-preserving reshapes and flatten along axis 1.
    required = [name for name in outcomes if name.startswith((
        "test_basic_conv", "test_conv_with", "test_globalaveragepool", "test_globalmaxpool",
        "test_softmax_axis_1", "test_softmax_axis_2", "test_softmax_default",
        "test_softmax_negative", "test_relu", "test_flatten_axis1", "test_flatten_default"))]
    required += ["test_gemm_alpha", "test_gemm_beta", "test_gemm_transposeB", "test_matmul_2d",
                 "test_add_bcast", "test_reshape_reduced_dims", "test_reshape_negative_dim"]
    assert len(required) >= 20
    refused = [name for name in required if outcomes[name][0] != "matched"]
    assert not refused, [(name, outcomes[name]) for name in refused]
