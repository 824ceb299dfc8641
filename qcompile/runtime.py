"""ONNX Runtime sessions for calibration, verification and latency.

The only place besides `model_io` where protobuf appears: a session is built
from the serialised model, optionally with extra graph outputs so that
intermediate tensors can be observed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from qcompile.errors import QCompileError

__all__ = ["make_session", "run_session", "median_latency_ms", "fused_op_counts", "feeds_of"]


def _proto(model: ir.Model | onnx.ModelProto | bytes | str | Path) -> bytes | str:
    if isinstance(model, ir.Model):
        return ir.to_proto(model).SerializeToString()
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, Path):
        return str(model)
    return model


def make_session(
    model: ir.Model | onnx.ModelProto | bytes | str | Path,
    *,
    threads: int | None = None,
    optimize: bool = True,
    extra_outputs: Sequence[str] = (),
    optimized_model_path: str | Path | None = None,
) -> ort.InferenceSession:
    """A CPU session; `extra_outputs` exposes intermediate tensors by name."""
    if extra_outputs:
        proto = ir.to_proto(model) if isinstance(model, ir.Model) else onnx.ModelProto.FromString(_proto(model))
        present = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra_outputs if n not in present)
        model = proto
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(_proto(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QCompileError(f"ONNX Runtime cannot load the model: {first}") from e


def feeds_of(session: ort.InferenceSession, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: sample[i.name] for i in session.get_inputs()}


def run_session(session: ort.InferenceSession, sample: Mapping[str, np.ndarray], names: Sequence[str] | None = None):
    try:
        outs = session.run(list(names) if names else None, feeds_of(session, sample))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QCompileError(f"ONNX Runtime failed to run the model: {first}") from e
    keys = list(names) if names else [o.name for o in session.get_outputs()]
    return dict(zip(keys, outs))


def median_latency_ms(session: ort.InferenceSession, sample: Mapping[str, np.ndarray], *, repeats: int = 20) -> float:
    """Median wall time of `repeats` runs after two warm-up runs."""
    feeds = feeds_of(session, sample)
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "QLinearConvTranspose")
_FLOAT_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")


def fused_op_counts(optimized: Iterable[onnx.NodeProto]) -> dict[str, int]:
    """Integer vs float compute kernels in ORT's optimized graph."""
    counts = {"integer": 0, "float": 0}
    for n in optimized:
        if n.op_type in _INTEGER_OPS:
            counts["integer"] += 1
        elif n.op_type in _FLOAT_COMPUTE:
            counts["float"] += 1
    return counts
