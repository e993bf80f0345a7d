"""Chrome / Perfetto traces of cycle-model runs (`d1tile.sim.trace`): the spans of every node's
tracks add up to its performance counters, the run is the same with the timeline on, and the
command line writes the trace."""

import json

import numpy as np
import pytest

from conftest import bench_seed
from d1tile.params import TileConfig
from d1tile.sim.tile import TileModel
from d1tile.sim.trace import STALLS, TRACKS, chrome_trace
from d1tile.sw.verify import program_for

TINY = TileConfig.preset("tiny")


def cycles_of(events, pid, tids, name=None) -> set:
    out = set()
    for e in events:
        if e.get("ph") == "X" and e["pid"] == pid and e["tid"] in tids and \
                (name is None or e["name"] == name):
            start = round(e["ts"] * 1000)
            out |= set(range(start, start + round(e["dur"] * 1000)))
    return out


def check_against_counters(cfg, tile_program):
    plain = TileModel(cfg).run(tile_program)
    model = TileModel(cfg, timeline=True)
    result = model.run(tile_program)
    assert result.comparable() == plain.comparable()        # the timeline changes nothing
    trace = chrome_trace(cfg, {n: p.words for n, p in tile_program.programs.items()},
                         model.issue_trace, model.timeline, model.timeline_ends())
    json.dumps(trace)                                        # plain JSON
    events = trace["traceEvents"]
    pids = {e["args"]["name"]: e["pid"] for e in events if e.get("name") == "process_name"}
    assert len(pids) == cfg.nodes
    at_done = model.timeline_counters()
    tid = {track: k + 1 for k, track in enumerate(TRACKS)}
    for node, counters in at_done.items():
        pid = pids[f"node ({node[0]}, {node[1]})"]
        names = {e["args"]["name"] for e in events
                 if e.get("name") == "thread_name" and e["pid"] == pid}
        assert names == set(TRACKS)
        got = {
            "busy_matrix": len(cycles_of(events, pid, {tid["matrix (MATMUL)"],
                                                       tid["readout (MREAD)"]})),
            "busy_vector": len(cycles_of(events, pid, {tid["vector"]})),
            "busy_dma_out": len(cycles_of(events, pid, {tid["DMA out"]})),
            "busy_dma_in": len(cycles_of(events, pid, {tid["DMA in"]})),
        }
        for event, name in STALLS.items():
            got[f"stall_{event.name.lower()[6:]}"] = len(cycles_of(events, pid, {1}, name))
        want = {k: counters[k] for k in got}
        assert got == want, (node, got, want)
        assert counters["instructions"] == len(model.issue_trace[node])
        # after the DONE only the host protocol runs: the other counters are the run's
        final = result.nodes[node].counters
        final = final if isinstance(final, dict) else dict(zip(at_done[node], final))
        for k in ("busy_matrix", "busy_vector", "stall_unit", "stall_hazard", "instructions"):
            assert final[k] == counters[k], (node, k)
    return trace


def test_a_compiled_network_traces_to_its_counters():
    from test_compiler import small_cnn
    from d1tile.sw.compiler import _with_input, compile_model
    from d1tile.sw.quant import quantize_tensor
    rng = np.random.default_rng(bench_seed())
    x = rng.normal(size=(8, 1, 5, 5)).astype(np.float32)
    compiled = compile_model(small_cnn(rng), TINY, x)
    tp = _with_input(compiled, quantize_tensor(x, compiled.qgraph.scales[compiled.input_name]))
    trace = check_against_counters(TINY, tp)
    names = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "X"}
    assert {"MATMUL", "MREAD", "SEND", "stall: WAIT"} <= names
    assert trace["otherData"]["time_unit"] == "1 cycle = 1 ns"


@pytest.mark.parametrize("index", range(3))
def test_random_programs_trace_to_their_counters(index):
    """`verify`'s random programs: loops, shaped transfers, multicasts, vector ops."""
    check_against_counters(TINY.with_grid(3, 2), program_for(TINY.with_grid(3, 2),
                                                              bench_seed(), index))


def test_run_and_verify_write_traces(tmp_path):
    import subprocess
    import sys
    from test_cli import small_onnx
    x = small_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-m", "d1tile.cli", "run", str(tmp_path / "m.onnx"), "--input",
         str(tmp_path / "x.npy"), "--preset", "tiny", "--trace", str(tmp_path / "t.json")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    trace = json.loads((tmp_path / "t.json").read_text())
    assert sum(1 for e in trace["traceEvents"] if e.get("name") == "process_name") == 4
    result = subprocess.run(
        [sys.executable, "-m", "d1tile.cli", "verify", "--backend", "model", "--random-programs",
         "2", "--only", "1", "--trace", str(tmp_path / "v.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "v.json").read_text())["traceEvents"]
