"""qcompile: an ONNX graph compiler for int8 edge deployment.

Example::

    import qcompile
    result = qcompile.compile("model.onnx", target="ort-cpu", calibration="calib.npz")
    result.save("out/")
    print(result.card["fidelity"])

The public names load on first use, so `python -m qcompile.cli` installs its signal
handling before ONNX Runtime is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from qcompile.errors import QCompileError

if TYPE_CHECKING:
    from qcompile.api import CompileResult, compile
    from qcompile.model_io import load_model, save_model
    from qcompile.plan import NodeDecision, QuantPlan, QuantSpec

__all__ = [
    "compile",
    "CompileResult",
    "QCompileError",
    "QuantPlan",
    "QuantSpec",
    "NodeDecision",
    "load_model",
    "save_model",
]
__version__ = "0.1.0"

_HOMES = {
    "compile": "qcompile.api",
    "CompileResult": "qcompile.api",
    "load_model": "qcompile.model_io",
    "save_model": "qcompile.model_io",
    "QuantPlan": "qcompile.plan",
    "QuantSpec": "qcompile.plan",
    "NodeDecision": "qcompile.plan",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'qcompile' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
