"""`d1tile sweep` (`d1tile.sw.sweep`): a small sweep through the process pool and through Ray
(a local Ray, and a cluster another process started), resumption, failing points as rows, the
Parquet and CSV files, the Pareto plot, the cost columns (from an injected cost function and
from `d1tile cost`'s cache: nothing is synthesised) and the spec's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from d1tile.cli import main
from d1tile.params import TileConfig
from d1tile.sim import noc
from d1tile.sw import plots, sweep
from d1tile.sw.sweep import load_spec, read_results, run_sweep

# 2 configurations x 2 workloads x 1 seed on the tiny preset: each point well under a second.
SPEC = """
[sweep]
preset = "tiny"
seeds = [1]

[grid]
mac_dim = [4, 8]

[[workload]]
kind = "gemm"
m = 16
k = 16
n = 16

[[workload]]
kind = "noc"
packets = 60
rate = 0.5
"""

PNG = b"\x89PNG\r\n\x1a\n"


def write_spec(folder: Path, text: str = SPEC, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory):
    """The small sweep through `d1tile sweep` on a process pool of 2: (spec path, out, rows)."""
    folder = tmp_path_factory.mktemp("pool")
    spec = write_spec(folder)
    out = folder / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "2"]) == 0
    return spec, out, read_results(out)


def test_a_small_sweep_runs_on_the_process_pool(pool_sweep):
    spec, out, rows = pool_sweep
    assert len(rows) == 4
    assert {(r["mac_dim"], r["kind"]) for r in rows} == {(4, "gemm"), (4, "noc"), (8, "gemm"),
                                                         (8, "noc")}
    assert all(r["status"] == "ok" and r["error"] is None for r in rows)
    assert len({r["key"] for r in rows}) == 4
    for r in rows:
        cfg = TileConfig.preset("tiny", mac_dim=r["mac_dim"])
        assert (r["preset"], r["rows"], r["cols"], r["sram_kib"]) == ("tiny", 2, 2, 4)
        assert r["seed"] == 1 and r["wall_seconds"] > 0 and r["code_version"]
        assert len(r["source_digest"]) == 16
        if r["kind"] == "gemm":
            assert r["workload"] == "gemm 16x16x16 int8"
            assert r["ideal_cycles"] == 16 ** 3 / cfg.peak_macs_per_cycle
            assert r["utilisation"] == pytest.approx(r["ideal_cycles"] / r["cycles"])
            assert 0 < r["sram_use"] <= 1 and 0 < r["imem_use"] <= 1
            assert r["sram_bytes_used"] == round(r["sram_use"] * cfg.sram_words) * cfg.word_bytes
            assert r["latency_mean"] is None
        else:   # the same run as `d1tile noc-stress --packets 60 --rate 0.5 --seed 1`
            stats = noc.run_model(cfg, packets=60, rate=0.5, seed=1, max_cycles=1_000_000)
            assert r["cycles"] == stats.cycles and r["latency_p99"] == stats.latency_p99
            assert r["utilisation"] == pytest.approx(stats.flits / (stats.cycles * cfg.nodes))
            assert r["sram_use"] is None and r["imem_use"] is None


def test_parquet_and_csv_hold_the_same_rows(pool_sweep):
    import pyarrow.parquet as pq
    _, out, rows = pool_sweep
    assert read_results(out, source="csv") == read_results(out, source="parquet") == rows
    schema = pq.read_schema(out / sweep.RESULTS)
    assert str(schema.field("cycles").type) == "int64"
    assert str(schema.field("utilisation").type) == "double"
    assert schema.names == [name for name, _ in sweep.COLUMNS]


def test_the_pareto_plot_is_a_png_of_the_runs(pool_sweep, tmp_path):
    _, out, rows = pool_sweep
    assert (out / sweep.PLOT).read_bytes()[:8] == PNG
    fig = plots.sweep_pareto(tmp_path / "p.png", rows, "test")
    axes = fig.get_axes()
    assert len(axes) == 2 and {ax.get_title() for ax in axes} == {"gemm 16x16x16 int8",
                                                                  "noc 60 packets at 0.5"}
    assert all(ax.get_xlabel() == "SRAM per node (KiB)" for ax in axes)
    gemm = next(ax for ax in axes if ax.get_title().startswith("gemm"))
    drawn = sorted(gemm.get_lines()[0].get_ydata())
    assert drawn == sorted(r["cycles"] for r in rows if r["kind"] == "gemm")


def test_pareto_front():
    points = [(4, 100), (8, 50), (8, 60), (16, 50), (2, 300), (16, 10), (4, 100)]
    assert plots.pareto_front(points) == [4, 0, 1, 5]


def test_resume_skips_the_points_already_there(pool_sweep, tmp_path, capsys):
    spec, out, rows = pool_sweep
    copy = tmp_path / "out"
    copy.mkdir()
    for name in (sweep.RESULTS, sweep.CSV_FILE):
        (copy / name).write_bytes((out / name).read_bytes())
    summary = run_sweep(load_spec(spec), copy, workers=1, log=print)
    assert (summary.ran, summary.skipped, summary.rows) == (0, 4, 4)
    assert "nothing to run" in capsys.readouterr().out
    more = write_spec(tmp_path, SPEC.replace("seeds = [1]", "seeds = [1, 2]"), "more.toml")
    summary = run_sweep(load_spec(more), copy, workers=1, log=lambda line: None)
    assert (summary.ran, summary.skipped, summary.rows) == (4, 4, 8)
    now = read_results(copy)
    assert now[:4] == rows                       # the earlier rows untouched, not run again
    assert {r["seed"] for r in now[4:]} == {2}
    # without its Parquet file the CSV is what is resumed from
    (copy / sweep.RESULTS).unlink()
    assert run_sweep(load_spec(more), copy, workers=1, log=lambda line: None).ran == 0


def test_a_failing_point_is_a_row_with_its_error(tmp_path):
    """A network that does not compile for one configuration (int8 needs mac_dim 4 or more),
    a noc load stopped by its cycle cap: rows with the message, the others run; a second run
    skips them, --retry-errors runs them again."""
    from test_cli import small_onnx
    x = small_onnx(tmp_path / "small.onnx")
    np.save(tmp_path / "small_x.npy", x)
    spec = write_spec(tmp_path, """
        [sweep]
        preset = "tiny"
        [grid]
        mac_dim = [2, 4]
        [[workload]]
        kind = "onnx"
        model = "small.onnx"
        input = "small_x.npy"
        [[workload]]
        kind = "noc"
        packets = 50
        rate = 0.5
        max_cycles = 5
        """)
    out = tmp_path / "out"
    summary = run_sweep(load_spec(spec), out, workers=2, log=lambda line: None)
    assert (summary.ran, summary.failed) == (4, 3)
    rows = {(r["kind"], r["mac_dim"]): r for r in read_results(out)}
    bad = rows[("onnx", 2)]
    assert bad["status"] == "error" and bad["cycles"] is None
    assert bad["error"] == ("CompileError: layer 'conv+relu+pool': int8 layers need mac_dim "
                            "to be a multiple of 4; it is 2")
    good = rows[("onnx", 4)]
    assert good["status"] == "ok" and good["error"] is None and good["cycles"] > 0
    assert good["workload"] == "small int8" and good["seed"] is None
    assert json.loads(good["workload_params"])["model"] == "small.onnx"
    for mac_dim in (2, 4):
        stopped = rows[("noc", mac_dim)]
        assert stopped["status"] == "error" and stopped["cycles"] == 5
        assert stopped["error"].startswith("noc: stopped at max_cycles 5 with ")
    again = run_sweep(load_spec(spec), out, workers=1, log=lambda line: None)
    assert (again.ran, again.skipped) == (0, 4)
    retry = run_sweep(load_spec(spec), out, workers=1, retry_errors=True, log=lambda line: None)
    assert (retry.ran, retry.failed, retry.rows) == (3, 3, 4)


def crash(point):
    """Kills its worker process (the pool's isolation test)."""
    if point.workload.kind == "noc":
        os._exit(3)
    return sweep.run_point(point)


def test_a_point_that_kills_its_worker_is_a_row(tmp_path):
    points = load_spec(write_spec(tmp_path)).points()
    got = dict((p.index, row) for p, row in sweep._pool(points, 2, None, print, fn=crash))
    assert sorted(got) == [0, 1, 2, 3]
    for point in points:
        row = got[point.index]
        if point.workload.kind == "noc":
            assert row["status"] == "error" and "worker process died" in row["error"]
        else:
            assert row["status"] == "ok", row["error"]


def _ray_or_skip():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'd1tile[sweep]')")
    return ray


def test_the_same_sweep_on_a_local_ray(pool_sweep, tmp_path, capsys):
    _ray_or_skip()
    spec, _, pool_rows = pool_sweep
    out = tmp_path / "out"
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    try:
        summary = run_sweep(load_spec(spec), out, workers=2, ray="local", log=print)
    except RuntimeError as exc:
        pytest.skip(f"Ray cannot start here: {exc}")
    assert (summary.ran, summary.failed) == (4, 0)
    assert "Ray: started a local Ray in" in capsys.readouterr().out
    rows = read_results(out)
    measured = ("cycles", "total_cycles", "utilisation", "sram_bytes_used", "imem_words_used",
                "latency_mean")
    assert ({r["key"]: [r[m] for m in measured] for r in rows}
            == {r["key"]: [r[m] for m in measured] for r in pool_rows})
    import ray
    assert not ray.is_initialized()
    assert os.environ.get("RAY_AUTH_MODE") == auth_mode      # put back as it was


CLUSTER = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def test_the_same_sweep_on_an_existing_ray_cluster(pool_sweep, tmp_path):
    """`d1tile sweep --ray ADDRESS` (in a process of its own, as a user runs it): a cluster
    that another process started (and stops), with Ray's default token authentication (the
    head writes the token to ~/.ray/auth_token; the sweep's environment says RAY_AUTH_MODE)."""
    _ray_or_skip()
    spec, _, pool_rows = pool_sweep
    head = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        address = head.stdout.readline().strip()
        if not address:
            pytest.skip("Ray cannot start a cluster here")
        out = tmp_path / "out"
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        run = subprocess.run([sys.executable, "-m", "d1tile.cli", "sweep", str(spec), "--out",
                              str(out), "--ray", address], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert f"Ray: connected to {address} in" in run.stdout
        rows = read_results(out)
        assert ({r["key"]: r["cycles"] for r in rows}
                == {r["key"]: r["cycles"] for r in pool_rows})
    finally:
        head.stdin.close()          # the head's ray.shutdown() stops its processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()


COST_SPEC = """
[sweep]
preset = "tiny"
cost = true
[grid]
mac_dim = [4, 8]
grid = ["1x2", "2x2"]
[[workload]]
kind = "noc"
packets = 20
rate = 0.5
"""


def test_cost_columns_come_from_the_cost_function(tmp_path):
    calls = []

    def fake(cfg, log):
        calls.append(cfg.key)
        if cfg.mac_dim == 8 and cfg.cols == 1:
            raise RuntimeError("Yosys failed on Node(tiny): out of memory")
        return {"node_nand2": 1000.0 * cfg.mac_dim, "tile_nand2": 1000.0 * cfg.mac_dim * cfg.nodes}

    spec = load_spec(write_spec(tmp_path, COST_SPEC.replace('"1x2"', '"2x1"')))
    out = tmp_path / "out"
    summary = run_sweep(spec, out, workers=1, cost_fn=fake, log=lambda line: None)
    assert summary.costed == 4 and len(calls) == 4          # once per configuration
    rows = read_results(out)
    assert [name for name, _ in sweep.COST_COLUMNS] == list(rows[0])[-3:]
    for r in rows:
        if (r["mac_dim"], r["cols"]) == (8, 1):
            assert r["node_nand2"] is None and r["tile_nand2"] is None
            assert r["cost_error"] == "RuntimeError: Yosys failed on Node(tiny): out of memory"
        else:
            assert r["node_nand2"] == 1000.0 * r["mac_dim"]
            assert r["tile_nand2"] == r["node_nand2"] * r["nodes"] and r["cost_error"] is None
    assert read_results(out, source="csv") == rows
    fig = plots.sweep_pareto(tmp_path / "p.png", rows, "cost")
    assert [ax.get_xlabel() for ax in fig.get_axes()] == ["SRAM per node (KiB)",
                                                          "tile area proxy (NAND2 equivalents)"]
    # resumed: the costed rows keep their figures, the failed configuration is not retried
    calls.clear()
    assert run_sweep(spec, out, workers=1, cost_fn=fake, log=lambda line: None).costed == 0
    assert calls == []


def test_the_default_cost_function_reads_d1tile_costs_cache(tmp_path, monkeypatch):
    """`node_area` is `d1tile cost`'s figures: from its cache here, nothing synthesised."""
    from d1tile.hw import cost
    from d1tile.hw.verilator import source_digest
    monkeypatch.setenv("D1TILE_BUILD_DIR", str(tmp_path / "build" / "verilator"))
    cfg = TileConfig.preset("tiny")
    stat = {"modules": {"\\top": {"num_cells_by_type": {"$_AND_": 10, "$_XOR_": 3,
                                                         "$_DFF_P_": 2}}}}
    cache = tmp_path / "build" / "cost" / f"node-{cfg.key}-{source_digest()}-v{cost.CACHE_VERSION}.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"stat": stat, "memories": ""}))
    report = cost.node_cost(cfg)
    assert report.cached
    assert sweep.node_area(cfg) == {"node_nand2": report.node.nand2,
                                    "tile_nand2": report.tile(cfg.nodes).nand2}
    assert report.node.nand2 == (10 * 6 + 3 * 12 + 2 * 24) / 4


@pytest.mark.parametrize("text, message", [
    ('[grid]\nfoo = [1]\n', "[grid]: unknown field 'foo' (known: preset, grid, rows, cols, "
                            "mac_dim, sram_kib, sram_banks, router_fifo_depth, imem_words)"),
    ('[grid]\nmac_dim = [4, 3]\n', "[grid] mac_dim=3: mac_dim=3 is not supported; use one of "
                                   "2, 4, 8, 16"),
    ('[grid]\nmac_dim = ["4"]\n', "[grid] mac_dim: '4' is not an integer"),
    ('[grid]\ngrid = ["2by2"]\n', "[grid] grid=2by2: grid '2by2' is not of the form RxC"),
    ('[sweep]\nseeds = [1, 1]\n', "[sweep] seeds = [1, 1]: a seed is repeated"),
    ('[sweep]\npreset = "huge"\n', "preset 'huge' is not known (presets: tiny, default, train)"),
    ('[sweep]\nworkers = 2\n', "[sweep]: unknown key 'workers' (known: preset, seeds, cost)"),
    ('[[workload]]\nkind = "conv"\n', "workload 2: unknown kind 'conv' (kinds: gemm, onnx, "
                                      "noc, train)"),
    ('[[workload]]\nkind = "gemm"\nm = 4\nk = 4\n', "workload 2 (gemm): n is missing"),
    ('[[workload]]\nkind = "gemm"\nm = 4\nk = 4\nn = 0\n',
     "workload 2 (gemm): n = 0: give a positive integer"),
    ('[[workload]]\nkind = "noc"\nrate = 1.5\n', "workload 2 (noc): rate = 1.5: give the "
                                                 "offered load in (0, 1]"),
    ('[[workload]]\nkind = "noc"\nrate = 0.5\nburst = 2\n',
     "workload 2 (noc): unknown key 'burst'"),
    ('[[workload]]\nkind = "onnx"\nmodel = "nope.onnx"\ninput = "x.npy"\n',
     "workload 2 (onnx): model nope.onnx: no such file"),
    ('[[workload]]\nkind = "train"\n', "workload 2 (train): model is missing"),
    ('[[workload]]\nkind = "noc"\nrate = 0.5\n', "two workloads are both 'noc 500 packets at "
                                                 "0.5': give them distinct names"),
    ('[sweep\n', "not a valid TOML file"),
], ids=["unknown-field", "bad-value", "not-int", "bad-grid", "seed-twice", "bad-preset",
        "unknown-sweep-key", "unknown-kind", "missing-key", "bad-size", "bad-rate",
        "unknown-key", "missing-file", "train", "same-name", "bad-toml"])
def test_bad_specs_are_refused_before_anything_runs(tmp_path, capsys, text, message):
    base = '[[workload]]\nkind = "noc"\nrate = 0.5\n'
    spec = tmp_path / "bad.toml"
    spec.write_text(base + "\n" + text)       # the workload in `text` is the second
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"d1tile sweep: error: {spec}: ")
    assert message in err
    assert not out.exists()


def test_unwritable_outputs_and_missing_specs_are_refused(tmp_path, capsys):
    spec = write_spec(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("")
    for args, message in [
        ([str(spec), "--out", str(afile)], f"--out {afile}: is a file, not a directory"),
        ([str(spec), "--out", "/proc/sweep"], "--out /proc/sweep: cannot be made"),
        ([str(tmp_path / "none.toml")], f"{tmp_path / 'none.toml'}: no such file"),
        ([str(spec), "--workers", "0"], "--workers 0: give at least 1"),
        ([], "give the sweep's SPEC.toml"),
    ]:
        assert main(["sweep", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / sweep.RESULTS).write_text("not parquet")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "broken")]) == 2
    assert "cannot read the earlier results" in capsys.readouterr().err


def test_the_example_spec_is_valid():
    spec = load_spec(Path(__file__).resolve().parent.parent / "examples" / "sweep.toml")
    assert len(spec.configs) == 12 and [w.kind for w in spec.workloads] == ["gemm", "onnx", "noc"]
    assert len(spec.points()) == 60


def test_a_training_step_is_a_workload(tmp_path):
    """kind = "train": three steps of an MLP from its own weights on the cycle model, the
    second step's cycles, checked bit for bit against the reference; one stage and two."""
    import onnx
    from d1tile.sw.graph_api import GraphBuilder
    from d1tile.sw.train_kernels import plan_training
    from d1tile.sw.train_run import mlp_to_onnx
    from d1tile.sw.training import initial_params, training_graph
    g = GraphBuilder("mlp")
    x = g.input("x", (8, 4))
    r = np.random.default_rng(1)
    h = g.relu(g.gemm(x, r.normal(size=(4, 4)).astype(np.float32), np.zeros(4, np.float32),
                      name="fc1"))
    y = g.gemm(h, r.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32), name="fc2")
    tg = training_graph(g.build(outputs=[y]), "cross-entropy")
    plan = plan_training(tg, TileConfig.preset("tiny"), 8)
    onnx.save(mlp_to_onnx(plan, initial_params(tg, 1), softmax=True), tmp_path / "mlp.onnx")
    spec = write_spec(tmp_path, """
        [sweep]
        preset = "tiny"
        seeds = [1]

        [grid]
        router_fifo_depth = [2, 4]

        [[workload]]
        kind = "train"
        model = "mlp.onnx"
        batch = 8

        [[workload]]
        kind = "train"
        model = "mlp.onnx"
        batch = 8
        stages = 2
        weights = "bf16-sr"
        """)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    rows = read_results(out)
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows), rows
    for row in rows:
        assert row["kind"] == "train" and row["cycles"] > row["ideal_cycles"] > 0
        assert 0 < row["sram_use"] < 1 and row["imem_words_used"] > 0
