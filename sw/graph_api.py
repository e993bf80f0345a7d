"""Write a network directly in Python; the result is the same IR the ONNX front end produces.

    g = GraphBuilder("mlp")
    x = g.input("x", (8, 64))
    h = g.relu(g.gemm(x, W1, b1, name="fc1"))
    y = g.softmax(g.gemm(h, W2, b2, name="fc2"))
    graph = g.build(outputs=[y])

Weights are NumPy arrays in the IR's layouts: gemm W is [K, F] (x @ W + b over the last
axis of x [B, ..., K]), conv W is [O, C / groups, kh, kw]. A missing bias is zeros. A 1-D
convolution or pool is a 2-D one on [B, C, 1, L] with a (1, k) kernel. Every method checks its shapes and attributes as it
goes and raises `CompileError` naming the node, its op and the reason; `build` runs the same
normalisation passes as the ONNX front end (`d1tile.sw.ir.normalize`) and validates the graph.
Methods return the output `Tensor` (name and shape); wherever a tensor is expected, a `Tensor`
or its name will do.
"""

from __future__ import annotations

import numpy as np

from d1tile.sw.errors import CompileError
from d1tile.sw.ir import (Graph, Node, Tensor, canonical_attrs, infer_shape, normalize, pads4,
                         pair)


__all__ = ["GraphBuilder"]


class GraphBuilder:
    """Builds a `Graph` one op at a time, in order (so the node list is topological)."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self._inputs: list[str] = []
        self._nodes: list[Node] = []
        self._tensors: dict[str, Tensor] = {}
        self._constants: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    # -- names --
    def _fresh(self, base: str) -> str:
        taken = lambda n: (n in self._tensors or n in self._constants
                           or any(node.name == n for node in self._nodes))
        while True:
            self._counts[base] = self._counts.get(base, 0) + 1
            name = f"{base}{self._counts[base]}"
            if not taken(name):
                return name

    def _tensor(self, ref) -> str:
        name = ref.name if isinstance(ref, Tensor) else ref
        if name not in self._tensors:
            raise CompileError(f"tensor '{name}' is not an activation of this graph (use "
                               "g.input() or the result of an op)")
        return name

    def constant(self, value, name: str | None = None) -> str:
        """Add a float32 constant; returns its name."""
        name = name or self._fresh("c")
        if name in self._constants or name in self._tensors:
            raise CompileError(f"constant '{name}': the name is already used")
        array = np.asarray(value, dtype=np.float32)
        self._constants[name] = array
        return name

    # -- graph inputs --
    def input(self, name: str, shape) -> Tensor:
        """A graph input of static `shape` (dim 0 is the batch)."""
        shape = tuple(int(d) for d in shape)
        if name in self._tensors or name in self._constants:
            raise CompileError(f"tensor '{name}': the name is already used")
        if not shape or any(d < 1 for d in shape):
            raise CompileError(f"tensor '{name}': input shape {list(shape)} must be static, "
                               "positive and include the batch")
        self._tensors[name] = Tensor(name, shape)
        self._inputs.append(name)
        return self._tensors[name]

    # -- ops --
    def _emit(self, op: str, inputs: list[str], attrs: dict, name: str | None,
              output: str | None = None) -> Tensor:
        name = name or self._fresh(op)
        if any(n.name == name for n in self._nodes):
            raise CompileError(f"node '{name}' ({op}): another node has the same name")
        output = output or name
        if output in self._tensors or output in self._constants:
            output = self._fresh(f"{name}.out")
        node = Node(op, name, inputs, [output], attrs)
        shapes = [self._constants[i].shape if i in self._constants else self._tensors[i].shape
                  for i in inputs]
        consts = [self._constants.get(i) for i in inputs]
        self._tensors[output] = Tensor(output, infer_shape(node, shapes, consts))
        self._nodes.append(node)
        return self._tensors[output]

    def _weights(self, name: str, w, b, n_out_axis: int, what: str):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim < 2:
            raise CompileError(f"node '{name}' ({what}): weight shape {list(w.shape)} has too "
                               "few dimensions")
        n_out = w.shape[n_out_axis]
        b = np.zeros(n_out, np.float32) if b is None else np.asarray(b, np.float32)
        return self.constant(w, f"{name}.W"), self.constant(b, f"{name}.b")

    def gemm(self, x, W, b=None, *, name: str | None = None) -> Tensor:
        """x [B, ..., K] @ W [K, F] + b [F], over the last axis: [B, ..., F]."""
        name = name or self._fresh("gemm")
        w, bias = self._weights(name, W, b, 1, "gemm")
        return self._emit("gemm", [self._tensor(x), w, bias], {}, name)

    def conv(self, x, W, b=None, *, strides=1, pads=0, dilations=1, groups=1,
             name: str | None = None) -> Tensor:
        """2-D convolution of x [B, C, H, W] by W [O, C / groups, kh, kw] (+ b [O]); `pads`
        is an int, (ph, pw) or (top, left, bottom, right); padding is zeros; `dilations` an
        int or (dh, dw); `groups` splits C and O into that many groups (depthwise: groups =
        C). A 1-D convolution is one on [B, C, 1, L] with W [O, C / groups, 1, k]."""
        name = name or self._fresh("conv")
        w, bias = self._weights(name, W, b, 0, "conv")
        return self._emit("conv", [self._tensor(x), w, bias], canonical_attrs("conv", {
            "strides": pair(strides, f"node '{name}' (conv): strides"),
            "pads": pads4(pads, f"node '{name}' (conv): pads"),
            "dilations": pair(dilations, f"node '{name}' (conv): dilations"),
            "group": int(groups)}), name)

    def relu(self, x, *, name: str | None = None) -> Tensor:
        return self._emit("relu", [self._tensor(x)], {}, name)

    def add(self, a, b, *, name: str | None = None) -> Tensor:
        """a + b: two activations of one shape, or an activation and a constant (a NumPy array
        or a constant's name) that broadcasts to one sample."""
        operands = []
        for ref in (a, b):
            if isinstance(ref, str) and ref in self._constants:
                operands.append(ref)
            elif isinstance(ref, (Tensor, str)):
                operands.append(self._tensor(ref))
            else:
                operands.append(self.constant(ref))
        return self._emit("add", operands, {}, name)

    def _pool(self, op, x, kernel, strides, pads, dilations, ceil_mode, name,
              **extra) -> Tensor:
        name = name or self._fresh(op)
        kernel = pair(kernel, f"node '{name}' ({op}): kernel")
        strides = kernel if strides is None else pair(strides, f"node '{name}' ({op}): strides")
        return self._emit(op, [self._tensor(x)], canonical_attrs(op, {
            "kernel": kernel, "strides": strides,
            "pads": pads4(pads, f"node '{name}' ({op}): pads"),
            "dilations": pair(dilations, f"node '{name}' ({op}): dilations"),
            "ceil_mode": bool(ceil_mode), **extra}), name)

    def maxpool(self, x, kernel, strides=None, pads=0, *, dilations=1, ceil_mode=False,
                name: str | None = None) -> Tensor:
        """Max over kernel windows (strides default to the kernel); padding never wins.
        `dilations` spaces the taps; `ceil_mode` rounds the output size up (ONNX: less a last
        window that would start in the end padding)."""
        return self._pool("maxpool", x, kernel, strides, pads, dilations, ceil_mode, name)

    def avgpool(self, x, kernel, strides=None, pads=0, *, count_include_pad: bool = False,
                dilations=1, ceil_mode=False, name: str | None = None) -> Tensor:
        """Mean over kernel windows (strides default to the kernel), divided by the taps
        inside the padded extent if `count_include_pad`, else by those inside the input (ONNX's
        default); `dilations` and `ceil_mode` as `maxpool`."""
        return self._pool("avgpool", x, kernel, strides, pads, dilations, ceil_mode, name,
                          count_include_pad=bool(count_include_pad))

    def flatten(self, x, *, name: str | None = None) -> Tensor:
        return self._emit("flatten", [self._tensor(x)], {}, name)

    def reshape(self, x, shape, *, name: str | None = None) -> Tensor:
        """Reshape to a static `shape` whose dim 0 is the batch (-1 is allowed once)."""
        x = self._tensor(x)
        name = name or self._fresh("reshape")
        src = self._tensors[x].shape
        shape = [int(d) for d in shape]
        if shape.count(-1) == 1:
            known = int(np.prod([d for d in shape if d != -1]))
            if known > 0 and int(np.prod(src)) % known == 0:
                shape[shape.index(-1)] = int(np.prod(src)) // known
        return self._emit("reshape", [x], {"shape": tuple(shape)}, name)

    def softmax(self, x, axis: int = -1, *, name: str | None = None) -> Tensor:
        """Softmax along `axis` (not the batch); runs on the host, so it must be a final op."""
        x = self._tensor(x)
        rank = len(self._tensors[x].shape)
        return self._emit("softmax", [x], {"axis": axis + rank if axis < 0 else axis}, name)

    # -- result --
    def build(self, outputs) -> Graph:
        """The graph computing `outputs` (Tensors or names), normalised and validated."""
        outputs = [self._tensor(o) for o in outputs]
        graph = Graph(self.name, list(self._inputs), outputs, list(self._nodes),
                      dict(self._tensors), dict(self._constants))
        return normalize(graph)
