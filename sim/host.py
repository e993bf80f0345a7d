"""The host side of a run: the packets the runtime sends through the tile's east edge, and the
driver that sends them and collects the answers.

The tile's host port is its east edge: one link per row, into router (cols-1, y)'s EAST input
and out of its EAST output. Host coordinates are (cols, y). A run is, per row link:

1. LOAD: for every node of the row (west to east), its program (IMEM packets) and its data
   (WRITE packets without a counter bump), in chunks of at most `CHUNK` words; then a START
   packet for every node of the row. The program's *early* nodes (`TileImage.early`) go first
   in their rows, each STARTed right after its own program and data, so it runs while the
   rest of its row loads (what an early node sends must not land in what the host loads).
2. FEED and RUN: after the STARTs, the *feeds* of the row's nodes, in the program's order
   (`TileImage.feeds`): data written while the nodes run, each region in WRITE packets of at
   most `CHUNK` words whose last one bumps the region's counter, so a node WAITs on the counter
   before it uses the region. A *gated* feed (`TileImage.gates`) waits in its row's queue until
   the host has received a given number of *tokens* (zero-length packets a node SENDs to the
   host) from a given node: so the nodes say when the words it writes are free (the compiler
   gates the weights of a layer that reuses dead words on the barrier before it), and the
   row's later feeds wait behind it. The host waits for one DONE packet from every node (a node sends
   it when it halts or faults). Meanwhile it takes the *streams*: the WRITE packets that nodes
   SEND to the host (x == cols), appended per sender in arrival order (`RunResult.streams`).
   A node's packets to the host and its DONE leave through its row's link in the order its
   DMA-out sent them, so everything a node streams has arrived before its DONE. A stream
   packet to an address a *host op* names (`TileImage.host_ops`, `d1tile.hostops`: the
   softmax cross-entropy of a training step) is answered: the op's result is written into
   the node, its last packet bumping the op's counter, sent ahead of the row's queued packets
   (at a packet boundary).
3. READBACK: the cycle after the last DONE arrives, READ packets for every region the program
   asks for and a READ_CTRS for every node; the run ends when every REPLY has arrived.

`HostDriver` is one deterministic state machine used unchanged by both backends (the cycle
model and the Verilator tile), so both present the same flits in the same cycles. It is also
where a hang is detected: `hang_cycles` consecutive cycles without activity anywhere in the
tile stop the run.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

from d1tile.hostops import run_host_op
from d1tile.formats import (COUNTER_NAMES, PacketKind, flit_format, lanes_from_word,
                            packet_header_format)
from d1tile.params import TileConfig
from d1tile.isa import FaultCode


__all__ = ["CHUNK", "CTRS_TAG", "HostDriver", "NodeReport", "RunResult", "TileImage", "packet"]

CHUNK = 64          # body words per load packet
CTRS_TAG = 0x8000   # tag of READ_CTRS requests; READ requests are tagged 0, 1, ...
DEFAULT_HANG_CYCLES = 2000


@dataclass
class TileImage:
    """What a run loads into a tile and reads back, as plain data: every node's program words,
    the SRAM words loaded before the start, the feeds (words written after the
    start, in order, each region bumping a counter on its node when it has arrived) and the
    regions read back after the last DONE. The host driver, the interpreter and the Verilator
    bench read this (a `d1tile.sw.program.TileProgram`, which builds programs, has the same
    attributes and JSON form)."""
    cfg: TileConfig
    programs: dict = field(default_factory=dict)   # (x, y) -> [instruction words]
    loads: dict = field(default_factory=dict)      # (x, y) -> [(addr, [words])]
    reads: dict = field(default_factory=dict)      # (x, y) -> [(addr, n)]
    feeds: list = field(default_factory=list)      # [((x, y), addr, [words], counter)], in order
    early: list = field(default_factory=list)      # [(x, y)]: loaded and STARTed first in its row
    gates: list = field(default_factory=list)      # [(feed index, (x, y), tokens)]: that feed
    #                                                waits for that many tokens from that node
    host_ops: list = field(default_factory=list)   # [op]: what the host computes from a stream
    #                                                and writes back (`d1tile.hostops`)

    @property
    def nodes(self) -> list[tuple[int, int]]:
        return [(x, y) for y in range(self.cfg.rows) for x in range(self.cfg.cols)]

    def words_of(self, node) -> list[int]:
        """The node's program words (a lone HALT, instruction word 1, when it has none)."""
        return list(self.programs.get(node) or [1])

    def to_json(self) -> str:
        """Plain JSON (words as integers), e.g. to hand a program to a simulator process."""
        key = lambda node: f"{node[0]},{node[1]}"
        return json.dumps({
            "config": json.loads(self.cfg.to_json()),
            "programs": {key(n): list(words) for n, words in self.programs.items()},
            "loads": {key(n): regions for n, regions in self.loads.items()},
            "reads": {key(n): regions for n, regions in self.reads.items()},
            "feeds": [[key(n), addr, list(words), counter] for n, addr, words, counter in self.feeds],
            "early": [key(n) for n in self.early],
            "gates": [[i, key(n), k] for i, n, k in self.gates],
            "host_ops": self.host_ops,
        })

    @classmethod
    def from_json(cls, text: str) -> "TileImage":
        data = json.loads(text)
        cfg = TileConfig.from_json(json.dumps(data["config"]))
        node = lambda key: tuple(int(v) for v in key.split(","))
        return cls(cfg,
                   {node(k): [int(w) for w in words] for k, words in data["programs"].items()},
                   {node(k): [(a, list(w)) for a, w in v] for k, v in data["loads"].items()},
                   {node(k): [(a, n) for a, n in v] for k, v in data["reads"].items()},
                   [(node(k), int(a), [int(w) for w in words], int(c))
                    for k, a, words, c in data.get("feeds", [])],
                   [node(k) for k in data.get("early", [])],
                   [(int(i), node(k), int(t)) for i, k, t in data.get("gates", [])],
                   list(data.get("host_ops", [])))


def packet(cfg: TileConfig, dst: tuple[int, int], kind: PacketKind, *, src: tuple[int, int],
           addr: int = 0, body=(), length: int | None = None, counter: int = 0, bump: int = 0,
           tag: int = 0) -> list[int]:
    """The flits of one packet: a head flit carrying the header, then one flit per body word.
    `length` defaults to the number of body words (READ requests carry a length and no body)."""
    flit, header = flit_format(cfg), packet_header_format(cfg)
    body = [int(word) for word in body]
    head = header.pack(kind=int(kind), src_x=src[0], src_y=src[1], addr=addr,
                       length=len(body) if length is None else length, counter=counter,
                       bump=bump, tag=tag)
    flits = [flit.pack(head=1, tail=int(not body), dst_x=dst[0], dst_y=dst[1], payload=head)]
    if body:
        # Body flits differ in their payload alone: pack the rest once.
        base = flit.pack(head=0, tail=0, dst_x=dst[0], dst_y=dst[1], payload=0)
        shift, limit = flit.offsets["payload"], 1 << cfg.word_bits
        for word in body:
            if not 0 <= word < limit:
                flit.pack(payload=word)      # raises the FormatError that names the value
            flits.append(base | (word << shift))
        flits[-1] |= 1 << flit.offsets["tail"]
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
    streams: dict = field(default_factory=dict)   # (x, y) -> [(addr, [words])]: SENDs to the host

    def stream_words(self, node) -> list[int]:
        """Every word node sent to the host, in order (its packets' bodies one after another)."""
        return [word for _, body in self.streams.get(node, []) for word in body]

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
            "streams": {f"{x},{y}": [[a, body] for a, body in packets]
                        for (x, y), packets in sorted(self.streams.items())},
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
        streams = {node(key): [(a, list(body)) for a, body in packets]
                   for key, packets in data.get("streams", {}).items()}
        return cls(data["cycles"], data["total_cycles"], nodes, reads, data["hang"],
                   data["misroute"], streams)


@dataclass(frozen=True)
class _Gate:
    """A mark in a row's queue: what follows waits for `tokens` tokens from `node`."""
    node: tuple
    tokens: int


class HostDriver:
    """Drives the host edge for one run of a `TileProgram` (see the module docstring).

    Per cycle the backend calls `offer(row)` for each row link (the flit the host presents, or
    None), then at the clock edge `accepted(row)` for each link whose flit the tile took,
    `eject(row, flit, cycle)` for each flit the tile delivered (the host is always ready), and
    `end_cycle(cycle, activity)` with whether anything moved in the tile. `finished` and `hung`
    say when to stop; `result()` gives the `RunResult`.

    A backend that can tell what the next cycles bring (the cycle model) may report many at
    once: `accept_many` and `eject_many` for the body flits that cross the host port in them,
    then one `end_cycles` for up to `skippable()` cycles.
    """

    def __init__(self, cfg: TileConfig, tile_program, *, hang_cycles: int = DEFAULT_HANG_CYCLES):
        self.cfg = cfg
        self.tp = tile_program
        self.hang_cycles = hang_cycles
        self.queues = [deque() for _ in range(cfg.rows)]
        self.header = packet_header_format(cfg)
        self.flit = flit_format(cfg)
        self._head_or_tail = (1 << self.flit.offsets["head"]) | (1 << self.flit.offsets["tail"])
        self._tail = 1 << self.flit.offsets["tail"]
        early = list(dict.fromkeys(tile_program.early))
        later = [node for node in tile_program.nodes if node not in early]
        for node in early + later:
            words = tile_program.words_of(node)
            for start in range(0, len(words), CHUNK):
                self._send(node, PacketKind.IMEM, addr=start, body=words[start:start + CHUNK])
            for addr, data in tile_program.loads.get(node, []):
                self._write(node, addr, data)
            if node in early:
                self._send(node, PacketKind.START)
        for node in later:
            self._send(node, PacketKind.START)
        self.tokens: dict = {}    # (x, y) -> zero-length packets received from the node
        gates = {i: _Gate(node, k) for i, node, k in getattr(tile_program, "gates", [])}
        for i, (node, addr, data, counter) in enumerate(tile_program.feeds):
            if i in gates:
                self.queues[node[1]].append(gates[i])
            self._write(node, addr, data, counter=counter, bump=True)
        # Host ops: a stream packet to (node, tag) is answered with writes sent ahead of the
        # row's queue (at a packet boundary: `urgent`, `current`).
        self.host_ops = {(tuple(op["node"]), op["tag"]): op
                         for op in getattr(tile_program, "host_ops", None) or []}
        self.host_steps: dict = {}                  # (node, tag) -> packets answered so far
        self.host_values: dict = {}                 # (node, tag) -> [the op's values per step]
        self.urgent = [deque() for _ in range(cfg.rows)]
        self.current: list = [None] * cfg.rows     # the queue of the packet being sent
        self.reports = {node: NodeReport() for node in tile_program.nodes}
        self.pending_done = set(tile_program.nodes)
        self.pending_replies: dict = {}   # (node, tag) -> (addr, n) or "ctrs"
        self.reads: dict = {}
        self.streams: dict = {}   # (x, y) -> [(addr, [words])]: WRITE packets from the nodes
        self.rx = [[] for _ in range(cfg.rows)]   # flits of the packet arriving on each link
        self.run_cycles: int | None = None
        self.last_cycle = 0
        self.quiet = 0
        self.hang: str | None = None
        self._readback_queued = False
        self.log: list = []   # (cycle, row, header) of every packet received, for diagnostics
        self.on_stream = None     # called with (node, addr, words, cycle) for every stream packet

    def _send(self, node, kind, *, urgent: bool = False, **fields):
        x, y = node
        queue = self.urgent[y] if urgent else self.queues[y]
        queue.extend(packet(self.cfg, node, kind, src=(self.cfg.cols, y), **fields))

    def _write(self, node, addr: int, data, *, counter: int = 0, bump: bool = False,
               urgent: bool = False):
        """WRITE packets of at most CHUNK words; with `bump`, the last one bumps `counter`."""
        for start in range(0, len(data), CHUNK):
            last = start + CHUNK >= len(data)
            self._send(node, PacketKind.WRITE, addr=addr + start, body=data[start:start + CHUNK],
                       counter=counter, bump=int(bump and last), urgent=urgent)

    # -- per-cycle interface -------------------------------------------------------------------

    def _active(self, row: int):
        """The queue the row's next flit comes from: the packet being sent's; at a packet
        boundary the host ops' answers first, then the row's queue past its open gates."""
        if self.current[row] is not None:
            return self.current[row]
        if self.urgent[row]:
            return self.urgent[row]
        queue = self.queues[row]
        while queue and type(queue[0]) is _Gate:
            if self.tokens.get(queue[0].node, 0) < queue[0].tokens:
                return None         # the row waits for the node's token
            queue.popleft()
        return queue

    def offer(self, row: int) -> int | None:
        queue = self._active(row)
        return queue[0] if queue else None

    def accepted(self, row: int) -> None:
        queue = self._active(row)
        flit = queue.popleft()
        self.current[row] = None if flit & self._tail else queue

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

    def skippable(self) -> int:
        """How many cycles `end_cycles` may account at once now: so few that no hang can be
        detected inside them, whatever their activity (hang_cycles - 1 - quiet)."""
        return max(0, self.hang_cycles - 1 - self.quiet)

    def body_run(self, row: int) -> int:
        """How many flits at the front of the row's queue are body flits (neither head nor
        tail): the ones `accept_many` may take."""
        head_or_tail = self._head_or_tail
        n = 0
        for flit in self._active(row) or ():
            if type(flit) is _Gate or flit & head_or_tail:
                break
            n += 1
        return n

    def accept_many(self, row: int, n: int) -> list[int]:
        """`accepted(row)` for n consecutive cycles; returns the flits taken (all body flits,
        at most `body_run(row)`, ValueError otherwise)."""
        if n > self.body_run(row):
            raise ValueError(f"accept_many: {n} flits on row {row}, only {self.body_run(row)} "
                             "body flits queued")
        queue = self._active(row)
        return [queue.popleft() for _ in range(n)]

    def eject_many(self, row: int, flits: list[int], first: int) -> None:
        """`eject(row, flit, first + k)` for flit k of `flits`, received in consecutive cycles;
        every one must be a body flit (ValueError otherwise): no packet ends among them."""
        head_or_tail = self._head_or_tail
        if any(flit & head_or_tail for flit in flits):
            raise ValueError(f"eject_many: row {row} gets a head or tail flit")
        self.rx[row].extend(flits)

    def end_cycles(self, first: int, n: int, last_active: int | None) -> None:
        """`end_cycle` for the n cycles first .. first+n-1, whose flits the backend has already
        reported (`accept_many`, `eject_many`); `last_active` is the last of them with activity
        (None: none). The same as n `end_cycle` calls, given that n <= `skippable()` (ValueError
        otherwise) and that no DONE arrived in them."""
        if not 0 <= n <= self.skippable():
            raise ValueError(f"end_cycles: {n} cycles at cycle {first}, at most "
                             f"{self.skippable()} can pass without a hang check")
        if not self.pending_done and not self._readback_queued:
            raise ValueError("end_cycles: the read-back is due in the first of these cycles")
        if not n:
            return
        if last_active is not None and not first <= last_active < first + n:
            raise ValueError(f"end_cycles: last active cycle {last_active} outside "
                             f"{first}..{first + n - 1}")
        self.last_cycle = first + n - 1
        self.quiet = self.quiet + n if last_active is None else first + n - 1 - last_active

    @property
    def finished(self) -> bool:
        return (self._readback_queued and not self.pending_replies and not any(self.queues)
                and not any(self.urgent))

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
        elif kind == PacketKind.WRITE and node in self.pending_done:     # a stream
            self.streams.setdefault(node, []).append((head["addr"], body))
            if self.on_stream is not None:
                self.on_stream(node, head["addr"], body, cycle)
            if not body:                                                  # a token
                self.tokens[node] = self.tokens.get(node, 0) + 1
            op = self.host_ops.get((node, head["addr"])) if body else None
            if op is not None:
                self._host_op(node, op, body)
        else:
            raise RuntimeError(f"host received an unexpected packet at cycle {cycle}: "
                               f"kind {kind} from {node}, header {head}; packets so far "
                               f"(cycle, node, kind, body words): {self.log[-10:]}")

    def _host_op(self, node, op: dict, body) -> None:
        """Answer a stream packet with the op's writes, sent before the row's other packets."""
        key = (node, op["tag"])
        step = self.host_steps.get(key, 0)
        self.host_steps[key] = step + 1
        values, writes = run_host_op(self.cfg, op, step, body)
        self.host_values.setdefault(key, []).append(values)
        for i, (addr, words) in enumerate(writes):
            self._write(node, addr, words, counter=op["counter"], bump=i + 1 == len(writes),
                        urgent=True)

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
                         hang=hang, misroute=misroute, streams=self.streams)
