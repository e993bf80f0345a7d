"""The command line: bad input gives one clear line and exit status 2, never a traceback."""

import os
import subprocess
import sys

import pytest

from d1tile.cli import main
from d1tile.params import TileConfig


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "d1tile.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("args, message", [
    (["config", "--preset", "huge"], "unknown preset 'huge'"),
    (["config", "--grid", "4by4"], "grid '4by4' is not of the form RxC"),
    (["config", "--grid", "0x4"], "rows=0 is outside the supported range"),
    (["matrix-demo", "--preset", "tiny", "--shape", "0", "4", "4"], "m"),
    (["demo", "--models", "vgg"], "unknown model 'vgg'"),
    (["demo", "--batch", "0"], "--batch 0"),
    (["demo", "--train-samples", "8"], "--train-samples 8: give 32..1437"),
])
def test_bad_input_is_one_line_and_status_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_config_prints_derived_sizes(capsys):
    assert main(["config", "--preset", "tiny", "--grid", "3x2"]) == 0
    out = capsys.readouterr().out
    assert "rows=3, cols=2" in out
    assert "peak_macs_per_cycle (grid)" in out and " 96" in out   # 6 nodes x 16 MACs


def test_version_and_config_list_the_presets_and_limits(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("d1tile 0.")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "presets (--preset): tiny 2x2 nodes, N = 4, 4 KiB SRAM; default 4x4 nodes" in out
    assert "grids (--grid RxC): 1 to 32 rows and columns" in out


def test_verify_on_the_model_alone_needs_no_verilator(capsys):
    """`verify --backend model`: the cycle model against the interpreter, on a grid larger than
    any Verilator build in the tests."""
    assert main(["verify", "--backend", "model", "--grid", "5x6", "--random-programs", "3",
                 "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "5x6 grid, preset tiny: cycle model vs functional interpreter" in out
    assert "RTL: not run (--backend model)" in out and "3 programs: 0 mismatches" in out


def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path):
    """SIGINT during a long run: one line, exit 130, no traceback, no output file."""
    import signal
    import time
    # a run of many minutes in small pieces (the model is fast: a noc-stress run it once took
    # seconds for is over before the signal now), 100,000 random programs one after another
    # SIGINT's default action restored in the child: a test run started in the background of
    # a non-interactive shell inherits it ignored, and Python then installs no Ctrl-C handler
    proc = subprocess.Popen([sys.executable, "-m", "d1tile.cli", "verify", "--backend", "model",
                             "--random-programs", "100000"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Once it has printed its first line it is running (on a loaded machine the imports
    # alone can take longer than a fixed wait), then a moment into the run.
    try:
        proc.stdout.readline()
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:        # a failed test leaves no run of many minutes behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert err == "d1tile verify: interrupted\n", err
    assert list(tmp_path.iterdir()) == []


# -- d1tile run / d1tile demo ---------------------------------------------------------------------

def small_onnx(path, batch=8, batch_dim=None):
    """Conv 3x3 pad 1 -> ReLU -> MaxPool 2 -> Flatten -> Gemm -> Softmax, input [batch, 1, 5, 5]
    (`batch_dim`: a symbolic batch dimension instead): small enough for the tiny preset."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    inits = {"cw": rng.normal(size=(3, 1, 3, 3)), "cb": rng.normal(size=3),
             "fw": rng.normal(size=(4, 12)), "fb": rng.normal(size=4)}
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim or batch, 1, 5, 5])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch_dim or batch, 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    x = rng.normal(size=(batch, 1, 5, 5)).astype(np.float32)
    return x


@pytest.mark.parametrize("out, report, message", [
    ("DIR", None, "--out {d}: is a directory (give a file name)"),
    ("y.npy", "DIR", "--report {d}: is a directory (give a file name)"),
    ("y.npy", "y.npy", "--report y.npy: the same file as --out"),
    ("/proc/y.npy", None, "--out /proc/y.npy: cannot be written"),
    ("y.npy", "nowhere/r.json", "--report nowhere/r.json: the directory"),
], ids=["out-dir", "report-dir", "same-file", "unwritable", "no-directory"])
def test_run_refuses_unwritable_outputs_before_running(tmp_path, out, report, message):
    """An output path that cannot be written is refused in one line, status 2, before anything
    runs, and no output file is left (the other one neither)."""
    import numpy as np
    x = small_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "DIR").mkdir()
    d = tmp_path / "DIR"
    args = ["run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"),
            "--preset", "tiny"]
    for option, value in (("--out", out), ("--report", report)):
        if value is not None:
            args += [option, value if value.startswith("/") else str(tmp_path / value)
                     if value == "DIR" else value]
    result = subprocess.run([sys.executable, "-m", "d1tile.cli", *args], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert message.format(d=d) in result.stderr, result.stderr
    assert "compiled" not in result.stdout          # refused before anything ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "m.onnx", "x.npy"]
    assert not any(d.iterdir())


def test_noc_stress_that_stops_at_the_cycle_cap_says_so_and_fails():
    """A rate too low for the packets asked: the run stops at --max-cycles, prints how many
    packets were never injected, and exits 1 (it used to stop silently at a hidden cap with
    exit 0); beforehand it warns that the rate needs more cycles."""
    result = run_cli("noc-stress", "--grid", "2x2", "--rate", "0.0001", "--packets", "2000",
                     "--max-cycles", "100000")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "warning: at --rate 0.0001 generating 2000 packets takes about 12,500,000 cycles" \
        in result.stdout
    assert "STOPPED: the cycle cap (100,000 cycles) came first" in result.stdout
    assert result.stderr.startswith("d1tile noc-stress: FAILED: stopped at --max-cycles 100,000 "
                                    "with ") and "packets never injected" in result.stderr
    done = run_cli("noc-stress", "--grid", "2x2", "--rate", "0.2", "--packets", "100")
    assert done.returncode == 0 and "packets injected 100 of 100" in done.stdout, done.stdout


@pytest.mark.parametrize("calib", ["zeros", "tiny", "same"])
def test_run_warns_when_the_calibration_does_not_fit_the_input(tmp_path, calib):
    """A calibration set of zeros, or 1000x too small, makes the int8 results garbage that the
    integer reference reproduces bit for bit: `d1tile run` warns, naming the tensors, and puts
    the warnings in the report; a calibration like the input gives none."""
    import json
    import numpy as np
    x = small_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    c = {"zeros": np.zeros_like(x), "tiny": x / 1000, "same": x}[calib]
    np.save(tmp_path / "c.npy", c)
    result = run_cli("run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"),
                     "--calib", str(tmp_path / "c.npy"), "--preset", "tiny",
                     "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    if calib == "same":
        assert warnings == [] and "warning" not in result.stdout
        return
    assert warnings and all(f"d1tile run: warning: {w}" in result.stdout for w in warnings)
    if calib == "tiny":
        assert warnings[0].startswith("tensor 'x' reaches") and "saturate" in warnings[0]
    else:
        assert any("int8 steps" in w for w in warnings) and any("saturate" in w
                                                                for w in warnings)
    assert "calibrate with inputs like these (--calib)" in result.stdout


def test_run_on_both_backends_writes_outputs_and_report(tmp_path):
    import json
    import numpy as np
    x = small_onnx(tmp_path / "small.onnx")
    np.save(tmp_path / "x.npy", x)
    result = run_cli("run", str(tmp_path / "small.onnx"), "--input", str(tmp_path / "x.npy"),
                     "--preset", "tiny", "--backend", "both", "--out", str(tmp_path / "y.npy"),
                     "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    assert "bit-exact" in result.stdout and "cycle difference 0" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backends"] == ["model", "rtl"] and report["grid"] == "2x2"
    assert report["cycles"]["model"] == report["cycles"]["rtl"] > 0
    assert report["model_vs_rtl_cycle_diff"] == 0 and report["model_and_rtl_identical"]
    assert report["max_abs_diff_vs_reference"] == {"model": 0, "rtl": 0}
    macs = 8 * 3 * 25 * 9 + 8 * 12 * 4          # conv (every output position) + gemm
    assert report["macs"] == macs
    assert report["ideal_cycles"] == macs / report["peak_macs_per_cycle"]
    assert report["mac_utilisation"]["rtl"] == report["ideal_cycles"] / report["cycles"]["rtl"]
    assert [layer["name"] for layer in report["layers"]] == ["conv+relu+pool", "fc"]
    breakdown = report["cycles_breakdown"]
    assert breakdown["load"] + sum(layer["cycles"] for layer in report["layers"]) \
        + breakdown["finish"] == report["cycles"]["model"]
    assert report["error_vs_float"]["max_abs"] >= 0
    # the conv reads the host input: the fold the cost model chose is the cheapest estimate
    # among those listed (a fold that does not fit the SRAM share may be cheaper, not chosen)
    fold = report["input_fold"].get("x", "none")
    assert fold in report["fold_estimates"] and report["barriers"] == 0
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (8, 4) and np.allclose(y.sum(axis=1), 1)     # the host softmax ran


def test_run_fixes_a_dynamic_batch_from_the_input(tmp_path):
    import json
    import numpy as np
    x = small_onnx(tmp_path / "dyn.onnx", batch=12, batch_dim="N")
    np.save(tmp_path / "x.npy", x)
    result = run_cli("run", str(tmp_path / "dyn.onnx"), "--input", str(tmp_path / "x.npy"),
                     "--preset", "tiny", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["batch"] == 12 and report["bit_exact"]


def test_run_on_a_grid_beyond_sixteen_senders(tmp_path):
    """The kernels WAIT on one counter per sender, rows + cols of them: with 32 sync counters a
    9x9 grid (18 senders per node) compiles and runs (it was refused with 16)."""
    import json
    import numpy as np
    x = small_onnx(tmp_path / "small.onnx")
    np.save(tmp_path / "x.npy", x)
    result = run_cli("run", str(tmp_path / "small.onnx"), "--input", str(tmp_path / "x.npy"),
                     "--preset", "tiny", "--grid", "9x9", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["bit_exact"]


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot read"),
    ("rank", "shape [8, 25], the model's input 'x' is [8, 1, 5, 5]"),
    ("shape", "shape [4, 1, 5, 5], the model's input 'x' is [8, 1, 5, 5]"),
    ("nan", "contains NaN"),
    ("op", "Sigmoid"),
    ("outdir", "does not exist"),
    ("complex", "complex values (complex64) are not supported"),
    ("huge", "values beyond float32's range (up to 1e+300)"),
    ("labels-range", "label 7 is outside the model's 4 classes (0..3)"),
    ("labels-float", "class labels must be integers (found 1.5)"),
    ("labels-shape", "expected 8 class labels, one per input, not shape [8, 1]"),
])
def test_run_rejects_bad_input_cleanly(tmp_path, case, message):
    import numpy as np
    import onnx
    model = tmp_path / "small.onnx"
    x = small_onnx(model)
    extra = []
    if case.startswith("labels"):
        labels = {"labels-range": np.array([0, 1, 2, 3, 7, 0, 1, 2]),
                  "labels-float": np.array([0, 1, 2, 1.5, 3, 0, 1, 2]),
                  "labels-shape": np.zeros((8, 1))}[case]
        np.save(tmp_path / "labels.npy", labels)
        extra = ["--labels", str(tmp_path / "labels.npy")]
    if case == "complex":
        x = x.astype(np.complex64)
    if case == "huge":
        x = x.astype(np.float64)
        x[0, 0, 0, 0] = 1e300
    if case == "shape":
        x = x[:4]
    if case == "rank":
        x = x.reshape(8, 25)
    if case == "nan":
        x[0, 0, 0, 0] = np.nan
    if case == "op":
        m = onnx.load(model)
        m.graph.node[1].op_type = "Sigmoid"
        onnx.save(m, model)
    if case == "missing":
        model = tmp_path / "absent.onnx"
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / ("nowhere/y.npy" if case == "outdir" else "y.npy")
    result = run_cli("run", str(model), "--input", str(tmp_path / "x.npy"), "--preset", "tiny",
                     "--out", str(out), "--report", str(tmp_path / "r.json"), *extra)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not out.exists() and not (tmp_path / "r.json").exists()     # no partial output


def conv_onnx(path, x_shape, filters, kernel):
    """One Conv (no padding, stride 1) on an input of `x_shape`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(6)
    w = rng.normal(size=(filters, x_shape[1], kernel, kernel)).astype(np.float32)
    out = [x_shape[0], filters, x_shape[2] - kernel + 1, x_shape[3] - kernel + 1]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv",
                          kernel_shape=[kernel, kernel])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.zeros(filters, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return rng.normal(size=x_shape).astype(np.float32)


def _address_space(limit):
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("x_shape, filters, kernel, message", [
    # 20 x 16 x 50 x 40 int8 (16 channels: 4 words per pixel): each grid row's input rows of
    # its column's 3 batch blocks, 70 KiB per node. As one unrolled matrix layer (before the
    # implicit-GEMM convolution) its 32000 x 23712 Toeplitz matrix took 5.65 GiB and died;
    # then it was refused (splitting the batch over runs does not help: one batch block of 8
    # lanes is the unit). Now it runs split over time into 3 bands of 16 output rows, each
    # band's output streamed to the host.
    ((20, 16, 50, 40), 13, 3, None),
    # 240 pixels wide: one output row's input rows of one batch block take 90 KiB a node.
    ((8, 16, 8, 240), 8, 3, "tensor 'x' needs 120.0 KiB of SRAM per node (node (0, 0): "
                            "activation staging 120.0 KiB), the node has 64 KiB (nor with its "
                            "first convolution split over time: down to 6 bands of output rows: "
                            "tensor 'x[0:1]' needs 90.0 KiB of SRAM per node"),
    # 4 x 16 weights at 1024 positions: a [16384, 4096] dense matrix (512 MiB) once; now the
    # weights are stored once per node and it runs
    ((1, 16, 32, 32), 4, 1, None),
])
def test_run_refuses_a_layer_too_large_before_building_it(tmp_path, x_shape, filters, kernel,
                                                          message):
    """A layer that cannot fit is refused from its shapes, in one line, before anything large
    is built: under a 3 GiB address-space limit the command ends with the message and status 2
    (or, for the layer that fits, runs bit-exact)."""
    import numpy as np
    x = conv_onnx(tmp_path / "conv.onnx", x_shape, filters, kernel)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-m", "d1tile.cli", "run", str(tmp_path / "conv.onnx"), "--input",
         str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")],
        capture_output=True, text=True, preexec_fn=_address_space(3 << 30))
    assert "Traceback" not in result.stderr
    if message is None:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "bit-exact" in result.stdout and (tmp_path / "y.npy").exists()
        return
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "y.npy").exists()


def test_demo_runs_the_toy_models_bit_exact(capsys):
    assert main(["demo", "--batch", "64", "--models", "mlp,cnn"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "cnn"):
        assert f"{name}: batch 64 on the 4x4 tile" in out
    assert out.count("bit-exact (max |diff|: model 0)") == 2
    assert out.count("accuracy      tile (int8)") == 2
    assert "all outputs bit-exact with the integer reference: yes" in out


def test_demo_trains_the_toy_mlp_on_the_tile(capsys):
    """`make demo`'s training, on 64 digits (2 steps per epoch) instead of 640."""
    assert main(["demo", "--models", "train", "--train-samples", "64"]) == 0
    out = capsys.readouterr().out
    assert "train: the toy MLP (64-64-10) from random weights on 64 training digits" in out
    assert out.count("epoch ") == 3 and "epoch 3/3: loss" in out
    assert "val accuracy" in out and "(float32 " in out
    assert "bit-exact with the NumPy reference of the tile's arithmetic (loss every step, " \
           "weights every epoch): yes" in out


def test_long_commands_report_progress_and_stay_quiet_off_a_terminal(capsys, monkeypatch):
    """verify and noc-stress call their progress callbacks as they go (the bars on a terminal
    are drawn from them); off a terminal (CI, a pipe) no bar is made and nothing is drawn."""
    from d1tile import cli
    from d1tile.sim import noc
    from d1tile.sw.verify import verify
    cfg = TileConfig.preset("tiny")
    calls = []
    verify(cfg, 3, 5, rtl=False, log=lambda line: None,
           progress=lambda *a: calls.append(a))
    assert [c for c in calls if c[0] == "model"] == [("model", k, 3) for k in (1, 2, 3)]
    assert [c for c in calls if c[0] == "interpreter"][-1] == ("interpreter", 3, 3)
    seen = []
    monkeypatch.setattr(noc, "PROGRESS_CYCLES", 64)
    stats = noc.run_model(cfg, packets=300, rate=0.2, seed=3,
                          progress=lambda *a: seen.append(a))
    assert len(seen) >= 2 and seen[-1] == (300, stats.delivered, stats.cycles)
    assert [c for _, _, c in seen] == sorted(c for _, _, c in seen)
    # not a terminal here (pytest captures stderr): no bars
    assert cli._bar(10, "x", "it") is None and cli._verify_progress() is None
    assert main(["noc-stress", "--grid", "2x2", "--packets", "50", "--backend", "model"]) == 0
    assert "pkt" not in capsys.readouterr().err
