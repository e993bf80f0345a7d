"""The compiler's front ends: ONNX import, the Python graph API and the IR they share.

Every supported op is checked against ONNX's own reference evaluator (`onnx.reference`, the
operator semantics in NumPy) through `run_float`; every rejection path is checked for its
message (node, op, reason) and for being a `CompileError`.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from d1tile.sw.errors import CompileError
from d1tile.sw.graph_api import GraphBuilder
from d1tile.sw.ir import Graph, Node, Tensor, normalize
from d1tile.sw.onnx_frontend import LOWERINGS, load_onnx
from d1tile.sw import toy_models
from d1tile.sw.quant import run_float


RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make_model(nodes, inputs: dict, initializers: dict | None = None, outputs=("y",),
               opset: int = 13, check: bool = True) -> onnx.ModelProto:
    """A model from nodes; output types are filled in by ONNX shape inference unless `outputs`
    gives them ({name: shape})."""
    shapes = outputs if isinstance(outputs, dict) else dict.fromkeys(outputs)
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model) if check else model


def check_against_onnx(model, feeds: dict, **load_kw) -> Graph:
    """load_onnx + run_float agree with onnx.reference on `feeds`; returns the IR graph."""
    graph = load_onnx(model, **load_kw)
    want = ReferenceEvaluator(model).run(None, feeds)
    got = run_float(graph, feeds)
    for name, expected in zip([o.name for o in model.graph.output], want):
        assert got[name].shape == expected.shape
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)
    return graph


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


# --- the toy models ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_toy_model_imports_and_matches_onnx(name):
    toy = toy_models.TOY_MODELS[name]()
    graph = load_onnx(toy.model)
    expected_ops = {"mlp": ["gemm", "relu", "gemm", "softmax"],
                    "cnn": ["conv", "relu", "maxpool", "flatten", "gemm", "softmax"]}[name]
    assert ops(graph) == expected_ops
    feeds = {"x": toy.test_x[:8]}
    want = ReferenceEvaluator(toy.model).run(None, feeds)[0]
    np.testing.assert_allclose(run_float(graph, feeds)["probs"], want, rtol=1e-5, atol=1e-6)
    # The references run any batch; the float accuracy is the one the example reports.
    probs = run_float(graph, toy.test_x)["probs"]
    assert np.mean(probs.argmax(1) == toy.test_y) == pytest.approx(toy.float_accuracy)
    assert toy.float_accuracy > 0.9


def test_toy_model_from_file_and_bytes(tmp_path):
    toy = toy_models.mlp_model()
    path = tmp_path / "mlp.onnx"
    onnx.save(toy.model, path)
    assert str(load_onnx(path)) == str(load_onnx(str(path))) == str(load_onnx(path.read_bytes()))


def test_external_weight_data(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(toy_models.mlp_model().model, path, save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    assert load_onnx(path).initializers["fc1.W"].shape == (64, 64)
    (tmp_path / "weights.bin").unlink()
    reject(path, r"mlp.onnx': cannot read its external weight data")


def test_graph_api_builds_the_same_ir_as_onnx():
    w1, b1, w2, b2 = toy_models._train_mlp()
    g = GraphBuilder("mlp")
    x = g.input("x", (8, 64))
    h = g.relu(g.gemm(x, w1, b1, name="fc1"))
    y = g.softmax(g.gemm(h, w2, b2, name="fc2"))
    built = g.build(outputs=[y])
    imported = load_onnx(toy_models.mlp_model().model)
    assert ops(built) == ops(imported)
    for a, b in zip(built.nodes, imported.nodes):
        assert a.attrs == b.attrs
        for i, j in zip(a.inputs[1:], b.inputs[1:]):
            np.testing.assert_array_equal(built.initializers[i], imported.initializers[j])
    x = toy_models.digits_split()[2][:20]
    np.testing.assert_allclose(run_float(built, x)[y.name], run_float(imported, x)["probs"])


def test_graph_api_cnn_and_pretty_print():
    wc, bc, wf, bf = toy_models._train_cnn()
    g = GraphBuilder("cnn")
    x = g.input("x", (8, 1, 8, 8))
    h = g.maxpool(g.relu(g.conv(x, wc, bc, pads=1, name="conv1")), 2)
    logits = g.gemm(g.flatten(h), wf, bf, name="fc")
    graph = g.build(outputs=[g.softmax(logits)])
    imported = load_onnx(toy_models.cnn_model().model)
    assert ops(graph) == ops(imported)
    assert [n.attrs for n in graph.nodes] == [n.attrs for n in imported.nodes]
    text = str(graph)
    assert "conv(x, conv1.W<8x1x3x3>, conv1.b<8>) strides=[1, 1] pads=[1, 1, 1, 1]" in text
    assert "[host]" in text.splitlines()[-2]


# --- every supported op against onnx.reference -------------------------------------------------

def test_matmul_add_folds_into_one_gemm():
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
                        helper.make_node("Add", ["m", "b"], ["y"], name="bias")],
                       {"x": [4, 6]}, {"W": rand(6, 5), "b": rand(5)})
    graph = check_against_onnx(model, {"x": rand(4, 6)})
    assert ops(graph) == ["gemm"] and graph.outputs == ["y"]


def test_matmul_alone_and_add_with_a_constant_after_relu():
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
                        helper.make_node("Relu", ["m"], ["r"], name="relu"),
                        helper.make_node("Add", ["c", "r"], ["y"], name="shift")],
                       {"x": [3, 6]}, {"W": rand(6, 5), "c": rand(1, 5)})
    graph = check_against_onnx(model, {"x": rand(3, 6)})
    assert ops(graph) == ["gemm", "relu", "add"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (1,), ()])
def test_gemm(trans_b, c_shape):
    w = rand(5, 6) if trans_b else rand(6, 5)
    inits = {"W": w}
    inputs = ["x", "W"]
    if c_shape is not None:
        inits["C"] = rand(*c_shape)
        inputs.append("C")
    model = make_model([helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b)],
                       {"x": [4, 6]}, inits)
    assert ops(check_against_onnx(model, {"x": rand(4, 6)})) == ["gemm"]


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"strides": [2, 2], "pads": [0, 1, 2, 1]},          # asymmetric pads
    {"strides": [2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"auto_pad": "VALID", "kernel_shape": [3, 3]},
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, bias):
    inits = {"W": rand(4, 3, 3, 3)}
    if bias:
        inits["B"] = rand(4)
    node = helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["y"], name="conv",
                            **attrs)
    graph = check_against_onnx(make_model([node], {"x": [2, 3, 7, 6]}, inits),
                               {"x": rand(2, 3, 7, 6)})
    assert ops(graph) == ["conv"]


def test_conv_bias_add_folds():
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
                        helper.make_node("Add", ["c", "b"], ["y"], name="bias")],
                       {"x": [2, 3, 5, 5]}, {"W": rand(4, 3, 3, 3), "b": rand(1, 4, 1, 1)})
    assert ops(check_against_onnx(model, {"x": rand(2, 3, 5, 5)})) == ["conv"]


def test_add_that_is_not_per_channel_stays_an_add():
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
                        helper.make_node("Add", ["c", "b"], ["y"], name="plane")],
                       {"x": [2, 3, 5, 5]}, {"W": rand(4, 3, 3, 3), "b": rand(4, 3, 3)})
    assert ops(check_against_onnx(model, {"x": rand(2, 3, 5, 5)})) == ["conv", "add"]


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 2]}),
    ("MaxPool", {"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER"}),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER", "strides": [2, 2]}),
])
def test_pools(op, attrs):
    node = helper.make_node(op, ["x"], ["y"], name="pool", **attrs)
    graph = check_against_onnx(make_model([node], {"x": [2, 3, 7, 6]}), {"x": rand(2, 3, 7, 6)})
    assert ops(graph) == [{"MaxPool": "maxpool", "AveragePool": "avgpool"}[op]]


@pytest.mark.parametrize("attrs,out_hw", [
    ({"kernel_shape": [3, 3], "pads": [2, 0, 2, 0]}, (7, 3)),
    ({"kernel_shape": [4, 2], "strides": [1, 2], "pads": [0, 1, 3, 0]}, (5, 3)),
    ({"kernel_shape": [3, 4], "strides": [3, 2], "auto_pad": "SAME_LOWER"}, (2, 3)),
])
def test_maxpool_against_the_onnx_spec_in_loops(attrs, out_hw):
    """Pads that differ by axis, and SAME_LOWER, where onnx.reference's MaxPool is wrong (its
    output shapes even disagree with ONNX shape inference): check against the spec's formula,
    written as loops."""
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], name="mp", **attrs)],
                       {"x": [2, 3, 5, 5]})
    graph = load_onnx(model)
    x = rand(2, 3, 5, 5)
    got = run_float(graph, x)["y"]
    assert got.shape == (2, 3) + out_hw
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    pt, pl = graph.nodes[0].attrs["pads"][:2]
    for b, c, oh, ow in np.ndindex(*got.shape):
        window = [x[b, c, oh * sh - pt + i, ow * sw - pl + j] for i in range(kh)
                  for j in range(kw) if 0 <= oh * sh - pt + i < 5 and 0 <= ow * sw - pl + j < 5]
        assert got[b, c, oh, ow] == max(window)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op):
    node = helper.make_node(op, ["x"], ["y"], name="gp")
    check_against_onnx(make_model([node], {"x": [2, 3, 4, 5]}), {"x": rand(2, 3, 4, 5)})


def test_relu_add_of_two_activations_flatten_softmax():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x"], ["s"], name="residual"),
             helper.make_node("Flatten", ["s"], ["f"], name="flat"),
             helper.make_node("Softmax", ["f"], ["y"], name="softmax")]
    graph = check_against_onnx(make_model(nodes, {"x": [2, 3, 2, 2]}), {"x": rand(2, 3, 2, 2)})
    assert ops(graph) == ["relu", "add", "flatten", "softmax"]


@pytest.mark.parametrize("shape,out", [([0, 3, -1], (2, 3, 4)), ([2, 12], (2, 12)),
                                       ([-1, 2, 2, 3], (2, 2, 2, 3))])
def test_reshape(shape, out):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    model = make_model(nodes, {"x": [2, 12]}, {"s": np.array(shape, np.int64)})
    graph = check_against_onnx(model, {"x": rand(2, 12)})
    assert graph.tensors["y"].shape == out
    assert ops(graph) == (["flatten"] if len(out) == 2 else ["reshape"])


def test_constant_node_as_weight():
    w = rand(4, 3)
    nodes = [helper.make_node("Constant", [], ["W"], name="w",
                              value=numpy_helper.from_array(w)),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    check_against_onnx(make_model(nodes, {"x": [2, 4]}), {"x": rand(2, 4)})


def test_input_shapes_fix_a_symbolic_batch():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": ["N", 4]})
    graph = load_onnx(model, input_shapes={"x": (8, 4)})
    assert graph.tensors["x"].shape == (8, 4) and graph.batch == 8


def bn_cnn(opset, relu_between=False):
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm (alpha, beta, transB)
    -> BatchNormalization -> Softmax, in `opset`; with `relu_between`, a Relu between the Conv
    and its BatchNormalization (which cannot be folded)."""
    r = np.random.default_rng(opset)
    f = lambda *s: r.standard_normal(s).astype(np.float32)
    inits = {"cw": f(4, 1, 3, 3), "cb": f(4), "s": f(4) + 2, "bb": f(4), "m": f(4),
             "v": r.random(4).astype(np.float32) + 0.5, "fw": f(3, 16), "fb": f(3),
             "s2": f(3), "b2": f(3), "m2": f(3), "v2": r.random(3).astype(np.float32) + 0.1}
    conv_out = "c0" if relu_between else "c"
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], [conv_out], name="conv",
                              pads=[1, 1, 1, 1])]
    if relu_between:
        nodes.append(helper.make_node("Relu", ["c0"], ["c"], name="relu0"))
    nodes += [
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["fl"], name="flat"),
        helper.make_node("Gemm", ["fl", "fw", "fb"], ["g"], name="fc", transB=1, alpha=0.5,
                         beta=2.0),
        helper.make_node("BatchNormalization", ["g", "s2", "b2", "m2", "v2"], ["gn"],
                         name="bn2"),
        helper.make_node("Softmax", ["gn"], ["y"], name="sm", axis=1)]
    return make_model(nodes, {"x": [2, 1, 4, 4]}, inits, outputs={"y": [2, 3]}, opset=opset)


@pytest.mark.parametrize("opset", [7, 9, 11, 12, 13])
def test_old_opsets_are_upgraded_and_batchnorm_folds(opset):
    """Opsets 7 to 12 are upgraded to 13 (onnx.version_converter); each BatchNormalization
    disappears into its Conv or Gemm, and Gemm's alpha and beta into its weights and bias:
    the graph computes what onnxruntime computes on the original model."""
    import onnxruntime
    model = bn_cnn(opset)
    graph = load_onnx(model)
    assert ops(graph) == ["conv", "relu", "maxpool", "flatten", "gemm", "softmax"]
    x = rand(2, 1, 4, 4)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(run_float(graph, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)


def test_an_opset_upgrade_that_fails_is_one_line(monkeypatch):
    def fail(model, version):
        raise RuntimeError("No Adapter For Relu\nmore detail")
    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    reject(bn_cnn(9), r"^model 't': opset 9 could not be upgraded to opset 13 by "
                      r"onnx.version_converter \(No Adapter For Relu\)$")


def test_batchnorm_that_cannot_fold_is_refused():
    reject(bn_cnn(13, relu_between=True),
           r"^node 'bn' \(BatchNormalization\): its input 'c' must be computed by a Conv or "
           r"Gemm and read by nothing else \(BatchNormalization is folded into their weights "
           r"and bias\)$")
    model = bn_cnn(13)
    bn = next(n for n in model.graph.node if n.name == "bn")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    reject(model, r"^node 'bn' \(BatchNormalization\): training_mode=1 is not supported")


@pytest.mark.parametrize("alpha, beta", [(0.5, 1.0), (1.0, -3.0), (2.0, 0.0)])
def test_gemm_alpha_and_beta(alpha, beta):
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="fc", alpha=alpha, beta=beta)
    model = make_model([node], {"x": [4, 6]}, {"W": rand(6, 5), "C": rand(5)})
    assert ops(check_against_onnx(model, {"x": rand(4, 6)})) == ["gemm"]


def test_later_opsets_are_accepted():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2])
    check_against_onnx(make_model([node], {"x": [1, 2, 4, 4]}, opset=18),
                       {"x": rand(1, 2, 4, 4)})


# --- convolutions and pools: groups, dilations, ceil_mode, 1-D signals ---------------------------

def check_against_onnxruntime(model, feeds: dict) -> Graph:
    """load_onnx + run_float agree with onnxruntime (an independent executor) on `feeds`."""
    import onnxruntime
    graph = load_onnx(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    got = run_float(graph, feeds)
    for vi, expected in zip(model.graph.output, session.run(None, feeds)):
        assert got[vi.name].shape == expected.shape
        np.testing.assert_allclose(got[vi.name], expected, rtol=1e-5, atol=1e-5)
    return graph


def check_against_both(model, feeds: dict) -> Graph:
    """`check_against_onnx` and `check_against_onnxruntime`."""
    check_against_onnxruntime(model, feeds)
    return check_against_onnx(model, feeds)


@pytest.mark.parametrize("attrs,w_shape", [
    ({"dilations": [2, 3]}, (4, 6, 3, 3)),
    ({"group": 3, "pads": [1, 1, 1, 1]}, (6, 2, 3, 3)),
    ({"group": 6}, (6, 1, 3, 3)),                                           # depthwise
    ({"group": 6, "pads": [1, 0, 1, 2], "dilations": [2, 1], "strides": [2, 1]},
     (12, 1, 3, 3)),                                                        # depthwise, x2
    ({"group": 2, "auto_pad": "SAME_LOWER", "strides": [2, 2]}, (4, 3, 2, 3)),
])
def test_conv_groups_and_dilations(attrs, w_shape):
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)
    model = make_model([node], {"x": [2, 6, 9, 8]}, {"W": rand(*w_shape), "B": rand(w_shape[0])})
    graph = check_against_both(model, {"x": rand(2, 6, 9, 8)})
    assert ops(graph) == ["conv"]
    conv = graph.nodes[0]
    assert conv.attrs.get("group", 1) == attrs.get("group", 1)
    assert conv.attrs.get("dilations", (1, 1)) == tuple(attrs.get("dilations", (1, 1)))


POOL_WINDOWS = [
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "dilations": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
     "dilations": [2, 1]},
    # ONNX 1.23's shape inference keeps a last window that starts in the end padding (width 4);
    # onnx.reference and onnxruntime drop it (3), as the compiler does
    {"kernel_shape": [3, 2], "strides": [3, 3], "pads": [1, 0, 1, 1], "ceil_mode": 1},
]


@pytest.mark.parametrize("op,attrs", [("MaxPool", a) for a in POOL_WINDOWS]
                         + [("AveragePool", a) for a in POOL_WINDOWS]
                         + [("AveragePool", {**a, "count_include_pad": 1})
                            for a in POOL_WINDOWS[2:]])
def test_pools_with_dilations_and_ceil_mode(op, attrs):
    """Checked with a node after the pool, so that the shape cross-check goes on past a pool
    whose shape ONNX's shape inference gets wrong. (AveragePool has dilations from opset 19.)"""
    node = helper.make_node(op, ["x"], ["p"], name="pool", **attrs)
    relu = helper.make_node("Relu", ["p"], ["y"], name="after")
    graph = check_against_both(make_model([node, relu], {"x": [2, 3, 9, 8]}, opset=19),
                               {"x": rand(2, 3, 9, 8)})
    pool = graph.nodes[0]
    assert pool.attrs.get("ceil_mode", False) == bool(attrs.get("ceil_mode", 0))
    assert pool.attrs.get("dilations", (1, 1)) == tuple(attrs.get("dilations", (1, 1)))


def test_1d_network_is_2d_with_height_1():
    """Signals [B, C, L]: a Conv 1-D, BatchNormalization, a bias Add, Relu, MaxPool 1-D, a
    dilated depthwise Conv 1-D, AveragePool 1-D with ceil_mode, Flatten and Gemm. The IR holds
    the signal as [B, C, 1, L] from the graph input on (same data, same order)."""
    r = np.random.default_rng(3)
    f = lambda *s: r.standard_normal(s).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], name="bn"),
        helper.make_node("Add", ["n1", "b1"], ["a1"], name="bias1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2], strides=[2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="dw", group=4, pads=[2, 2],
                         dilations=[2]),
        helper.make_node("AveragePool", ["c2"], ["p2"], name="pool2", kernel_shape=[3],
                         strides=[2], ceil_mode=1),
        helper.make_node("Flatten", ["p2"], ["fl"], name="flat"),
        helper.make_node("Gemm", ["fl", "fw"], ["y"], name="fc", transB=1)]
    inits = {"w1": f(4, 3, 3), "b1": f(4, 1), "s": f(4) + 2, "bb": f(4), "m": f(4),
             "v": r.random(4).astype(np.float32) + 0.5, "w2": f(4, 1, 3), "b2": f(4),
             "fw": f(5, 16)}
    graph = check_against_both(make_model(nodes, {"x": [2, 3, 16]}, inits, opset=19),
                               {"x": rand(2, 3, 16)})
    assert ops(graph) == ["conv", "relu", "maxpool", "conv", "avgpool", "flatten", "gemm"]
    assert graph.tensors["x"].shape == (2, 3, 1, 16)
    assert graph.tensors["p2"].shape == (2, 4, 1, 4)
    assert graph.initializers[graph.nodes[3].inputs[1]].shape == (4, 1, 1, 3)
    assert graph.nodes[3].attrs == {"strides": (1, 1), "pads": (0, 2, 0, 2),
                                    "dilations": (1, 2), "group": 4}
    assert graph.nodes[2].attrs["kernel"] == (1, 2)
    # The reference takes the ONNX signal as it is, or as the IR's [B, C, 1, L].
    x = rand(5, 3, 16)
    np.testing.assert_array_equal(run_float(graph, x)["y"],
                                  run_float(graph, x.reshape(5, 3, 1, 16))["y"])


def test_1d_signal_outputs_and_readers_that_need_its_shape():
    """A 1-D Conv's output that is a graph output ends in a reshape to its ONNX shape; a
    Softmax (which needs the ONNX shape) reads it through one; a signal computed by a Reshape
    is lifted through one; GlobalAveragePool of a signal is [B, C, 1]."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["sig"], name="rs"),
             helper.make_node("Conv", ["sig", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Softmax", ["r"], ["y"], name="sm", axis=-1)]
    model = make_model(nodes, {"x": [2, 12]}, {"shape": np.array([2, 3, 4], np.int64),
                                               "w": rand(2, 3, 3)}, outputs=("c", "g", "y"))
    graph = check_against_both(model, {"x": rand(2, 12)})
    assert graph.outputs == ["c", "g", "y"]
    assert [graph.tensors[o].shape for o in graph.outputs] == [(2, 2, 2), (2, 2, 1), (2, 2, 2)]
    assert ops(graph) == ["reshape", "reshape", "conv", "relu", "avgpool", "reshape", "softmax",
                          "reshape", "reshape"]


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3], "strides": [2], "pads": [1, 0], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [2], "dilations": [3], "count_include_pad": 1,
                     "pads": [1, 1]}),
    ("GlobalAveragePool", {}),
])
def test_1d_pools(op, attrs):
    node = helper.make_node(op, ["x"], ["y"], name="pool", **attrs)
    graph = check_against_both(make_model([node], {"x": [2, 3, 11]}, opset=19),
                               {"x": rand(2, 3, 11)})
    assert ops(graph) == ["maxpool" if op == "MaxPool" else "avgpool", "reshape"]


def test_1d_global_maxpool():
    """Against onnxruntime only: onnx.reference's GlobalMaxPool of a [B, C, L] input is [B, 1]
    (ONNX shape inference and onnxruntime: [B, C, 1])."""
    node = helper.make_node("GlobalMaxPool", ["x"], ["y"], name="pool")
    graph = check_against_onnxruntime(make_model([node], {"x": [2, 3, 11]}),
                                      {"x": rand(2, 3, 11)})
    assert graph.tensors["y"].shape == (2, 3, 1)


# --- MatMul with leading dimensions, Flatten axes ------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 6), (2, 2, 3, 6)])
def test_matmul_with_leading_dims_is_one_gemm(shape):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    model = make_model(nodes, {"x": list(shape)}, {"W": rand(6, 5), "b": rand(5)})
    graph = check_against_both(model, {"x": rand(*shape)})
    assert ops(graph) == ["gemm"] and graph.tensors["y"].shape == shape[:-1] + (5,)
    np.testing.assert_array_equal(graph.initializers[graph.nodes[0].inputs[2]],
                                  numpy_helper.to_array(model.graph.initializer[1]))


def test_batchnorm_after_matmul_with_leading_dims_is_refused():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("BatchNormalization", ["m", "s", "b", "mu", "v"], ["y"], name="bn")]
    inits = {"W": rand(6, 5), "s": rand(3), "b": rand(3), "mu": rand(3), "v": rand(3) ** 2 + 1}
    reject(make_model(nodes, {"x": [2, 3, 6]}, inits),
           r"^node 'bn' \(BatchNormalization\): its input 'm' \[2, 3, 5\] is a MatMul's over the "
           r"last axis")


@pytest.mark.parametrize("shape,axis,out", [
    ((2, 3, 4), -2, (2, 12)),
    ((2, 1, 4, 5), 2, (2, 20)),
    ((2, 1, 1, 5), -1, (2, 5)),
    ((2, 3, 4, 5), 1, (2, 60)),
])
def test_flatten_axes_that_keep_the_batch(shape, axis, out):
    node = helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=axis)
    graph = check_against_both(make_model([node], {"x": list(shape)}), {"x": rand(*shape)})
    assert ops(graph) == ["flatten"] and graph.tensors["y"].shape == out


def test_graph_api_groups_dilations_and_ceil_mode_match_onnx():
    """GraphBuilder's dilations=, groups= and ceil_mode= give the IR the ONNX front end gives;
    attributes at their defaults are left out of both."""
    w1, w2 = rand(6, 1, 3, 3), rand(4, 3, 1, 1)
    g = GraphBuilder("g")
    x = g.input("x", (2, 6, 9, 9))
    h = g.conv(x, w1, groups=6, dilations=2, pads=2, name="dw")
    h = g.maxpool(h, 3, strides=2, ceil_mode=True, name="mp")
    h = g.conv(h, w2, groups=2, name="pw")
    y = g.avgpool(h, 2, strides=1, dilations=(1, 2), pads=(0, 1), name="ap")
    built = g.build([y])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["dw"], name="dw", group=6,
                              dilations=[2, 2], pads=[2, 2, 2, 2]),
             helper.make_node("MaxPool", ["dw"], ["mp"], name="mp", kernel_shape=[3, 3],
                              strides=[2, 2], ceil_mode=1),
             helper.make_node("Conv", ["mp", "w2"], ["pw"], name="pw", group=2),
             helper.make_node("AveragePool", ["pw"], ["y"], name="ap", kernel_shape=[2, 2],
                              dilations=[1, 2], pads=[0, 1, 0, 1])]
    imported = check_against_both(make_model(nodes, {"x": [2, 6, 9, 9]}, {"w1": w1, "w2": w2},
                                             opset=19), {"x": rand(2, 6, 9, 9)})
    assert [n.attrs for n in built.nodes] == [n.attrs for n in imported.nodes]
    assert set(built.nodes[2].attrs) == {"strides", "pads", "group"}
    x = rand(3, 6, 9, 9)
    np.testing.assert_allclose(run_float(built, x)[y.name], run_float(imported, x)["y"])


# --- QDQ models: Q/DQ pairs become scales ------------------------------------------------------

def qdq_model(change: dict | None = None):
    """x [2, 4] -> QuantizeLinear/DequantizeLinear -> MatMul by DequantizeLinear(int8 W) ->
    Q/DQ -> y: symmetric int8 per tensor, with `change` replacing nodes (by name) or
    initializers."""
    change = change or {}
    inits = {"x_s": np.float32(0.02), "x_z": np.int8(0), "w_q": RNG.integers(-127, 128, (4, 3),
             dtype=np.int8), "w_s": np.float32(0.01), "w_z": np.int8(0),
             "y_s": np.float32(0.05), "y_z": np.int8(0)}
    nodes = {
        "qx": helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="qx"),
        "dqx": helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="dqx"),
        "dqw": helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dqw"),
        "mm": helper.make_node("MatMul", ["xd", "w"], ["m"], name="mm"),
        "qy": helper.make_node("QuantizeLinear", ["m", "y_s", "y_z"], ["yq"], name="qy"),
        "dqy": helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="dqy")}
    for key, value in change.items():
        (nodes if key in nodes else inits)[key] = value
    return make_model(list(nodes.values()), {"x": [2, 4]},
                      {k: np.asarray(v) for k, v in inits.items()}, opset=19)


def test_qdq_pairs_become_scales_and_weights_floats():
    """The float graph of a QDQ model: its weights dequantised, its activations float (their
    Q/DQ pairs become `quant_scales`), so it differs from the QDQ model's own output only by
    the activations' rounding: s_y / 2 + (s_x / 2) sum |w|."""
    model = qdq_model()
    graph = load_onnx(model)
    assert ops(graph) == ["gemm"] and graph.inputs == ["x"] and graph.outputs == ["y"]
    w = graph.nodes[0].inputs[1]
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = consts["w_q"] * np.float32(0.01)
    np.testing.assert_array_equal(graph.initializers[w], weights)
    assert graph.quant_scales == {"x": np.float32(0.02), "y": np.float32(0.05),
                                  w: np.float32(0.01)}
    x = rand(2, 4) * 0.3
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_float(graph, x)["y"], x @ weights, rtol=1e-5, atol=1e-6)
    bound = 0.05 / 2 + 0.02 / 2 * np.abs(weights).sum(axis=0)
    assert np.all(np.abs(run_float(graph, x)["y"] - want) <= bound + 1e-6)


@pytest.mark.parametrize("change,message", [
    ({"w_s": np.full(3, 0.01, np.float32), "dqw": helper.make_node(
        "DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dqw", axis=1),
      "w_z": np.zeros(3, np.int8)},
     r"^node 'dqw' \(DequantizeLinear\): per-channel scales \(3 values along axis 1\) are not "
     r"supported"),
    ({"x_z": np.uint8(0)}, r"^node 'qx' \(QuantizeLinear\): a uint8 zero point is asymmetric "
                           r"quantisation"),
    ({"y_z": np.int8(3)}, r"^node 'qy' \(QuantizeLinear\): zero point 3 is asymmetric "
                          r"quantisation, which is not supported"),
    ({"qx": helper.make_node("QuantizeLinear", ["x", "x_s"], ["xq"], name="qx"),
      "dqx": helper.make_node("DequantizeLinear", ["xq", "x_s"], ["xd"], name="dqx")},
     r"^node 'qx' \(QuantizeLinear\): without a zero point ONNX quantises to uint8"),
    ({"w_q": RNG.integers(0, 255, (4, 3), dtype=np.uint8), "w_z": np.uint8(128)},
     r"^node 'dqw' \(DequantizeLinear\): input x \('w_q'\) is uint8: asymmetric quantisation"),
    ({"dqx": helper.make_node("DequantizeLinear", ["xq", "y_s", "x_z"], ["xd"], name="dqx")},
     r"^node 'dqx' \(DequantizeLinear\): its scale 0.05 differs from QuantizeLinear 'qx''s 0.02"),
    ({"w_q": np.full((4, 3), -128, np.int8)},
     r"^node 'mm' \(MatMul\): its int8 weights reach -128; the tile's weights are symmetric"),
])
def test_qdq_refusals(change, message):
    reject(qdq_model(change), message)


def test_qdq_quantize_read_by_anything_but_dequantize_is_refused():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("Identity", ["xq"], ["y"], name="id")]
    model = make_model(nodes, {"x": [2, 4]}, {"s": np.float32(0.1), "z": np.int8(0)},
                       outputs={"y": [2, 4]}, check=False)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT8
    reject(model, r"^node 'id' \(Identity\): operator Identity is not supported")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")]
    model = make_model(nodes, {"x": [2, 4]}, {"s": np.float32(0.1), "z": np.int8(0)})
    reject(model, r"^node 'q' \(QuantizeLinear\): its output 'y' must be read only by "
                  r"DequantizeLinear nodes")


# --- rejections --------------------------------------------------------------------------------

def reject(model_or_source, match: str, **kw):
    with pytest.raises(CompileError, match=match):
        load_onnx(model_or_source, **kw)


X4 = {"x": [1, 3, 6, 6]}
W4 = {"W": rand(4, 3, 3, 3)}


def test_rejected_computed_reshape_shape():
    """A shape computed in the graph: the op computing it is what gets named."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    reject(make_model(nodes, {"x": [2, 4]}),
           r"^node 'shape_of_x' \(Shape\): operator Shape is not supported")


@pytest.mark.parametrize("node,inputs,inits,message", [
    (helper.make_node("Sigmoid", ["x"], ["y"], name="sig"), {"x": [1, 4]}, {},
     r"^node 'sig' \(Sigmoid\): operator Sigmoid is not supported \(supported: Add, "),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="conv1", dilations=[2, 2],
                      auto_pad="SAME_UPPER"), X4, W4,
     r"^node 'conv1' \(Conv\): auto_pad=SAME_UPPER with dilations \[2, 2\] is not supported "
     r"\(ONNX implementations pad it differently: give explicit pads\)$"),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="c", group=2), X4,
     {"W": rand(4, 1, 3, 3)}, r"^node 'c' \(Conv\): group=2 does not divide the 3 input and "
                              r"4 output channels$"),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="c", group=3), X4,
     {"W": rand(3, 3, 3, 3)}, r"^node 'c' \(Conv\): weight W \[3, 3, 3, 3\] with group=3 "
                              r"expects 9 input channels, X has 3$"),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="c3d"), {"x": [1, 3, 4, 4, 4]},
     {"W": rand(4, 3, 3, 3, 3)}, r"^node 'c3d' \(Conv\): input X has shape \[1, 3, 4, 4, 4\]; "
                                 r"only 1-D and 2-D convolutions"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="dyn_w"), {"x": [1, 3, 6, 6],
     "w": [4, 3, 3, 3]}, {}, r"^node 'dyn_w' \(Conv\): weight W \('w'\) must be a constant"),
    (helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn"),
     {"x": [2, 4]}, {k: rand(4) for k in "sbmv"},
     r"^node 'bn' \(BatchNormalization\): its input 'x' must be computed by a Conv or Gemm "
     r"and read by nothing else"),
    (helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transA=1), {"x": [4, 2]},
     {"W": rand(4, 3)}, r"^node 'fc' \(Gemm\): transA=1 is not supported \(A\^T B sums over "
                        r"A's dim 0, the batch: the product would mix samples\)$"),
    (helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="fc"), {"x": [2, 4]},
     {"W": rand(4, 3), "C": rand(2, 3)}, r"^node 'fc' \(Gemm\): input C of shape \[2, 3\]"),
    (helper.make_node("MatMul", ["x", "z"], ["y"], name="mm"), {"x": [1, 4], "z": [4, 4]}, {},
     r"^node 'mm' \(MatMul\): input B \('z'\) must be a constant initializer"),
    (helper.make_node("MatMul", ["x", "W"], ["y"], name="mm3"), {"x": [2, 3, 4]},
     {"W": rand(2, 4, 4)}, r"^node 'mm3' \(MatMul\): input B has shape \[2, 4, 4\]; only a "
                           r"2-D constant \[K, F\] is supported \(no 1-D or batched B\)$"),
    (helper.make_node("MatMul", ["x", "W"], ["y"], name="mm1"), {"x": [4]},
     {"W": rand(4, 4)}, r"^node 'mm1' \(MatMul\): input A \('x'\) has shape \[4\]; a 1-D A "
                        r"has no batch dimension"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], ceil_mode=1,
                      auto_pad="SAME_UPPER"),
     X4, {}, r"^node 'mp' \(MaxPool\): ceil_mode=1 with auto_pad is not supported"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], dilations=[3, 3],
                      pads=[1, 1, 1, 1]), {"x": [1, 3, 2, 2]}, {},
     r"^node 'mp' \(MaxPool\): with dilations \[3, 3\] and pads \[1, 1, 1, 1\] some windows "
     r"hold padding only"),
    (helper.make_node("MaxPool", ["x"], ["y", "i"], name="mp", kernel_shape=[2, 2]), X4, {},
     r"^node 'mp' \(MaxPool\): output\(s\) \['i'\] are not supported"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[2, 2],
                      pads=[2, 0, 0, 0]), X4, {},
     r"^node 'ap' \(AveragePool\): pads \[2, 0, 0, 0\] must be smaller than the kernel"),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="c", auto_pad="SAME_UPPER",
                      strides=[3, 3]), X4, {"W": rand(4, 3, 1, 1)},
     r"^node 'c' \(Conv\): auto_pad=SAME_UPPER with kernel \[1, 1\] and strides \[3, 3\] "
     r"gives negative padding"),
    (helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=2), X4, {},
     r"^node 'fl' \(Flatten\): axis=2 flattens \[1, 3, 6, 6\] to \[3, 36\], moving data "
     r"across the batch dimension"),
    (helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=0), X4, {},
     r"^node 'fl' \(Flatten\): axis=0 flattens \[1, 3, 6, 6\] to \[1, 108\], moving data "
     r"across the batch dimension"),
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="rs"), {"x": [2, 4]},
     {"s": np.array([4, 2], np.int64)}, r"^node 'rs' \(Reshape\): reshaping \[2, 4\] to \[4, 2\]"
                                       r" moves data across the batch"),
    (helper.make_node("Add", ["x", "z"], ["y"], name="a"), {"x": [1, 4], "z": [1, 1]}, {},
     r"^node 'a' \(Add\): the two activations have shapes \[1, 4\] and \[1, 1\]"),
    (helper.make_node("Add", ["x", "c"], ["y"], name="a"), {"x": [2, 4]}, {"c": rand(2, 4)},
     r"^node 'a' \(Add\): the constant of shape \[2, 4\] does not broadcast to one sample"),
    (helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=0), {"x": [2, 4]}, {},
     r"^node 'sm' \(Softmax\): axis 0 of a rank-2 tensor is not supported"),
    (helper.make_node("Relu", ["x"], ["y"], name="r", foo=1), {"x": [1, 4]}, {},
     r"^node 'r' \(Relu\): attribute 'foo' is not supported$"),
])
def test_rejected_nodes(node, inputs, inits, message):
    reject(make_model([node], inputs, inits), message)


def test_rejected_custom_domain():
    model = make_model([helper.make_node("Foo", ["x"], ["y"], name="f", domain="com.example")],
                       {"x": [1, 4]}, outputs={"y": [1, 4]}, check=False)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    reject(model, r"^node 'f' \(Foo\): operator domain 'com.example' is not supported")


def test_rejected_unnamed_node_is_named_by_type_and_index():
    reject(make_model([helper.make_node("Relu", ["x"], ["r"]),
                       helper.make_node("Tanh", ["r"], ["y"])], {"x": [1, 4]}),
           r"^node 'Tanh_1' \(Tanh\): operator Tanh is not supported")


def test_rejected_softmax_in_the_middle():
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="sm"),
             helper.make_node("Relu", ["s"], ["y"], name="r")]
    reject(make_model(nodes, {"x": [1, 4]}),
           r"^node 'sm' \(Softmax\): runs on the host after the tile, so its output must be a "
           r"graph output")


def test_rejected_dynamic_shapes():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    reject(make_model(relu, {"x": ["N", 4]}),
           r"^tensor 'x': dynamic batch dimension 'N' is not supported \(pass input_shapes")
    reject(make_model(relu, {"x": [2, None]}), r"^tensor 'x': dynamic dimension 1 is not")
    reject(make_model(relu, {"x": [2, 4]}), r"^input_shapes names 'z', which is not a graph "
           r"input \(inputs: x\)$", input_shapes={"z": (1, 4)})
    reject(make_model(relu, {"x": [2, 4]}), r"^tensor 'x': input_shapes gives dim 0 = 8, the "
           r"model fixes it to 2$", input_shapes={"x": (8, 4)})


def test_rejected_input_dtype():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "t",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    reject(model, r"^tensor 'x': input dtype INT64 is not supported \(only float32\)$")


def test_rejected_old_opset_and_no_opset():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    reject(make_model(relu, {"x": [1, 4]}, opset=6),
           r"^model 't': opset 6 is not supported \(opset 7 or later is needed\)$")
    model = make_model(relu, {"x": [1, 4]})
    del model.opset_import[:]
    reject(model, r"^model 't': it imports no ONNX operator set")


def test_rejected_files(tmp_path):
    reject(tmp_path / "missing.onnx", r"missing.onnx': cannot read the file \(No such file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff not a protobuf \x13\x37" * 10)
    reject(garbage, r"garbage.onnx': not an ONNX model \(it does not parse as an ONNX protobuf")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    reject(text, r"notes.txt': not an ONNX model")
    reject(b"", r"^model bytes: not an ONNX model \(no graph with nodes in it\)$")
    reject(42, r"^expected an ONNX file path, bytes or an onnx.ModelProto, not int$")
    # Parses, but the checker rejects it: the node at fault is named when lowering finds it.
    broken = make_model([helper.make_node("Relu", ["nope"], ["y"], name="r")], {"x": [1, 4]},
                        check=False)
    reject(broken, r"^node 'r' \(Relu\): input 0 \('nope'\) is not computed by an earlier node$")
    no_ir_version = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": [1, 4]})
    no_ir_version.ir_version = 0
    reject(no_ir_version, r"^model 't': not a valid ONNX model \(.*ir_version")


def test_every_rejection_is_a_compile_error_not_a_traceback():
    """Random single-op models built from the supported op types with random attributes:
    each either imports and matches onnx.reference, or raises CompileError."""
    rng = np.random.default_rng(7)
    accepted = rejected = 0
    for trial in range(60):
        op = ["Conv", "MaxPool", "AveragePool", "Gemm", "Flatten", "Softmax"][trial % 6]
        attrs = {}
        if op in ("Conv", "MaxPool", "AveragePool"):
            k = [int(v) for v in rng.integers(1, 4, 2)]
            if op != "Conv":
                attrs["kernel_shape"] = k
            attrs["strides"] = [int(v) for v in rng.integers(1, 3, 2)]
            attrs["pads"] = [int(v) for v in rng.integers(0, 3, 4)]
            if op == "MaxPool":   # onnx.reference's MaxPool misreads pads that differ by axis
                attrs["pads"] = attrs["pads"][:1] * 4
            inits = {"W": rand(2, 3, *k)} if op == "Conv" else {}
            node = helper.make_node(op, ["x"] + list(inits), ["y"], name="n", **attrs)
            model, x = make_model([node], {"x": [2, 3, 5, 5]}, inits), rand(2, 3, 5, 5)
        elif op == "Gemm":
            attrs = {"transA": int(rng.integers(0, 2)), "transB": int(rng.integers(0, 2)),
                     "alpha": float(rng.choice([1.0, 2.0]))}
            node = helper.make_node(op, ["x", "W"], ["y"], name="n", **attrs)
            model, x = make_model([node], {"x": [3, 3]}, {"W": rand(3, 3)}), rand(3, 3)
        else:
            node = helper.make_node(op, ["x"], ["y"], name="n",
                                    axis=int(rng.integers(-3, 3)))
            model, x = make_model([node], {"x": [2, 3, 4]}), rand(2, 3, 4)
        try:
            check_against_onnx(model, {"x": x})
            accepted += 1
        except CompileError as e:
            assert str(e).startswith("node 'n' (") or str(e).startswith("model 't'"), str(e)
            rejected += 1
    assert accepted > 10 and rejected > 10


def test_lowering_table_lists_the_required_ops():
    for op in ("MatMul", "Gemm", "Add", "Relu", "Conv", "MaxPool", "AveragePool", "Flatten",
               "Reshape", "Softmax"):
        assert op in LOWERINGS


# --- the IR and the graph API ------------------------------------------------------------------

def test_graph_api_rejects_with_node_names():
    g = GraphBuilder()
    x = g.input("x", (2, 6))
    with pytest.raises(CompileError, match=r"^node 'fc' \(gemm\): x \[2, 6\] and W \[5, 3\] do "
                                           r"not chain"):
        g.gemm(x, rand(5, 3), name="fc")
    img = g.input("img", (2, 3, 4, 4))
    with pytest.raises(CompileError, match=r"^node 'c' \(conv\): the 5-wide kernel does not "
                                           r"fit the padded height"):
        g.conv(img, rand(2, 3, 5, 5), name="c")
    with pytest.raises(CompileError, match=r"^node 'rs' \(reshape\): cannot reshape \[2, 6\]"):
        g.reshape(x, (2, 5), name="rs")
    with pytest.raises(CompileError, match=r"^tensor 'nope' is not an activation"):
        g.relu("nope")
    with pytest.raises(CompileError, match=r"^tensor 'x': the name is already used"):
        g.input("x", (2, 6))


def test_graph_api_every_op_runs():
    g = GraphBuilder()
    x = g.input("x", (2, 3, 6, 6))
    c = g.conv(x, rand(4, 3, 3, 3), strides=(2, 1), pads=(0, 1, 1, 1))
    a = g.avgpool(g.relu(c), 2, strides=1, pads=(1, 0, 0, 0))
    m = g.maxpool(a, (2, 2), pads=1)
    r = g.reshape(g.add(m, m), (-1, 4, 6))
    y = g.add(g.flatten(r), rand(24))
    graph = g.build(outputs=[g.softmax(y)])
    assert ops(graph) == ["conv", "relu", "avgpool", "maxpool", "add", "reshape", "flatten",
                          "add", "softmax"]
    out = run_float(graph, rand(5, 3, 6, 6))
    assert next(iter(out.values())).shape == (5, 24)


def test_validate_catches_broken_graphs():
    t = {"x": Tensor("x", (2, 4)), "r": Tensor("r", (2, 4)), "y": Tensor("y", (2, 4))}
    out_of_order = Graph("g", ["x"], ["y"], [Node("relu", "b", ["r"], ["y"]),
                                             Node("relu", "a", ["x"], ["r"])], t, {})
    with pytest.raises(CompileError, match=r"^node 'b' \(relu\): input 'r' is not defined before"):
        out_of_order.validate()
    wrong_shape = Graph("g", ["x"], ["y"], [Node("flatten", "f", ["x"], ["y"])],
                        {"x": Tensor("x", (2, 2, 2)), "y": Tensor("y", (2, 2, 2))}, {})
    with pytest.raises(CompileError, match=r"^node 'f' \(flatten\): output 'y' has shape "
                                           r"\[2, 2, 2\], its op gives \[2, 4\]"):
        wrong_shape.validate()
    twice = Graph("g", ["x"], ["y"], [Node("relu", "a", ["x"], ["y"]),
                                      Node("relu", "a", ["y"], ["r"])], t, {})
    with pytest.raises(CompileError, match=r"^node 'a' \(relu\): another node has the same"):
        twice.validate()
    unknown = Graph("g", ["x"], ["y"], [Node("tanh", "t", ["x"], ["y"])], t, {})
    with pytest.raises(CompileError, match=r"^node 't' \(tanh\): unknown IR op"):
        unknown.validate()
    missing_attr = Graph("g", ["x"], ["y"], [Node("softmax", "s", ["x"], ["y"])], t, {})
    with pytest.raises(CompileError, match=r"^node 's' \(softmax\): attributes \['axis'\] are "
                                           r"missing"):
        missing_attr.validate()


def test_normalize_is_idempotent_and_drops_dead_nodes():
    g = GraphBuilder()
    x = g.input("x", (2, 4))
    g.relu(x, name="dead")
    y = g.add(g.gemm(x, rand(4, 3), name="fc"), rand(3), name="bias")
    graph = g.build(outputs=[y])
    assert [n.name for n in graph.nodes] == ["fc"]
    assert str(normalize(graph)) == str(graph)
