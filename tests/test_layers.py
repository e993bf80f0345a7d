"""The layers import downward only (docs/architecture.md, "Layers"):

* the bottom, `d1tile/*.py` (parameters, bit formats, element types, numerics, the ISA, the
  vector-op table, the block contracts): nothing of the project above it, and no Amaranth at
  module level (`BitFormat.layout` imports it when the RTL asks for a layout);
* `d1tile.sim` (models): the bottom and itself, no Amaranth at module level;
* `d1tile.hw` RTL modules: the bottom, Amaranth and each other; not the models;
* `d1tile.hw` tool modules (the Verilator toolchain and the benches that run RTL against the
  models): also `d1tile.sim`;
* nothing below `d1tile.sw` imports it (the command line, `d1tile/cli.py`, sits on top).

Every import of a project module counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"d1tile": ROOT / "d1tile", "d1tile.hw": ROOT / "hw", "d1tile.sim": ROOT / "sim",
            "d1tile.sw": ROOT / "sw"}
HW_TOOLS = {"verilator", "testbench", "tile_bench", "tile_run", "matrix_demo",
            "matrix_demo_bench", "noc_bench", "noc_run", "cost"}


def modules():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            yield package, path


def imports(package: str, path: Path) -> set[str]:
    """Every module name `path` imports (relative imports resolved; for `from m import x`,
    both m and m.x, since x may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    return names


def layer(package: str, path: Path) -> str:
    if package == "d1tile":
        return "top" if path.name == "cli.py" else "bottom"
    if package == "d1tile.hw":
        return "hw-tool" if path.stem in HW_TOOLS else "hw"
    return package.split(".")[1]


ALLOWED = {
    "bottom": {"bottom"},
    "sim": {"bottom", "sim"},
    "hw": {"bottom", "hw"},
    "hw-tool": {"bottom", "hw", "hw-tool", "sim"},
    "sw": {"bottom", "sim", "hw", "hw-tool", "sw"},
    "top": {"bottom", "sim", "hw", "hw-tool", "sw", "top"},
}


def layer_of_import(name: str) -> str | None:
    """The layer of an imported project module, or None for anything else."""
    if name in ("d1tile", "d1tile.cli") or not name.startswith("d1tile"):
        return {"d1tile.cli": "top"}.get(name)
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in ("hw", "sim", "sw"):
        package = ".".join(parts[:2])
        if parts[1] == "hw" and len(parts) > 2:
            return "hw-tool" if parts[2] in HW_TOOLS else "hw"
        return {"d1tile.hw": "hw", "d1tile.sim": "sim", "d1tile.sw": "sw"}[package]
    return "top" if parts[1:2] == ["cli"] else "bottom"


@pytest.mark.parametrize("package, path", list(modules()),
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_imports_go_down_only(package, path):
    mine = layer(package, path)
    wrong = []
    for name in sorted(imports(package, path)):
        theirs = layer_of_import(name)
        if theirs is not None and theirs not in ALLOWED[mine]:
            wrong.append(f"{name} ({theirs})")
    for name in sorted(module_level_imports(path)):
        if name.split(".")[0] == "amaranth" and mine in ("bottom", "sim"):
            wrong.append(f"{name} (Amaranth, in a module the models and compiler use)")
    assert not wrong, (f"{package}.{path.stem} ({mine} layer) imports against the layers: "
                       f"{', '.join(wrong)}")


def test_the_checker_catches_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..sim.mxu import MatrixEngineModel\nimport d1tile.sw.kernels\n")
    names = imports("d1tile.hw", bad)
    assert {layer_of_import(n) for n in names} == {"sim", "sw"}
    assert "sim" not in ALLOWED["hw"] and "sw" not in ALLOWED["hw-tool"]
