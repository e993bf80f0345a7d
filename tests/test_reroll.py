"""Loop rerolling (`d1tile.sw.reroll`): the rolled program issues exactly the instructions of the
straight-line one (checked here by running both on the functional interpreter and the cycle
model, not only by the pass's own check), loops nest, and nothing that does not repeat changes."""

import random

import numpy as np
import pytest

from conftest import bench_seed
from d1tile import isa
from d1tile.isa import LOOP_DEPTH, Opcode, VecOp
from d1tile.params import TileConfig
from d1tile.sim.interp import interpret
from d1tile.sim.tile import TileModel
from d1tile.sw.program import TileProgram
from d1tile.sw.reroll import reroll, unroll

TINY = TileConfig.preset("tiny")
E = isa.encode
HALT = E(Opcode.HALT)


def grid_program(rows: int, cols: int) -> list[int]:
    """rows x cols tiles: per row a WAIT, per tile a MATMUL (a moves with the row, b with the
    column, banks alternate) and an MREAD (dst moves with the tile)."""
    words = []
    for i in range(rows):
        words.append(E(Opcode.WAIT, counter=2, value=0))
        for j in range(cols):
            t = i * cols + j
            words.append(E(Opcode.MATMUL, a=10 + 3 * i, b=100 + 2 * j, kw=1, bank=t % 2))
            words.append(E(Opcode.MREAD, dst=150 + t, row0=0, nrows=1, bank=t % 2))
    return words + [HALT]


def test_a_grid_of_tiles_rolls_into_nested_loops_and_issues_the_same_stream():
    words = grid_program(6, 8)
    rolled = reroll(words)
    assert len(rolled) < len(words) // 4
    ops = [isa.decode(w).op for w in rolled]
    assert Opcode.LOOP in ops and Opcode.STEP in ops
    assert [w for w in unroll(rolled) if w != E(Opcode.NOP)] == words
    # both programs on the interpreter and on the cycle model: the same SRAM, the same
    # instruction stream (the rolled one adds LOOPs and STEPs, so it takes more cycles)
    finals = []
    for program in (words, rolled):
        tp = TileProgram(TINY)
        rng = random.Random(1)
        tp.load((0, 0), 0, [rng.getrandbits(TINY.word_bits) for _ in range(150)])
        tp.node(0, 0).words[:] = program
        tp.read((0, 0), 0, TINY.sram_words)
        functional = interpret(tp)
        model = TileModel(TINY).run(tp)
        assert not functional.faults() and not model.faults and model.hang is None
        assert model.reads == functional.reads
        finals.append(model.reads)
    assert finals[0] == finals[1]


def test_loops_nest_at_most_the_sequencer_depth():
    # a 2 x 2 x 2 x 2 x 2 nest of one moving VEC: five levels of repetition
    words = [E(Opcode.VEC, vop=VecOp.ADD, dst=200 + k, a=k, b=2 * k, n=1) for k in range(32)]
    rolled = reroll(words + [HALT])
    loops = isa.LoopControl(TINY)
    pc, deepest = 0, 0
    while isa.decode(rolled[pc]).op != Opcode.HALT:
        instr = isa.decode(loops.effective(rolled[pc]))
        pc = loops.issue(instr, pc)
        deepest = max(deepest, loops.depth)
    assert deepest <= LOOP_DEPTH
    assert len(rolled) < 8
    assert unroll(rolled)[:-1] == words


def test_what_does_not_repeat_is_left_as_it_is():
    rng = random.Random(bench_seed())
    words = [E(Opcode.MATMUL, a=rng.randrange(200), b=rng.randrange(200), kw=1,
               clear=rng.getrandbits(1)) for _ in range(40)] + [HALT]
    assert reroll(words) == words
    # an irregular stride breaks the run: 0, 1, 2, 3, 5
    words = [E(Opcode.SEND, src=s, n=1, x=0, y=0, dst=s) for s in (0, 1, 2, 3, 5)] + [HALT]
    assert unroll(reroll(words)) == words
    assert isa.decode(reroll(words)[-2]).src == 5
    # a program with loops of its own is not touched
    looped = [E(Opcode.LOOP, count=2, body=1), E(Opcode.NOP), HALT]
    assert reroll(looped) == looped


def test_a_body_ending_with_an_inner_loop_gets_a_nop():
    # the period [LOOP 3 x VEC] repeats 4 times with a moving dst: the outer body would end
    # with the inner loop's last instruction, so a NOP closes it
    words = []
    for i in range(4):
        words.append(E(Opcode.SETQ, scale=1, shift=0))
        words += [E(Opcode.VEC, vop=VecOp.RELU, dst=100 + 10 * i, a=0, n=1)] * 3
    rolled = reroll(words + [HALT])
    assert [w for w in unroll(rolled) if w != E(Opcode.NOP)] == words + [HALT]
    for pc, w in enumerate(rolled):
        instr = isa.decode(w)
        if instr.op == Opcode.LOOP:
            assert isa.decode(rolled[pc + instr.body]).op != Opcode.LOOP


def test_negative_strides_wrap_modulo_2_16():
    words = [E(Opcode.MREAD, dst=100 - 4 * k, row0=0, nrows=4) for k in range(10)] + [HALT]
    rolled = reroll(words)
    assert len(rolled) == 4      # LOOP, STEP (-4 = 65532), MREAD, HALT
    assert isa.decode(rolled[1]).s0 == (1 << 16) - 4
    assert unroll(rolled) == words


def test_unroll_reports_loop_faults():
    with pytest.raises(ValueError, match="loop fault LOOP"):
        unroll([E(Opcode.STEP, s0=1), HALT])
