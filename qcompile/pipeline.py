"""Running onnx-ir pass sequences with the user's errors brought to the surface.

Passes are composed with onnx-ir's `Sequential` / `PassManager`.  Every pass runs its
`requires(model)` / `ensures(model)` hooks (a failure there becomes onnx-ir's
`PreconditionError` / `PostconditionError`), and `Sequential` wraps any failure in a
`PassError` naming the passes that ran before.  That context is right for a bug; for a
problem in the user's input (a `QCompileError` raised inside a pass) the user should see
their one-line message, so `run_passes` re-raises it, chained to the pass error for
`--debug`.  A bug comes out as a `PassError` whose message names the root cause.

`ReadOnlyPass` is onnx-ir's contract for a pass that only inspects the model
(`in_place=True`, `changes_input=False`), checked: its `ensures` fails if the graph changed.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompile.errors import QCompileError, first_line
from qcompile.ir_utils import op_histogram

__all__ = [
    "run_passes",
    "user_error_in",
    "root_cause",
    "ReadOnlyPass",
    "graph_signature",
    "Recorded",
    "RemovingUnused",
    "CHANGES_KEY",
]

CHANGES_KEY = "qcompile.changes"  # model.meta: pass name → {"removed": Counter, "added": Counter} of ops


def user_error_in(error: BaseException) -> QCompileError | None:
    """The first `QCompileError` along the chain of causes of `error`, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, QCompileError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception along the chain of causes."""
    seen = {id(error)}
    while (cause := error.__cause__ or error.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        error = cause
    return error


def run_passes(passes: ir.passes.PassBase, model: ir.Model) -> ir.passes.PassResult:
    """Run `passes` on `model`; a user error raised inside comes out as itself."""
    try:
        return passes(model)
    except (ir.passes.PassError, ir.passes.InvariantError) as e:
        user = user_error_in(e)
        if user is not None:
            raise type(user)(str(user), exit_code=user.exit_code) from e
        root = root_cause(e)
        if root is e:
            raise
        raise ir.passes.PassError(f"{type(root).__name__}: {first_line(root)}") from e


def graph_signature(model: ir.Model) -> tuple:
    """Nodes (op, attributes, input names) and initializers: equal before and after a pass that only reads."""
    nodes = tuple((n.op_type, tuple(n.attributes), tuple(v.name if v else "" for v in n.inputs)) for n in model.graph)
    return nodes, tuple(model.graph.initializers), tuple(v.name for v in model.graph.outputs)


class RemovingUnused(ir.passes.InPlacePass):
    """Runs `inner`; when it changed the model, drops the nodes and initializers it left unused.

    (A `Sequential` with `RemoveUnusedNodesPass` would report a change on every run of a model
    that came with unused initializers, so a `PassManager` could never see a fixed point.)
    """

    def __init__(self, inner: ir.passes.PassBase):
        super().__init__()
        self.inner = inner

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = self.inner(model).modified
        if modified:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)


class Recorded(ir.passes.InPlacePass):
    """Runs `inner` and adds the ops it removed and added to `model.meta[CHANGES_KEY][name]`
    (nothing when its changes left the op counts as they were)."""

    def __init__(self, name: str, inner: ir.passes.PassBase):
        super().__init__()
        self.name, self.inner = name, inner

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = op_histogram(model)
        result = self.inner(model)
        after = op_histogram(model) if result.modified else before
        if after != before:
            entry = model.meta.setdefault(CHANGES_KEY, {}).setdefault(
                self.name, {"removed": Counter(), "added": Counter()}
            )
            entry["removed"].update(before - after)
            entry["added"].update(after - before)
        return ir.passes.PassResult(model, result.modified)


class ReadOnlyPass(ir.passes.PassBase):
    """A pass that inspects the model and returns it unchanged (onnx-ir's side-effect-only contract)."""

    _before: tuple | None = None

    @property
    def in_place(self) -> bool:
        return True

    @property
    def changes_input(self) -> bool:
        return False

    def requires(self, model: ir.Model) -> None:
        self._before = graph_signature(model)

    def ensures(self, model: ir.Model) -> None:
        if graph_signature(model) != self._before:
            raise ir.passes.PostconditionError(f"{type(self).__name__} only reads the model, but changed it")
