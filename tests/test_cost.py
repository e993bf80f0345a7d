"""Hardware cost from the RTL (`d1tile.hw.cost`, `d1tile cost`): the counts respond to the
parameters the way they must, memories are counted as their configured bits, and a synthesis
that cannot run is one clear line. One node synthesis per configuration (about 40 s for the
tiny node, cached under build/cost/ by configuration and RTL sources)."""

import pytest

from d1tile.cli import main
from d1tile.hw import cost
from d1tile.params import TileConfig

TINY = TileConfig.preset("tiny")


@pytest.fixture(scope="module")
def tiny():
    return cost.node_cost(TINY)


def test_memories_are_counted_as_the_configured_bits(tiny):
    assert tiny.blocks["sram"].memory_bits == TINY.sram_words * TINY.word_bits
    assert tiny.blocks["sequencer"].memory_bits == TINY.imem_words * 64     # the program
    assert tiny.blocks["matrix"].memory_bits == 0                          # registers only
    assert tiny.blocks["sram"].flops < 64        # the banks are not synthesised into flops


def test_blocks_add_up_to_the_node_and_nodes_to_the_tile(tiny):
    for field in ("cells", "flops", "memory_bits"):
        assert sum(getattr(b, field) for b in tiny.blocks.values()) == getattr(tiny.node, field)
    assert tiny.tile(4).cells == 4 * tiny.node.cells
    assert tiny.node.nand2 == pytest.approx(sum(b.nand2 for b in tiny.blocks.values()))
    # the datapaths dominate: the matrix and vector units hold most of the logic
    logic = {k: b.cells for k, b in tiny.blocks.items()}
    assert max(logic, key=logic.get) in ("matrix", "vector")


def test_a_bigger_matrix_unit_costs_more(tiny):
    """mac_dim 2 against the tiny preset's 4: a quarter of the MACs, fewer cells and flops in
    the matrix unit (and a narrower word everywhere)."""
    small = cost.node_cost(TINY.replace(mac_dim=2))
    assert small.blocks["matrix"].cells < tiny.blocks["matrix"].cells
    assert small.blocks["matrix"].flops < tiny.blocks["matrix"].flops
    assert small.node.nand2 < tiny.node.nand2


def test_bf16_costs_more_than_int8_and_the_node_has_both(tiny):
    """The matrix unit alone, per element type (`matrix_unit_cost`): the BF16 unit (FP decode,
    exponent logic, an FP adder per cell) has more cells than the int8 one, the unit of both
    more than either, and the node's matrix block is the unit of both plus its engine."""
    int8, _, _ = cost.matrix_unit_cost(TINY, "int8")
    bf16, _, _ = cost.matrix_unit_cost(TINY, "bf16")
    both, _, _ = cost.matrix_unit_cost(TINY, "int8+bf16")
    assert int8.cells < bf16.cells < both.cells
    assert int8.nand2 < bf16.nand2 < both.nand2
    # the accumulators are there whatever the types: 2 banks x N^2 x 32 bits
    assert min(int8.flops, bf16.flops) >= 2 * TINY.mac_dim ** 2 * 32
    assert both.cells < tiny.blocks["matrix"].cells
    with pytest.raises(ValueError, match="one of int8, bf16, int8\\+bf16"):
        cost.matrix_unit_cost(TINY, "fp64")


def test_the_area_proxy_follows_its_stated_weights():
    assert cost.transistors({"NOT": 1, "NAND": 1, "AND": 2, "XOR": 1, "MUX": 1}) == \
        2 + 4 + 12 + 12 + 12
    assert cost.transistors({"DFF": 1, "SDFF": 1, "SDFFE": 1, "DFFE": 1}) == \
        24 + 30 + 42 + 36
    block = cost.BlockCost(cells=1, by_kind={"NAND": 1}, memory_bits=2)
    assert block.nand2 == (4 + 2 * 6) / 4


def test_cost_command_prints_the_table_and_refuses_what_it_cannot_do(tiny, capsys, tmp_path,
                                                                     monkeypatch):
    import json
    assert main(["cost", "--preset", "tiny", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "(cached: build/cost/)" in out
    for name in [*cost.BLOCKS, "node", "tile (4 nodes)", "unit int8 ", "unit int8+bf16"]:
        assert f"  {name}" in out
    assert "BF16 adds " in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["node"]["cells"] == tiny.node.cells and data["tile"]["nodes"] == 4
    assert data["matrix_unit_by_type"]["int8"]["cells"] == \
        cost.matrix_unit_cost(TINY, "int8")[0].cells
    assert main(["cost", "--block", "gpu"]) == 2
    assert "--block 'gpu': not a block of the node" in capsys.readouterr().err
    # a synthesis that cannot run: one line, status 2
    monkeypatch.setattr(cost, "YOSYS", "no-such-yosys")
    monkeypatch.setattr(cost, "source_digest", lambda: "uncached")
    assert main(["cost", "--preset", "tiny", "--grid", "1x1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("d1tile cost: error: no-such-yosys is not installed") and \
        err.count("\n") == 1
