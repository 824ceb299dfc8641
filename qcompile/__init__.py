"""qcompile: an ONNX graph compiler for int8 edge deployment.

Example::

    import qcompile
    result = qcompile.compile("model.onnx", target="ort-cpu", calibration="calib.npz")
    result.save("out/")
    print(result.card["fidelity"])
"""

from qcompile.api import CompileResult, compile
from qcompile.errors import QCompileError
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
