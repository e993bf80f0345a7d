"""BF16 inference: a network's float graph run on the tile in BF16 with FP32 accumulation, and
its bit-exact reference.

    compiled = compile_model("lenet.onnx", cfg, dtype="bf16")     # no calibration
    run = execute(compiled, get_device("model", cfg), x)           # float x, rounded to BF16

`bf16_graph(graph)` is the bf16 counterpart of `d1tile.sw.quant.quantize`: the same tile ops
(relus fused into their producer, host ops split off) with the float weights and biases as
they are; the kernels round weights and inputs to BF16 (round to nearest even) and biases and
constants to FP32. Every tensor's "scale" is 1: the tile's outputs are the values themselves.

`bf16_reference(compiled, x)` computes what the tile computes, bit for bit, layer after layer
over the tensors as they are stored on the tile (`Compilation.orders`: padding features
included, since a padded BF16 zero is multiplied and can change the sign of a zero sum), with
each layer's own reference from the numeric contract (`reference_conv_bf16`,
`reference_layer_bf16`, `reference_add`, `reference_pool`): each FP32 sum added in the order
the tile adds it. The float model (`d1tile.sw.quant.run_float`, float64) is what the report
measures the error against.
"""

from __future__ import annotations

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ElemType
from d1tile.sw.errors import CompileError
from d1tile.sw.ir import Graph
from d1tile.sw.quant import QuantGraph, QuantOp, split_ops


__all__ = ["bf16_graph", "bf16_reference", "to_bf16_bits", "bits_to_float"]


def _bf16_op(graph: Graph, node, out: str, relu: bool) -> QuantOp:
    """One tile op with its float parameters (weights [K, F] or [O, C/g, kh, kw], bias; an
    add's constant as one sample's shape)."""
    if node.op in ("gemm", "conv"):
        return QuantOp(node.op, node.name, [node.inputs[0]], out, dict(node.attrs),
                       weight=graph.initializers[node.inputs[1]].astype(np.float32),
                       bias=graph.initializers[node.inputs[2]].astype(np.float32), relu=relu)
    if node.op == "add":
        act = [i for i in node.inputs if not graph.is_constant(i)]
        const = [i for i in node.inputs if graph.is_constant(i)]
        c = None
        if const:
            c = graph.initializers[const[0]].astype(np.float64)
            sample = graph.shape(act[0])[1:]
            if c.ndim > len(sample):
                c = c[0]
            c = np.broadcast_to(c, sample)
        return QuantOp("add", node.name, act, out, {}, factors=(1.0,) * len(act), const=c,
                       relu=relu)
    return QuantOp(node.op, node.name, [node.inputs[0]], out, dict(node.attrs))


def bf16_graph(graph: Graph) -> QuantGraph:
    """The tile ops of `graph` for bf16 (module docstring), in a `QuantGraph` whose scales are
    all 1 (the values are not quantised)."""
    graph.validate()
    ops, host, outputs = split_ops(
        graph, lambda node, out, relu: _bf16_op(graph, node, out, relu))
    if any(t in graph.inputs for t in outputs):
        raise CompileError(f"graph '{graph.name}': a host op reads a graph input directly; "
                           "nothing would run on the tile")
    scales = {name: 1.0 for name in graph.tensors}
    return QuantGraph(graph, ops, scales, list(graph.inputs), outputs, host)


# -- the reference ---------------------------------------------------------------------------------

def to_bf16_bits(values) -> np.ndarray:
    """Floats rounded to BF16 (RNE), as uint16 bits: what the host loads."""
    return numerics.bf16_bits(np.asarray(values, dtype=np.float32))


def bits_to_float(bits) -> np.ndarray:
    """BF16 bits as float32 values."""
    return numerics.f32_from_bf16(np.asarray(bits, dtype=np.uint16)).view(np.float32)


def bf16_reference(compiled, x) -> dict:
    """The tile's bf16 outputs (BF16 bits, uint16, in their ONNX shapes) for float input `x`:
    the host's rounding of x, then every compiled layer's reference in order
    (`Compilation.bf16_layers`) on the stored tensors."""
    from d1tile.sw.compiler import from_stored, to_stored
    c = compiled
    if c.dtype != ElemType.BF16:
        raise ValueError("bf16_reference needs a bf16 compilation")
    name = c.input_name
    x = np.asarray(x, dtype=np.float32)
    values = {name: to_bf16_bits(to_stored(c.orders[name], x.reshape(len(x), -1)))}
    for inputs, output, fn in c.bf16_layers:
        values[output] = fn([values[t] for t in inputs])
    return {o: from_stored(c.orders[o], values[o]).reshape(c.qgraph.shape(o))
            for o in c.qgraph.outputs}
