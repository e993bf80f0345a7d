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
    (helper.make_node("Conv", ["x", "W"], ["y"], name="conv1", dilations=[2, 2]), X4, W4,
     r"^node 'conv1' \(Conv\): dilations \[2, 2\] are not supported \(only 1\)$"),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="c", group=3), X4,
     {"W": rand(3, 1, 3, 3)}, r"^node 'c' \(Conv\): group=3 is not supported"),
    (helper.make_node("Conv", ["x", "W"], ["y"], name="c1d"), {"x": [1, 3, 6]},
     {"W": rand(4, 3, 3)}, r"^node 'c1d' \(Conv\): input X has shape \[1, 3, 6\]; only 2-D"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="dyn_w"), {"x": [1, 3, 6, 6],
     "w": [4, 3, 3, 3]}, {}, r"^node 'dyn_w' \(Conv\): weight W \('w'\) must be a constant"),
    (helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn"),
     {"x": [2, 4]}, {k: rand(4) for k in "sbmv"},
     r"^node 'bn' \(BatchNormalization\): its input 'x' must be computed by a Conv or Gemm "
     r"and read by nothing else"),
    (helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transA=1), {"x": [4, 2]},
     {"W": rand(4, 3)}, r"^node 'fc' \(Gemm\): transA=1 is not supported"),
    (helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="fc"), {"x": [2, 4]},
     {"W": rand(4, 3), "C": rand(2, 3)}, r"^node 'fc' \(Gemm\): input C of shape \[2, 3\]"),
    (helper.make_node("MatMul", ["x", "z"], ["y"], name="mm"), {"x": [1, 4], "z": [4, 4]}, {},
     r"^node 'mm' \(MatMul\): input B \('z'\) must be a constant initializer"),
    (helper.make_node("MatMul", ["x", "W"], ["y"], name="mm3"), {"x": [2, 3, 4]},
     {"W": rand(4, 4)}, r"^node 'mm3' \(MatMul\): input 0 \('x'\) has shape \[2, 3, 4\]"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], ceil_mode=1),
     X4, {}, r"^node 'mp' \(MaxPool\): ceil_mode=1 is not supported"),
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
     r"^node 'fl' \(Flatten\): axis=2 is not supported \(only 1"),
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
