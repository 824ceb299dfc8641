"""ONNX Runtime sessions for calibration, verification and latency.

The only place besides `model_io` where protobuf appears: a session is built
from the serialised model (weights in external data files stay there),
optionally with extra graph outputs so that intermediate tensors can be observed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from qcompile.cpu import cpu_info
from qcompile.errors import QCompileError, first_line
from qcompile.expose import expose_branch_values
from qcompile.ir_utils import external_tensors, values_by_name
from qcompile.model_io import proto_without_value_info
from qcompile.quant_form import WEIGHT_ONLY_OPS

__all__ = [
    "SessionSource",
    "unfused_stand_in",
    "make_session",
    "run_session",
    "median_latency_ms",
    "interleaved_medians_ms",
    "fused_op_counts",
    "feeds_of",
]


PROTO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class SessionSource:
    """A model as ONNX Runtime loads it: serialised bytes (weights over the inline budget stay
    in their external data files) plus the folder those files live in.

    Picklable, so that worker processes can open their own sessions; `spill` swaps the bytes
    for a file holding them, so that a pool is sent a path, not the model, with every task.
    A 2 GB model whose weights are external serialises to a few kilobytes: nothing is inlined.
    """

    model: bytes | str  # serialised model, or the path of a file holding it
    data_folder: str | None = None
    # run Q/DQ as written (DQ → float op → Q), not fused into ORT's integer kernels: for a QDQ model
    # that stands in for another runtime on a CPU whose u8s8 kernels saturate (`unfused_stand_in`)
    unfused_qdq: bool = False

    def spill(self, folder: str | Path) -> SessionSource:
        if isinstance(self.model, str):
            return self
        path = Path(folder) / "session.onnx"
        path.write_bytes(self.model)
        return replace(self, model=str(path))

    def model_bytes(self) -> bytes:
        return Path(self.model).read_bytes() if isinstance(self.model, str) else self.model

    @classmethod
    def of(cls, model: ir.Model, extra_outputs: Sequence[str] = (), unfused_qdq: bool = False) -> SessionSource:
        proto = proto_without_value_info(model)
        _expose_inner(model, proto.graph, extra_outputs)
        present = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra_outputs if n not in present)
        folders = {t.base_dir for t in external_tensors(model)}
        if len(folders) > 1:
            raise QCompileError(f"the model's external data lives in several folders: {sorted(map(str, folders))}")
        if proto.ByteSize() > PROTO_LIMIT:
            raise QCompileError("the model holds over 2 GB of in-memory weights; save it with external data first")
        return cls(proto.SerializeToString(), str(folders.pop()) if folders else None, unfused_qdq)


def unfused_stand_in(ort_is_runtime: bool) -> bool:
    """Whether a target's QDQ model, run on ORT's CPU, must run unfused: when it stands in for
    another runtime (TFLite, an NPU) whose kernels take full 8-bit weights, on an x86 CPU without
    VNNI, where ORT's u8s8 kernels add pairs of products into a saturating int16 (`qcompile.cpu`):
    fused, ORT would measure its own overflow, not the plan.  Unfused, every op computes in float
    between DequantizeLinear and QuantizeLinear, which is the plan's arithmetic."""
    return not ort_is_runtime and cpu_info().u8s8_saturates


def _expose_inner(model: ir.Model, graph: onnx.GraphProto, names: Sequence[str]) -> None:
    """Lift the values of `names` that If branches compute to the main graph (see `qcompile.expose`)."""
    top = (
        {i.name for i in graph.input} | {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    )
    inner = [n for n in names if n not in top]
    if not inner:
        return
    values = values_by_name(model.graph)
    unknown = [n for n in inner if n not in values or values[n].dtype is None]
    if unknown:
        raise QCompileError(f"cannot observe {unknown[:3]}: the model has no such typed value")
    expose_branch_values(graph, {n: values[n].dtype.value for n in inner})  # type: ignore[union-attr]


def _source(model: ir.Model | onnx.ModelProto | bytes | str | Path | SessionSource) -> SessionSource | str:
    if isinstance(model, SessionSource):
        return model
    if isinstance(model, ir.Model):
        return SessionSource.of(model)
    if isinstance(model, onnx.ModelProto):
        return SessionSource(model.SerializeToString())
    if isinstance(model, (bytes, bytearray)):
        return SessionSource(bytes(model))
    return str(model)  # a path: ORT reads the file and its external data itself


def make_session(
    model: ir.Model | onnx.ModelProto | bytes | str | Path | SessionSource,
    *,
    threads: int | None = None,
    optimize: bool = True,
    extra_outputs: Sequence[str] = (),
    optimized_model_path: str | Path | None = None,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """A CPU session; `extra_outputs` exposes intermediate tensors by name (ir.Model only);
    `profile_prefix` turns ORT's profiler on (its JSON file starts with that path)."""
    if extra_outputs:
        if not isinstance(model, ir.Model):
            raise TypeError(f"extra outputs need an onnx_ir.Model, got {type(model).__name__}")
        model = SessionSource.of(model, extra_outputs)
    source = _source(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
        # large initializers go to a side file, so the optimized graph can be read without them
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", Path(optimized_model_path).name + ".data"
        )
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if isinstance(source, SessionSource) and source.unfused_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if isinstance(source, SessionSource) and source.data_folder:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", source.data_folder)
    try:
        return ort.InferenceSession(
            source.model_bytes() if isinstance(source, SessionSource) else source,
            so,
            providers=["CPUExecutionProvider"],
        )
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise QCompileError(f"ONNX Runtime cannot load the model: {first_line(e)}") from e


def feeds_of(session: ort.InferenceSession, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: sample[i.name] for i in session.get_inputs()}


def run_session(session: ort.InferenceSession, sample: Mapping[str, np.ndarray], names: Sequence[str] | None = None):
    try:
        outs = session.run(list(names) if names else None, feeds_of(session, sample))
    except Exception as e:
        raise QCompileError(f"ONNX Runtime failed to run the model: {first_line(e)}") from e
    keys = list(names) if names else [o.name for o in session.get_outputs()]
    return dict(zip(keys, outs, strict=True))


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


def interleaved_medians_ms(
    sessions: Sequence[ort.InferenceSession], sample: Mapping[str, np.ndarray], rounds: int = 3
) -> list[float]:
    """Median latency (ms) of each session over `rounds` rounds that alternate between them, so that
    a slow spell of a shared machine falls on every session alike."""
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for own, session in zip(times, sessions, strict=True):
            own.append(median_latency_ms(session, sample, repeats=10))
    return [statistics.median(t) for t in times]


_INTEGER_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearConvTranspose",
)
_FLOAT_COMPUTE = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv",
    "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention",
)  # fmt: skip


def fused_op_counts(optimized: Iterable[onnx.NodeProto]) -> dict[str, int]:
    """Integer kernels (QLinear*, integer MatMul/Conv) and float compute kernels (Conv, Gemm,
    MatMul, recurrent ops) in ORT's optimized graph, inside If/Loop/Scan bodies too; and, when
    there are any, weight-only kernels (MatMulNBits: low-bit weights, float activations)."""
    counts = {"integer": 0, "float": 0}
    for n in optimized:
        if n.op_type in _INTEGER_OPS or n.op_type.startswith("QLinear") or n.op_type == "DynamicQuantizeLSTM":
            counts["integer"] += 1
        elif n.op_type in _FLOAT_COMPUTE:
            counts["float"] += 1
        elif n.op_type in WEIGHT_ONLY_OPS:
            counts["weight_only"] = counts.get("weight_only", 0) + 1
        for attr in n.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for kind, count in fused_op_counts(body.node).items():
                    counts[kind] = counts.get(kind, 0) + count
    return counts
