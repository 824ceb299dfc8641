"""Shared test helpers: tiny models from ONNX text, and running them on ONNX Runtime."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qcompile.pipeline import graph_signature
from qcompile.runtime import make_session, run_session

__all__ = [
    "ROOT",
    "SAMPLES",
    "parse",
    "ops",
    "run",
    "copy",
    "check",
    "graph_signature",
    "assert_equivalent_and_idempotent",
]

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def parse(text: str) -> ir.Model:
    """An onnx_ir model from ONNX text (checked by onnx first)."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def run(model: ir.Model, feeds: dict[str, np.ndarray], *, optimize: bool = False) -> dict[str, np.ndarray]:
    return run_session(make_session(model, optimize=optimize), feeds)


def copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def assert_equivalent_and_idempotent(pass_factory, model, feeds, *, rtol=1e-5, atol=1e-6):
    before = copy(model)
    result = pass_factory()(model)
    assert result.model is model
    check(model)
    want, got = run(before, feeds), run(model, feeds)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
    again = pass_factory()(model)
    assert not again.modified, "a second run must report no change"
    return result
