"""The untimed functional interpreter of the instruction set: the executable specification.

`interpret(tile_program)` runs every node's program to its HALT (or fault) with no notion of
time: instructions execute one after another, a SEND writes the destination's SRAM and bumps its
counter at once (a SEND to the host, x == cols, appends its packets to the sender's stream),
and nodes take turns whenever one blocks on a WAIT. For programs whose nodes
synchronise properly (data that arrives over the mesh is read only after a WAIT on its counter,
and is not overwritten while another node may still send into it), every timed execution ends in
the same state, so the cycle model and the RTL must produce exactly what this produces.

Arithmetic comes from the block references: a MATMUL applies its beats with the matrix type's
reference (`d1tile.dtypes.MATRIX_TYPES`: int32 wrapping, or the BF16 k-loop of `d1tile.numerics`) to
the bits of the accumulator bank it names (MREAD reads one out); LOOP and STEP follow
`d1tile.isa.LoopControl` (the instruction a word stands for is the word stepped by the pending
STEP offsets, and its loop faults follow `validate`'s); VEC, FVEC and FCVT run
`d1tile.sim.vpu.execute_vec` (the vector unit's functional reference) with the node's SETQ and SETR
registers and its vector-unit state (the stochastic-rounding generator). SRAM words are Python ints
(see `d1tile.formats` for the byte order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d1tile import isa
from d1tile.dtypes import matrix_type
from d1tile.formats import word_from_lanes
from d1tile.hostops import run_host_op
from d1tile.isa import FaultCode, Opcode, SetrReg
from d1tile.params import TileConfig
from d1tile.sim.vector import VectorUnitState
from d1tile.sim.vpu import execute_vec


__all__ = ["FunctionalNode", "FunctionalResult", "interpret"]


@dataclass
class FunctionalNode:
    cfg: TileConfig
    program: list
    sram: list
    pc: int = 0
    halted: bool = False
    fault: FaultCode = FaultCode.NONE
    fault_value: int = 0
    counters: list = field(default_factory=lambda: [0] * isa.SYNC_COUNTERS)
    qparams: tuple = (0, 0, 0)       # SETQ scale, shift, relu
    fscale: int = 0                  # SETR q (FP32 bits)
    acc: list | None = None          # the accumulator banks' bits, ACC_BANKS x (N, N) uint32
    vector: VectorUnitState | None = None
    loops: isa.LoopControl | None = None     # the loop stack and STEP offsets
    node: tuple = (0, 0)                     # where it is (an MCAST's row or column)
    stream: list = field(default_factory=list)   # its packets to the host: [(addr, [words])]

    def __post_init__(self):
        n = self.cfg.mac_dim
        self.loops = isa.LoopControl(self.cfg)
        self.acc = [np.zeros((n, n), dtype=np.uint32) for _ in range(isa.ACC_BANKS)]
        self.vector = VectorUnitState(self.cfg)

    def bump(self, counter: int) -> None:
        """A message's (or a feed's) arrival: the counter + 1, wrapping at 2**16."""
        self.counters[counter] = (self.counters[counter] + 1) % 2**isa.SYNC_COUNTER_BITS

    def _operands(self, spec, base: int, kw: int) -> np.ndarray:
        """Words base..base+kw-1 as the type's operand vectors, shape (V * kw, N)."""
        return np.concatenate([spec.operand_vectors(self.cfg, self.sram[base + w])
                               for w in range(kw)])

    def step(self, tile, on_issue=None) -> bool:
        """Execute the instruction at pc; False when blocked (WAIT) or stopped. `on_issue(node,
        instr)`, if given, sees every instruction that executes (stepped, before its effects;
        `self.loops` still as it was)."""
        if self.halted:
            return False
        if self.pc >= self.cfg.imem_words:
            self.fault, self.fault_value, self.halted = FaultCode.PC, self.pc, True
            return False
        # beyond the loaded program the instruction memory holds zeros (NOP)
        word = self.program[self.pc] if self.pc < len(self.program) else 0
        word = self.loops.effective(word)
        instr = isa.decode(word)
        code, value = isa.validate(self.cfg, instr)
        if code == FaultCode.NONE:
            code, value = self.loops.fault(instr, self.pc)
        if code != FaultCode.NONE:
            self.fault, self.fault_value, self.halted = code, value, True
            return False
        op, f = instr.op, instr.fields
        if on_issue is not None and not (op == Opcode.WAIT
                                         and self.counters[f["counter"]] < f["value"]):
            on_issue(self, instr)
        if op == Opcode.HALT:
            self.halted = True
            return False
        if op == Opcode.WAIT:
            if self.counters[f["counter"]] < f["value"]:
                return False
            self.counters[f["counter"]] -= f["value"]
        elif op == Opcode.SETQ:
            self.qparams = (f["scale"], f["shift"], f["relu"])
        elif op == Opcode.SETR:
            if f["reg"] == SetrReg.SCALE:
                self.fscale = f["value"]
            else:
                self.vector.reseed(f["value"])
        elif op == Opcode.MATMUL:
            spec = matrix_type(f["type"])
            a = self._operands(spec, f["a"], f["kw"])
            b = self._operands(spec, f["b"], f["kw"])
            acc = self.acc[f["bank"]]
            base = np.full_like(acc, spec.clear_bits) if f["clear"] else acc
            self.acc[f["bank"]] = spec.block(base, a, b)
        elif op == Opcode.MREAD:
            acc = self.acc[f["bank"]]
            if f["tr"]:
                acc = acc.T         # the transposed readout: columns row0.. of the bank
            for r in range(f["nrows"]):
                self.sram[f["dst"] + r] = word_from_lanes(acc[f["row0"] + r])
        elif op in isa.VECTOR_FAMILY:
            scale, shift, relu = self.qparams
            execute_vec(self.cfg, self.sram, word, scale, shift, relu, q=self.fscale,
                        state=self.vector)
        elif op in (Opcode.SEND, Opcode.MCAST):
            source = isa.dma_source(instr)
            words = ([0] * (isa.dma_extent(instr).rows * f["n"]) if source is None
                     else [self.sram[a] for a in source])
            receivers = ([(f["x"], f["y"])] if op == Opcode.SEND
                         else isa.mcast_receivers(instr, self.node))
            if op == Opcode.SEND and f["x"] == self.cfg.cols:      # to the host
                k = 0
                for dst, length, _ in isa.dma_packets(instr):
                    self.stream.append((dst, words[k:k + length]))
                    k += length
                receivers = []
            for receiver in receivers:
                dest = tile[receiver]
                k = 0
                for dst, length, _ in isa.dma_packets(instr):
                    dest.sram[dst:dst + length] = words[k:k + length]
                    k += length
                dest.bump(f["counter"])
        self.pc = self.loops.issue(instr, self.pc)
        return True


@dataclass
class FunctionalResult:
    nodes: dict          # (x, y) -> FunctionalNode (final state)
    reads: dict          # ((x, y), addr, n) -> [words]
    deadlock: str | None = None

    @property
    def streams(self) -> dict:
        """(x, y) -> [(addr, [words])]: what each node sent to the host, as `RunResult.streams`."""
        return {node: n.stream for node, n in self.nodes.items() if n.stream}

    def faults(self) -> dict:
        return {node: (n.fault, n.pc, n.fault_value) for node, n in self.nodes.items()
                if n.fault != FaultCode.NONE}


def interpret(tile_program, *, max_steps: int = 10_000_000, on_issue=None) -> FunctionalResult:
    """Run a `TileProgram` functionally (see the module docstring); `on_issue(node, instr)` is
    called for every instruction executed (`FunctionalNode.step`)."""
    cfg = tile_program.cfg
    tile = {}
    for node in tile_program.nodes:
        sram = [0] * cfg.sram_words
        for addr, words in tile_program.loads.get(node, []):
            sram[addr:addr + len(words)] = words
        tile[node] = FunctionalNode(cfg, list(tile_program.words_of(node)), sram, node=node)
    # The feeds arrive while the nodes run, each region before its counter's bump: functionally
    # they are all there from the start, their bumps counted (a program that reads a region
    # before its WAIT races the host, and is wrong on the tile); a gated feed once its gate's
    # node has sent the host that many tokens (zero-length packets), in the feeds' order.
    gates = {i: (node, k) for i, node, k in getattr(tile_program, "gates", [])}
    gated = []
    for i, (node, addr, words, counter) in enumerate(tile_program.feeds):
        if i in gates:
            gated.append((gates[i], node, addr, words, counter))
            continue
        tile[node].sram[addr:addr + len(words)] = words
        tile[node].bump(counter)

    def open_gates() -> bool:
        done = 0
        for (gate_node, k), node, addr, words, counter in gated:
            if sum(1 for _, body in tile[gate_node].stream if not body) < k:
                break
            tile[node].sram[addr:addr + len(words)] = words
            tile[node].bump(counter)
            done += 1
        del gated[:done]
        return done > 0

    # Host ops (`d1tile.hostops`): a stream packet to an op's address is answered at once, its
    # words written and the op's counter bumped.
    ops = {(tuple(op["node"]), op["tag"]): op for op in getattr(tile_program, "host_ops", [])}
    answered = {node: 0 for node in tile_program.nodes}
    op_steps: dict = {}

    def host_ops(node) -> None:
        stream = tile[node].stream
        for addr, body in stream[answered[node]:]:
            op = ops.get((node, addr)) if body else None
            if op is not None:
                step = op_steps.get((node, addr), 0)
                op_steps[(node, addr)] = step + 1
                _, writes = run_host_op(cfg, op, step, body)
                for a, words in writes:
                    tile[node].sram[a:a + len(words)] = words
                tile[node].bump(op["counter"])
        answered[node] = len(stream)

    steps = 0
    deadlock = None
    while True:
        progress = open_gates()
        for node in tile_program.nodes:
            while tile[node].step(tile, on_issue):
                progress = True
                steps += 1
                if steps > max_steps:
                    raise RuntimeError(f"functional run exceeded {max_steps} instructions")
                if ops:
                    host_ops(node)
        if all(n.halted for n in tile.values()):
            break
        if not progress:
            waiting = []
            for node, n in tile.items():
                if not n.halted:
                    instr = isa.decode(n.program[n.pc])
                    waiting.append(f"node {node}: pc {n.pc} {instr} waits on counter "
                                   f"{instr.counter} ({n.counters[instr.counter]} < "
                                   f"{instr.value})")
            deadlock = "deadlock: " + "; ".join(waiting)
            break
    reads = {}
    for node in tile_program.nodes:
        for addr, n in tile_program.reads.get(node, []):
            reads[(node, addr, n)] = tile[node].sram[addr:addr + n]
    return FunctionalResult(tile, reads, deadlock)
