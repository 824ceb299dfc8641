"""Shared test helpers: tiny models from ONNX text, and running them on ONNX Runtime."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qcompile.runtime import make_session, run_session

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


def graph_signature(model: ir.Model) -> tuple:
    """Nodes (op and input names) and initializer names: equal before and after an analysis that only reads."""
    nodes = tuple((n.op_type, tuple(v.name if v else "" for v in n.inputs)) for n in model.graph)
    return nodes, tuple(model.graph.initializers)
