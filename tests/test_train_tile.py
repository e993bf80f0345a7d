"""Training on the tile (`d1tile.sw.train_kernels`, `d1tile.sw.train_run`, `d1tile train`):
the program's losses after every step and weights after every epoch equal the NumPy reference
of the same arithmetic (`TileTrainReference`) bit for bit, on the cycle model, the functional
interpreter and (a few steps) the RTL; the reference itself against exact arithmetic and
against float64 gradients; every refusal one line.

The float64 bound (`test_the_reference_gradients_are_close_to_float64`): the tile's gradient
dW = x^T dz has BF16 operands (x and dz each rounded once, relative error <= 2^-9) and FP32
sums (B terms, relative error <= B 2^-24 of sum |x dz|), and dz itself comes from BF16-rounded
logits (relative error <= 2^-9 of each logit, |d| <= |z - t|): every error is a few 2^-9 of
sum_b |x| max |dz|, so the difference to float64 is below 2^-8 (sum_b |x| max |dz| + |dz|)
(measured: below 2^-11 of it)."""

import numpy as np
import onnx
import pytest

from conftest import bench_seed
from d1tile import numerics
from d1tile.cli import main
from d1tile.params import TileConfig
from d1tile.sim.interp import interpret
from d1tile.sim.tile import TileModel
from d1tile.sw.errors import CompileError
from d1tile.sw.graph_api import GraphBuilder
from d1tile.sw.train_kernels import (TileTrainReference, TrainProgram, augmented, plan_training,
                                     step_operands)
from d1tile.sw.train_run import mlp_to_onnx, train_on_tile
from d1tile.sw.training import Sgd, float_loss_and_grads, initial_params, training_graph

TINY = TileConfig.preset("tiny")


def rng(*salt):
    return np.random.default_rng([bench_seed(), *salt])


def mlp(r, batch, sizes, relus=None, name="mlp"):
    """A chain of gemms K0 -> K1 -> ... with ReLUs between (or as `relus` says)."""
    g = GraphBuilder(name)
    y = g.input("x", (batch, sizes[0]))
    for i, (k, f) in enumerate(zip(sizes, sizes[1:])):
        y = g.gemm(y, r.normal(size=(k, f)).astype(np.float32),
                   r.normal(size=f).astype(np.float32) * 0.1, name=f"fc{i + 1}")
        last = i + 2 == len(sizes)
        if not last and (relus is None or relus[i]):
            y = g.relu(y)
    return g.build(outputs=[y])


def run_training(cfg, sizes, batch, epochs, steps, opt, r, relus=None, interp=True,
                 loss="mse", weights="fp32", stages=1):
    tg = training_graph(mlp(r, batch, sizes, relus), loss)
    params = initial_params(tg, seed=int(r.integers(1 << 30)))
    for k, v in params.items():                 # biases off zero: no ReLU sits on its kink
        if v.ndim == 1:
            params[k] = (r.normal(size=v.shape) * 0.1).astype(np.float32)
    plan = plan_training(tg, cfg, batch, stages=stages)
    prog = TrainProgram(plan, params, opt, steps_per_epoch=steps, epochs=epochs,
                        weights=weights, seed=11)
    batches = [(r.normal(size=(batch, sizes[0])),
                r.normal(size=(batch, sizes[-1])) if loss == "mse"
                else r.integers(0, sizes[-1], size=batch)) for _ in range(steps * epochs)]
    prog.feed(batches)
    result = TileModel(cfg).run(prog.tp)
    assert result.hang is None and not result.faults and not result.misroute
    if interp:
        functional = interpret(prog.tp)
        assert functional.deadlock is None, functional.deadlock
        assert functional.reads == result.reads and functional.streams == result.streams
    out = prog.unpack(result)
    ref = TileTrainReference(plan, params, opt, weights=weights, seed=11)
    for s, (x, t) in enumerate(batches):
        loss = ref.step(x, t)
        assert numerics.f32_bits(loss) == numerics.f32_bits(out["losses"][s]), (s, loss)
        if s % steps == steps - 1:
            for got, want in zip(out["epochs"][s // steps], ref.master):
                assert np.array_equal(got, want), f"weights after step {s + 1}"
    for got, want in zip(out["masters"], ref.master):
        assert np.array_equal(got, want)
    if opt.momentum:
        for got, want in zip(out["velocity"], ref.velocity):
            assert np.array_equal(got, want)
    return prog, result, ref


@pytest.mark.parametrize("sizes, batch, relus", [
    ((3, 4, 3), 4, None),            # one node: no all-reduce
    ((3, 4, 3), 8, None),            # two nodes in a row: a chain of two
    ((5, 3, 4, 2), 16, (True, False)),   # four nodes, two rows: the spanned multicasts;
    #                                      a hidden layer without ReLU (no mask)
])
def test_training_steps_equal_the_reference_on_the_tiny_tile(sizes, batch, relus):
    opt = Sgd(0.25, 0.5, 0.0625)
    run_training(TINY, sizes, batch, epochs=2, steps=3, opt=opt, r=rng(1, batch), relus=relus)


@pytest.mark.parametrize("batch", [4, 16])
def test_cross_entropy_on_the_host_equals_the_reference(batch):
    """The logits go to the host, dL/dz comes back (`d1tile.hostops`), every step."""
    prog, _, _ = run_training(TINY, (3, 4, 3), batch, epochs=2, steps=2, opt=Sgd(0.25, 0.5),
                              r=rng(10, batch), loss="cross-entropy")
    assert len(prog.tp.host_ops) == batch // 4


@pytest.mark.parametrize("sizes, batch, loss", [((3, 4, 3), 8, "cross-entropy"),
                                                ((5, 3, 4, 2), 16, "mse")])
def test_bf16_weights_with_stochastic_rounding_equal_the_reference(sizes, batch, loss):
    """The bf16-sr scheme: each chunk's owner converts its BF16 weights to FP32, updates them
    and rounds them back stochastically, one draw of its lanes' generators per row."""
    prog, _, ref = run_training(TINY, sizes, batch, epochs=2, steps=2, opt=Sgd(0.25, 0.5, 0.125),
                                r=rng(12, batch), loss=loss, weights="bf16-sr")
    assert all(m.dtype == np.uint16 for m in ref.master)


@pytest.mark.parametrize("sizes, batch, loss, weights", [
    ((3, 4, 3), 8, "cross-entropy", "fp32"), ((3, 4, 3), 8, "mse", "fp32"),
    ((5, 3, 4, 2), 8, "mse", "bf16-sr"), ((3, 4, 3), 4, "cross-entropy", "bf16-sr")])
def test_layers_over_rows_equal_the_reference(sizes, batch, loss, weights):
    """Two stages (model-parallel): the activations down each column, the gradients back up,
    an all-reduce per row; the same arithmetic, bit for bit."""
    prog, _, _ = run_training(TINY, sizes, batch, epochs=2, steps=2, opt=Sgd(0.25, 0.5, 0.125),
                              r=rng(13, batch), loss=loss, weights=weights, stages=2)
    assert prog.plan.chains[1] == [(x, 1) for x in range(batch // 4)]


def test_the_partition_is_the_fastest_that_fits():
    """A network too large for one tiny node trains with its layers over the two rows; the
    table lists both candidates, the refused one with its reason."""
    from d1tile.sw.train_run import choose_partition
    r = rng(14)
    tg = training_graph(mlp(r, 8, (8, 8, 4)), "cross-entropy")
    params = initial_params(tg, seed=1)
    plan, table = choose_partition(tg, TINY, 8, params, Sgd(0.1, 0.9), log=lambda line: None)
    assert [row["stages"] for row in table] == [1, 2]
    assert "of SRAM per node" in table[0]["error"] and len(plan.stages) == 2
    assert table[1]["cycles_per_step"] > 0
    tg = training_graph(mlp(r, 8, (3, 4, 3)), "cross-entropy")
    plan, table = choose_partition(tg, TINY, 8, initial_params(tg), Sgd(0.1),
                                   log=lambda line: None)
    fastest = min(table, key=lambda row: row["cycles_per_step"])
    assert len(plan.stages) == fastest["stages"] and all("error" not in row for row in table)


def test_stages_let_a_network_train_where_one_node_cannot_hold_it():
    """64-32-32-10 on the default preset's 64 KiB nodes: one stage needs 107 KiB and is
    refused; three stages need 58 KiB, more than the banks hold with the streams apart, so the
    regions go one after another; it trains bit-exact."""
    cfg = TileConfig.preset("default")
    tg = training_graph(mlp(rng(15), 32, (64, 32, 32, 10)), "cross-entropy")
    with pytest.raises(CompileError, match="needs 107.4 KiB of SRAM per node"):
        TrainProgram(plan_training(tg, cfg, 32), initial_params(tg), Sgd(0.1, 0.9),
                     steps_per_epoch=1)
    run_training(cfg, (64, 32, 32, 10), 32, epochs=1, steps=2, opt=Sgd(0.1, 0.9), r=rng(15),
                 interp=False, loss="cross-entropy", stages=3)


def test_training_without_momentum_or_weight_decay():
    run_training(TINY, (3, 4, 3), 8, epochs=1, steps=4, opt=Sgd(0.5), r=rng(2))


def test_the_toy_mlp_trains_bit_exact_on_the_train_preset():
    """64 -> 64 -> 10 on four nodes of the `train` preset (the size `make demo` trains), two
    steps, against the reference (the interpreter left out: the model's run is the check)."""
    prog, result, _ = run_training(TileConfig.preset("train"), (64, 64, 10), 32, epochs=1,
                                   steps=2, opt=Sgd(0.1, 0.9, 1e-4), r=rng(3), interp=False)
    assert prog.plan.p == 4 and prog.plan.rect == (4, 1)


def test_the_rtl_runs_training_steps_as_the_model_does():
    from d1tile.hw.tile_run import run_rtl
    cases = [run_training(TINY, sizes, batch, epochs=1, steps=2, opt=Sgd(0.25, 0.5),
                          r=rng(4, batch), interp=False, loss=loss, weights=weights)
             for sizes, batch, loss, weights in (
                 ((3, 4, 3), 8, "mse", "fp32"), ((3, 4, 2), 16, "mse", "fp32"),
                 ((3, 4, 3), 8, "cross-entropy", "bf16-sr"))]
    cases.append(run_training(TINY, (3, 4, 3), 8, epochs=1, steps=2, opt=Sgd(0.25, 0.5),
                              r=rng(4, 2), interp=False, loss="cross-entropy", stages=2))
    rtl = run_rtl([prog.tp for prog, _, _ in cases])
    for (prog, model, _), got in zip(cases, rtl):
        assert got.comparable() == model.comparable()


def test_the_reference_is_exact_where_every_operation_is():
    """Weights, inputs and biases in {-1, 0, 1}, integer targets, B F = 16, a learning rate,
    momentum and weight decay that are powers of two: every BF16 rounding and FP32 operation
    of the first step is exact, so the reference equals float64 arithmetic bit for bit."""
    r = rng(5)
    for _ in range(5):
        batch, sizes = 4, (3, 4, 4)
        g = GraphBuilder("exact")
        x = g.input("x", (batch, sizes[0]))
        w1 = r.integers(-1, 2, size=(3, 4)).astype(np.float32)
        b1 = r.integers(-1, 2, size=4).astype(np.float32)
        w2 = r.integers(-1, 2, size=(4, 4)).astype(np.float32)
        b2 = r.integers(-1, 2, size=4).astype(np.float32)
        y = g.gemm(g.relu(g.gemm(x, w1, b1, name="fc1")), w2, b2, name="fc2")
        tg = training_graph(g.build(outputs=[y]), "mse")
        plan = plan_training(tg, TINY, batch)
        params = {"fc1.W": w1, "fc1.b": b1, "fc2.W": w2, "fc2.b": b2}
        opt = Sgd(0.5, 0.5, 0.25)
        xb = r.integers(-1, 2, size=(batch, 3)).astype(np.float64)
        tb = r.integers(-2, 3, size=(batch, 4)).astype(np.float64)
        ref = TileTrainReference(plan, params, opt)
        loss = ref.step(xb, tb)
        # float64: the same step
        h = np.maximum(xb @ w1 + b1, 0)
        z = h @ w2 + b2
        d = z - tb
        want_loss = np.sum(d * d) / 16
        dz = 2 * d / 16
        grads = {"fc2.W": h.T @ dz, "fc2.b": dz.sum(0)}
        dh = (dz @ w2.T) * (h > 0)
        grads |= {"fc1.W": xb.T @ dh, "fc1.b": dh.sum(0)}
        assert loss == want_loss
        for layer, master, vel in zip(plan.layers, ref.master, ref.velocity):
            w, b = params[layer.weight], params[layer.bias]
            wa = augmented(layer, w, b).astype(np.float64)
            ga = augmented(layer, grads[layer.weight], grads[layer.bias]).astype(np.float64)
            g2 = wa * 0.25 + ga
            v = g2                      # v = 0 m + g'
            new = wa - 0.5 * v
            assert np.array_equal(master, numerics.f32_bits(new))
            assert np.array_equal(vel, numerics.f32_bits(v))


def test_the_reference_gradients_are_close_to_float64():
    """One step's weight change (lr 1, no momentum: w - w' = dW) against float64 autodiff of
    the same loss at the same weights, within the bound of the module docstring."""
    r = rng(6)
    batch, sizes = 16, (6, 8, 4)
    tg = training_graph(mlp(r, batch, sizes), "mse")
    params = initial_params(tg, seed=3)
    for k, v in params.items():
        if v.ndim == 1:
            params[k] = (r.normal(size=v.shape) * 0.1).astype(np.float32)
    plan = plan_training(tg, TINY, batch)
    x, t = r.normal(size=(batch, 6)), r.normal(size=(batch, 4))
    ref = TileTrainReference(plan, params, Sgd(1.0))
    before = [numerics.f32_value(m) for m in ref.master]
    ref.step(x, t)
    xa, _ = step_operands(plan, x, t)
    # float64 autodiff at the BF16-rounded inputs and weights the tile used
    p64 = {}
    for layer, m in zip(plan.layers, before):
        wa = numerics.bf16_value(numerics.bf16_from_f32_rne(numerics.f32_bits(m)))
        p64[layer.weight] = wa[:layer.k, :layer.f]
        p64[layer.bias] = wa[layer.kpad, :layer.f]
    x64 = numerics.bf16_value(xa[:, :6])
    _, grads = float_loss_and_grads(tg, p64, x64, t, np.float64)
    h = np.maximum(x64 @ p64["fc1.W"] + p64["fc1.b"], 0)
    acts = {"fc1": x64, "fc2": h}
    for layer, b, a in zip(plan.layers, before, ref.master):
        step = (b - numerics.f32_value(a))[:layer.k, :layer.f]
        got, want = step, grads[layer.weight]
        dz = np.abs(grads[layer.bias])[None, :]
        scale = np.abs(acts[layer.name]).T @ np.full((batch, layer.f), 1.0) * dz.max() + 1e-12
        assert np.all(np.abs(got - want) <= 2.0 ** -8 * (scale + dz)), layer.name


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda r: mlp(r, 8, (3, 4, 3)), {"batch": 6}, "batch 6: training on the tile takes "
     "mini-batches of a multiple of mac_dim = 4"),
    (lambda r: mlp(r, 8, (3, 4, 3)), {"batch": 20}, "5 nodes of 4 samples do not make a "
     "rectangle of the 2x2 grid"),
    (lambda r: mlp(r, 8, (40, 40, 3)), {}, "of SRAM per node"),
])
def test_what_the_tile_cannot_train_is_refused_in_one_line(make, kwargs, message):
    r = rng(7)
    kwargs = {"batch": 8, "loss": "mse", **kwargs}
    graph = make(r)
    tg = training_graph(graph, kwargs["loss"])
    with pytest.raises(CompileError, match="^[^\n]*$") as err:
        plan = plan_training(tg, TINY, kwargs["batch"])
        TrainProgram(plan, initial_params(tg), Sgd(0.1), steps_per_epoch=1)
    assert message in str(err.value)


def test_a_convolution_is_refused_on_the_tile():
    g = GraphBuilder("cnn")
    x = g.input("x", (4, 1, 4, 4))
    c = g.relu(g.conv(x, np.ones((2, 1, 3, 3), np.float32), np.zeros(2, np.float32), name="c1"))
    y = g.gemm(g.flatten(c), np.ones((8, 3), np.float32), np.zeros(3, np.float32), name="fc")
    tg = training_graph(g.build(outputs=[y]), "mse")
    with pytest.raises(CompileError, match="node 'c1' \\(conv\\): training on the tile runs "):
        plan_training(tg, TINY, 4)


# -- the command line ------------------------------------------------------------------------------

def small_model(path, r, k=4, h=4, f=3):
    """A 4 -> 4 -> 3 MLP with a softmax, as ONNX (batch "N")."""
    tg = training_graph(mlp(r, 8, (k, h, f)), "mse")
    plan = plan_training(tg, TINY, 8)
    params = initial_params(tg, seed=1)
    model = mlp_to_onnx(plan, params, softmax=True)
    onnx.save(model, path)
    return params


def test_d1tile_train_end_to_end(tmp_path, capsys):
    r = rng(8)
    small_model(tmp_path / "m.onnx", r)
    x = r.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["train", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"), "--labels",
            str(tmp_path / "y.npy"), "--val-data", str(tmp_path / "x.npy"), "--val-labels",
            str(tmp_path / "y.npy"), "--preset", "tiny", "--batch", "8", "--epochs", "2",
            "--lr", "0.5", "--out", str(tmp_path / "t.onnx"), "--report",
            str(tmp_path / "r.json"), "--plots", str(tmp_path / "plots"), "--trace",
            str(tmp_path / "t.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2: loss" in out and "bit-exact with the NumPy reference" in out
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bit_exact_vs_reference"] is True
    assert len(report["losses"]) == 10 == len(report["float32_losses"])     # 2 x 40 // 8
    assert report["ideal_cycles_per_step"] < min(report["cycles_per_step"])
    stages = report["stage_phases_mean_cycles"]
    assert len(stages) == len(report["partition"]["stages"])
    assert set().union(*stages) >= {"load", "forward", "loss", "backward", "all-reduce",
                                    "update"}
    for phases in stages:           # every stage's node has about the same step period
        assert sum(phases.values()) == pytest.approx(sum(stages[0].values()), rel=0.1)
    assert {row["stages"] for row in report["partition"]["choice"]} == {1, 2}
    png = (tmp_path / "plots" / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    trace = json.loads((tmp_path / "t.json").read_text())
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert spans and max(e["ts"] + e["dur"] for e in spans) <= report["cycles"] + 1
    # the trained model runs on onnxruntime: the tile's weights, in float32
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "t.onnx"))
    probs = session.run(None, {"x": x})[0]
    assert probs.shape == (40, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    acc = report["accuracy"][-1]["tile"]
    assert acc == np.mean(probs.argmax(1) == y)
    # and on the tile
    np.save(tmp_path / "x8.npy", x[:8])
    assert main(["run", str(tmp_path / "t.onnx"), "--input", str(tmp_path / "x8.npy"),
                 "--preset", "tiny", "--dtype", "bf16"]) == 0


@pytest.mark.parametrize("change, message", [
    (lambda d: np.save(d / "x.npy", np.full((40, 4), np.nan, np.float32)),
     "--data {d}/x.npy: contains NaN or infinite values"),
    (lambda d: np.save(d / "y.npy", np.full(40, 7)), "--labels: label 7 is outside the model's "
     "3 classes (0..2)"),
    (lambda d: np.save(d / "y.npy", np.zeros(39)), "--labels: 39 labels for 40 samples"),
    (lambda d: np.save(d / "y.npy", np.full(40, 0.5)), "--labels: class labels must be integers"),
    (lambda d: np.save(d / "x.npy", np.zeros((40, 5), np.float32)), "--data {d}/x.npy: shape"),
    (lambda d: (np.save(d / "x.npy", np.zeros((4, 4), np.float32)),
                np.save(d / "y.npy", np.zeros(4))), "--data: 4 samples, fewer than one "
     "mini-batch of 8"),
])
def test_d1tile_train_refuses_bad_input_before_running(tmp_path, change, message, capsys):
    r = rng(9)
    small_model(tmp_path / "m.onnx", r)
    np.save(tmp_path / "x.npy", r.normal(size=(40, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", r.integers(0, 3, size=40))
    change(tmp_path)
    extra = []
    args = ["train", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"), "--labels",
            str(tmp_path / "y.npy"), "--preset", "tiny", "--batch", "8", "--out",
            str(tmp_path / "t.onnx"), "--report", str(tmp_path / "r.json"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message.format(d=tmp_path) in err and err.count("\n") == 1, err
    assert not (tmp_path / "t.onnx").exists() and not (tmp_path / "r.json").exists()


def test_progress_is_reported_step_by_step():
    """`train_on_tile(progress=...)` hears of every step as the cycle model finishes it."""
    r = rng(16)
    graph = mlp(r, 8, (3, 4, 3))
    x = r.normal(size=(24, 3)).astype(np.float32)
    y = r.integers(0, 3, size=24)
    seen = []
    train_on_tile(graph, x, y, cfg=TINY, loss="cross-entropy", epochs=2, batch=8,
                  opt=Sgd(0.1), stages=1, log=lambda line: None,
                  progress=lambda step, total, cycle: seen.append((step, total, cycle)))
    assert [s for s, _, _ in seen] == list(range(1, 7)) and {t for _, t, _ in seen} == {6}
    assert all(a[2] < b[2] for a, b in zip(seen, seen[1:]))
