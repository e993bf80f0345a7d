"""The compiler driver: networks compiled onto the tile, bit-exact with the integer reference,
on the cycle model and (small ones) on the RTL; clear errors for what is not lowered."""

import numpy as np
import pytest

from conftest import bench_seed
from onnx import numpy_helper
from d1tile.params import TileConfig
from d1tile.sw.compiler import compile_model, execute
from d1tile.sw.errors import CompileError
from d1tile.sw.graph_api import GraphBuilder
from d1tile.sw.runtime import get_device
from d1tile.sw.toy_models import cnn_model, mlp_model


def small_mlp(rng, batch=8, k=12, h=8, f=4):
    g = GraphBuilder("small")
    x = g.input("x", (batch, k))
    y = g.relu(g.gemm(x, rng.normal(size=(k, h)).astype(np.float32),
                      rng.normal(size=h).astype(np.float32), name="fc1"))
    y = g.gemm(y, rng.normal(size=(h, f)).astype(np.float32),
               rng.normal(size=f).astype(np.float32), name="fc2")
    return g.build(outputs=[y])


@pytest.mark.parametrize("make", [mlp_model, cnn_model], ids=["mlp", "cnn"])
def test_toy_model_on_the_default_tile_is_bit_exact(make):
    cfg = TileConfig.preset("default")
    toy = make(batch=64)
    compiled = compile_model(toy.model, cfg, toy.calib_x)
    run = execute(compiled, get_device("model", cfg), toy.test_x[:64])
    assert run.max_abs_diff == 0
    assert run.result.cycles >= compiled.ideal_cycles > 0
    predicted = run.outputs["logits"].argmax(axis=1)
    assert np.mean(predicted == toy.test_y[:64]) > 0.85


def test_an_opset_11_model_with_batchnorm_runs_bit_exact():
    """An opset 11 CNN with BatchNormalization after its Conv and its Gemm (upgraded, folded:
    tests/test_frontend.py) compiles and runs on the tiny tile bit-exact with its integer
    reference, and its dequantised logits (the softmax runs on the host) are within 10 int8
    steps of onnxruntime's float ones."""
    import onnx
    import onnxruntime
    from d1tile.sw.quant import dequantize
    from test_frontend import bn_cnn
    model = bn_cnn(11)
    cfg = TileConfig.preset("tiny")
    rng = np.random.default_rng([bench_seed(), 17])
    x = rng.normal(size=(2, 1, 4, 4)).astype(np.float32)
    # Calibrated on x too: an input beyond the calibration range saturates, which is not what
    # this test measures (with 16 samples alone, some seeds clipped a logit at -128 steps).
    calib = np.concatenate([rng.normal(size=(16, 1, 4, 4)).astype(np.float32), x])
    compiled = compile_model(model, cfg, calib)
    run = execute(compiled, get_device("model", cfg), x)
    assert run.max_abs_diff == 0
    assert list(run.outputs) == ["gn"]             # the second BatchNormalization's output
    logits = onnx.ModelProto()
    logits.CopyFrom(model)
    del logits.graph.output[:]
    logits.graph.output.add().name = "gn"
    session = onnxruntime.InferenceSession(logits.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    scale = compiled.qgraph.scales["gn"]
    got = dequantize(run.outputs["gn"], scale)
    # int8 activations through two layers (measured: 7.2 steps of the output's scale, whose
    # 127 steps span the calibrated logits)
    assert np.abs(got - want).max() <= 10 * scale, (got, want, scale)


def small_residual(rng, batch=8):
    """Two branches from x added: the add's output blocks read one word of each input, two
    K runs apart, so its tiles are two accumulating MATMULs."""
    g = GraphBuilder("residual")
    x = g.input("x", (batch, 16))
    a = g.relu(g.gemm(x, rng.normal(size=(16, 24)).astype(np.float32),
                      rng.normal(size=24).astype(np.float32), name="fa"))
    b = g.gemm(x, rng.normal(size=(16, 24)).astype(np.float32), None, name="fb")
    y = g.gemm(g.relu(g.add(a, b, name="sum")), rng.normal(size=(24, 4)).astype(np.float32),
               None, name="out")
    return g.build(outputs=[y])


def small_cnn(rng, batch=8):
    """Conv (stride 1, pad 1) + ReLU + MaxPool fused (floor: 5 -> 2); a second conv with stride
    2 and padding 1; a residual add with an avgpool of the first; flatten; gemm. Small enough
    for the tiny preset's 4 KiB per node."""
    g = GraphBuilder("small_cnn")
    x = g.input("x", (batch, 1, 5, 5))
    c1 = g.relu(g.conv(x, rng.normal(size=(3, 1, 3, 3)).astype(np.float32),
                       rng.normal(size=3).astype(np.float32), pads=1, name="conv1"))
    p1 = g.maxpool(c1, 2, name="pool1")                                    # 3 x 2 x 2
    c2 = g.conv(p1, rng.normal(size=(3, 3, 3, 3)).astype(np.float32), None, strides=2,
                pads=1, name="conv2")                                      # 3 x 1 x 1
    r = g.relu(g.add(c2, g.avgpool(p1, 2, strides=1, name="avg"), name="res"))
    y = g.gemm(g.flatten(r), rng.normal(size=(3, 5)).astype(np.float32),
               rng.normal(size=5).astype(np.float32), name="fc")
    return g.build(outputs=[y])


def pool_zoo(rng, batch=8):
    """Standalone pools (not fused): maxpool with padding on the input, avgpool including
    padding, an add of two activations and one with a constant, relu after a flatten and a
    reshape, a maxpool after that relu."""
    g = GraphBuilder("pools")
    x = g.input("x", (batch, 2, 4, 4))
    m = g.maxpool(x, 2, strides=2, pads=1, name="max_pad")                 # 2 x 3 x 3
    a = g.avgpool(x, 2, strides=2, pads=1, count_include_pad=True, name="avg_pad")
    s = g.add(m, a, name="sum")
    s = g.add(s, rng.normal(size=(2, 1, 1)).astype(np.float32), name="shift")
    t = g.relu(g.reshape(g.flatten(s), (batch, 2, 3, 3)), name="relu")
    y = g.maxpool(t, 2, strides=1, name="max2")                            # 2 x 2 x 2
    return g.build(outputs=[y])


@pytest.mark.parametrize("make, cfg", [
    (small_cnn, TileConfig.preset("tiny")),
    (small_cnn, TileConfig.preset("default").with_grid(2, 3)),
    # Every standalone pool is a layer with resident selection weights: too big for tiny.
    (pool_zoo, TileConfig.preset("default").with_grid(2, 3)),
], ids=["small_cnn-tiny", "small_cnn-default2x3", "pool_zoo-default2x3"])
def test_conv_pool_add_networks_are_bit_exact(make, cfg):
    rng = np.random.default_rng([bench_seed(), 3])
    graph = make(rng)
    shape = graph.shape(graph.inputs[0])
    calib = rng.normal(size=(16, *shape[1:])).astype(np.float32)
    compiled = compile_model(graph, cfg, calib)
    x = rng.normal(size=shape).astype(np.float32)
    run = execute(compiled, get_device("model", cfg), x)
    assert run.max_abs_diff == 0
    out = compiled.qgraph.outputs[0]
    assert run.outputs[out].shape == tuple(graph.shape(out))
    assert run.outputs[out].std() > 0          # not a constant: the test checks something


def random_conv_net(rng, index):
    """A random small CNN: conv (random kernel, strides, asymmetric pads, channels) with or
    without ReLU, optionally a maxpool or an avgpool (random window, stride, padding), sometimes
    a second conv and a residual add, then flatten and gemm."""
    def window(size):
        k = int(rng.integers(1, min(3, size) + 1))
        s = int(rng.integers(1, 3))
        pads = [int(rng.integers(0, k)) for _ in range(4)] if rng.random() < 0.5 else [0] * 4
        return k, s, pads

    def out(size, k, s, lo, hi):
        return (size + lo + hi - k) // s + 1

    g = GraphBuilder(f"random{index}")
    b, c, h, w = (int(rng.integers(9, 25)), int(rng.integers(1, 4)), int(rng.integers(4, 7)),
                  int(rng.integers(4, 7)))
    t = g.input("x", (b, c, h, w))
    o = int(rng.integers(1, 6))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pads = [int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)),
            int(rng.integers(0, kw))]
    t = g.conv(t, rng.normal(size=(o, c, kh, kw)).astype(np.float32),
               rng.normal(size=o).astype(np.float32), strides=(sh, sw), pads=pads, name="conv")
    h, w = out(h, kh, sh, pads[0], pads[2]), out(w, kw, sw, pads[1], pads[3])
    if rng.random() < 0.7:
        t = g.relu(t, name="relu")
    kind = rng.choice(["max", "avg", "none"])
    if kind != "none" and min(h, w) >= 1:
        k, s, pp = window(min(h, w))
        if kind == "max":
            t = g.maxpool(t, k, strides=s, pads=pp, name="pool")
        else:
            t = g.avgpool(t, k, strides=s, pads=pp, count_include_pad=True, name="pool")
        h, w = out(h, k, s, pp[0], pp[2]), out(w, k, s, pp[1], pp[3])
    if rng.random() < 0.5:
        r = g.conv(t, rng.normal(size=(o, o, 3, 3)).astype(np.float32), None, pads=1,
                   name="conv2")
        t = g.relu(g.add(r, t, name="residual"), name="relu2")
    y = g.gemm(g.flatten(t), rng.normal(size=(o * h * w, 4)).astype(np.float32),
               rng.normal(size=4).astype(np.float32), name="fc")
    return g.build(outputs=[y])


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("index", range(8))
def test_random_conv_networks_are_bit_exact(index, dtype):
    """Random kernels, strides, asymmetric pads, pools and residual adds (seeded by the
    session seed, printed in pytest's header): tile output == the exact reference (int8: the
    integer reference; bf16: the BF16/FP32 reference), and bf16 near the float model."""
    rng = np.random.default_rng([bench_seed(), 100 + index])
    graph = random_conv_net(rng, index)
    cfg = TileConfig.preset("default").with_grid(*[(2, 3), (3, 2), (3, 3), (4, 4)][index % 4])
    shape = graph.shape(graph.inputs[0])
    calib = rng.normal(size=(16, *shape[1:])).astype(np.float32)
    compiled = compile_model(graph, cfg, calib if dtype == "int8" else None, dtype=dtype)
    run = execute(compiled, get_device("model", cfg), rng.normal(size=shape).astype(np.float32))
    assert run.bit_exact and run.max_abs_diff == 0, \
        f"seed {bench_seed()}, network {index}, {dtype}:\n{graph}"
    if dtype == "bf16":       # BF16 roundings of every activation: a few parts in 2^8
        out = compiled.qgraph.outputs[0]
        want = run.float_values[out]
        assert np.all(np.abs(run.outputs[out] - want) <= 0.05 * (1 + np.abs(want).max()))


@pytest.mark.parametrize("make", [mlp_model, cnn_model], ids=["mlp", "cnn"])
def test_toy_models_in_bf16_are_bit_exact_and_accurate(make):
    """The toy models compiled for bf16 (no calibration): the tile's BF16 logits equal the
    layer-by-layer BF16/FP32 reference bit for bit, are within 1 % of the float model's
    largest logit, and classify as the float model does."""
    cfg = TileConfig.preset("default")
    toy = make(batch=64)
    compiled = compile_model(toy.model, cfg, dtype="bf16")
    x = toy.test_x[:64]
    run = execute(compiled, get_device("model", cfg), x)
    assert run.bit_exact
    out = compiled.qgraph.outputs[0]
    got, want = run.outputs[out], run.float_values[out]
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 0.01 * np.abs(want).max()
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.98


def test_maxpool_fuses_into_its_conv_and_reports_macs():
    rng = np.random.default_rng([bench_seed(), 4])
    graph = small_cnn(rng)
    compiled = compile_model(graph, TileConfig.preset("tiny"),
                             rng.normal(size=(8, 1, 5, 5)).astype(np.float32))
    names = [layer.name for layer in compiled.layers]
    assert names[0] == "conv1+relu1+pool1" and compiled.layers[0].ops == ["conv", "maxpool"]
    b = 8
    conv1, conv2, fc = b * 3 * 25 * 1 * 9, b * 3 * 1 * 3 * 9, b * 3 * 5
    assert compiled.macs == conv1 + conv2 + fc
    assert compiled.ideal_cycles == compiled.macs / compiled.cfg.peak_macs_per_cycle
    # `macs` counts C kh kw per conv output, padding included (the usual convention); the
    # matrix units skip the taps over the padding, multiply conv1's channels padded to 4 (one
    # int8 word per pixel) and the N = 4 output channels of a block, and never compute conv1's
    # last row and column, which the floor-mode pool does not read; the add and the avgpool run
    # on the vector unit.
    kinds = {layer.name: layer.tile_macs for layer in compiled.layers}
    n = 4
    fold = compiled.folds.get("x", "none")
    if fold == "full":        # the host's im2col: 9 taps (12 channels, 3 words) per position
        assert kinds["conv1+relu1+pool1"] == (b // n) * 16 * 3 * 4 * n * n
    else:                     # one word per pixel, the taps over the padding skipped
        assert fold == "none"
        taps1 = sum(1 for oy in range(4) for ox in range(4) for dy in range(3)
                    for dx in range(3) if 0 <= oy - 1 + dy < 5 and 0 <= ox - 1 + dx < 5)
        assert kinds["conv1+relu1+pool1"] == b * n * taps1 * 4
    assert kinds["conv2"] == b * n * 4 * 4          # 2x2 input: 4 taps inside, one word each
    assert kinds["avg"] == 0 and kinds["res+relu2"] == 0
    # fc: 5 outputs are 2 feature blocks of N, K one word (3 features and a padding one)
    assert kinds["fc"] == (b // n) * 2 * 1 * 4 * n * n


def test_layer_breakdown_adds_up_to_the_run():
    from d1tile.sw.report import run_network
    cfg = TileConfig.preset("default")
    toy = cnn_model(batch=32)
    compiled = compile_model(toy.model, cfg, toy.calib_x)
    net = run_network(compiled, toy.test_x[:32], labels=toy.test_y[:32])
    report = net.report()
    layers = [layer["cycles"] for layer in report["layers"]]
    assert all(n > 0 for n in layers)
    assert report["cycles_breakdown"]["load"] + sum(layers) \
        + report["cycles_breakdown"]["finish"] == report["cycles"]["model"]
    assert report["macs"] == sum(layer["macs"] for layer in report["layers"])
    assert report["mac_utilisation"]["model"] == report["ideal_cycles"] / report["cycles"]["model"]
    assert report["bit_exact"] and report["max_abs_diff_vs_reference"] == {"model": 0}
    assert 0 <= report["accuracy"]["tile"] <= 1


def test_what_is_not_lowered_or_does_not_fit_is_a_clear_error():
    rng = np.random.default_rng(0)
    g = GraphBuilder("flat")
    x = g.input("x", (4, 16))
    y = g.conv(g.reshape(g.gemm(x, rng.normal(size=(16, 16)).astype(np.float32), name="fc"),
                         (4, 1, 4, 4)), rng.normal(size=(2, 1, 3, 3)).astype(np.float32),
               name="conv")
    graph = g.build(outputs=[y])
    with pytest.raises(CompileError, match=r"node 'conv' \(conv\): its input '.*' is not an "
                                           r"NCHW image on the tile"):
        compile_model(graph, TileConfig.preset("tiny"),
                      rng.normal(size=(4, 16)).astype(np.float32))


def test_the_toy_mlp_fits_the_tiny_tile_split_over_time():
    """Its 64 x 64 hidden layer needs more than a tiny node's 4 KiB (it was refused): it now
    runs as parts one after another (`_split_gemm`), bit-exact."""
    cfg = TileConfig.preset("tiny")
    mlp = mlp_model(batch=16)
    compiled = compile_model(mlp.model, cfg, mlp.calib_x)
    assert any("[" in layer.name for layer in compiled.layers)
    run = execute(compiled, get_device("model", cfg), mlp.test_x[:16])
    assert run.bit_exact


def deep_mlp(rng, batch=8, widths=(32, 32, 32, 32, 4)):
    """Four layers whose weights do not all fit the tiny node's 256 words at once: the last
    layers reuse the words of the first ones' dead regions after a barrier."""
    g = GraphBuilder("deep")
    y = g.input("x", (batch, widths[0]))
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        y = g.gemm(y, rng.normal(size=(k, n)).astype(np.float32),
                   rng.normal(size=n).astype(np.float32), name=f"fc{i}")
        if i < len(widths) - 2:
            y = g.relu(y)
    return g.build(outputs=[y])


def gated_mlp(rng):
    """Wider: the later layers' weight staging finds no never-used words either, so the host
    feeds it into dead words after the barrier's token (gated feeds)."""
    return deep_mlp(rng, widths=(48, 48, 48, 48, 4))


@pytest.mark.parametrize("make, shape, dtype", [
    (small_mlp, (8, 12), "int8"), (small_cnn, (8, 1, 5, 5), "int8"),
    (small_residual, (8, 16), "int8"), (small_cnn, (8, 1, 5, 5), "bf16"),
    (deep_mlp, (8, 32), "int8"), (gated_mlp, (8, 48), "int8"), (gated_mlp, (8, 48), "bf16")],
    ids=["mlp", "cnn", "residual", "cnn-bf16", "reuse-after-barrier", "gated-feeds",
         "layers-split-over-time"])
def test_small_network_on_both_backends(make, shape, dtype):
    cfg = TileConfig.preset("tiny")
    rng = np.random.default_rng(bench_seed())
    graph = make(rng)
    calib = rng.normal(size=(8, *shape[1:])).astype(np.float32)
    compiled = compile_model(graph, cfg, calib if dtype == "int8" else None, dtype=dtype)
    x = rng.normal(size=shape).astype(np.float32)
    if make is small_residual:           # the add runs on the vector unit
        assert compiled.layers[2].plan.kind == "add" and compiled.layers[2].tile_macs == 0
    if make is deep_mlp:                 # the barrier's SEND / WAIT / MCAST on the RTL too
        assert compiled.builder.barriers
    if make is gated_mlp:                # the host waits for the barriers' tokens
        assert compiled.tile_program.gates and compiled.run_batch == 8
    if make is gated_mlp and dtype == "bf16":    # fc0..fc2 do not fit whole: split in two
        assert [layer.name for layer in compiled.layers] == [
            "fc0+relu1[0:24]", "fc0+relu1[24:48]", "fc1+relu2[0:24]", "fc1+relu2[24:48]",
            "fc2+relu3[0:24]", "fc2+relu3[24:48]", "fc3"]
    model = execute(compiled, get_device("model", cfg), x)
    rtl = execute(compiled, get_device("rtl", cfg), x)
    assert model.bit_exact and rtl.bit_exact
    assert model.result.comparable() == rtl.result.comparable()


def test_qdq_model_from_onnxruntime_runs_with_its_own_scales(tmp_path):
    """A QDQ model as `onnxruntime.quantization.quantize_static` writes it (symmetric int8
    activations and weights) compiles without calibration inputs, with the model's scales,
    and runs bit-exact with the integer reference; its classes are onnxruntime's own for the
    QDQ model on nearly every image (measured: 32 of 32)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    toy = cnn_model(batch=32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": toy.calib_x[i:i + 32]} for i in range(0, 128, 32)])

        def get_next(self):
            return next(self.batches, None)

    src, dst = tmp_path / "cnn.onnx", tmp_path / "cnn.qdq.onnx"
    onnx.save(toy.model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    qdq = onnx.load(dst)
    x_scale = next(numpy_helper.to_array(t) for t in qdq.graph.initializer
                   if t.name == next(n.input[1] for n in qdq.graph.node
                                     if n.op_type == "QuantizeLinear" and n.input[0] == "x"))
    cfg = TileConfig.preset("default")
    compiled = compile_model(qdq, cfg)
    assert compiled.qgraph.scales["x"] == pytest.approx(float(x_scale), rel=1e-7)
    x = toy.test_x[:32]
    run = execute(compiled, get_device("model", cfg), x)
    assert run.bit_exact and run.max_abs_diff == 0
    session = onnxruntime.InferenceSession(qdq.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0].argmax(1)
    ours = next(iter(run.outputs.values())).argmax(1)
    assert np.mean(ours == theirs) >= 30 / 32


def test_int8_without_calibration_or_qdq_scales_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(CompileError, match=r"^int8 needs calibration inputs \(or a QDQ model"):
        compile_model(small_mlp(rng), TileConfig.preset("tiny"))


def test_a_batch_too_large_is_split_over_runs_on_both_backends():
    """The small CNN at batch 128 does not fit the tiny tile at once (measured: 64 does): it is
    compiled for 64 and run twice from the host edge; each run is bit-exact, the model and the
    RTL agree on every run, and the report sums the runs."""
    from d1tile.sw.report import run_network
    cfg = TileConfig.preset("tiny")
    rng = np.random.default_rng(bench_seed())
    graph = small_cnn(rng).with_batch(128)
    compiled = compile_model(graph, cfg, rng.normal(size=(16, 1, 5, 5)).astype(np.float32))
    assert (compiled.batch, compiled.run_batch, compiled.runs(128)) == (128, 64, 2)
    x = rng.normal(size=(128, 1, 5, 5)).astype(np.float32)
    net = run_network(compiled, x, backends=("model", "rtl"))
    report = net.report()
    assert report["bit_exact"] and report["model_and_rtl_identical"]
    assert report["runs"] == 2 and report["batch"] == 128 and report["batch_per_run"] == 64
    per_run = report["cycles_per_run"]["model"]
    assert len(per_run) == 2 and sum(per_run) == report["cycles"]["model"]
    assert per_run == report["cycles_per_run"]["rtl"]
    breakdown = report["cycles_breakdown"]        # the last run's
    assert breakdown["load"] + sum(layer["cycles"] for layer in report["layers"]) \
        + breakdown["finish"] == per_run[-1]
    assert report["macs"] == 2 * compiled.macs
    # an odd batch: the last run padded with its own samples, whose outputs are dropped
    odd = execute(compiled, get_device("model", cfg), x[:90])
    assert odd.bit_exact and len(odd.result.results) == 2
    assert all(v.shape[0] == 90 for v in odd.outputs.values())


def test_what_does_not_fit_one_sample_is_refused_with_the_whole_batch_error():
    """A GEMM whose weights alone exceed the tiny tile: splitting the batch cannot help."""
    cfg = TileConfig.preset("tiny")
    rng = np.random.default_rng(0)
    graph = small_mlp(rng, batch=16, k=512, h=256)
    with pytest.raises(CompileError, match=r"^layer 'fc1\+relu1' needs .* \(also with the batch "
                                           r"of 16 split into runs of one sample(: .*)?\)$"):
        compile_model(graph, cfg, rng.normal(size=(16, 512)).astype(np.float32))


def test_a_gemm_whose_weights_exceed_the_tile_is_split_over_time():
    """1024 x 1024 int8 weights (1 MiB, the default tile's whole SRAM): the layer runs as 11
    layers of at most 96 output features, one after another, each part's weights fed by the
    host into the words of the part before it once a barrier has passed; bit-exact."""
    cfg = TileConfig.preset("default")
    rng = np.random.default_rng(bench_seed())
    graph = small_mlp(rng, batch=64, k=1024, h=1024, f=10)
    compiled = compile_model(graph, cfg, rng.normal(size=(64, 1024)).astype(np.float32))
    names = [layer.name for layer in compiled.layers]
    assert names[0] == "fc1+relu1[0:96]" and names[-2] == "fc1+relu1[960:1024]" and \
        names[-1] == "fc2" and len(names) == 12
    assert compiled.run_batch == 64 and compiled.tile_program.gates
    assert compiled.macs == 64 * (1024 * 1024 + 1024 * 10)
    run = execute(compiled, get_device("model", cfg),
                  rng.normal(size=(64, 1024)).astype(np.float32))
    assert run.bit_exact


def band_conv(rng, shape, out_c, *, strides=1, pool=0, fc=0):
    """One 3x3 convolution (padding 1, ReLU) on the host input, a max pool fused after it and a
    GEMM reading it flattened when asked: a network whose first convolution does not fit the
    tile in one piece."""
    g = GraphBuilder("band_conv")
    x = g.input("x", shape)
    y = g.relu(g.conv(x, rng.normal(size=(out_c, shape[1], 3, 3)).astype(np.float32),
                      rng.normal(size=out_c).astype(np.float32), pads=1, strides=strides,
                      name="conv"))
    if pool:
        y = g.maxpool(y, pool, name="pool")
    if fc:
        k = out_c * (shape[2] // strides // max(pool, 1)) * (shape[3] // strides // max(pool, 1))
        y = g.gemm(g.flatten(y), rng.normal(size=(k, fc)).astype(np.float32) / 10,
                   rng.normal(size=fc).astype(np.float32), name="fc")
    return g.build(outputs=[y])


def test_a_conv_too_large_for_the_tile_is_split_into_bands_on_both_backends():
    """A 24 x 12 image of 4 channels at batch 8 on the tiny tile (256 words a node): the input
    rows a node reads and the output it computes do not fit beside each other, nor at batch 1
    (the batch is the lanes). The output rows are cut into bands, one layer each; band 1's
    input rows are fed by the host into band 0's words once the barrier between them has
    passed (gated feeds), and each band's output goes to the host edge as it is done (it is
    the network's output, and the tile cannot hold all of it). Bit-exact, and the RTL runs
    the same cycles."""
    cfg = TileConfig.preset("tiny")
    rng = np.random.default_rng(bench_seed())
    graph = band_conv(rng, (8, 4, 24, 12), 4)
    x = rng.normal(size=(8, 4, 24, 12)).astype(np.float32)
    compiled = compile_model(graph, cfg, x)
    assert [layer.name for layer in compiled.layers] == ["conv+relu1[0:12]",
                                                         "conv+relu1[12:24]"]
    assert compiled.run_batch == 8 and compiled.tile_program.gate_of     # declared, fed at run time
    assert all(layer.plan.send_out for layer in compiled.layers)
    assert compiled.macs == 8 * 4 * 24 * 12 * 4 * 9
    model = execute(compiled, get_device("model", cfg), x)
    rtl = execute(compiled, get_device("rtl", cfg), x)
    assert model.bit_exact and rtl.bit_exact
    assert model.result.comparable() == rtl.result.comparable()


def test_a_conv_read_by_a_gemm_is_split_into_bands_kept_on_the_tile():
    """A 96 x 24 image of 16 channels (stride 2, a 2x2 max pool, then a GEMM) on the default
    tile: the conv's input needs 72 KiB a node; as two bands of output rows it fits, the
    bands' outputs stay on the tile and the GEMM reads them side by side as its K."""
    cfg = TileConfig.preset("default")
    rng = np.random.default_rng(bench_seed())
    shape = (8, 16, 96, 24)
    graph = band_conv(rng, shape, 8, strides=2, pool=2, fc=10)
    x = rng.normal(size=shape).astype(np.float32)
    compiled = compile_model(graph, cfg, x)
    assert [layer.name for layer in compiled.layers] == [
        "conv+relu1+pool[0:12]", "conv+relu1+pool[12:24]", "fc"]
    assert not any(layer.plan.send_out for layer in compiled.layers[:2])
    assert compiled.macs == 8 * (8 * 48 * 12 * 16 * 9 + 8 * 24 * 6 * 10)
    run = execute(compiled, get_device("model", cfg), x)
    assert run.bit_exact


def test_a_conv_that_cannot_be_split_is_refused_with_both_errors():
    """Read by an average pool on the vector unit (which needs its input as one image) the
    convolution cannot be cut into bands: the error is the whole layer's. A 240-pixel-wide image of 16
    channels needs more than a node for even one output row: the error says so."""
    cfg = TileConfig.preset("default")
    rng = np.random.default_rng(0)
    g = GraphBuilder("avg")
    x = g.input("x", (8, 16, 96, 24))
    y = g.avgpool(g.conv(x, rng.normal(size=(8, 16, 3, 3)).astype(np.float32), pads=1,
                         name="conv"), 2, name="avg")
    with pytest.raises(CompileError, match=r"^tensor 'x' needs 78\.0 KiB of SRAM per node "
                                           r"(?!.*split over time)"):
        compile_model(g.build(outputs=[y]), cfg, rng.normal(size=(8, 16, 96, 24)))
    wide = band_conv(rng, (8, 16, 8, 240), 8)
    with pytest.raises(CompileError, match=r"^tensor 'x' needs 120\.0 KiB .* \(nor with its "
                                           r"first convolution split over time: down to 8 bands "
                                           r"of output rows: tensor 'x\[0:1\]' needs 90\.0 KiB"):
        compile_model(wide, cfg, rng.normal(size=(8, 16, 8, 240)))
