"""The compiler's one error type.

Every problem the compiler finds in what it is given (an unsupported op, attribute or shape, a
layer that does not fit a node, a file that is not a model) is raised as a `CompileError` whose
message names the thing at fault and the reason, e.g. "node 'conv1' (Conv): dilations [2, 2] are
not supported (only 1)". A compiler user sees that message, never a traceback.
"""

from __future__ import annotations


__all__ = ["CompileError", "CapacityError"]


class CompileError(ValueError):
    """Something the compiler was given cannot be compiled; the message says what and why."""


class CapacityError(CompileError):
    """What was given is valid but does not fit: a layer's regions do not fit a node's SRAM, or
    its program the instruction memory. The compiler may then split the batch over runs
    (`d1tile.sw.compiler.compile_model`)."""
