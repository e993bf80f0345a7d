"""Run tile programs on the Verilator build of `Tile(cfg)` (built once per configuration).

`run_rtl(programs)` runs one or more `TileProgram`s of the same configuration in one simulator
process (one reset per program) and returns their `RunResult`s, exactly what
`d1tile.sim.tile.TileModel.run` returns for each.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from d1tile.hw import verilator
from d1tile.sim.host import DEFAULT_HANG_CYCLES, RunResult


__all__ = ["run_rtl", "tile_build"]

TOP = "tile"


def tile_build(cfg, log=None):
    """The Verilator build of the tile for `cfg` (made on first use, then reused)."""
    from d1tile.hw.tile import Tile
    return verilator.build(lambda: Tile(cfg), TOP, f"{TOP}-{cfg.key}", log=log or (lambda s: None))


def run_rtl(programs, *, hang_cycles: int = DEFAULT_HANG_CYCLES, max_cycles: int = 50_000_000,
            log=None, timing: dict | None = None) -> list[RunResult]:
    """Run each TileProgram on the RTL. `timing`, if given, receives build and run seconds."""
    programs = list(programs)
    if not programs:
        return []
    cfg = programs[0].cfg
    if any(p.cfg != cfg for p in programs):
        raise ValueError("run_rtl: every program must use the same configuration")
    log = log or (lambda line: None)
    started = time.monotonic()
    build = tile_build(cfg, log)
    built = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="d1tile-tile-") as tmp:
        specs = []
        for i, tp in enumerate(programs):
            program = Path(tmp) / f"program{i}.json"
            program.write_text(tp.to_json())
            specs.append({"program": str(program), "out": str(Path(tmp) / f"result{i}.json"),
                          "hang_cycles": hang_cycles, "max_cycles": max_cycles})
        env = {"D1TILE_TILE_RUNS": json.dumps(specs)}
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            verilator.run_cocotb(build, "d1tile.hw.tile_bench", env=env,
                                 test_dir=build.directory / "runs" / "tile")
        for line in captured.getvalue().splitlines():
            log(line)
        for spec in specs:
            results.append(RunResult.from_comparable(json.loads(Path(spec["out"]).read_text())))
    if timing is not None:
        timing["build_s"] = built - started
        timing["run_s"] = time.monotonic() - built
    return results
