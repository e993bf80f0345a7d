"""A convolution too large for the tile, split over time into bands of output rows.

    .venv/bin/python bench/conv_split.py                     # the issue's case, int8 and bf16
    .venv/bin/python bench/conv_split.py --shape 8,16,96,24 --filters 8 --dtype int8

Builds a one-layer ONNX model, a 3x3 convolution (no padding) with `--filters` filters on an
input of `--shape` N,C,H,W (default: the issue's [20, 16, 50, 40] with 13 filters, which once
tried to allocate 5.65 GiB and died), compiles it onto the tile (`d1tile.sw.compiler`: when the
convolution does not fit at once it runs as bands of output rows, each band's input fed from
the host edge into the words of the band before after a barrier, and its output streamed to
the host when the tile cannot keep it), runs it on the cycle model, checks it bit for bit
against the integer (or BF16) reference and prints the bands, the cycles, the ideal and the
utilisation, and the compile and run wall times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from d1tile.params import ConfigError, TileConfig, parse_grid
from d1tile.sw.compiler import compile_model, execute
from d1tile.sw.errors import CompileError
from d1tile.sw.runtime import get_device


def conv_model(shape, filters: int, seed: int = 0) -> onnx.ModelProto:
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((filters, c, 3, 3)) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(filters) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, filters, h - 2, w - 2])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="20,16,50,40", help="input N,C,H,W (default 20,16,50,40)")
    ap.add_argument("--filters", type=int, default=13)
    ap.add_argument("--dtype", choices=("int8", "bf16", "both"), default="both")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--grid", default=None, help="override the grid, e.g. 2x2")
    args = ap.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
        if len(shape) != 4 or min(shape) < 1 or min(shape[2:]) < 3 or args.filters < 1:
            raise ValueError
    except ValueError:
        print(f"conv_split: --shape {args.shape!r} is not N,C,H,W of positive sizes (H, W >= 3) "
              f"or --filters {args.filters} < 1", file=sys.stderr)
        return 2
    try:
        cfg = TileConfig.preset(args.preset)
        if args.grid:
            cfg = cfg.with_grid(*parse_grid(args.grid))
    except (ConfigError, ValueError) as exc:
        print(f"conv_split: {exc}", file=sys.stderr)
        return 2
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        onnx.save(conv_model(shape, args.filters), path)
        print(f"conv 3x3, {args.filters} filters, input {list(shape)} on the {cfg.rows}x{cfg.cols} "
              f"tile ({cfg.name})")
        for dtype in ("int8", "bf16") if args.dtype == "both" else (args.dtype,):
            t0 = time.perf_counter()
            try:
                compiled = compile_model(str(path), cfg, x if dtype == "int8" else None,
                                         dtype=dtype)
            except CompileError as exc:
                print(f"  {dtype}: refused: {exc}")
                failed = True
                continue
            t1 = time.perf_counter()
            run = execute(compiled, get_device("model", cfg), x)
            t2 = time.perf_counter()
            cycles = run.result.cycles
            ideal = compiled.ideal_cycles * compiled.runs(shape[0])
            layers = [layer.name for layer in compiled.layers]
            streamed = any(getattr(layer.plan, "send_out", False) for layer in compiled.layers)
            print(f"  {dtype}: {len(layers)} layer(s) {', '.join(layers)}; runs "
                  f"{compiled.runs(shape[0])} of {compiled.run_batch}; output "
                  f"{'streamed to the host' if streamed else 'kept on the tile'}")
            print(f"        bit-exact {run.bit_exact}; cycles {cycles:,}, ideal {ideal:,.0f}, "
                  f"utilisation {ideal / cycles:.1%}; compile {t1 - t0:.1f} s, run {t2 - t1:.1f} s")
            failed |= not run.bit_exact
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
