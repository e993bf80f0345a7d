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
                         model.issue_trace, model.timeline, model.timeline_ends(),
                         model.packets())
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
        # counter tracks: refused SRAM accesses add up to `conflicts`; a bank accumulates
        # exactly in the MATMUL track's cycles and is read in the MREAD track's
        end = model.timeline_ends()[node]
        assert counter_sum(events, pid, "SRAM accesses", "refused", end) == \
            counters["sram_conflicts"]
        for state, track in ((1, "matrix (MATMUL)"), (2, "readout (MREAD)")):
            banks = sum(counter_sum(events, pid, f"accumulator bank {b}", "state", end,
                                    lambda v, s=state: v == s) for b in range(2))
            assert banks == len(cycles_of(events, pid, {tid[track]})), (node, track)
    check_flows(cfg, model, events, pids, tid)
    return trace


def counter_sum(events, pid, name, key, end, predicate=None) -> int:
    """Cycles x value of a counter track up to `end` (with `predicate`: cycles in which it
    holds of the value)."""
    points = sorted((round(e["ts"] * 1000), e["args"][key]) for e in events
                    if e.get("ph") == "C" and e["pid"] == pid and e["name"] == name)
    total = 0
    for (start, value), (stop, _) in zip(points, [*points[1:], (end, 0)]):
        total += (stop - start) * (value if predicate is None else int(predicate(value)))
    return total


def check_flows(cfg, model, events, pids, tid):
    """Every packet one node sends another is one arrow, from a span of the source's DMA-out
    track to one of the receiver's packets-in track (where Perfetto binds it), taking at least
    the hops of its path."""
    from d1tile.sim.trace import receivers
    spans = {}
    for e in events:
        if e.get("ph") == "X":
            start = round(e["ts"] * 1000)
            spans.setdefault((e["pid"], e["tid"]), []).append((start, start + round(e["dur"] * 1000)))
    starts = {e["id"]: e for e in events if e.get("ph") == "s"}
    ends = {e["id"]: e for e in events if e.get("ph") == "f"}
    assert starts.keys() == ends.keys()
    packets = model.packets()
    sent = sum(len(receivers(cfg, node, head)) for node, (out, _) in packets.items()
               for _, head in out)
    assert len(starts) == sent      # every packet to a node arrived (the programs wait for them)
    by_pid = {pid: tuple(map(int, name[6:-1].split(", "))) for name, pid in pids.items()}
    for k, s in starts.items():
        f = ends[k]
        t0, t1 = round(s["ts"] * 1000), round(f["ts"] * 1000)
        assert any(a <= t0 < b for a, b in spans[(s["pid"], tid["DMA out"])]), s
        assert any(a <= t1 < b for a, b in spans[(f["pid"], tid["packets in"])]), f
        src, dst = by_pid[s["pid"]], by_pid[f["pid"]]
        assert t1 - t0 >= abs(src[0] - dst[0]) + abs(src[1] - dst[1]) + 1, (s, f)
        assert f["args"]["latency"] == t1 - t0


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
    assert sum(1 for e in trace["traceEvents"] if e.get("ph") == "s") > 0     # arrows drawn
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
