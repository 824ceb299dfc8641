"""Passes with declared facts, and the pipeline that checks them before running.

A pass is an `onnx_ir` in-place pass that also declares the facts it
`requires` (e.g. "shapes", "calibrated") and the facts it `provides`.  The
pipeline walks its list once before running anything and fails early, naming
the missing fact and the pass that would provide it.  Analyses declare
`mutates = False`; the pipeline checks that they left the graph alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import onnx_ir as ir

from qcompile.errors import QCompileError

__all__ = ["CompilePass", "Pipeline", "PipelineError"]


class PipelineError(QCompileError):
    """A pipeline whose passes' declared facts do not line up."""


class CompilePass(ir.passes.InPlacePass):
    """Base class: an in-place pass with declared `requires` / `provides` facts."""

    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    mutates: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, model: ir.Model) -> ir.passes.PassResult:
        # onnx-ir's base __call__ runs a `requires(model)` precondition hook; here
        # `requires` names facts checked by the Pipeline, so only the in-place
        # contract is checked per call.
        result = self.call(model)
        if result.model is not model:
            raise ir.passes.PassError(f"in-place pass {self.name} returned a different model object")
        return result


def _graph_signature(model: ir.Model) -> tuple:
    nodes = tuple((n.op_type, tuple(v.name if v else "" for v in n.inputs)) for n in model.graph)
    return nodes, tuple(model.graph.initializers)


class Pipeline:
    """An ordered list of passes, checked for missing facts before it runs."""

    def __init__(self, passes: Sequence[CompilePass], *, given: Iterable[str] = ()):
        self.passes = list(passes)
        self.given = frozenset(given)
        self.check()

    def check(self) -> None:
        facts = set(self.given)
        providers = {fact: p.name for p in self.passes for fact in p.provides}
        for p in self.passes:
            missing = [f for f in p.requires if f not in facts]
            if missing:
                fact = missing[0]
                hint = (
                    f"{providers[fact]} provides it but runs later" if fact in providers
                    else "no pass in the pipeline provides it"
                )
                raise PipelineError(f"pass {p.name} requires fact {fact!r}: {hint}")
            facts.update(p.provides)

    def __call__(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for p in self.passes:
            before = None if p.mutates else _graph_signature(model)
            result = p(model)
            if before is not None and _graph_signature(result.model) != before:
                raise PipelineError(f"analysis pass {p.name} changed the graph; analyses must only read it")
            model = result.model
            modified = modified or result.modified
        return ir.passes.PassResult(model, modified)
