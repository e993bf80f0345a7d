"""noc-stress on the RTL: `run_rtl` builds `RouterMesh(cfg)` with Verilator (once per
configuration) and runs the cocotb bench `d1tile.hw.noc_bench`, which drives the same traffic as
`d1tile.sim.noc.run_model` and returns the same `NocStats`."""

from __future__ import annotations

from d1tile.params import TileConfig
from d1tile.sim.noc import NocStats, NocTraffic


__all__ = ["run_rtl"]


def run_rtl(cfg: TileConfig, *, packets: int, rate: float, seed: int, multicast: float = 0.0,
            max_cycles: int = 10_000_000, log=None) -> NocStats:
    """noc-stress on the Verilator build of `RouterMesh(cfg)` (built once per configuration)."""
    import contextlib
    import io
    import json
    import tempfile
    from pathlib import Path

    from d1tile.hw import verilator
    from d1tile.hw.router import RouterMesh

    # argument errors before building
    NocTraffic(cfg, packets=packets, rate=rate, seed=seed, multicast=multicast)
    log = log or (lambda line: None)
    build = verilator.build(lambda: RouterMesh(cfg), "router_mesh", f"router_mesh-{cfg.key}",
                            log=log)
    with tempfile.TemporaryDirectory(prefix="d1tile-noc-") as tmp:
        out = Path(tmp) / "stats.json"
        env = {"D1TILE_CONFIG": cfg.to_json(),
               "D1TILE_NOC": json.dumps({"packets": packets, "rate": rate, "seed": seed,
                                         "multicast": multicast, "out": str(out),
                                         "max_cycles": max_cycles})}
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            verilator.run_cocotb(build, "d1tile.hw.noc_bench", seed=seed, env=env,
                                 test_dir=build.directory / "runs" / f"noc-{seed}")
        for line in captured.getvalue().splitlines():
            log(line)
        return NocStats(**json.loads(out.read_text()))
