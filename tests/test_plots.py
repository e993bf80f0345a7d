"""The pictures (`d1tile.sw.plots`): each is a valid PNG with what it says drawn in it, the data
functions give the run's own counters, and `--plots DIR` writes them from the command line or
refuses a bad DIR before anything runs."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread

from d1tile.cli import _write_outputs, main
from d1tile.params import TileConfig
from d1tile.sim.noc import NocStats
from d1tile.sw import plots
from test_cli import small_onnx

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> np.ndarray:
    """`path` is a PNG with a picture in it; returns its pixels."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = imread(path, format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, pixels.shape
    assert pixels.std() > 0, f"{path} is blank"
    return pixels


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The small conv net of test_cli on the tiny 2x2 tile: (cfg, NetworkRun, report)."""
    from d1tile.sw.compiler import compile_model
    from d1tile.sw.onnx_frontend import load_onnx
    from d1tile.sw.report import run_network
    folder = tmp_path_factory.mktemp("net")
    x = small_onnx(folder / "m.onnx")
    cfg = TileConfig.preset("tiny")
    net = run_network(compile_model(load_onnx(folder / "m.onnx"), cfg, x), x)
    report = net.report()
    report["model"] = "m.onnx"
    return cfg, net, report


# -- what is drawn -----------------------------------------------------------------------------

def test_the_heat_map_is_each_nodes_matrix_busy_cycles_over_the_run(small_run):
    cfg, net, _ = small_run
    result = net.executions["model"].result
    busy = plots.matrix_busy(result, cfg)
    want = np.array([[result.nodes[(x, y)].counters["busy_matrix"] / result.cycles
                      for x in range(cfg.cols)] for y in range(cfg.rows)])
    np.testing.assert_array_equal(busy, want)
    assert 0 < busy.min() and busy.max() <= 1


def test_a_node_without_counters_is_left_blank():
    from d1tile.sim.host import NodeReport
    cfg = TileConfig.preset("tiny")
    result = SimpleNamespace(cycles=100, nodes={(1, 0): NodeReport(counters={"busy_matrix": 25})})
    busy = plots.matrix_busy(result, cfg)
    assert busy[0, 1] == 0.25 and np.isnan(busy[[0, 1, 1], [0, 0, 1]]).all()


def test_each_link_carries_its_senders_flit_counter(small_run):
    cfg, net, _ = small_run
    result = net.executions["model"].result
    links = plots.link_flits(result, cfg)
    ctrs = {node: r.counters for node, r in result.nodes.items()}
    # 2x2: four links between neighbours each way, and one to and one from the host per row
    assert len(links) == 2 * 4 + 2 * cfg.rows
    assert links[((0, 0), (1, 0))] == ctrs[(0, 0)]["flits_out_east"]
    assert links[((1, 0), (0, 0))] == ctrs[(1, 0)]["flits_out_west"]
    assert links[((0, 0), (0, 1))] == ctrs[(0, 0)]["flits_out_south"]
    assert links[((1, 1), (1, 0))] == ctrs[(1, 1)]["flits_out_north"]
    for y in range(cfg.rows):
        assert links[((1, y), (2, y))] == ctrs[(1, y)]["flits_out_east"]      # to the host
        assert links[((2, y), (1, y))] == ctrs[(1, y)]["flits_in_east"] > 0   # the loading
    # what a node sends west is what its neighbour took in from the east
    assert links[((1, 0), (0, 0))] == ctrs[(0, 0)]["flits_in_east"]


def test_the_layer_chart_has_every_part_of_the_run_and_its_ideal(small_run):
    _, _, report = small_run
    parts = plots.layer_parts(report)
    assert [p[0] for p in parts] == ["load", *(l["name"] for l in report["layers"]), "finish"]
    assert sum(p[1] for p in parts) == report["cycles"]["model"]
    assert [p[2] for p in parts[1:-1]] == [l["ideal_cycles"] for l in report["layers"]]
    assert parts[0][2] == parts[-1][2] == 0


def test_noc_points_are_sorted_by_load_with_throughput_per_node():
    sweep = [(0.6, NocStats(cycles=200, flits=400, latency_mean=9.5, latency_p99=30,
                            latency_max=41)),
             (0.2, NocStats(cycles=500, flits=400, latency_mean=4.0, latency_p99=9,
                            latency_max=12))]
    p = plots.noc_points(sweep, nodes=4)
    np.testing.assert_array_equal(p["rate"], [0.2, 0.6])
    np.testing.assert_array_equal(p["mean"], [4.0, 9.5])
    np.testing.assert_array_equal(p["p99"], [9, 30])
    np.testing.assert_array_equal(p["max"], [12, 41])
    np.testing.assert_allclose(p["throughput"], [400 / 500 / 4, 400 / 200 / 4])


# -- the drawings ------------------------------------------------------------------------------

def test_run_plots_draw_the_runs_numbers(small_run, tmp_path):
    cfg, net, report = small_run
    result = net.executions["model"].result
    draws = plots.run_plots(net, report)
    assert tuple(draws) == plots.RUN_PLOTS
    figures = {name: draw(tmp_path / name) for name, draw in draws.items()}
    for name in plots.RUN_PLOTS:
        assert_png(tmp_path / name)
    heat = figures["utilisation.png"]
    np.testing.assert_array_equal(heat.axes[0].images[0].get_array(),
                                  100 * plots.matrix_busy(result, cfg))
    assert "% of the run's" in heat.get_suptitle() and heat.axes[1].get_ylabel().endswith(
        "(% of run cycles)")
    bars = figures["layers.png"].axes[0].containers
    parts = plots.layer_parts(report)
    assert [b.get_width() for b in bars[0]] == [p[1] for p in parts]       # cycles
    assert [b.get_width() for b in bars[1]] == [p[2] for p in parts]       # ideal
    mesh = figures["links.png"].axes[0]
    labels = sorted(int(t.get_text().replace(",", "")) for t in mesh.texts
                    if t.get_gid() == "flits")
    assert labels == sorted(plots.link_flits(result, cfg).values())
    for fig in figures.values():
        assert fig.get_suptitle()
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel()


def test_latency_against_load(tmp_path):
    sweep = [(r, NocStats(cycles=int(1000 / r), flits=int(900), latency_mean=4 + 10 * r * r,
                          latency_p99=int(9 + 30 * r), latency_max=int(12 + 40 * r)))
             for r in (0.1, 0.4, 0.8)]
    fig = plots.latency_vs_load(tmp_path / "noc.png", sweep, 4, "noc-stress test")
    assert_png(tmp_path / "noc.png")
    top, bottom = fig.axes
    mean = top.get_lines()[0]
    np.testing.assert_array_equal(mean.get_xdata(), [0.1, 0.4, 0.8])
    np.testing.assert_allclose(mean.get_ydata(), [4.1, 5.6, 10.4])
    assert "cycles" in top.get_ylabel() and "flits per node per cycle" in bottom.get_xlabel()


def test_cost_against_peak_macs(tmp_path):
    """The scaling table of docs/cost.md (mac_dim 2, 4, 8), drawn log-log."""
    points = [{"macs": 16, "label": "N = 4", "matrix unit": 138_834, "node": 483_086},
              {"macs": 4, "label": "N = 2", "matrix unit": 39_148, "node": 296_056},
              {"macs": 64, "label": "N = 8", "matrix unit": 527_821, "node": 1_046_726}]
    fig = plots.cost_vs_macs(tmp_path / "cost.png", points)
    assert_png(tmp_path / "cost.png")
    ax = fig.axes[0]
    matrix, node = ax.get_lines()
    np.testing.assert_array_equal(matrix.get_xdata(), [4, 16, 64])
    np.testing.assert_array_equal(matrix.get_ydata(), [39_148, 138_834, 527_821])
    np.testing.assert_array_equal(node.get_ydata(), [296_056, 483_086, 1_046_726])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "NAND2" in ax.get_ylabel() and "MACs per cycle" in ax.get_xlabel()


def test_cost_scaling_bench_plots_the_mac_dim_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("cost_scaling",
                                                  ROOT / "bench" / "cost_scaling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = TileConfig.preset("tiny").replace(mac_dim=2)
    report = SimpleNamespace(blocks={"matrix": SimpleNamespace(nand2=39_148.0)},
                             node=SimpleNamespace(nand2=296_056.0))
    assert bench.scaling_point(cfg, report) == {
        "macs": 4, "label": "N = 2", "matrix block (int8 + BF16 unit, engine)": 39_148.0,
        "node": 296_056.0}


def test_loss_curves(tmp_path):
    curves = {"tile": [2.3, 1.2, float("nan"), 0.6], "float32": [2.3, 1.1, 0.8, 0.5]}
    fig = plots.loss_curve(tmp_path / "loss.png", curves, "training on the tile")
    assert_png(tmp_path / "loss.png")
    tile, fp32 = fig.axes[0].get_lines()
    assert tile.get_label() == "tile" and fp32.get_label() == "float32"
    np.testing.assert_array_equal(tile.get_ydata(), [2.3, 1.2, np.nan, 0.6])
    np.testing.assert_array_equal(fp32.get_xdata(), [0, 1, 2, 3])
    assert fig.axes[0].get_xlabel() == "step" and fig.axes[0].get_ylabel() == "loss"
    with pytest.raises(ValueError, match="no curves"):
        plots.loss_curve(tmp_path / "none.png", {}, "nothing")


# -- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    x = small_onnx(folder / "m.onnx")
    np.save(folder / "x.npy", x)
    return folder / "m.onnx", folder / "x.npy"


def test_run_writes_the_pictures_into_a_new_directory(model_files, tmp_path, capsys):
    model, x = model_files
    out = tmp_path / "plots" / "run1"
    assert main(["run", str(model), "--input", str(x), "--preset", "tiny",
                 "--plots", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(plots.RUN_PLOTS)
    for name in plots.RUN_PLOTS:
        assert_png(out / name)
    assert f"plots         utilisation.png, links.png, layers.png in {out}" in \
        capsys.readouterr().out


@pytest.mark.parametrize("plots_path, out, message", [
    ("afile", None, "--plots {t}/afile: not a directory"),
    ("afile/sub", None, "--plots {t}/afile/sub: not a directory ({t}/afile is a file)"),
    ("/proc/plots", None, "--plots /proc/plots: cannot be made in /proc"),
    ("y.npy", "y.npy", "--plots {t}/y.npy: the same path as --out"),
    ("DIR", None, "--plots {t}/DIR/links.png: is a directory (give a file name)"),
], ids=["file", "under-a-file", "unwritable", "same-as-out", "name-taken"])
def test_run_refuses_a_bad_plots_directory_before_running(model_files, tmp_path, capsys,
                                                          plots_path, out, message):
    model, x = model_files
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "DIR" / "links.png").mkdir(parents=True)
    where = lambda p: p if p.startswith("/") else str(tmp_path / p)
    args = ["run", str(model), "--input", str(x), "--preset", "tiny",
            "--plots", where(plots_path)]
    if out:
        args += ["--out", where(out)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"d1tile run: error: {message.format(t=tmp_path)}")
    assert captured.err.count("\n") == 1, captured.err
    assert "compiled" not in captured.out                   # refused before anything ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "afile"]
    assert [p.name for p in (tmp_path / "DIR").iterdir()] == ["links.png"]
    assert (tmp_path / "afile").read_text() == "keep"


def test_outputs_that_fail_leave_no_directory_behind(tmp_path):
    def fail(tmp):
        raise OSError(28, "No space left on device", str(tmp))
    with pytest.raises(ValueError, match="No space left on device"):
        _write_outputs([(tmp_path / "a" / "b" / "x.png", fail)])
    assert list(tmp_path.iterdir()) == []


def test_noc_stress_sweeps_the_rates_and_draws_latency_against_load(tmp_path, capsys):
    out = tmp_path / "noc"
    assert main(["noc-stress", "--grid", "2x2", "--packets", "100", "--sweep-rates", "0.6,0.2",
                 "--plots", str(out)]) == 0
    text = capsys.readouterr().out
    assert "100 packets at each of 2 offered loads" in text
    lines = [line.split() for line in text.splitlines() if line.strip().startswith(("0.6", "0.2"))]
    assert [line[0] for line in lines] == ["0.6", "0.2"]     # the order given
    assert [p.name for p in out.iterdir()] == [plots.NOC_PLOT]
    assert_png(out / plots.NOC_PLOT)


@pytest.mark.parametrize("args, message", [
    (["--plots", "p"], "--plots needs --sweep-rates"),
    (["--rate", "0.3", "--sweep-rates"], "--rate and --sweep-rates: give one"),
    (["--sweep-rates", "0.1,fast"], "--sweep-rates 0.1,fast: give comma-separated rates"),
    (["--sweep-rates", "0.5,1.5"], "rate=1.5 must be in (0, 1]"),
    (["--sweep-rates", "--plots", "/proc/noc"], "--plots /proc/noc: cannot be made in /proc"),
])
def test_noc_stress_refuses_bad_sweeps_before_running(tmp_path, capsys, monkeypatch, args,
                                                      message):
    monkeypatch.chdir(tmp_path)
    assert main(["noc-stress", "--grid", "2x2", "--packets", "50", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("d1tile noc-stress: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert list(tmp_path.iterdir()) == []
