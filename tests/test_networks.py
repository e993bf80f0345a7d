"""The reference networks (`d1tile.sw.networks`: LeNet-5, a residual network, a
depthwise-separable network): their ONNX exports compute what the NumPy models compute
(onnxruntime, an independent executor), and they compile onto the default tile and run on the
cycle model bit-exact with the integer reference, with int8 accuracy close to the float one."""

import dataclasses

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from d1tile.params import TileConfig
from d1tile.sw import networks
from d1tile.sw.compiler import compile_model, execute
from d1tile.sw.errors import CompileError
from d1tile.sw.networks import NETWORKS, float_logits, softmax, upsample
from d1tile.sw.quant import quant_report
from d1tile.sw.runtime import get_device

# One block of 32 test images: each network runs in 3-5 s on the cycle model (10-21 k cycles).
BATCH = 32

# The acceptance bar of each network's float model on the 360 test images.
FLOAT_ACCURACY = {"lenet5": 0.90, "resnet": 0.85, "dwsep": 0.85}


def _ort_logits_and_probs(model: onnx.ModelProto, x: np.ndarray):
    """onnxruntime's "logits" and "probs" for `x`: the model with "logits" as a second output."""
    both = onnx.ModelProto()
    both.CopyFrom(model)
    both.graph.output.add().name = "logits"
    session = onnxruntime.InferenceSession(both.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    probs, logits = session.run(["probs", "logits"], {"x": x})
    return logits, probs


@pytest.mark.parametrize("name", list(NETWORKS))
def test_onnx_export_agrees_with_the_numpy_model(name):
    toy = NETWORKS[name](batch=BATCH)
    assert toy.model.opset_import[0].version == 13
    assert [d.dim_value for d in toy.model.graph.input[0].type.tensor_type.shape.dim] == \
        [BATCH, *toy.test_x.shape[1:]]
    x = toy.test_x[:BATCH]
    logits, probs = _ort_logits_and_probs(toy.model, x)
    want = float_logits(name, x)
    # float32 sums in another order: measured within 4e-6 of logits up to ~40
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(probs, softmax(want), rtol=0, atol=1e-5)
    assert toy.float_accuracy >= FLOAT_ACCURACY[name]
    assert toy.float_accuracy == np.mean(float_logits(name, toy.test_x).argmax(1) == toy.test_y)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_runs_bit_exact_on_the_default_tile(name):
    """Measured (32 images on the tile; int8 = the integer reference on all 360, which the
    tile equals bit for bit): lenet5 int8 96.9 % / float 96.9 % on the tile batch, 97.8 / 97.8 %
    on 360; resnet 90.6 / 96.9 %, 95.0 / 96.4 %; dwsep 96.9 / 96.9 %, 96.4 / 96.9 %."""
    cfg = TileConfig.preset("default")
    toy = NETWORKS[name](batch=BATCH)
    compiled = compile_model(toy.model, cfg, toy.calib_x)
    x, labels = toy.test_x[:BATCH], toy.test_y[:BATCH]
    run = execute(compiled, get_device("model", cfg), x)
    assert run.max_abs_diff == 0
    assert run.result.cycles >= compiled.ideal_cycles > 0
    tile_accuracy = np.mean(run.outputs["logits"].argmax(1) == labels)
    float_accuracy = np.mean(run.float_values["logits"].argmax(1) == labels)
    # at most 3 of the 32 images lost to int8 (measured: 0, 2 and 0)
    assert tile_accuracy >= float_accuracy - 3 / BATCH
    whole = quant_report(compiled.graph, compiled.qgraph, toy.test_x, toy.test_y)
    # at most 3 points on 360 images (measured: 0, 1.4 and 0.5)
    assert whole.int8_accuracy >= whole.float_accuracy - 0.03, whole
    assert whole.float_accuracy == pytest.approx(toy.float_accuracy, abs=1e-6)


def test_lenet5_runs_at_batch_64_with_region_reuse():
    """The benchmark's batch (bench/network_utilisation.py): int8 LeNet-5 at batch 64 fits the
    default tile only with the words of dead regions reused after barriers (measured: 4 of
    the 5 layers start after one), and still runs bit-exact."""
    cfg = TileConfig.preset("default")
    toy = NETWORKS["lenet5"](batch=64)
    compiled = compile_model(toy.model, cfg, toy.calib_x)
    assert compiled.builder.barriers, "expected the layers to reuse SRAM after barriers"
    run = execute(compiled, get_device("model", cfg), toy.test_x[:64])
    assert run.max_abs_diff == 0


def test_bf16_dwsep_at_batch_64_is_split_over_two_runs():
    """bf16 dwsep at batch 64 does not fit the default tile at once (its program: 1,229
    instructions on a node, the instruction memory holds 1,024; batch 32 fits): it runs as
    two runs of 32, bit-exact."""
    cfg = TileConfig.preset("default")
    toy = NETWORKS["dwsep"](batch=64)
    compiled = compile_model(toy.model, cfg, None, dtype="bf16")
    assert (compiled.batch, compiled.run_batch) == (64, 32)
    run = execute(compiled, get_device("model", cfg), toy.test_x[:64])
    assert run.bit_exact and len(run.result.results) == 2


@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_runs_bit_exact_in_bf16(name):
    """bf16: the float graph in BF16 with FP32 accumulation, bit for bit with the layer-chained
    reference (`d1tile.sw.bf16`); the classes agree with the float model's on nearly every
    image (measured: all 32 for each network)."""
    cfg = TileConfig.preset("default")
    toy = NETWORKS[name](batch=BATCH)
    compiled = compile_model(toy.model, cfg, None, dtype="bf16")
    x = toy.test_x[:BATCH]
    run = execute(compiled, get_device("model", cfg), x)
    assert run.bit_exact and run.max_abs_diff == 0
    agree = np.mean(run.outputs["logits"].argmax(1) == run.float_values["logits"].argmax(1))
    assert agree >= 1 - 2 / BATCH


def test_upsampling_is_onnx_resize_linear_half_pixel():
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph(
        [node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 1, 28, 28])],
        [numpy_helper.from_array(np.array([3, 1, 28, 28], np.int64), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(upsample(x), session.run(None, {"x": x})[0], rtol=0, atol=1e-6)


def test_the_weight_cache_is_keyed_by_the_training():
    """A network trained differently gets another cache file; the trained weights are on disk
    under the key of the current training."""
    lenet = networks.SPECS["lenet5"]
    other = dataclasses.replace(lenet, training=dataclasses.replace(lenet.training, seed=1))
    assert networks._cache_key(other) != networks._cache_key(lenet)
    params = networks.trained_params("lenet5")
    path = networks.cache_path("lenet5")
    if path.exists():      # absent only when the cache directory cannot be written
        with np.load(path) as stored:
            assert all(np.array_equal(stored[k], v) for k, v in params.items())
