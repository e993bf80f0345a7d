"""A run of the cycle model as a Chrome trace-event / Perfetto trace.

    model = TileModel(cfg, timeline=True)
    result = model.run(tile_program)
    trace = chrome_trace(cfg, programs, model.issue_trace, model.timeline, result.cycles)
    json.dump(trace, open("run.json", "w"))          # open it in ui.perfetto.dev

`programs`: (x, y) -> the node's program words (to name the instructions). The trace has one
process per node ("node (x, y)") and one thread (track) per part of it:

* `sequencer`: a span per stall, named by its cause (`stall: engine busy`, `stall: hazard`,
  `stall: WAIT`, `stall: HALT`), and a one-cycle span per instruction the sequencer itself
  executes (WAIT, LOOP, STEP, SETQ, SETR, SHAPE, NOP, HALT) when it issues;
* `matrix (MATMUL)`, `readout (MREAD)`, `vector`, `DMA out`: a span per busy stretch of the
  engine, named by the instruction that started it (the last one issued to that engine before
  the stretch began), with its pc and issue cycle in `args`; `DMA in`: a span per stretch of
  packets arriving;
* a counter track `busy engines` per node: how many of its engines are busy.

One cycle is one nanosecond (`ts` and `dur` are microseconds, so a cycle is 0.001). The spans
come from `NodeModel.timeline`, the same conditions the performance counters count, up to the
node's DONE (the DONE packet and the host's counter read after it are not drawn), so on every
node the cycles of each track's spans equal its counter at the DONE (`busy_matrix` = the union
of the MATMUL and MREAD tracks, `busy_vector`, `busy_dma_out`, `busy_dma_in`, each stall
counter, and `instructions` the issues), which are the run's counters except DMA-out's and DMA-in's
(the host protocol after the DONE adds to them); `tests/test_trace.py` checks it. Not drawn yet: flow arrows from a SEND to its arrival, SRAM and
accumulator occupancy. For the RTL: the model and the RTL agree to the cycle on every counter,
the final SRAM and the done cycles of every program the tests run (`RunResult.comparable`), so
the model's trace is the RTL's timeline for the same program.
"""

from __future__ import annotations

from d1tile import isa
from d1tile.contracts import SeqEvent
from d1tile.isa import Opcode, Unit
from d1tile.params import TileConfig


__all__ = ["chrome_trace", "TRACKS", "STALLS"]

TRACKS = ("sequencer", "matrix (MATMUL)", "readout (MREAD)", "vector", "DMA out", "DMA in")
"""The threads of each node's process, in order (tid = index + 1)."""

STALLS = {SeqEvent.STALL_UNIT: "stall: engine busy", SeqEvent.STALL_HAZARD: "stall: hazard",
          SeqEvent.STALL_WAIT: "stall: WAIT", SeqEvent.STALL_HALT: "stall: HALT"}
"""Span names of the sequencer's stalls, by event (the counters `stall_unit`, `stall_hazard`,
`stall_wait`, `stall_halt`)."""

# the timeline state's busy flags, in order, and their tracks
_BUSY = (("matrix (MATMUL)", Unit.MATRIX), ("readout (MREAD)", Unit.READOUT),
         ("vector", Unit.VECTOR), ("DMA out", Unit.DMA), ("DMA in", None))
_US = 0.001         # microseconds per cycle (a cycle is shown as one nanosecond)


def _name(word: int) -> str:
    instr = isa.decode(word)
    if instr.op is None:
        return "?"
    name = instr.op.name
    if instr.op == Opcode.VEC:
        name += f" {isa.VecOp(instr.fields['vop']).name}" if "vop" in instr.fields else ""
    elif instr.op == Opcode.FVEC and "fop" in instr.fields:
        name += f" {isa.FVecOp(instr.fields['fop']).name}"
    return name


def _spans(timeline: list, index: int, end: int, predicate) -> list[tuple[int, int, object]]:
    """[(start, stop, value)]: the stretches of cycles in which predicate(state[index]) holds
    (its value at the start), up to `end`."""
    out, start, value = [], None, None
    for cycle, state in timeline:
        on = predicate(state[index])
        if start is not None and (not on or state[index] != value):
            out.append((start, cycle, value))
            start = None
        if on and start is None:
            start, value = cycle, state[index]
    if start is not None:
        out.append((start, end, value))
    return out


def chrome_trace(cfg: TileConfig, programs: dict, issue_trace: dict, timeline: dict,
                 ends: dict) -> dict:
    """The Chrome trace-event JSON object (module docstring) of one run; `ends`: (x, y) -> the
    cycle its timeline ends (`TileModel.timeline_ends`)."""
    events = []
    for pid, node in enumerate(sorted(timeline), start=1):
        x, y = node
        end = ends[node]
        events.append({"ph": "M", "name": "process_name", "pid": pid,
                       "args": {"name": f"node ({x}, {y})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                       "args": {"sort_index": pid}})
        for tid, track in enumerate(TRACKS, start=1):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": track}})
        words = programs.get(node, [])
        issues = {unit: [] for unit in Unit}
        for pc, cycle in issue_trace.get(node, []):
            word = words[pc] if 0 <= pc < len(words) else 0
            op = isa.decode(word).op
            unit = isa.UNIT_OF.get(op, Unit.SEQUENCER) if op is not None else Unit.SEQUENCER
            issues[unit].append((cycle, pc, word))
            if unit == Unit.SEQUENCER:
                events.append({"ph": "X", "pid": pid, "tid": 1, "name": _name(word),
                               "ts": cycle * _US, "dur": _US,
                               "args": {"pc": pc, "cycle": cycle}})
        states = timeline[node]
        for start, stop, event in _spans(states, 0, end, lambda e: SeqEvent(e) in STALLS):
            events.append({"ph": "X", "pid": pid, "tid": 1, "name": STALLS[SeqEvent(event)],
                           "ts": start * _US, "dur": (stop - start) * _US,
                           "args": {"cycles": stop - start, "from": start}})
        for k, (track, unit) in enumerate(_BUSY, start=1):
            tid = TRACKS.index(track) + 1
            started = issues.get(unit, []) if unit is not None else []
            j = 0
            for start, stop, _ in _spans(states, k, end, bool):
                name, args = track, {"cycles": stop - start, "from": start}
                while j + 1 < len(started) and started[j + 1][0] < start:
                    j += 1
                if started and started[j][0] < start:
                    cycle, pc, word = started[j]
                    name, args = _name(word), {**args, "pc": pc, "issued": cycle}
                elif unit is None:
                    name = "packet in"
                events.append({"ph": "X", "pid": pid, "tid": tid, "name": name,
                               "ts": start * _US, "dur": (stop - start) * _US, "args": args})
        previous = None
        for cycle, state in states:
            busy = sum(1 for flag in state[1:6] if flag)
            if busy != previous:
                events.append({"ph": "C", "pid": pid, "name": "busy engines",
                               "ts": cycle * _US, "args": {"busy": busy}})
                previous = busy
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"grid": f"{cfg.rows}x{cfg.cols}", "preset": cfg.name,
                          "cycles": max(ends.values(), default=0),
                          "time_unit": "1 cycle = 1 ns"}}
