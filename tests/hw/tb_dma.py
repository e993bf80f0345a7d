"""cocotb bench of the DMA engines (Verilog top `dma_bench`: tests/test_dma.py::DmaBenchTop =
DmaOut + DmaIn of node (0, 0), NodeSRAM with 4 read and 3 write ports, a Router at (0, 0)),
in lockstep with `DmaOutModel`, `DmaInModel`, `RouterModel` and `SRAMModel`.

One coroutine does everything, one cycle at a time (`DmaBench.step`): right after the rising
edge it decides and drives every input (the sequencer's commands, the counters, random requests
on the contention SRAM ports, packets on in_east / in_south, random ready on out_east /
out_south); in `ReadOnly` it compares every output and probe with the models' values for the
same cycle (SRAM requests and grants of every port, the flits and handshakes between DmaOut,
the router and DmaIn, the reply hand-off, DmaIn's strobes, `idle`, `busy`, the router's edge
ports), then steps the models with the same inputs. The first difference fails the test with
the cycle, the signal, the model's and the DUT's value, and the seed.

Independently of the models, a scoreboard checks what the DMA did: every packet leaving on
out_east / out_south against packets built with `d1tile.sim.host.packet` from the commands and
requests (SEND -> WRITE with the source words, HALT -> DONE, READ -> REPLY with the words or the
bad-range reply, READ_CTRS -> counter words that all come from one cycle each); the bumps,
imem writes, START pulses, bad packets and dropped words against what was sent; and the final
SRAM against a functional memory (loopback SENDs copy words, WRITE packets store theirs).
Documented timings (`job_cycles`, `unloaded_latency`) are checked in the directed test.

Address plan: the top `SCRATCH` words of every bank belong to the contention writes (they
create bank conflicts without disturbing DMA data); DMA data lives below. READs and SEND sources
use only ranges whose writes have landed ("stable"): the DMA itself guarantees READ-after-WRITE
order, but a SEND's reads are ordered with earlier writes only by the program's WAIT.

Deadlock rule (see d1tile.sim.dma): while SENDs to the node itself run, at most one READ /
READ_CTRS is outstanding, so a READ head never waits at the router's local output.

Environment: `D1TILE_CONFIG` (bench_config.py); `D1TILE_DMA_OPS` scales the random tests.
"""

from __future__ import annotations

import os
from collections import Counter, deque

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.formats import COUNTER_NAMES, PacketKind, Port, flit_format, packet_header_format
from d1tile.hw.testbench import TB
from d1tile.sim.dma import (BAD_READ_TAG, DmaInModel, DmaOutModel, counter_words, job_cycles,
                            reply_request_format)
from d1tile.sim.host import packet
from d1tile.isa import (INSTR_BITS, SHAPE_BITS, SHAPE_FORMAT, SYNC_COUNTERS, Opcode, decode,
                        dma_packets, dma_source, encode)
from d1tile.sim.router import RouterModel, route_xy, unloaded_latency
from d1tile.sim.sram import SRAMModel


L, E, S = int(Port.LOCAL), int(Port.EAST), int(Port.SOUTH)
PORT_NAME = {E: "east", S: "south"}
SCRATCH = 4          # words at the top of every bank reserved for the contention writes
PRELOAD = 16         # stable source words per bank written at the start of a random test
OPS = int(os.environ.get("D1TILE_DMA_OPS", "120"))   # operations per round of a random test
ROUNDS = 8
_WORD = (1 << INSTR_BITS) - 1

# The SRAM model of the DUT's memory, carried from test to test like the memory itself.
_SHARED = {"sram": None, "clean": False}


class LockstepError(AssertionError):
    """The DUT and the models disagree."""


class ScoreboardError(AssertionError):
    """The DMA did something else than the commands and packets asked for."""


def _send(src, n, x, y, dst, counter):
    return encode(Opcode.SEND, src=src, n=n, x=x, y=y, dst=dst, counter=counter)


class DmaBench(TB):
    """TB + models + lockstep checker + stimulus generators + scoreboard (module docstring)."""

    def __init__(self, dut):
        super().__init__(dut)
        cfg = self.cfg = bench_config()
        self.flit = flit_format(cfg)
        self.hdr = packet_header_format(cfg)
        self.req = reply_request_format(cfg)
        self.hdr_mask = (1 << self.hdr.width) - 1
        self.full = (1 << cfg.word_bytes) - 1
        d = dut
        self.h_cmd = (d.cmd__start, d.cmd__instr, d.cmd__status, d.cmd__pc, d.cmd__info,
                      d.cmd__shape)
        self.h_cread = [(getattr(d, f"cread__{i}__en"), getattr(d, f"cread__{i}__addr"),
                         getattr(d, f"cread__{i}__ready")) for i in range(3)]
        self.h_cwrite = [tuple(getattr(d, f"cwrite__{i}__{n}")
                               for n in ("en", "addr", "data", "mask", "ready")) for i in range(2)]
        self.h_in = {p: tuple(getattr(d, f"in_{PORT_NAME[p]}__{n}")
                              for n in ("valid", "ready", "payload")) for p in (E, S)}
        self.h_out = {p: tuple(getattr(d, f"out_{PORT_NAME[p]}__{n}")
                               for n in ("valid", "ready", "payload")) for p in (E, S)}
        self.h = {name: getattr(d, name.replace(".", "__")) for name in (
            "cmd.idle", "counters", "tx.valid", "tx.ready", "tx.payload", "rx.valid", "rx.ready",
            "rx.payload", "rd.en", "rd.addr", "rd.ready", "wr.en", "wr.addr", "wr.data",
            "wr.mask", "wr.ready", "hand.valid", "hand.ready", "hand.payload", "ev.out_busy",
            "ev.in_busy", "ev.bump", "ev.bump_id", "ev.start_req", "ev.bad_packet", "ev.dropped",
            "ev.imem_en", "ev.imem_addr", "ev.imem_data")}
        for en, *_ in self.h_cread + self.h_cwrite:
            en.value = 0
        for valid, _, _ in self.h_in.values():
            valid.value = 0
        d.cmd__start.value = 0
        self.router = RouterModel(cfg, 0, 0)
        self.dout = DmaOutModel(cfg, 0, 0)
        self.din = DmaInModel(cfg, 0, 0)
        self.sram: SRAMModel | None = None
        self.t = 0                    # cycles since this bench started
        self.arriving = None          # word due on DmaOut's read port this cycle
        self.counter_base = [self.rng.getrandbits(32) for _ in COUNTER_NAMES]
        # Knobs.
        self.p_start = 1.0
        self.p_valid = {E: 1.0, S: 1.0}
        self.p_ready = {E: 1.0, S: 1.0}
        self.p_cread = 0.0
        self.p_cwrite = 0.0
        self.forced_writes = deque()  # (addr, data, mask) for contention write port 0, held
        # Stimulus.
        self.commands: deque = deque()
        self.inject = {E: deque(), S: deque()}
        self.generator = None         # called every cycle to top up the stimulus
        self.generating = False       # the generator has operations left
        # Observations (DUT values, equal to the model's by the lockstep).
        self.starts: list[tuple[int, int]] = []
        self.tx_log: list[tuple[int, int]] = []
        self.rx_log: list[tuple[int, int]] = []
        self.idle_log: list[bool] = []
        self.bumps: list[tuple[int, int]] = []
        self.imem: list[tuple[int, int]] = []
        self.events = Counter()
        self.kinds = Counter()        # packets checked on out_east / out_south, by kind
        # Scoreboard.
        self.rx_buf = {E: [], S: []}
        self.received = {E: [], S: []}
        self.expect_cmd = {E: deque(), S: deque()}
        self.expect_reply: dict = {}
        self.expect_bad: dict = {}
        self.expected = Counter()     # start_req, bad_packet, dropped counts
        self.expected_bumps = Counter()
        self.expected_imem = Counter()
        self.outstanding_reads = 0
        self.tag = 0
        self.mem: list[int] = []
        self.tracked: dict[int, int] = {}   # WRITE packet addr -> length, until it lands
        self.landing: list[tuple[int, int]] = []
        self.stable: list[tuple[int, int]] = []
        self.cursor: list[int] = []
        self.in_head = None           # header of the packet DmaIn is receiving

    @classmethod
    async def create(cls, dut) -> "DmaBench":
        bench = cls(dut)
        await bench.start()
        cfg = bench.cfg
        if _SHARED["sram"] is None:
            _SHARED["sram"] = SRAMModel(cfg, 4, 3)     # the DUT's memory starts all zero
            bench.sram = _SHARED["sram"]
        elif not _SHARED["clean"]:
            bench.log.info("previous test failed: rewriting the SRAM to resynchronise")
            bench.sram = _SHARED["sram"] = SRAMModel(cfg, 4, 3)
            bench.forced_writes.extend((a, 0, bench.full) for a in range(cfg.sram_words))
            await bench.run_until(lambda: not bench.forced_writes, 2 * cfg.sram_words + 10)
        bench.sram = _SHARED["sram"]
        _SHARED["clean"] = False
        bench.mem = bench.sram.dump()
        bench.cursor = [b * cfg.bank_words for b in range(cfg.sram_banks)]
        return bench

    def finish(self):
        _SHARED["clean"] = True

    # -- one cycle ---------------------------------------------------------------------------

    def mismatch(self, what, expected, got):
        raise LockstepError(f"cycle {self.t}: {what}: model expects {expected}, DUT has {got} "
                            f"(seed {self.seed})\nmodel state before this cycle's edge:\n"
                            f"{self.dout.describe()}\n{self.din.describe()}\n"
                            f"{self.router.describe()}")

    def _flitstr(self, flit):
        if flit is None:
            return "nothing"
        f = self.flit.unpack(flit)
        kind = ("H" if f["head"] else "") + ("T" if f["tail"] else "") or "B"
        what = (self.hdr.unpack(f["payload"] & self.hdr_mask) if f["head"]
                else f"{f['payload']:#x}")
        return f"{kind} to ({f['dst_x']},{f['dst_y']}) {what}"

    async def step(self):
        await RisingEdge(self.dut.clk)
        rng, cfg, t = self.rng, self.cfg, self.t
        if self.generator is not None:
            self.generator()
        reply = self.din.reply
        idle = self.dout.idle(reply)
        # The sequencer: a queued command when DmaOut is idle.
        start = bool(self.commands) and idle and rng.random() < self.p_start
        if start:
            instr, status, pc, info = self.commands.popleft()
            self.starts.append((t, instr))
        else:   # junk on the bus, to show that it is ignored without `start`
            instr, status, pc, info = (rng.getrandbits(64 + SHAPE_BITS), rng.getrandbits(4),
                                       rng.getrandbits(16), rng.getrandbits(16))
        # the effective word: the instruction, and a shaped transfer's shape on `shape`
        for handle, value in zip(self.h_cmd, (int(start), instr & _WORD, status, pc, info,
                                              instr >> INSTR_BITS)):
            handle.value = value
        counters = [(b + t) & 0xFFFF_FFFF for b in self.counter_base]
        self.h["counters"].value = sum(v << (32 * i) for i, v in enumerate(counters))
        creads = []
        for en, addr, _ in self.h_cread:
            if rng.random() < self.p_cread:
                a = rng.randrange(cfg.sram_words)
                en.value, addr.value = 1, a
                creads.append(a)
            else:
                en.value = 0
                creads.append(None)
        cwrites = []
        for k, (en, addr, dat, mask, _) in enumerate(self.h_cwrite):
            request = None
            if k == 0 and self.forced_writes:
                request = self.forced_writes[0]
            elif rng.random() < self.p_cwrite:
                bank = rng.randrange(cfg.sram_banks)
                request = ((bank + 1) * cfg.bank_words - 1 - rng.randrange(SCRATCH),
                           rng.getrandbits(cfg.word_bits), rng.getrandbits(cfg.word_bytes))
            if request is None:
                en.value = 0
            else:
                en.value = 1
                addr.value, dat.value, mask.value = request
            cwrites.append(request)
        offers = [None] * 5
        for port in (E, S):
            queue = self.inject[port]
            valid, _, payload = self.h_in[port]
            if queue and rng.random() < self.p_valid[port]:
                offers[port] = queue[0]
                valid.value, payload.value = 1, queue[0]
            else:
                valid.value = 0
        out_ready = [False, True, False, False, True]
        for port in (E, S):
            out_ready[port] = rng.random() < self.p_ready[port]
            self.h_out[port][1].value = int(out_ready[port])
        await ReadOnly()
        self._check_and_step(idle, reply, start, instr, status, pc, info, counters, creads,
                             cwrites, offers, out_ready)

    def _check_and_step(self, idle, reply, start, instr, status, pc, info, counters, creads,
                        cwrites, offers, out_ready):
        h, dout, din, router = self.h, self.dout, self.din, self.router
        router.evaluate()
        rd = dout.sram_reads()[0]
        wr = din.sram_writes()[0]
        rg, wg = self.sram.step([creads[0], rd, creads[1], creads[2]],
                                [cwrites[0], wr, cwrites[1]])
        tx = dout.offer()
        rx = router.out[L]
        rx_accept = din.accepts(rx, wg[1], dout.reply_ready)
        if rx is not None and not rx_accept:
            self.events["rx_refused"] += 1
        out_ready[L] = rx_accept
        offers[L] = tx

        def check(name, expected):
            got = int(h[name].value)
            if got != int(expected):
                self.mismatch(name, int(expected), got)

        check("cmd.idle", idle)
        check("ev.out_busy", dout.busy(reply))
        check("ev.in_busy", din.busy)
        check("rd.en", rd is not None)
        if rd is not None:
            check("rd.addr", rd)
            check("rd.ready", rg[1])
        for k, index in enumerate((0, 2, 3)):
            if creads[k] is not None and int(self.h_cread[k][2].value) != rg[index]:
                self.mismatch(f"SRAM read port {index} ready (addr {creads[k]})", rg[index],
                              int(self.h_cread[k][2].value))
        for k, index in enumerate((0, 2)):
            if cwrites[k] is not None and int(self.h_cwrite[k][4].value) != wg[index]:
                self.mismatch(f"SRAM write port {index} ready (addr {cwrites[k][0]})",
                              wg[index], int(self.h_cwrite[k][4].value))
        check("wr.en", wr is not None)
        if wr is not None:
            got = (int(h["wr.addr"].value), int(h["wr.data"].value), int(h["wr.mask"].value))
            if got != wr:
                self.mismatch("DmaIn write (addr, data, mask)",
                              (wr[0], hex(wr[1]), hex(wr[2])), (got[0], hex(got[1]), hex(got[2])))
            check("wr.ready", wg[1])
        check("tx.valid", tx is not None)
        check("tx.ready", router.ready[L])
        if tx is not None and int(h["tx.payload"].value) != tx:
            self.mismatch("DmaOut flit", self._flitstr(tx), self._flitstr(int(h["tx.payload"].value)))
        check("rx.valid", rx is not None)
        if rx is not None:
            if int(h["rx.payload"].value) != rx:
                self.mismatch("router out_local flit", self._flitstr(rx),
                              self._flitstr(int(h["rx.payload"].value)))
            check("rx.ready", rx_accept)
        check("hand.valid", reply is not None)
        check("hand.ready", dout.reply_ready)
        if reply is not None:
            check("hand.payload", self.req.pack(**reply))
        for port in (E, S):
            valid, ready, payload = self.h_in[port]
            if int(ready.value) != router.ready[port]:
                self.mismatch(f"in_{PORT_NAME[port]}.ready", router.ready[port], int(ready.value))
            valid, ready, payload = self.h_out[port]
            expected = router.out[port]
            got = int(payload.value) if int(valid.value) else None
            if got != expected:
                self.mismatch(f"out_{PORT_NAME[port]}", self._flitstr(expected), self._flitstr(got))
        check("ev.bump", din.bump)
        if din.bump:
            check("ev.bump_id", din.bump_id)
        check("ev.start_req", din.start_req)
        check("ev.bad_packet", din.bad_packet)
        check("ev.dropped", din.dropped)
        check("ev.imem_en", din.imem_write is not None)
        if din.imem_write is not None:
            got = (int(h["ev.imem_addr"].value), int(h["ev.imem_data"].value))
            if got != din.imem_write:
                self.mismatch("imem_w (addr, data)", din.imem_write, got)

        # The DUT agrees with the models: record this cycle's events, then step.
        t = self.t
        self.idle_log.append(idle)
        if din.bump:
            self.bumps.append((t, din.bump_id))
        if din.imem_write is not None:
            self.imem.append(din.imem_write)
        for name in ("start_req", "bad_packet", "dropped"):
            if getattr(din, name):
                self.events[name] += 1
        accepted, sent = router.step(offers, out_ready)
        for port in (E, S):
            if accepted[port]:
                self.inject[port].popleft()
            if sent[port] is not None:
                self.receive(port, sent[port])
        if accepted[L]:
            self.tx_log.append((t, tx))
        if sent[L] is not None:
            self.rx_log.append((t, sent[L]))
            self._track_rx(sent[L])
        if self.forced_writes and wg[0] and cwrites[0] == self.forced_writes[0]:
            self.forced_writes.popleft()
        reply_taken = dout.tick(start=start, instr=instr, status=status, pc=pc, info=info,
                                reply=reply, read_grants=[rg[1]], read_data=[self.arriving],
                                accepted=accepted[L], counters=counters)
        din.tick(sent[L], write_grants=[wg[1]], reply_taken=reply_taken)
        self.arriving = self.sram.read_data[1]
        if self.landing and not din.wr_pending:
            self.stable.extend(self.landing)
            self.landing.clear()
        self.t += 1

    # -- scoreboard ----------------------------------------------------------------------------

    def _track_rx(self, flit):
        """Follow the packets DmaIn takes, to know when a tracked WRITE range has landed."""
        fmt = self.flit
        if self.in_head is None:
            if not fmt.get(flit, "head"):
                return
            self.in_head = self.hdr.unpack(fmt.get(flit, "payload") & self.hdr_mask)
        if fmt.get(flit, "tail"):
            head, self.in_head = self.in_head, None
            # Only a WRITE with words can be a tracked one: empty WRITEs (a zero-word SEND or
            # packet) go to random addresses, which may be a tracked range's first word.
            if (head["kind"] == PacketKind.WRITE and head["length"]
                    and head["addr"] in self.tracked):
                length = self.tracked.pop(head["addr"])
                if length != head["length"]:
                    raise ScoreboardError(f"cycle {self.t}: WRITE to {head['addr']} of "
                                          f"{head['length']} words, expected {length}")
                self.landing.append((head["addr"], length))

    def receive(self, port, flit):
        buf = self.rx_buf[port]
        buf.append(flit)
        if self.flit.get(flit, "tail"):
            self.rx_buf[port] = []
            self._packet(port, buf)

    def _packet(self, port, flits):
        where = f"cycle {self.t}, out_{PORT_NAME[port]}"
        head = self.hdr.unpack(self.flit.get(flits[0], "payload") & self.hdr_mask)
        kind = head["kind"]
        if kind in (PacketKind.WRITE, PacketKind.DONE):
            if not self.expect_cmd[port]:
                raise ScoreboardError(f"{where}: unexpected {PacketKind(kind).name} packet {head}")
            expected = self.expect_cmd[port].popleft()
        elif kind == PacketKind.REPLY:
            self.outstanding_reads -= 1
            if head["tag"] == BAD_READ_TAG:
                queue = self.expect_bad.get((port, head["addr"]))
                if not queue:
                    raise ScoreboardError(f"{where}: unexpected bad-range REPLY {head}")
                expected = queue.popleft()
                self.kinds["REPLY(bad range)"] += 1
            else:
                entry = self.expect_reply.pop((port, head["tag"]), None)
                if entry is None:
                    raise ScoreboardError(f"{where}: REPLY with unknown tag {head}")
                if entry[0] == "ctrs":
                    self._check_counters(where, entry, flits, head)
                    self.kinds["REPLY(counters)"] += 1
                    self.received[port].append((self.t, flits))
                    return
                expected = entry[1]
        else:
            raise ScoreboardError(f"{where}: unexpected packet kind {kind}: {head}")
        if flits != expected:
            raise ScoreboardError(
                f"{where}: {PacketKind(kind).name} packet differs:\n  expected "
                + "\n    ".join(self._flitstr(f) for f in expected) + "\n  got "
                + "\n    ".join(self._flitstr(f) for f in flits))
        self.received[port].append((self.t, flits))
        self.kinds[PacketKind(kind).name] += 1

    def _check_counters(self, where, entry, flits, head):
        _, issued, src = entry
        cfg, lanes = self.cfg, self.cfg.lanes
        body = [self.flit.get(f, "payload") for f in flits[1:]]
        expected = packet(cfg, src, PacketKind.REPLY, src=(0, 0), addr=head["addr"], body=body,
                          tag=head["tag"])
        if flits != expected or len(body) != counter_words(cfg):
            raise ScoreboardError(f"{where}: READ_CTRS reply framing: head {head}, "
                                  f"{len(flits)} flits, expected {counter_words(cfg)} words")
        last = issued
        for w, flit in enumerate(flits[1:]):
            word = self.flit.get(flit, "payload")
            values = [(word >> (32 * i)) & 0xFFFF_FFFF for i in range(lanes)]
            k0 = w * lanes
            cycle = (values[0] - self.counter_base[k0]) & 0xFFFF_FFFF
            for i, value in enumerate(values):
                k = k0 + i
                want = (self.counter_base[k] + cycle) & 0xFFFF_FFFF if k < len(COUNTER_NAMES) else 0
                if value != want:
                    raise ScoreboardError(
                        f"{where}: READ_CTRS word {w} lane {i} = {value:#x}; lane 0 says cycle "
                        f"{cycle}, so counter {k} should be {want:#x}")
            if not last <= cycle <= self.t:
                raise ScoreboardError(f"{where}: READ_CTRS word {w} holds the counters of cycle "
                                      f"{cycle}, outside {last}..{self.t}")
            last = cycle

    # -- stimulus ------------------------------------------------------------------------------

    def alloc(self, n):
        """A fresh range of n words below the scratch area of a random bank, or None."""
        cfg = self.cfg
        banks = [b for b in range(cfg.sram_banks)
                 if self.cursor[b] + n <= (b + 1) * cfg.bank_words - SCRATCH]
        if not banks:
            return None
        b = self.rng.choice(banks)
        addr = self.cursor[b]
        self.cursor[b] += n
        return addr

    def stable_range(self, max_n):
        """A sub-range (addr, n) of a stable range, n in 0..max_n, or None."""
        if not self.stable:
            return None
        a, m = self.rng.choice(self.stable)
        start = a + self.rng.randrange(m)
        return start, self.rng.randint(0, min(max_n, a + m - start))

    def random_words(self, n):
        return [self.rng.getrandbits(self.cfg.word_bits) for _ in range(n)]

    def queue_write(self, port, addr, words, *, bump=0, counter=0, track=True):
        self.mem[addr:addr + len(words)] = words
        if track and words:
            self.tracked[addr] = len(words)
        if bump:
            self.expected_bumps[counter] += 1
        self.inject[port].extend(packet(self.cfg, (0, 0), PacketKind.WRITE, src=(self.cfg.cols, 0),
                                        addr=addr, body=words, bump=bump, counter=counter))

    def queue_shaped_send(self, src, n, x, y, dst, counter, *, extra, sstride, dstride, zero):
        """A shaped SEND (the effective word, shape above bit 64); for (0, 0) the rows'
        destinations must be fresh."""
        word = (encode(Opcode.SEND, src=src, n=n, x=x, y=y, dst=dst, counter=counter, shaped=1)
                | SHAPE_FORMAT.pack(extra=extra, sstride=sstride, dstride=dstride,
                                    zero=zero) << INSTR_BITS)
        instr = decode(word)
        self.commands.append((word, 0, 0, 0))
        source = dma_source(instr)
        words = [0] * ((extra + 1) * n) if source is None else [self.mem[a] for a in source]
        k = 0
        for addr, length, bump in dma_packets(instr):
            body = words[k:k + length]
            k += length
            if (x, y) == (0, 0):
                self.mem[addr:addr + length] = body
                if length:
                    self.tracked[addr] = length
                self.expected_bumps[counter] += bump
            else:
                self.expect_cmd[route_xy(0, 0, x, y)].append(
                    packet(self.cfg, (x, y), PacketKind.WRITE, src=(0, 0), addr=addr, body=body,
                           counter=counter, bump=int(bump)))

    def queue_send(self, src, n, x, y, dst, counter):
        """A SEND command; for (0, 0) dst must be a fresh range (or n == 0)."""
        self.commands.append((_send(src, n, x, y, dst, counter), 0, 0, 0))
        words = self.mem[src:src + n]
        if (x, y) == (0, 0):
            self.mem[dst:dst + n] = words
            if n:
                self.tracked[dst] = n
            self.expected_bumps[counter] += 1
        else:
            self.expect_cmd[route_xy(0, 0, x, y)].append(
                packet(self.cfg, (x, y), PacketKind.WRITE, src=(0, 0), addr=dst, body=words,
                       counter=counter, bump=1))

    def queue_halt(self, status, pc, info):
        self.commands.append((encode(Opcode.HALT), status, pc, info))
        self.expect_cmd[E].append(packet(self.cfg, (self.cfg.cols, 0), PacketKind.DONE,
                                         src=(0, 0), addr=pc, length=info, tag=status))

    def next_tag(self):
        self.tag = (self.tag + 1) % 0x8000
        return self.tag

    def queue_read(self, port, src, addr, n, *, ctrs=False):
        """A READ (or READ_CTRS) request from node/host `src`; the reply is expected unless it
        goes to (0, 0) itself (then DmaIn counts it as a bad packet)."""
        tag = self.next_tag()
        kind = PacketKind.READ_CTRS if ctrs else PacketKind.READ
        self.inject[port].extend(packet(self.cfg, (0, 0), kind, src=src, addr=addr, length=n,
                                        tag=tag))
        if src == (0, 0):
            self.expected["bad_packet"] += 1
            return
        out = route_xy(0, 0, *src)
        self.outstanding_reads += 1
        if ctrs:
            self.expect_reply[(out, tag)] = ("ctrs", self.t, src)
        elif addr + n > self.cfg.sram_words:
            self.expect_bad.setdefault((out, addr), deque()).append(
                packet(self.cfg, src, PacketKind.REPLY, src=(0, 0), addr=addr, length=0,
                       tag=BAD_READ_TAG))
        else:
            self.expect_reply[(out, tag)] = ("read", packet(
                self.cfg, src, PacketKind.REPLY, src=(0, 0), addr=addr,
                body=self.mem[addr:addr + n], tag=tag))

    def queue_imem(self, port, addr, words):
        for i, word in enumerate(words):
            if addr + i < self.cfg.imem_words:
                self.expected_imem[(addr + i, word & ((1 << 64) - 1))] += 1
            else:
                self.expected["dropped"] += 1
        self.inject[port].extend(packet(self.cfg, (0, 0), PacketKind.IMEM, src=(self.cfg.cols, 0),
                                        addr=addr, body=words))

    def queue_start(self, port):
        self.expected["start_req"] += 1
        self.inject[port].extend(packet(self.cfg, (0, 0), PacketKind.START, src=(self.cfg.cols, 0)))

    def queue_bad(self, port, kind, n):
        self.expected["bad_packet"] += 1
        self.inject[port].extend(packet(self.cfg, (0, 0), kind, src=(self.cfg.cols, 0),
                                        body=self.random_words(n)))

    def random_node(self, grid_only=False):
        """A destination other than (0, 0): a node of the grid, or also the host edge."""
        cfg = self.cfg
        while True:
            x = self.rng.randrange(cfg.cols + (0 if grid_only else 1))
            y = self.rng.randrange(cfg.rows)
            if (x, y) != (0, 0):
                return x, y

    # -- running -----------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self.generating or self.commands or any(self.inject.values()) or any(self.expect_cmd.values())
                    or self.expect_reply or any(self.expect_bad.values()) or self.tracked
                    or self.landing or not self.dout.idle(self.din.reply) or self.din.busy
                    or self.router.count or self.forced_writes)

    def report(self) -> str:
        return (f"commands {len(self.commands)}, inject east {len(self.inject[E])} south "
                f"{len(self.inject[S])}, expected packets east {len(self.expect_cmd[E])} south "
                f"{len(self.expect_cmd[S])}, replies {sorted(self.expect_reply)}, tracked "
                f"{self.tracked}\n{self.dout.describe()}\n{self.din.describe()}\n"
                f"{self.router.describe()}")

    async def run_until(self, done, bound):
        for _ in range(bound):
            if done():
                return
            await self.step()
        if not done():
            raise AssertionError(f"not done after {bound} cycles (seed {self.seed}):\n"
                                 f"{self.report()}")

    async def drain(self, bound=20000):
        await self.run_until(lambda: not self.pending(), bound)
        for _ in range(3):
            await self.step()

    def check_totals(self):
        """The end-of-test functional checks."""
        got_bumps = Counter(i for _, i in self.bumps)
        assert got_bumps == self.expected_bumps, \
            f"bumps by counter: expected {dict(self.expected_bumps)}, got {dict(got_bumps)}"
        got_imem = Counter(self.imem)
        assert got_imem == self.expected_imem, \
            f"imem writes: expected {sorted(self.expected_imem)}, got {sorted(got_imem)}"
        for name in ("start_req", "bad_packet", "dropped"):
            assert self.events[name] == self.expected[name], \
                f"{name} pulses: expected {self.expected[name]}, got {self.events[name]}"
        cfg = self.cfg
        memory = self.sram.dump()
        wrong = [a for a in range(cfg.sram_words)
                 if a % cfg.bank_words < cfg.bank_words - SCRATCH and memory[a] != self.mem[a]]
        assert not wrong, (f"SRAM differs from the functional memory at {len(wrong)} words, "
                           f"first {wrong[0]}: expected {self.mem[wrong[0]]:#x}, "
                           f"got {memory[wrong[0]]:#x}")


# -- tests ---------------------------------------------------------------------------------------

def _packet_cycles(log, start_index, n):
    return [c for c, _ in log[start_index:start_index + n]]


@cocotb.test()
async def dma_directed(dut):
    """Every work item once on a quiet node, with the documented timings: SEND (remote, to
    itself with and without words), DONE, WRITE (bump, bodyless bump, beyond the SRAM), IMEM
    (past the end), START, READ (good, bad range, empty, reply to itself), READ_CTRS, bad kinds;
    then the throughput of both halves."""
    bench = await DmaBench.create(dut)
    cfg, rng = bench.cfg, bench.rng

    # Source data.
    src = bench.alloc(48)
    bench.queue_write(E, src, bench.random_words(48), bump=1, counter=2)
    await bench.drain()
    w = bench.rx_log[-1][0]   # cycle DmaIn took the last word: written in w+1, bump in w+2
    assert bench.bumps[-1] == (w + 2, 2), f"WRITE bump at {bench.bumps[-1]}, expected ({w + 2}, 2)"

    # SEND to (1, 0): head in s+1, body k in s+3+k, idle again in s + job_cycles(n) + 1.
    for n in (5, 1, 0):
        tx0 = len(bench.tx_log)
        bench.queue_send(src + 3, n, 1, 0, rng.randrange(cfg.sram_words - n), counter=n)
        await bench.drain()
        s = bench.starts[-1][0]
        got = _packet_cycles(bench.tx_log, tx0, n + 1)
        assert got == [s + 1] + [s + 3 + k for k in range(n)], \
            f"SEND n={n} started in {s}: flits left DmaOut in {got}"
        busy = [c for c in range(s + 1, s + job_cycles(n) + 2) if not bench.idle_log[c]]
        assert busy == list(range(s + 1, s + job_cycles(n) + 1)), \
            f"SEND n={n} started in {s}: idle low in {busy}, expected s+1..s+{job_cycles(n)}"
        delivered = bench.received[E][-1]
        assert delivered[0] == got[-1] + unloaded_latency(0), \
            f"tail delivered on out_east in {delivered[0]}, sent in {got[-1]}"

    # SEND to itself: bodyless (bump two cycles after the head leaves), then with words.
    for n in (0, 4):
        dst = bench.alloc(n) if n else 0
        bench.queue_send(src, n, 0, 0, dst, counter=7 + n)
        await bench.drain()
        s = bench.starts[-1][0]
        last_tx = bench.tx_log[-1][0]
        assert last_tx == s + job_cycles(n), f"self SEND n={n}: tail left in {last_tx}"
        # Through the router (1 cycle), into DmaIn, written in the next cycle, bump after it.
        expected = last_tx + unloaded_latency(0) + (1 if n == 0 else 2)
        assert bench.bumps[-1] == (expected, 7 + n), \
            f"self SEND n={n} from cycle {s}: bump {bench.bumps[-1]}, expected ({expected}, {7 + n})"

    # DONE.
    bench.queue_halt(status=3, pc=0x0ABC, info=0xFFFF)
    await bench.drain()

    # Every packet kind into the node.
    bench.queue_write(S, 0, [], bump=1, counter=SYNC_COUNTERS - 1)   # a signal, last counter
    bench.queue_write(E, 0, [], bump=0)                              # nothing at all
    bench.queue_write(S, bench.alloc(3), bench.random_words(3), bump=0)
    beyond = cfg.sram_words + 7
    bench.inject[E].extend(packet(cfg, (0, 0), PacketKind.WRITE, src=(cfg.cols, 0), addr=beyond,
                                  body=bench.random_words(2)))
    bench.expected["dropped"] += 2
    bench.queue_imem(E, cfg.imem_words - 2, bench.random_words(4))   # 2 written, 2 dropped
    bench.queue_imem(S, 0, bench.random_words(3))
    bench.queue_start(E)
    await bench.drain()
    bench.queue_read(E, (cfg.cols, 0), src + 1, 6)
    bench.queue_read(E, (1, 1), cfg.sram_words - 3, 4)               # runs past the end
    bench.queue_read(S, (0, 1), src, 0)                              # empty
    bench.queue_read(E, (cfg.cols, 0), 0, 0, ctrs=True)
    await bench.drain()
    bench.queue_read(S, (0, 0), src, 2)                              # a REPLY to itself
    for kind in (PacketKind.DONE, PacketKind.REPLY, PacketKind.TEST, 9):
        bench.queue_bad(E, kind, rng.randrange(4))
    await bench.drain()

    # DmaIn: one flit per cycle into the SRAM.
    n = 32
    rx0 = len(bench.rx_log)
    bench.queue_write(E, bench.alloc(n), bench.random_words(n), bump=1, counter=5)
    await bench.drain()
    cycles = _packet_cycles(bench.rx_log, rx0, n + 1)
    assert cycles == list(range(cycles[0], cycles[0] + n + 1)), \
        f"DmaIn took a {n}-word WRITE in cycles {cycles}, not one per cycle"
    assert bench.bumps[-1] == (cycles[-1] + 2, 5)

    # DmaOut: back-to-back SENDs, n + 1 flits every n + 3 cycles (start + job_cycles).
    n, count = 40, 4
    tx0 = len(bench.tx_log)
    for k in range(count):
        bench.queue_send(src, n, 1, 1, 0, counter=k)
    await bench.drain()
    starts = [s for s, _ in bench.starts[-count:]]
    assert [b - a for a, b in zip(starts, starts[1:])] == [1 + job_cycles(n)] * (count - 1), \
        f"SENDs of {n} words started in {starts}"
    cycles = _packet_cycles(bench.tx_log, tx0, count * (n + 1))
    span = cycles[-1] - starts[0] + 1
    bench.log.info("DmaOut: %d flits in %d cycles from the first start: %.3f flits/cycle "
                   "(steady state inside a packet: 1.0)", len(cycles), span, len(cycles) / span)
    bench.check_totals()
    bench.finish()


def _random_generator(bench, *, self_sends: bool, ops: int):
    """Tops up the stimulus every cycle until `ops` operations were generated."""
    cfg, rng = bench.cfg, bench.rng
    max_n = 12 if cfg.word_bits <= 128 else 24
    state = {"ops": ops}

    def command():
        roll = rng.random()
        if roll < 0.1:
            bench.queue_halt(rng.randrange(16), rng.randrange(1 << 16), rng.randrange(1 << 16))
            return True
        source = bench.stable_range(max_n)
        if source is None:
            return False
        src, n = source
        if roll < 0.35:     # a shaped SEND: rows of a stable range, gathered or zero
            row = rng.randint(0, min(n, 4))
            extra = rng.randint(0, 3)
            sstride = rng.randint(0, (n - row) // extra) if extra else rng.randrange(1 << 16)
            dstride = rng.choice([row, row + rng.randint(1, 3), 0])
            span = extra * dstride + row
            zero = int(rng.random() < 0.2)
            if self_sends and roll < 0.25:
                dst = bench.alloc(span) if span else rng.randrange(cfg.sram_words)
                if dst is None:
                    return False
                x = y = 0
            else:
                x, y = bench.random_node(grid_only=True)
                dst = rng.randrange(cfg.sram_words - span + 1)
            bench.queue_shaped_send(src, row, x, y, dst, rng.randrange(SYNC_COUNTERS),
                                    extra=extra, sstride=sstride, dstride=dstride, zero=zero)
        elif self_sends and roll < 0.6:
            dst = bench.alloc(n) if n else rng.randrange(cfg.sram_words)
            if dst is None:
                return False
            bench.queue_send(src, n, 0, 0, dst, rng.randrange(SYNC_COUNTERS))
        else:
            x, y = bench.random_node(grid_only=True)
            bench.queue_send(src, n, x, y, rng.randrange(cfg.sram_words - n + 1),
                             rng.randrange(SYNC_COUNTERS))
        return True

    def incoming(port):
        roll = rng.random()
        if roll < 0.3:
            n = rng.choice([0, 1, rng.randint(2, max_n)])
            addr = bench.alloc(n) if n else rng.randrange(cfg.sram_words)
            if addr is None:
                return False
            bump = rng.randrange(2)
            bench.queue_write(port, addr, bench.random_words(n), bump=bump,
                              counter=rng.randrange(SYNC_COUNTERS))
        elif roll < 0.55:
            if self_sends and bench.outstanding_reads:
                return False
            roll = rng.random()
            if roll < 0.2:
                bench.queue_read(port, bench.random_node(), 0, 0, ctrs=True)
            elif roll < 0.3:
                addr = rng.randrange(cfg.sram_words)
                bench.queue_read(port, bench.random_node(), addr,
                                 cfg.sram_words - addr + rng.randint(1, 4))
            else:
                source = bench.stable_range(max_n)
                if source is None:
                    return False
                bench.queue_read(port, bench.random_node(), *source)
        elif roll < 0.7:
            bench.queue_imem(port, rng.randrange(cfg.imem_words + 4),
                             bench.random_words(rng.randint(1, 5)))
        elif roll < 0.8:
            bench.queue_start(port)
        elif roll < 0.9:
            bench.queue_bad(port, rng.choice([PacketKind.DONE, PacketKind.REPLY, PacketKind.TEST,
                                              rng.randint(7, 14)]), rng.randint(0, 3))
        else:
            addr = rng.randint(cfg.sram_words, (1 << 16) - 8)
            words = bench.random_words(rng.randint(1, 4))
            bench.inject[port].extend(packet(cfg, (0, 0), PacketKind.WRITE, src=(cfg.cols, 0),
                                             addr=addr, body=words))
            bench.expected["dropped"] += len(words)
        return True

    def generate():
        if state["ops"] <= 0:
            bench.generating = False
            return
        if len(bench.commands) < 2 and rng.random() < 0.15 and command():
            state["ops"] -= 1
        for port in (E, S):
            if len(bench.inject[port]) < 4 and rng.random() < 0.1 and incoming(port):
                state["ops"] -= 1

    return generate


async def _random_test(dut, *, self_sends: bool):
    bench = await DmaBench.create(dut)
    cfg, rng = bench.cfg, bench.rng
    mode = "with loopback" if self_sends else "remote only"
    stalls = bench.sram.read_stalls[1], bench.sram.write_stalls[1]
    # Stable sources first, PRELOAD words at the bottom of every bank; each round then
    # allocates fresh ranges above them again (the functional memory follows the rewrites).
    preload = [b * cfg.bank_words for b in range(cfg.sram_banks)]
    for base in preload:
        bench.queue_write(rng.choice((E, S)), base, bench.random_words(PRELOAD))
    await bench.drain()
    started = bench.t
    for round in range(ROUNDS):
        bench.cursor = [base + PRELOAD for base in preload]
        bench.stable = [(base, PRELOAD) for base in preload]
        bench.p_cread, bench.p_cwrite = rng.uniform(0.05, 0.6), rng.uniform(0.05, 0.6)
        bench.p_start = rng.uniform(0.3, 1.0)
        bench.p_valid = {p: rng.uniform(0.3, 1.0) for p in (E, S)}
        bench.p_ready = {p: rng.uniform(0.3, 1.0) for p in (E, S)}
        bench.log.info("random round %d (%s): contention read %.2f write %.2f, start %.2f, "
                       "valid %s, ready %s", round, mode, bench.p_cread, bench.p_cwrite,
                       bench.p_start, {PORT_NAME[p]: round_(v) for p, v in bench.p_valid.items()},
                       {PORT_NAME[p]: round_(v) for p, v in bench.p_ready.items()})
        bench.generator = _random_generator(bench, self_sends=self_sends, ops=OPS)
        bench.generating = True
        await bench.drain(bound=400 * OPS)
        bench.check_totals()
    refused = bench.sram.read_stalls[1] - stalls[0], bench.sram.write_stalls[1] - stalls[1]
    bench.log.info("random test (%s): %d cycles, %d commands, %d flits out of DmaOut, %d into "
                   "DmaIn (refused %d times), packets out %s, DMA reads/writes refused %d/%d",
                   mode, bench.t - started, len(bench.starts), len(bench.tx_log),
                   len(bench.rx_log), bench.events["rx_refused"], dict(bench.kinds), *refused)
    assert all(refused), f"the contention never refused a DMA read or write: {refused}"
    bench.finish()


def round_(value):
    return round(value, 2)


@cocotb.test()
async def dma_random_remote(dut):
    """Random SENDs to other nodes, DONEs, and random incoming packets of every kind (many
    READs outstanding), with SRAM contention above and below the DMA ports, random gaps and
    random back-pressure."""
    await _random_test(dut, self_sends=False)


@cocotb.test()
async def dma_random_loopback(dut):
    """As dma_random_remote, with SENDs to the node itself (through the router into DmaIn)
    mixed in, and one READ outstanding at a time (the deadlock rule)."""
    await _random_test(dut, self_sends=True)
