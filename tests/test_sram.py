"""The node SRAM: the reference model (`d1tile.sim.sram`), the RTL's interface, a quick
Amaranth-simulator lockstep check on odd geometries, and the cocotb/Verilator bench of record
(tests/hw/tb_sram.py) on both presets."""

from __future__ import annotations

import random

import pytest

from d1tile.params import TileConfig
from d1tile.sim.sram import SRAMModel, bank_of

from conftest import bench_seed, run_bench


# Interface tests build components without elaborating them; Amaranth warns when they are
# garbage-collected, which may happen during any later test.

TINY = TileConfig.preset("tiny")
FULL = (1 << TINY.word_bytes) - 1


def merge_bytes(nbytes, old, new, mask):
    """Byte-wise merge written out per byte, independent of the model's implementation."""
    out, src = old.to_bytes(nbytes, "little"), new.to_bytes(nbytes, "little")
    return int.from_bytes(bytes(src[k] if mask >> k & 1 else out[k] for k in range(nbytes)),
                          "little")


# -- the reference model ---------------------------------------------------------------------

def test_bank_of_uses_high_address_bits():
    cfg = TINY
    assert cfg.sram_banks == 4 and cfg.bank_words == 64
    assert [bank_of(cfg, a) for a in (0, 63, 64, 127, 128, 191, 192, 255)] == \
        [0, 0, 1, 1, 2, 2, 3, 3]
    one_bank = TINY.replace(sram_banks=1)
    assert {bank_of(one_bank, a) for a in range(one_bank.sram_words)} == {0}
    for bad in (-1, cfg.sram_words):
        with pytest.raises(ValueError, match=str(bad)):
            bank_of(cfg, bad)
    with pytest.raises(TypeError):
        bank_of(cfg, 1.5)


def test_fixed_priority_per_bank():
    model = SRAMModel(TINY, 3, 3)
    b0, b1 = 5, 64 + 5  # banks 0 and 1
    # Three readers on one bank: only port 0.
    assert model.step([b0, b0 + 1, b0 + 2], [None] * 3)[0] == [True, False, False]
    # Ports 1 and 2 on one bank, port 0 elsewhere: port 1 wins the shared bank.
    assert model.step([b1, b0, b0], [None] * 3)[0] == [True, True, False]
    # An idle port does not block; the same word twice is still a conflict.
    assert model.step([None, b0, b0], [None] * 3)[0] == [False, True, False]
    # Writes arbitrate the same way, independently of reads on the same bank.
    grants = model.step([b0, None, None], [(b0, 1, FULL), (b0 + 1, 2, FULL), (b1, 3, FULL)])
    assert grants == ([True, False, False], [True, False, True])
    assert model.read_grants == [3, 2, 0] and model.read_stalls == [0, 1, 3]
    assert model.write_grants == [1, 0, 1] and model.write_stalls == [0, 1, 0]


def test_held_requests_are_served_in_port_order():
    """The documented timing: n ports holding a request to one bank are granted one per cycle,
    lowest index first, so the k-th (from 0) waits k cycles."""
    model = SRAMModel(TINY, 3, 1)
    pending = {0: 7, 1: 8, 2: 9}
    order = []
    while pending:
        reads = [pending.get(i) for i in range(3)]
        grants, _ = model.step(reads, [None])
        order.append([i for i, g in enumerate(grants) if g])
        for i, g in enumerate(grants):
            if g:
                del pending[i]
    assert order == [[0], [1], [2]]


def test_reads_see_the_old_word_and_writes_land_at_cycle_end():
    model = SRAMModel(TINY, 2, 2)
    model.step([None, None], [(10, 0xAAAA, FULL), None])
    model.step([10, None], [None, (10, 0xBBBB, FULL)])
    assert model.read_data == [0xAAAA, None]
    model.step([None, 10], [None, None])
    assert model.read_data == [None, 0xBBBB]
    assert model.word(10) == 0xBBBB


def test_byte_masks():
    rng = random.Random(1)
    model = SRAMModel(TINY, 1, 1)
    nb = TINY.word_bytes
    masks = [0, 1, 1 << (nb - 1), 0x5555, FULL] + [rng.getrandbits(nb) for _ in range(50)]
    for mask in masks:
        old, new = rng.getrandbits(TINY.word_bits), rng.getrandbits(TINY.word_bits)
        model.load(3, [old])
        model.step([None], [(3, new, mask)])
        assert model.word(3) == merge_bytes(nb, old, new, mask), f"mask {mask:#x}"
    wide = TileConfig.preset("default", mac_dim=16)  # 64-byte words: masks past 8 bytes
    model = SRAMModel(wide, 1, 1)
    for _ in range(50):
        mask = rng.getrandbits(wide.word_bytes)
        old, new = rng.getrandbits(wide.word_bits), rng.getrandbits(wide.word_bits)
        model.load(0, [old])
        model.step([None], [(0, new, mask)])
        assert model.word(0) == merge_bytes(wide.word_bytes, old, new, mask), f"mask {mask:#x}"


def test_load_word_dump():
    model = SRAMModel(TINY, 1, 1)
    model.load(TINY.sram_words - 2, [5, 6])
    assert model.word(TINY.sram_words - 1) == 6
    dump = model.dump()
    assert len(dump) == TINY.sram_words and dump[-2:] == [5, 6] and sum(dump[:-2]) == 0
    dump[0] = 99  # a copy
    assert model.word(0) == 0
    with pytest.raises(ValueError, match="runs past the end"):
        model.load(TINY.sram_words - 1, [1, 2])
    with pytest.raises(ValueError, match="does not fit"):
        model.load(0, [1 << TINY.word_bits])


def test_model_rejects_bad_arguments():
    with pytest.raises(TypeError, match="TileConfig"):
        SRAMModel("tiny", 1, 1)
    with pytest.raises(ValueError, match="read_ports must be at least 1, not 0"):
        SRAMModel(TINY, 0, 1)
    with pytest.raises(TypeError, match="write_ports"):
        SRAMModel(TINY, 1, 2.0)
    model = SRAMModel(TINY, 2, 1)
    with pytest.raises(ValueError, match="2 reads and 1 writes"):
        model.step([None], [None])
    with pytest.raises(ValueError, match="read port 1: address 256"):
        model.step([None, TINY.sram_words], [None])
    with pytest.raises(TypeError, match="read port 0"):
        model.step(["x", None], [None])
    with pytest.raises(ValueError, match="write port 0: data"):
        model.step([None, None], [(0, -1, FULL)])
    with pytest.raises(ValueError, match="write port 0: mask"):
        model.step([None, None], [(0, 0, FULL + 1)])


# -- the RTL's interface ---------------------------------------------------------------------

def test_node_sram_interface():
    from amaranth.lib import wiring
    from d1tile.hw.sram import NodeSRAM, SRAMReadPort, SRAMWritePort

    dut = NodeSRAM(TINY, read_ports=2, write_ports=3)
    assert (dut.cfg, dut.read_ports, dut.write_ports) == (TINY, 2, 3)
    read_sig = SRAMReadPort.Signature(TINY)
    write_sig = SRAMWritePort.Signature(TINY)
    assert dut.signature.members["read"] == wiring.In(read_sig).array(2)
    assert dut.signature.members["write"] == wiring.In(write_sig).array(3)
    assert {name: (m.flow, m.shape) for name, m in read_sig.members.items()} == {
        "addr": (wiring.Out, 8), "en": (wiring.Out, 1), "ready": (wiring.In, 1),
        "data": (wiring.In, 128)}
    assert {name: (m.flow, m.shape) for name, m in write_sig.members.items()} == {
        "addr": (wiring.Out, 8), "en": (wiring.Out, 1), "data": (wiring.Out, 128),
        "mask": (wiring.Out, 16), "ready": (wiring.In, 1)}
    # A requester's port connects to the SRAM's.
    assert isinstance(read_sig.create(), SRAMReadPort)
    assert read_sig == SRAMReadPort.Signature(TINY.replace(name="other", rows=1))
    assert read_sig != SRAMReadPort.Signature(TileConfig.preset("default"))
    with pytest.raises(TypeError, match="cfg must be a TileConfig"):
        SRAMReadPort.Signature(8)


def test_node_sram_rejects_bad_arguments():
    from d1tile.hw.sram import NodeSRAM
    with pytest.raises(TypeError, match="cfg must be a TileConfig, not 'tiny'"):
        NodeSRAM("tiny", read_ports=1, write_ports=1)
    with pytest.raises(ValueError, match="read_ports must be at least 1, not 0"):
        NodeSRAM(TINY, read_ports=0, write_ports=1)
    with pytest.raises(TypeError, match="write_ports must be an integer, not True"):
        NodeSRAM(TINY, read_ports=1, write_ports=True)


# -- quick lockstep check in Amaranth's simulator (geometries the Verilator runs do not build) --

@pytest.mark.parametrize("banks,read_ports,write_ports", [(1, 2, 2), (2, 3, 1), (8, 2, 3)])
def test_rtl_matches_model_in_amaranth_sim(banks, read_ports, write_ports):
    from amaranth.sim import Simulator
    from d1tile.hw.sram import NodeSRAM

    cfg = TileConfig.preset("tiny", sram_kib=1, sram_banks=banks)
    dut = NodeSRAM(cfg, read_ports=read_ports, write_ports=write_ports)
    model = SRAMModel(cfg, read_ports, write_ports)
    seed = bench_seed()
    rng = random.Random(seed)
    full = (1 << cfg.word_bytes) - 1
    hot = [rng.randrange(cfg.sram_words) for _ in range(3)]
    print(f"amaranth-sim SRAM lockstep: banks {banks}, seed {seed} (replay: D1TILE_SEED={seed})")

    def address():
        return rng.choice(hot) if rng.random() < 0.3 else rng.randrange(cfg.sram_words)

    async def bench(ctx):
        due = [None] * read_ports
        for cycle in range(300):
            reads = [address() if rng.random() < 0.7 else None for _ in range(read_ports)]
            writes = [(address(), rng.getrandbits(cfg.word_bits),
                       rng.choice([full, 0, rng.getrandbits(cfg.word_bytes)]))
                      if rng.random() < 0.6 else None for _ in range(write_ports)]
            for port, request in zip(dut.read, reads):
                ctx.set(port.en, request is not None)
                ctx.set(port.addr, request or 0)
            for port, request in zip(dut.write, writes):
                ctx.set(port.en, request is not None)
                addr, data, mask = request or (0, 0, 0)
                ctx.set(port.addr, addr)
                ctx.set(port.data, data)
                ctx.set(port.mask, mask)
            read_grants, write_grants = model.step(reads, writes)
            for kind, ports, requests, grants in (("read", dut.read, reads, read_grants),
                                                   ("write", dut.write, writes, write_grants)):
                for i, (port, request, granted) in enumerate(zip(ports, requests, grants)):
                    if request is not None:
                        assert ctx.get(port.ready) == granted, (
                            f"cycle {cycle}: {kind} port {i} ready: expected {int(granted)}, "
                            f"got {ctx.get(port.ready)} (reads {reads})")
            for i, expected in enumerate(due):
                if expected is not None:
                    got = ctx.get(dut.read[i].data)
                    assert got == expected, (
                        f"cycle {cycle}: read port {i} data: expected {expected:#x}, got {got:#x}")
            due = [model.read_data[i] if g else None for i, g in enumerate(read_grants)]
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert sum(model.read_stalls) > 0 or read_ports == 1, "no read conflicts were exercised"


# -- the cocotb bench of record on Verilator ---------------------------------------------------

def test_node_sram_verilator(preset_cfg):
    from d1tile.hw.sram import NodeSRAM
    read_ports, write_ports = 3, 3
    run_bench(lambda: NodeSRAM(preset_cfg, read_ports=read_ports, write_ports=write_ports),
              "node_sram", preset_cfg, "tb_sram",
              key=f"node_sram-r{read_ports}w{write_ports}-{preset_cfg.key}",
              env={"D1TILE_SRAM_READ_PORTS": str(read_ports),
                   "D1TILE_SRAM_WRITE_PORTS": str(write_ports)})
