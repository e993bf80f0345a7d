"""The host side of a run: the packets the runtime sends through the tile's east edge, and the
driver that sends them and collects the answers.

The tile's host port is its east edge: one link per row, into router (cols-1, y)'s EAST input
and out of its EAST output. Host coordinates are (cols, y). A run is, per row link:

1. LOAD: for every node of the row (west to east), its program (IMEM packets) and its data
   (WRITE packets without a counter bump), in chunks of at most `CHUNK` words; then a START
   packet for every node of the row.
2. RUN: the host waits for one DONE packet from every node (a node sends it when it halts or
   faults).
3. READBACK: the cycle after the last DONE arrives, READ packets for every region the program
   asks for and a READ_CTRS for every node; the run ends when every REPLY has arrived.

`HostDriver` is one deterministic state machine used unchanged by both backends (the cycle
model and the Verilator tile), so both present the same flits in the same cycles. It is also
where a hang is detected: `hang_cycles` consecutive cycles without activity anywhere in the
tile stop the run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from d1tile.formats import (COUNTER_NAMES, PacketKind, flit_format, lanes_from_word,
                            packet_header_format)
from d1tile.params import TileConfig
from d1tile.sim.isa import FaultCode


__all__ = ["CHUNK", "CTRS_TAG", "HostDriver", "NodeReport", "RunResult", "packet"]

CHUNK = 64          # body words per load packet
CTRS_TAG = 0x8000   # tag of READ_CTRS requests; READ requests are tagged 0, 1, ...
DEFAULT_HANG_CYCLES = 2000


def packet(cfg: TileConfig, dst: tuple[int, int], kind: PacketKind, *, src: tuple[int, int],
           addr: int = 0, body=(), length: int | None = None, counter: int = 0, bump: int = 0,
           tag: int = 0) -> list[int]:
    """The flits of one packet: a head flit carrying the header, then one flit per body word.
    `length` defaults to the number of body words (READ requests carry a length and no body)."""
    flit, header = flit_format(cfg), packet_header_format(cfg)
    body = list(body)
    head = header.pack(kind=int(kind), src_x=src[0], src_y=src[1], addr=addr,
                       length=len(body) if length is None else length, counter=counter,
                       bump=bump, tag=tag)
    flits = [flit.pack(head=1, tail=int(not body), dst_x=dst[0], dst_y=dst[1], payload=head)]
    for i, word in enumerate(body):
        flits.append(flit.pack(head=0, tail=int(i == len(body) - 1), dst_x=dst[0],
                               dst_y=dst[1], payload=word))
    return flits


@dataclass
class NodeReport:
    """What the host learnt about one node: its DONE (cycle, fault, pc, value) and counters."""
    done_cycle: int | None = None
    fault: FaultCode = FaultCode.NONE
    pc: int = 0
    fault_value: int = 0
    counters: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """The outcome of a run, the same for every backend."""
    cycles: int                    # cycle in which the last DONE arrived (the run's length)
    total_cycles: int              # cycle in which the last REPLY arrived (with read-back)
    nodes: dict                    # (x, y) -> NodeReport
    reads: dict                    # ((x, y), addr, n) -> [words]
    hang: str | None = None        # the hang report, when the run stopped without finishing
    misroute: bool = False         # a flit left the mesh through an edge other than the host's

    @property
    def faults(self) -> dict:
        return {node: r for node, r in self.nodes.items() if r.fault != FaultCode.NONE}

    def comparable(self) -> dict:
        """Everything both backends must agree on, as plain data."""
        return {
            "cycles": self.cycles, "total_cycles": self.total_cycles, "hang": self.hang,
            "misroute": self.misroute,
            "nodes": {f"{x},{y}": [r.done_cycle, int(r.fault), r.pc, r.fault_value, r.counters]
                      for (x, y), r in sorted(self.nodes.items())},
            "reads": {f"{x},{y}@{a}+{n}": words for ((x, y), a, n), words in sorted(self.reads.items())},
        }

    @classmethod
    def from_comparable(cls, data: dict) -> "RunResult":
        """The inverse of `RunResult.comparable` (for results that crossed a process boundary)."""
        node = lambda key: tuple(int(v) for v in key.split(","))
        nodes = {}
        for key, (done, fault, pc, value, counters) in data["nodes"].items():
            nodes[node(key)] = NodeReport(done, FaultCode(fault), pc, value, counters)
        reads = {}
        for key, words in data["reads"].items():
            where, span = key.split("@")
            addr, n = span.split("+")
            reads[(node(where), int(addr), int(n))] = words
        return cls(data["cycles"], data["total_cycles"], nodes, reads, data["hang"],
                   data["misroute"])


class HostDriver:
    """Drives the host edge for one run of a `TileProgram` (see the module docstring).

    Per cycle the backend calls `offer(row)` for each row link (the flit the host presents, or
    None), then at the clock edge `accepted(row)` for each link whose flit the tile took,
    `eject(row, flit, cycle)` for each flit the tile delivered (the host is always ready), and
    `end_cycle(cycle, activity)` with whether anything moved in the tile. `finished` and `hung`
    say when to stop; `result()` gives the `RunResult`.
    """

    def __init__(self, cfg: TileConfig, tile_program, *, hang_cycles: int = DEFAULT_HANG_CYCLES):
        self.cfg = cfg
        self.tp = tile_program
        self.hang_cycles = hang_cycles
        self.queues = [deque() for _ in range(cfg.rows)]
        self.header = packet_header_format(cfg)
        self.flit = flit_format(cfg)
        for node in tile_program.nodes:
            x, y = node
            words = tile_program.words_of(node)
            for start in range(0, len(words), CHUNK):
                self._send(node, PacketKind.IMEM, addr=start, body=words[start:start + CHUNK])
            for addr, data in tile_program.loads.get(node, []):
                for start in range(0, len(data), CHUNK):
                    self._send(node, PacketKind.WRITE, addr=addr + start,
                               body=data[start:start + CHUNK])
        for node in tile_program.nodes:
            self._send(node, PacketKind.START)
        self.reports = {node: NodeReport() for node in tile_program.nodes}
        self.pending_done = set(tile_program.nodes)
        self.pending_replies: dict = {}   # (node, tag) -> (addr, n) or "ctrs"
        self.reads: dict = {}
        self.rx = [[] for _ in range(cfg.rows)]   # flits of the packet arriving on each link
        self.run_cycles: int | None = None
        self.last_cycle = 0
        self.quiet = 0
        self.hang: str | None = None
        self._readback_queued = False
        self.log: list = []   # (cycle, row, header) of every packet received, for diagnostics

    def _send(self, node, kind, **fields):
        x, y = node
        self.queues[y].extend(packet(self.cfg, node, kind, src=(self.cfg.cols, y), **fields))

    # -- per-cycle interface -------------------------------------------------------------------

    def offer(self, row: int) -> int | None:
        queue = self.queues[row]
        return queue[0] if queue else None

    def accepted(self, row: int) -> None:
        self.queues[row].popleft()

    def eject(self, row: int, flit: int, cycle: int) -> None:
        self.rx[row].append(flit)
        if self.flit.get(flit, "tail"):
            self._packet(self.rx[row], cycle)
            self.rx[row] = []

    def end_cycle(self, cycle: int, activity: bool) -> None:
        self.last_cycle = cycle
        self.quiet = 0 if activity else self.quiet + 1
        if not self.pending_done and not self._readback_queued:
            self._queue_readback()
        if self.quiet >= self.hang_cycles and not self.finished:
            self.hang = f"no activity for {self.quiet} cycles at cycle {cycle}"

    @property
    def finished(self) -> bool:
        return self._readback_queued and not self.pending_replies and not any(self.queues)

    @property
    def hung(self) -> bool:
        return self.hang is not None

    # -- packets from the tile -----------------------------------------------------------------

    def _packet(self, flits: list[int], cycle: int) -> None:
        head = self.header.unpack(self.flit.get(flits[0], "payload"))
        node = (head["src_x"], head["src_y"])
        body = [self.flit.get(f, "payload") for f in flits[1:]]
        kind = head["kind"]
        self.log.append((cycle, node, PacketKind(kind).name if kind in PacketKind.__members__.values()
                         else kind, len(body)))
        if kind == PacketKind.DONE and node in self.pending_done:
            report = self.reports[node]
            report.done_cycle = cycle
            report.fault = FaultCode(head["tag"]) if head["tag"] in FaultCode.__members__.values() \
                else head["tag"]
            report.pc = head["addr"]
            report.fault_value = head["length"]
            self.pending_done.discard(node)
            if not self.pending_done:
                self.run_cycles = cycle
        elif kind == PacketKind.REPLY and (node, head["tag"]) in self.pending_replies:
            request = self.pending_replies.pop((node, head["tag"]))
            if request == "ctrs":
                lanes = [int(v) & 0xFFFF_FFFF for word in body
                         for v in lanes_from_word(word, self.cfg.lanes)]
                self.reports[node].counters = dict(zip(COUNTER_NAMES, lanes))
            else:
                self.reads[(node, *request)] = body
        else:
            raise RuntimeError(f"host received an unexpected packet at cycle {cycle}: "
                               f"kind {kind} from {node}, header {head}; packets so far "
                               f"(cycle, node, kind, body words): {self.log[-10:]}")

    def _queue_readback(self) -> None:
        self._readback_queued = True
        for node in self.tp.nodes:
            for tag, (addr, n) in enumerate(self.tp.reads.get(node, [])):
                self._send(node, PacketKind.READ, addr=addr, length=n, tag=tag)
                self.pending_replies[(node, tag)] = (addr, n)
            self._send(node, PacketKind.READ_CTRS, tag=CTRS_TAG)
            self.pending_replies[(node, CTRS_TAG)] = "ctrs"

    def result(self, hang_report: str | None = None, misroute: bool = False) -> RunResult:
        hang = None
        if self.hang is not None:
            hang = self.hang + ("\n" + hang_report if hang_report else "")
        return RunResult(cycles=self.run_cycles if self.run_cycles is not None else self.last_cycle,
                         total_cycles=self.last_cycle, nodes=self.reports, reads=self.reads,
                         hang=hang, misroute=misroute)
