"""cocotb bench of `NodeSRAM` (Verilog top `node_sram`), in lockstep with `SRAMModel`.

Every cycle the bench drives every port (right after the rising edge), steps the model with the
same requests, and in `ReadOnly` compares each requesting port's `ready` with the model's grant
and each read port's `data` with the word the model returned for its grant one cycle earlier.
Idle ports carry random `addr`/`data`/`mask` to show that they are ignored.

Requesters hold a refused request until it is granted, as the bus contract requires; the port
queues below model that (a None in a queue is one idle cycle).

The DUT's memory keeps its contents from one cocotb test to the next, and so does the model
(`_SHARED`); after a failed test the next one starts with a fresh model and rewrites the whole
memory through the ports so that both agree again.

Environment: `D1TILE_CONFIG` (see bench_config.py), `D1TILE_SRAM_READ_PORTS`,
`D1TILE_SRAM_WRITE_PORTS`.
"""

from __future__ import annotations

import os
from collections import deque

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.hw.testbench import TB
from d1tile.sim.sram import SRAMModel, bank_of


READ_PORTS = int(os.environ.get("D1TILE_SRAM_READ_PORTS", "3"))
WRITE_PORTS = int(os.environ.get("D1TILE_SRAM_WRITE_PORTS", "3"))

# The model of the DUT's memory, carried across tests; `clean` is False while a test runs and
# stays False if it fails.
_SHARED = {"model": None, "clean": False}


def _describe(reads, writes) -> str:
    """This cycle's requests, for failure messages (write data left out: it is wide)."""
    return (f"reads={reads} writes="
            f"{[None if w is None else (w[0], f'mask {w[2]:#x}') for w in writes]}")


class SRAMBench(TB):
    """TB plus the SRAM's port handles, the shared model, and the lockstep checker `step`."""

    def __init__(self, dut):
        super().__init__(dut)
        self.cfg = cfg = bench_config()
        self.full_mask = (1 << cfg.word_bytes) - 1
        try:
            self.rd = [(getattr(dut, f"read__{i}__en"), getattr(dut, f"read__{i}__addr"),
                        getattr(dut, f"read__{i}__ready"), getattr(dut, f"read__{i}__data"))
                       for i in range(READ_PORTS)]
            self.wr = [(getattr(dut, f"write__{j}__en"), getattr(dut, f"write__{j}__addr"),
                        getattr(dut, f"write__{j}__data"), getattr(dut, f"write__{j}__mask"),
                        getattr(dut, f"write__{j}__ready"))
                       for j in range(WRITE_PORTS)]
        except AttributeError as exc:
            raise AssertionError(f"DUT lacks a port the bench expects "
                                 f"({READ_PORTS} read, {WRITE_PORTS} write): {exc}") from None
        for en, *_ in self.rd + self.wr:
            en.value = 0
        self.model: SRAMModel | None = None
        self.pending: list[tuple[int, int] | None] = [None] * READ_PORTS  # (addr, word) due now
        self.read_log: list[tuple[int, int, int, int]] = []  # (cycle, port, addr, word) seen
        self.same_word_read_write = 0  # cycles with a granted read and write of the same word

    @classmethod
    async def create(cls, dut) -> "SRAMBench":
        bench = cls(dut)
        await bench.start()
        if _SHARED["model"] is None:
            # First test of the run: the DUT's memory is still its all-zero initial state.
            _SHARED["model"] = SRAMModel(bench.cfg, READ_PORTS, WRITE_PORTS)
        elif not _SHARED["clean"]:
            bench.log.info("previous test failed: rewriting the whole SRAM to resynchronise")
            _SHARED["model"] = SRAMModel(bench.cfg, READ_PORTS, WRITE_PORTS)
            bench.model = _SHARED["model"]
            await bench.fill()
        bench.model = _SHARED["model"]
        _SHARED["clean"] = False
        return bench

    async def finish(self):
        """One idle cycle so that the last granted reads' data is checked; marks the shared model
        as in step with the DUT."""
        await self.step([None] * READ_PORTS, [None] * WRITE_PORTS)
        _SHARED["clean"] = True

    # -- one cycle in lockstep ---------------------------------------------------------------

    def _drive(self, reads, writes):
        rng = self.rng
        for (en, addr, _, _), request in zip(self.rd, reads):
            en.value = int(request is not None)
            addr.value = rng.randrange(self.cfg.sram_words) if request is None else request
        for (en, addr, data, mask, _), request in zip(self.wr, writes):
            en.value = int(request is not None)
            if request is None:
                request = (rng.randrange(self.cfg.sram_words), rng.getrandbits(self.cfg.word_bits),
                           rng.getrandbits(self.cfg.word_bytes))
            addr.value, data.value, mask.value = request

    async def step(self, reads, writes) -> tuple[list[bool], list[bool]]:
        """Drive `reads`/`writes` (SRAMModel.step's format) for one cycle and check the DUT."""
        await RisingEdge(self.dut.clk)
        self._drive(reads, writes)
        due = self.pending
        read_grants, write_grants = self.model.step(reads, writes)
        await ReadOnly()
        cycle = self.cycle  # TB counter: rising edges since reset, current in ReadOnly
        for i, (_, _, ready, _) in enumerate(self.rd):
            if reads[i] is not None:
                got = int(ready.value)
                assert got == read_grants[i], (
                    f"cycle {cycle}: read port {i} (addr {reads[i]}, bank "
                    f"{bank_of(self.cfg, reads[i])}) ready: expected {int(read_grants[i])}, "
                    f"got {got}; {_describe(reads, writes)}")
        for j, (*_, ready) in enumerate(self.wr):
            if writes[j] is not None:
                got = int(ready.value)
                assert got == write_grants[j], (
                    f"cycle {cycle}: write port {j} (addr {writes[j][0]}, bank "
                    f"{bank_of(self.cfg, writes[j][0])}) ready: expected {int(write_grants[j])}, "
                    f"got {got}; {_describe(reads, writes)}")
        for i, expected in enumerate(due):
            if expected is not None:
                addr, word = expected
                got = int(self.rd[i][3].value)
                assert got == word, (
                    f"cycle {cycle}: read port {i} data of addr {addr} (granted in cycle "
                    f"{cycle - 1}): expected {word:#x}, got {got:#x}")
                self.read_log.append((cycle, i, addr, got))
        self.pending = [(reads[i], self.model.read_data[i]) if granted else None
                        for i, granted in enumerate(read_grants)]
        granted_reads = {reads[i] for i, g in enumerate(read_grants) if g}
        if any(g and writes[j][0] in granted_reads for j, g in enumerate(write_grants)):
            self.same_word_read_write += 1
        return read_grants, write_grants

    # -- requesters that hold until granted --------------------------------------------------

    async def run(self, read_queues, write_queues, *, cycles: int | None = None,
                  max_cycles: int = 100_000):
        """Serve per-port request queues (None = one idle cycle), holding each refused request,
        until the queues are empty (or for exactly `cycles` cycles when given).

        Returns `(read_grants, write_grants)`: per port, the list of `(step, request)` granted,
        `step` counted from 0 at the first cycle of this call.
        """
        rq = [deque(q) for q in read_queues]
        wq = [deque(q) for q in write_queues]
        read_log = [[] for _ in rq]
        write_log = [[] for _ in wq]
        for step in range(max_cycles if cycles is None else cycles):
            if cycles is None and not any(rq) and not any(wq):
                break
            reads = [q[0] if q else None for q in rq]
            writes = [q[0] if q else None for q in wq]
            read_grants, write_grants = await self.step(reads, writes)
            for queues, requests, grants, log in ((rq, reads, read_grants, read_log),
                                                   (wq, writes, write_grants, write_log)):
                for p, queue in enumerate(queues):
                    if not queue:
                        continue
                    if requests[p] is None:
                        queue.popleft()
                    elif grants[p]:
                        log[p].append((step, requests[p]))
                        queue.popleft()
        if cycles is None and (any(rq) or any(wq)):
            raise AssertionError(f"requests still pending after {max_cycles} cycles")
        return read_log, write_log

    async def fill(self):
        """Write random words to every address through all write ports, banks interleaved."""
        cfg = self.cfg
        order = [b * cfg.bank_words + k
                 for k in range(cfg.bank_words) for b in range(cfg.sram_banks)]
        queues = [[(addr, self.rng.getrandbits(cfg.word_bits), self.full_mask)
                   for addr in order[j::WRITE_PORTS]] for j in range(WRITE_PORTS)]
        await self.run([[] for _ in range(READ_PORTS)], queues)

    def observed(self, port: int) -> list[tuple[int, int]]:
        """(addr, word) of every read of `port` checked so far, in order."""
        return [(addr, word) for _, p, addr, word in self.read_log if p == port]


# -- tests ---------------------------------------------------------------------------------------

def _word_in_bank(cfg, bank: int, offset: int) -> int:
    return bank * cfg.bank_words + offset % cfg.bank_words


def _idle(n: int) -> list[list]:
    return [[] for _ in range(n)]


def _hex_words(words: dict[int, int]) -> dict[int, str]:
    return {addr: hex(word) for addr, word in words.items()}


@cocotb.test()
async def priority_on_conflict(dut):
    """2 and 3 ports on one bank: the lowest index is granted first, the others wait one cycle
    per port ahead of them (a refused port holds its request). Reads and writes arbitrate
    separately, and a read and a write share a bank in the same cycle."""
    bench = await SRAMBench.create(dut)
    cfg = bench.cfg
    rng = bench.rng
    for group in ([0, 1], [0, 2], [1, 2], [0, 1, 2]):
        for kind, ports in (("read", READ_PORTS), ("write", WRITE_PORTS)):
            if max(group) >= ports:
                continue
            bank = rng.randrange(cfg.sram_banks)
            queues = _idle(ports)
            for p in group:
                addr = _word_in_bank(cfg, bank, rng.randrange(cfg.bank_words))
                queues[p] = [addr if kind == "read" else
                             (addr, rng.getrandbits(cfg.word_bits), bench.full_mask)]
            # A port outside the group, on another bank, is granted at once.
            bystanders = [p for p in range(ports) if p not in group] if cfg.sram_banks > 1 else []
            for p in bystanders:
                addr = _word_in_bank(cfg, (bank + 1) % cfg.sram_banks, p)
                queues[p] = [addr if kind == "read" else (addr, 0, bench.full_mask)]
            # The other kind of port hits the same bank at the same time and is never refused.
            other_ports = WRITE_PORTS if kind == "read" else READ_PORTS
            others = _idle(other_ports)
            others[0] = [_word_in_bank(cfg, bank, 0) if kind == "write" else
                         (_word_in_bank(cfg, bank, 1), rng.getrandbits(cfg.word_bits),
                          bench.full_mask)]
            if kind == "read":
                reads, writes = await bench.run(queues, others)
                log, other_log = reads, writes
            else:
                reads, writes = await bench.run(others, queues)
                log, other_log = writes, reads
            # Documented timing: the k-th lowest contender is granted k cycles after the first.
            got = {p: [step for step, _ in log[p]] for p in group}
            expected = {p: [k] for k, p in enumerate(group)}
            got.update({p: [step for step, _ in log[p]] for p in bystanders})
            expected.update({p: [0] for p in bystanders})
            assert got == expected, (
                f"{kind} ports {group} on bank {bank}: grant steps expected {expected}, got {got}")
            assert [step for step, _ in other_log[0]] == [0], (
                f"the {'write' if kind == 'read' else 'read'} on bank {bank} alongside the "
                f"{kind} conflict: expected its grant at step 0, got {other_log[0]}")
    await bench.finish()


@cocotb.test()
async def all_banks_in_parallel(dut):
    """Every port on its own bank, rotating every cycle: no port is ever refused, so N rounds
    take N cycles (when there are at least as many banks as ports of each kind)."""
    bench = await SRAMBench.create(dut)
    cfg = bench.cfg
    rng = bench.rng
    rounds = 2 * cfg.sram_banks + 4
    reads = [[_word_in_bank(cfg, (i + r) % cfg.sram_banks, rng.randrange(cfg.bank_words))
              for r in range(rounds)] for i in range(READ_PORTS)]
    writes = [[(_word_in_bank(cfg, (j + r + 1) % cfg.sram_banks, rng.randrange(cfg.bank_words)),
                rng.getrandbits(cfg.word_bits), bench.full_mask)
               for r in range(rounds)] for j in range(WRITE_PORTS)]
    read_log, write_log = await bench.run(reads, writes)
    if READ_PORTS <= cfg.sram_banks and WRITE_PORTS <= cfg.sram_banks:
        for kind, log in (("read", read_log), ("write", write_log)):
            for p, grants in enumerate(log):
                steps = [step for step, _ in grants]
                assert steps == list(range(rounds)), (
                    f"{kind} port {p} on distinct banks: expected a grant every step "
                    f"0..{rounds - 1}, got steps {steps}")
    else:
        bench.log.info("fewer banks than ports: parallelism is checked against the model only")
    await bench.finish()


@cocotb.test()
async def read_during_write_returns_old_word(dut):
    """A read granted in the cycle a write to the same word is granted returns the old word;
    the next read returns the new one. Checked on every read/write port pair."""
    bench = await SRAMBench.create(dut)
    cfg = bench.cfg
    rng = bench.rng
    for i in range(READ_PORTS):
        for j in range(WRITE_PORTS):
            addr = rng.randrange(cfg.sram_words)
            old, new = rng.getrandbits(cfg.word_bits), rng.getrandbits(cfg.word_bits)
            reads, writes = [None] * READ_PORTS, [None] * WRITE_PORTS
            writes[j] = (addr, old, bench.full_mask)
            await bench.step(reads, writes)
            reads, writes = [None] * READ_PORTS, [None] * WRITE_PORTS
            reads[i], writes[j] = addr, (addr, new, bench.full_mask)
            await bench.step(reads, writes)
            reads, writes = [None] * READ_PORTS, [None] * WRITE_PORTS
            reads[i] = addr
            await bench.step(reads, writes)
            await bench.step([None] * READ_PORTS, [None] * WRITE_PORTS)
            got = bench.observed(i)[-2:]
            assert got == [(addr, old), (addr, new)], (
                f"read port {i} / write port {j}, addr {addr}: expected old {old:#x} then new "
                f"{new:#x}, got {[(a, hex(w)) for a, w in got]}")
    await bench.finish()


def _merge_bytes(nbytes: int, old: int, new: int, mask: int) -> int:
    """Byte-wise merge written out per byte, independent of the model's implementation."""
    out = old.to_bytes(nbytes, "little")
    src = new.to_bytes(nbytes, "little")
    return int.from_bytes(bytes(src[k] if mask >> k & 1 else out[k] for k in range(nbytes)),
                          "little")


@cocotb.test()
async def byte_masked_writes(dut):
    """Writes with byte enables change exactly the enabled bytes (zero mask: nothing; single
    bytes at both ends; alternating; random), from every write port."""
    bench = await SRAMBench.create(dut)
    cfg = bench.cfg
    rng = bench.rng
    nb = cfg.word_bytes
    masks = [0, 1, 1 << (nb - 1), int("01" * (nb // 2), 2), int("10" * (nb // 2), 2),
             (1 << (nb // 2)) - 1, bench.full_mask] + [rng.getrandbits(nb) for _ in range(8)]
    for n, mask in enumerate(masks):
        j = n % WRITE_PORTS
        i = n % READ_PORTS
        addr = rng.randrange(cfg.sram_words)
        base, new = rng.getrandbits(cfg.word_bits), rng.getrandbits(cfg.word_bits)
        queues = _idle(WRITE_PORTS)
        queues[j] = [(addr, base, bench.full_mask), (addr, new, mask)]
        await bench.run(_idle(READ_PORTS), queues)
        reads = _idle(READ_PORTS)
        reads[i] = [addr]
        await bench.run(reads, _idle(WRITE_PORTS))
        await bench.step([None] * READ_PORTS, [None] * WRITE_PORTS)
        expected = _merge_bytes(nb, base, new, mask)
        got = bench.observed(i)[-1]
        assert got == (addr, expected), (
            f"write port {j}, addr {addr}, mask {mask:#x}: expected {expected:#x}, "
            f"got {got[1]:#x} at addr {got[0]}")
    await bench.finish()


@cocotb.test()
async def first_and_last_addresses(dut):
    """Address 0, the last address, and both sides of every bank boundary hold distinct words,
    written and read back through every port."""
    bench = await SRAMBench.create(dut)
    cfg = bench.cfg
    rng = bench.rng
    edges = sorted({0, cfg.sram_words - 1}
                   | {b * cfg.bank_words for b in range(cfg.sram_banks)}
                   | {b * cfg.bank_words - 1 for b in range(1, cfg.sram_banks)})
    for rot in range(max(READ_PORTS, WRITE_PORTS)):
        words = {addr: rng.getrandbits(cfg.word_bits) for addr in edges}
        writes = _idle(WRITE_PORTS)
        for n, addr in enumerate(edges):
            writes[(n + rot) % WRITE_PORTS].append((addr, words[addr], bench.full_mask))
        await bench.run(_idle(READ_PORTS), writes)
        reads = _idle(READ_PORTS)
        for n, addr in enumerate(edges):
            reads[(n + rot) % READ_PORTS].append(addr)
        seen = len(bench.read_log)
        await bench.run(reads, _idle(WRITE_PORTS))
        await bench.step([None] * READ_PORTS, [None] * WRITE_PORTS)
        got = {addr: word for _, _, addr, word in bench.read_log[seen:]}
        assert got == words, (
            f"edge addresses (rotation {rot}): expected {_hex_words(words)}, "
            f"got {_hex_words(got)}")
    await bench.finish()


@cocotb.test()
async def random_traffic(dut):
    """A few thousand cycles of random reads and writes, addresses biased to two banks (and a
    few hot words in them) to create conflicts and same-word read/write cycles; random masks
    and random idle cycles per port."""
    bench = await SRAMBench.create(dut)
    cfg = bench.cfg
    rng = bench.rng
    cycles = int(os.environ.get("D1TILE_SRAM_RANDOM_CYCLES", "5000"))
    hot_banks = rng.sample(range(cfg.sram_banks), min(2, cfg.sram_banks))
    hot_words = [_word_in_bank(cfg, b, rng.randrange(cfg.bank_words))
                 for b in hot_banks for _ in range(4)]

    def address():
        roll = rng.random()
        if roll < 0.25:
            return rng.choice(hot_words)
        if roll < 0.7:
            return _word_in_bank(cfg, rng.choice(hot_banks), rng.randrange(cfg.bank_words))
        return rng.randrange(cfg.sram_words)

    def mask():
        roll = rng.random()
        if roll < 0.5:
            return bench.full_mask
        if roll < 0.6:
            return 0
        if roll < 0.75:
            return 1 << rng.randrange(cfg.word_bytes)
        return rng.getrandbits(cfg.word_bytes)

    def queue(make, idle_prob):
        # Enough requests to keep the port busy for `cycles` cycles even without conflicts.
        return [None if rng.random() < idle_prob else make() for _ in range(cycles)]

    read_idle = [rng.uniform(0.1, 0.6) for _ in range(READ_PORTS)]
    write_idle = [rng.uniform(0.1, 0.6) for _ in range(WRITE_PORTS)]
    bench.log.info("random traffic: %d cycles, hot banks %s, idle rates read %s write %s",
                   cycles, hot_banks, [round(p, 2) for p in read_idle],
                   [round(p, 2) for p in write_idle])
    reads = [queue(address, p) for p in read_idle]
    writes = [queue(lambda: (address(), rng.getrandbits(cfg.word_bits), mask()), p)
              for p in write_idle]
    model = bench.model
    stalls_before = sum(model.read_stalls) + sum(model.write_stalls)
    # Exactly `cycles` cycles, whatever is left in the queues: the point is the lockstep check.
    await bench.run(reads, writes, cycles=cycles)
    await bench.finish()
    stalls = sum(model.read_stalls) + sum(model.write_stalls) - stalls_before
    bench.log.info("random traffic: %d reads checked, %d conflict stalls, %d same-word "
                   "read+write cycles", len(bench.read_log), stalls, bench.same_word_read_write)
    # The traffic must have exercised what it exists for.
    assert stalls > cycles // 20, f"only {stalls} conflict stalls in {cycles} cycles"
    assert bench.same_word_read_write > 0, "no cycle read and wrote the same word"
    assert len(bench.read_log) > cycles // 4, f"only {len(bench.read_log)} reads checked"
