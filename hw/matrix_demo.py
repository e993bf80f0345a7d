"""The matrix-unit demo: a random int8 or bf16 matrix product on the Verilator build of
`MatrixUnit`.

`run_demo(cfg, m, k, n, seed, dtype="int8")` builds the unit for `cfg` (once per design; later
calls reuse the build), runs the cocotb bench `d1tile.hw.matrix_demo_bench` (part of the
package, so it also runs from an installed wheel), and returns its report:

    {"config", "mac_dim", "dtype", "m", "k", "n", "seed", "tiles",
     "cycles":           first operand beat to last row read, both counted,
     "predicted_cycles": the same from the timing description (`sim.matrix.tiled_matmul_cycles`),
     "ideal_cycles":     m * k * n / N^2 (one full outer product per cycle, no padding),
     "utilisation":      ideal_cycles / cycles,
     "match":            whether every element equals the reference bit for bit (int8: NumPy's
                         int32 product; bf16: `d1tile.numerics.bf16_matmul`, the FP32 sums
                         added k after k),
     "mismatches" (count) and, if any, "first_mismatch",
     bf16 only: "max_abs_error", "max_rel_error" of the FP32 results against the product in
                float64 of the same BF16 operands, and "reference_max_abs" (the largest |C|)}

The bf16 operands are standard normal values rounded to BF16 (RNE).

m and n need not be multiples of N: A and B are padded with zeros (padded rows and columns cost
cycles and lower the utilisation). k may be any positive number. Non-positive or non-integer
dimensions raise ValueError naming the dimension. The function prints nothing; progress lines go
to the `log` callback.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Callable

from ..params import TileConfig
from . import verilator
from .matrix import MatrixUnit


__all__ = ["run_demo", "TOP", "DEMO_ENV"]

TOP = "matrix_unit"
DEMO_ENV = "D1TILE_MATRIX_DEMO"  # JSON parameters for the bench: m, k, n, seed, out


DTYPES = ("int8", "bf16")


def run_demo(cfg: TileConfig, m: int, k: int, n: int, seed: int, *, dtype: str = "int8",
             log: Callable[[str], None] | None = None) -> dict:
    """Compute a random (m x k) @ (k x n) product of type `dtype` ("int8" or "bf16") on the RTL;
    return the report (above).

    Raises ValueError for a bad dimension, seed or dtype, TypeError for a cfg that is not a
    TileConfig, `verilator.SimulationFailed` if the bench fails (protocol or timing prediction).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(cfg, TileConfig):
        raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
    for name, value in (("m", m), ("k", k), ("n", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"dimension {name}={value!r} must be a positive integer")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise ValueError(f"seed={seed!r} must be an integer in 0..2**31-1")
    log = log or (lambda line: None)

    build = verilator.build(lambda: MatrixUnit(cfg), TOP, f"{TOP}-{cfg.key}", log=log)
    with tempfile.TemporaryDirectory(prefix="d1tile-matrix-demo-") as tmp:
        out = Path(tmp) / "report.json"
        env = {
            "D1TILE_CONFIG": cfg.to_json(),
            DEMO_ENV: json.dumps({"m": m, "k": k, "n": n, "seed": seed, "dtype": dtype,
                                  "out": str(out)}),
        }
        # run_cocotb reports on stdout; this function speaks only through `log`.
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            verilator.run_cocotb(
                build, "d1tile.hw.matrix_demo_bench", seed=seed, env=env, module_path=None,
                test_dir=build.directory / "runs" / f"matrix_demo-{dtype}-{m}x{k}x{n}-s{seed}")
        for line in captured.getvalue().splitlines():
            log(line)
        report = json.loads(out.read_text())
    log(f"[d1tile] matrix demo on {cfg.name} (N={report['mac_dim']}): {dtype} "
        f"({m} x {k}) @ ({k} x {n}) in {report['tiles']} tiles, {report['cycles']} cycles "
        f"(predicted {report['predicted_cycles']}, ideal {report['ideal_cycles']:.1f}, "
        f"utilisation {100 * report['utilisation']:.1f} %), "
        f"{'matches the reference' if report['match'] else 'DOES NOT MATCH the reference'}")
    return report
