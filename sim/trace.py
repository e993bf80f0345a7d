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
* `packets in`: a span per packet DMA-in takes in, from its head flit's cycle to its tail's,
  named by its kind and source ("WRITE from (1, 0)", "IMEM from host"), with its address, words
  and the counter it bumps;
* flow arrows (with `packets`, `TileModel.packets`): one per packet and receiver between two
  nodes, from the source's `DMA out` span in the cycle the head flit entered the router to
  the receiver's `packets in` span in the cycle its tail arrived (`packet_flows`), with the
  latency in `args`;
* counter tracks per node: `busy engines` (how many of its engines are busy), `SRAM accesses`
  (`granted` and `refused` requests in the cycle: refused ones are the `sram_conflicts`
  counter), and `accumulator bank 0` / `1` (1 while the MATMUL engine accumulates into the bank,
  2 while the MREAD engine reads it, 0 otherwise).

One cycle is one nanosecond (`ts` and `dur` are microseconds, so a cycle is 0.001). The spans
come from `NodeModel.timeline`, the same conditions the performance counters count, up to the
node's DONE (the DONE packet and the host's counter read after it are not drawn), so on every
node the cycles of each track's spans equal its counter at the DONE (`busy_matrix` = the union
of the MATMUL and MREAD tracks, `busy_vector`, `busy_dma_out`, `busy_dma_in`, each stall
counter, and `instructions` the issues), which are the run's counters except DMA-out's and DMA-in's
(the host protocol after the DONE adds to them); the refused SRAM accesses add up to
`sram_conflicts`, the accumulator banks' 1s to the MATMUL track and their 2s to the MREAD
track, and every packet one node sent another is one arrow; `tests/test_trace.py` checks it.
For the RTL: the model and the RTL agree to the cycle on every counter,
the final SRAM and the done cycles of every program the tests run (`RunResult.comparable`), so
the model's trace is the RTL's timeline for the same program.
"""

from __future__ import annotations

from d1tile import isa
from d1tile.contracts import SeqEvent
from d1tile.formats import PacketKind, flit_format, packet_header_format
from d1tile.isa import ACC_BANKS, Opcode, Unit
from d1tile.params import TileConfig
from d1tile.sim.router import receivers as route_receivers


__all__ = ["chrome_trace", "TRACKS", "STALLS", "receivers", "packet_flows"]

TRACKS = ("sequencer", "matrix (MATMUL)", "readout (MREAD)", "vector", "DMA out", "DMA in",
          "packets in")
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


def _counters(pid: int, states: list, end: int) -> list[dict]:
    """The node's counter tracks (module docstring), an event wherever a value changes; the
    last state's values are set back to 0 at `end`."""
    events, previous = [], {}

    def values(state):
        return {
            "busy engines": {"busy": sum(1 for flag in state[1:6] if flag)},
            "SRAM accesses": {"granted": state[9], "refused": state[10]},
            **{f"accumulator bank {b}": {"state": 1 if state[7] == b else
                                         2 if state[8] == b else 0}
               for b in range(ACC_BANKS)},
        }

    for cycle, state in [*states, (end, None)]:
        now = values(state) if state is not None else \
            {name: {k: 0 for k in v} for name, v in previous.items()}
        for name, args in now.items():
            if previous.get(name) != args:
                events.append({"ph": "C", "pid": pid, "name": name, "ts": cycle * _US,
                               "args": args})
        previous = now
    return events


def receivers(cfg: TileConfig, source: tuple[int, int], head: int) -> list[tuple[int, int]]:
    """The nodes of the grid a packet with head flit `head`, injected at `source`, is delivered
    to (`d1tile.sim.router.receivers`); the host edge (x == cols) is not a node."""
    f = flit_format(cfg).unpack(head)
    nodes = route_receivers(source, (f["dst_x"], f["dst_y"]), f["mc"], f["last"])
    return [(i, j) for i, j in nodes if i < cfg.cols and j < cfg.rows]


def _header(cfg: TileConfig, head: int) -> dict:
    """The packet header fields of a head flit (`packet_header_format`)."""
    header = packet_header_format(cfg)
    payload = head >> flit_format(cfg).offsets["payload"]
    return header.unpack(payload & ((1 << header.width) - 1))


def packet_flows(cfg: TileConfig, packets: dict) -> list[tuple]:
    """Every node-to-node packet's (source, injection cycle, receiver, head cycle, tail
    cycle, head flit), from `packets`: (x, y) -> (`packets_out`, `packets_in`) of the nodes
    (`TileModel.packets`). At a receiver, the k-th packet in from a source with a given head
    flit is the k-th packet that source sent with that head flit: the same head flit takes the
    same path, and XY routing keeps the order of packets on one path (packets with different
    heads may overtake each other: a column multicast that starts north of its source turns
    back, a unicast does not). A packet still in flight or arriving after the receiver's DONE
    has no arrival and no flow; a head flit arriving from a node without a matching departure
    is a bug of the model (AssertionError)."""
    sent = {}        # (source, receiver, head flit) -> [injection cycle] in order
    for source, (out, _) in sorted(packets.items()):
        for cycle, head in out:
            for node in receivers(cfg, source, head):
                sent.setdefault((source, node, head), []).append(cycle)
    flows = []
    for node, (_, arrived) in sorted(packets.items()):
        taken = {}
        for head_cycle, tail_cycle, head in arrived:
            h = _header(cfg, head)
            source = (h["src_x"], h["src_y"])
            if source not in packets:
                continue         # from the host
            key = (source, node, head)
            k = taken.get(key, 0)
            queue = sent.get(key, [])
            if k >= len(queue):
                raise AssertionError(f"a packet arrived at {node} in cycle {head_cycle} from "
                                     f"{source}, which sent no such packet")
            taken[key] = k + 1
            flows.append((source, queue[k], node, head_cycle, tail_cycle, head))
    return flows


def _arrivals(cfg: TileConfig, pid: int, arrived: list) -> list[dict]:
    """The `packets in` track: a span per packet DMA-in takes in, from its head's cycle to its
    tail's, named by its source and kind."""
    tid = TRACKS.index("packets in") + 1
    events = []
    for head_cycle, tail_cycle, head in arrived:
        h = _header(cfg, head)
        source = "host" if h["src_x"] >= cfg.cols else f"({h['src_x']}, {h['src_y']})"
        kind = PacketKind(h["kind"]).name if h["kind"] in PacketKind._value2member_map_ \
            else str(h["kind"])
        events.append({"ph": "X", "pid": pid, "tid": tid, "name": f"{kind} from {source}",
                       "ts": head_cycle * _US, "dur": (tail_cycle + 1 - head_cycle) * _US,
                       "args": {"addr": h["addr"], "words": h["length"],
                                "counter": h["counter"] if h["bump"] else None}})
    return events


def _flows(cfg: TileConfig, packets: dict, pids: dict) -> list[dict]:
    """A flow arrow per packet and receiver: from the source's `DMA out` span at the head's
    injection to the receiver's `packets in` span at the tail's arrival."""
    events = []
    out_tid, in_tid = TRACKS.index("DMA out") + 1, TRACKS.index("packets in") + 1
    for k, (source, out_cycle, node, head_cycle, tail_cycle, head) in \
            enumerate(packet_flows(cfg, packets), start=1):
        h = _header(cfg, head)
        name = f"packet {source[0]},{source[1]} -> {node[0]},{node[1]}"
        events.append({"ph": "s", "id": k, "cat": "noc", "name": name, "pid": pids[source],
                       "tid": out_tid, "ts": out_cycle * _US,
                       "args": {"addr": h["addr"], "words": h["length"]}})
        events.append({"ph": "f", "bp": "e", "id": k, "cat": "noc", "name": name,
                       "pid": pids[node], "tid": in_tid, "ts": tail_cycle * _US,
                       "args": {"head": head_cycle, "latency": tail_cycle - out_cycle}})
    return events


def chrome_trace(cfg: TileConfig, programs: dict, issue_trace: dict, timeline: dict,
                 ends: dict, packets: dict | None = None) -> dict:
    """The Chrome trace-event JSON object (module docstring) of one run; `ends`: (x, y) -> the
    cycle its timeline ends (`TileModel.timeline_ends`); `packets`: the nodes' packet records
    (`TileModel.packets`), for the flow arrows (none without)."""
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
        events += _counters(pid, states, end)
        if packets is not None:
            events += _arrivals(cfg, pid, packets[node][1])
    if packets is not None:
        events += _flows(cfg, packets, {node: pid for pid, node in
                                        enumerate(sorted(timeline), start=1)})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"grid": f"{cfg.rows}x{cfg.cols}", "preset": cfg.name,
                          "cycles": max(ends.values(), default=0),
                          "time_unit": "1 cycle = 1 ns"}}
