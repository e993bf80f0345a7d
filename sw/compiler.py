"""The compiler driver: a network (ONNX or `GraphBuilder`) to a `TileProgram`, as an ordered list
of passes, and its execution on a device.

    compiled = compile_model("mlp.onnx", cfg, calibration_inputs)
    run = execute(compiled, get_device("model", cfg), x)        # float input
    run.outputs["logits"], run.result.cycles, run.reference["logits"]

Passes (`PASSES`, each a function of the `Compilation` that it fills in):

1. `front_end`: ONNX -> graph IR (`sw/onnx_frontend.py`), normalised; or a `Graph` as it is.
2. `quantise`: per-tensor int8 scales from the calibration inputs, then the quantised graph
   (`sw/quant.py`).
3. `lower`: every quantised op through the lowering table `LOWERINGS` onto the tile kernels
   (`sw/kernels.py`); an op without a lowering is a `CompileError` naming it.
4. `finish`: the per-node programs (with HALT), what to read back.

This version lowers chains of fully connected layers (gemm, with the bias, the requantisation
and a fused ReLU on the tile; flatten/reshape of a 2-D activation; softmax on the host). Conv,
pooling and activation adds are rejected with a message that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d1tile.params import TileConfig
from d1tile.sw.errors import CompileError
from d1tile.sw.ir import Graph
from d1tile.sw.kernels import KernelBuilder, load_activation, unpack_activation
from d1tile.sw.quant import (calibrate, dequantize, quantize, quantize_tensor, run_float,
                             run_int8)


__all__ = ["Compilation", "compile_model", "execute", "Execution", "PASSES", "LOWERINGS"]


@dataclass
class Compilation:
    cfg: TileConfig
    source: object
    calibration: dict
    graph: Graph | None = None
    qgraph: object = None
    builder: KernelBuilder | None = None
    layouts: dict = field(default_factory=dict)      # tensor name -> ActivationLayout on the tile
    tile_program: object = None
    macs: int = 0                                    # multiply-accumulates of the tile's layers
    layers: list = field(default_factory=list)       # (name, op, macs)

    @property
    def input_name(self) -> str:
        return self.qgraph.inputs[0]

    @property
    def ideal_cycles(self) -> float:
        return self.macs / self.cfg.peak_macs_per_cycle


def front_end(c: Compilation) -> None:
    if isinstance(c.source, Graph):
        c.graph = c.source
        return
    from d1tile.sw.onnx_frontend import load_onnx
    c.graph = load_onnx(c.source)


def quantise(c: Compilation) -> None:
    if len(c.graph.inputs) != 1:
        raise CompileError(f"graph '{c.graph.name}': {len(c.graph.inputs)} inputs; the tile "
                           "runtime feeds exactly one")
    c.qgraph = quantize(c.graph, calibrate(c.graph, c.calibration))


def _lower_gemm(c: Compilation, op) -> None:
    x = c.layouts.get(op.inputs[0])
    if x is None:
        raise CompileError(f"node '{op.name}' (gemm): its input '{op.inputs[0]}' is not on the tile")
    y = c.builder.quantised_layer(op.name, x, op.weight, op.bias, int(op.scale), int(op.shift),
                                  relu=bool(op.relu))
    c.layouts[op.output] = y
    k, f = op.weight.shape
    macs = x.batch * k * f
    c.macs += macs
    c.layers.append((op.name, op.op, macs))


def _lower_move(c: Compilation, op) -> None:
    """flatten / reshape of a [batch, features] activation: nothing to move."""
    shape = c.graph.shape(op.output)
    if len(shape) != 2 or op.inputs[0] not in c.layouts:
        raise CompileError(f"node '{op.name}' ({op.op}): only [batch, features] tensors are "
                           f"reshaped on the tile (output shape {list(shape)})")
    c.layouts[op.output] = c.layouts[op.inputs[0]]


LOWERINGS = {"gemm": _lower_gemm, "flatten": _lower_move, "reshape": _lower_move}


def lower(c: Compilation) -> None:
    c.builder = KernelBuilder(c.cfg)
    name = c.input_name
    shape = c.graph.shape(name)
    if len(shape) != 2:
        raise CompileError(f"input '{name}' has shape {list(shape)}: this version of the tile "
                           "lowering takes [batch, features] inputs (conv is not lowered yet)")
    c.layouts[name] = c.builder.input(name, batch=shape[0], features=shape[1])
    for op in c.qgraph.ops:
        lowering = LOWERINGS.get(op.op)
        if lowering is None:
            raise CompileError(f"node '{op.name}' ({op.op}): not lowered onto the tile yet "
                               f"(lowered ops: {', '.join(sorted(LOWERINGS))})")
        lowering(c, op)


def finish(c: Compilation) -> None:
    for name in c.qgraph.outputs:
        c.builder.read(c.layouts[name])
    c.tile_program = c.builder.finish()


PASSES = (front_end, quantise, lower, finish)


def compile_model(source, cfg: TileConfig, calibration) -> Compilation:
    """Run the passes. `calibration`: input arrays (one batch, or a dict name -> array)."""
    if not isinstance(calibration, dict):
        calibration = {"__single__": np.asarray(calibration)}
    c = Compilation(cfg, source, calibration)
    for step in PASSES:
        if step is quantise and "__single__" in c.calibration:
            c.calibration = {c.graph.inputs[0]: c.calibration.pop("__single__")}
        step(c)
    return c


@dataclass
class Execution:
    outputs: dict        # tile output name -> int8 array read back from the tile
    reference: dict      # the same from the integer reference (run_int8)
    float_outputs: dict  # the float graph's outputs
    result: object       # the device's RunResult

    @property
    def max_abs_diff(self) -> int:
        return max(int(np.max(np.abs(self.outputs[k].astype(np.int32)
                                     - self.reference[k].astype(np.int32))))
                   for k in self.outputs)


def execute(c: Compilation, device, x) -> Execution:
    """Quantise the float input `x`, run the compiled program on `device`, read the outputs
    back; also run the integer and float references on the same input."""
    name = c.input_name
    x = np.asarray(x, dtype=np.float32)
    xq = quantize_tensor(x, c.qgraph.scales[name])
    tp = _with_input(c, xq)
    device.load(tp)
    result = device.run()
    if result.hang or result.faults:
        raise RuntimeError(f"the run did not finish: {result.hang or result.faults}")
    outputs = {k: unpack_activation(c.layouts[k], result) for k in c.qgraph.outputs}
    reference = run_int8(c.qgraph, {name: x})
    floats = run_float(c.graph, {name: x})
    return Execution(outputs, {k: reference[k] for k in outputs}, floats, result)


def _with_input(c: Compilation, xq) -> object:
    """The compiled program with this input's words loaded (the program itself is reused)."""
    from copy import deepcopy
    tp = deepcopy(c.tile_program)
    load_activation(tp, c.layouts[c.input_name], xq)
    return tp


def dequantised(c: Compilation, outputs: dict) -> dict:
    return {k: dequantize(v, c.qgraph.scales[k]) for k, v in outputs.items()}
