"""Run a QDQ model on Qualcomm's QNN HTP backend through ONNX Runtime's QNN plugin EP.

The `onnxruntime-qnn` wheel ships the EP as a plugin library and `libQnnHtp.so`, which on x86-64
Linux runs the HTP as a simulator.  A session registers the plugin (once per process), takes the
EP's device with the HTP backend and, unless CPU fallback is allowed, sets
`session.disable_cpu_ep_fallback`, so a node the EP does not take fails the session.

The simulator is more permissive than a phone: it also runs float ops (fp32, or fp16 from v73 on).
So the EP's QNN graph is dumped (`dump_json_qnn_graph`) and every float tensor inside it that is not
a graph input or output is reported; the EP's op trace says which ONNX nodes it took.
Run times are the simulator's on this x86 CPU, not a phone's latency.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from qcompile.errors import QCompileError, first_line
from qcompile.runtime import feeds_of

__all__ = ["qnn_available", "qnn_session", "QnnRunner", "graph_report", "qnn_version"]

EP = "QNNExecutionProvider"
_FLOAT_TYPES = {562: "float32", 534: "float16"}  # QNN_DATATYPE_FLOAT_32 / _16
_GRAPH_IO = (0, 1)  # QNN_TENSOR_TYPE_APP_WRITE / APP_READ


def qnn_available() -> str | None:
    """None if the QNN HTP backend can run here, else why not."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the HTP simulator runs on x86-64 Linux, not {platform.system()} {platform.machine()}"
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return "onnxruntime-qnn is not installed (pip install 'qcompile[qnn]')"
    return None


def qnn_version() -> str:
    import onnxruntime_qnn

    info = getattr(onnxruntime_qnn, "build_and_package_info", None)
    return f"onnxruntime-qnn {onnxruntime_qnn.__version__}, QNN SDK {getattr(info, 'qnn_version', '?')}"


def _devices() -> list[Any]:
    """The QNN EP's devices, registering its plugin library on first use in this process."""
    import onnxruntime_qnn

    found = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not found:
        ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
        found = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not found:
        raise QCompileError("the QNN execution provider registered no device")
    return found


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """libQnnHtp writes a start-up line to the C-level stdout; keep stdout for the card and JSON."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def qnn_session(
    path: str | Path,
    provider_options: Mapping[str, str],
    *,
    allow_fallback: bool = False,
    entries: Mapping[str, str] | None = None,
) -> ort.InferenceSession:
    """A session on the HTP backend; without `allow_fallback`, one that refuses any CPU node."""
    import onnxruntime_qnn

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_provider_for_devices(_devices(), {"backend_path": onnxruntime_qnn.get_qnn_htp_path(), **provider_options})
    if not allow_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (entries or {}).items():
        so.add_session_config_entry(key, value)
    with _stdout_to_stderr():
        return ort.InferenceSession(str(path), sess_options=so)


def graph_report(dump_dir: Path) -> dict[str, Any]:
    """From the EP's dumps: QNN op counts, float tensors inside the graph, and the ONNX nodes it took."""
    ops: dict[str, int] = {}
    floats: list[str] = []
    for name in sorted(glob.glob(str(dump_dir / "graph" / f"{EP}_*.json"))):
        if name.endswith("_tensor_log.json"):
            continue
        graph = json.loads(Path(name).read_text())["graph"]
        for node in graph["nodes"].values():
            ops[node["type"]] = ops.get(node["type"], 0) + 1
        floats += [
            k for k, t in graph["tensors"].items() if t["data_type"] in _FLOAT_TYPES and t["type"] not in _GRAPH_IO
        ]
    report: dict[str, Any] = {"qnn_ops": dict(sorted(ops.items())), "float_tensors": floats}
    trace = dump_dir / "trace" / "qnn_op_trace.json"
    if trace.exists():
        data = json.loads(trace.read_text())
        summary = data.get("summary", {})
        report["ep_nodes"] = {"taken": summary.get("supported_nodes"), "of": summary.get("total_onnx_nodes")}
        report["ep_refused"] = [_refused(n) for n in data.get("unsupported_nodes", [])]
    return report


def _refused(entry: Any) -> str:
    """One node the EP left to the CPU, as `name (op): reason`."""
    if not isinstance(entry, dict):
        return str(entry)
    return f"{entry.get('node_name', '?')} ({entry.get('op_type', '?')}): {entry.get('reason', 'no reason given')}"


class QnnRunner:
    """The written QDQ model on the HTP backend: `outputs` runs the samples (float outputs, as ONNX's)."""

    def __init__(self, path: Path, provider_options: Mapping[str, str], allow_fallback: bool, summary: dict[str, Any]):
        self.path, self.options, self.allow_fallback = path, dict(provider_options), allow_fallback
        self.summary = summary  # the card's deployment section: run facts are added as they are measured
        self._session: ort.InferenceSession | None = None

    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = self._create()
        return self._session

    def _create(self) -> ort.InferenceSession:
        with tempfile.TemporaryDirectory(prefix="qcompile-qnn-") as tmp:
            dumps = {
                "dump_json_qnn_graph": "1",
                "json_qnn_graph_dir": str(Path(tmp) / "graph"),
                "enable_framework_op_trace": "1",
                "framework_op_trace_dir": str(Path(tmp) / "trace"),
            }
            for sub in ("graph", "trace"):
                (Path(tmp) / sub).mkdir()
            start = time.perf_counter()
            try:
                session = qnn_session(self.path, {**self.options, **dumps}, allow_fallback=self.allow_fallback)
            except Exception as e:
                raise QCompileError(f"QNN HTP refused the model: {first_line(e)}") from e
            self.summary["session_seconds"] = round(time.perf_counter() - start, 3)
            self.summary.update(graph_report(Path(tmp)))
        if floats := self.summary["float_tensors"]:
            self.summary.setdefault("problems", []).append(
                {
                    "problem": f"{len(floats)} tensor(s) inside the QNN graph are float ({', '.join(floats[:3])}): "
                    "the simulator runs them, an HTP without float units does not",
                    "advice": "give the nodes that write them a quantized form the NPU's table has, or leave "
                    "them to the CPU",
                    "fails": not self.allow_fallback,
                }
            )
        return session

    def outputs(
        self, samples: Sequence[Mapping[str, np.ndarray]], progress: Callable[[Iterable], Iterable] | None = None
    ) -> dict[str, list[np.ndarray]]:
        session = self.session()
        names = [o.name for o in session.get_outputs()]
        out: dict[str, list[np.ndarray]] = {n: [] for n in names}
        times = []
        for sample in (progress or (lambda it: it))(samples):
            feeds = feeds_of(session, sample)
            start = time.perf_counter()
            results = session.run(names, feeds)
            times.append(time.perf_counter() - start)
            for n, y in zip(names, results, strict=True):
                out[n].append(np.asarray(y))
        if times:
            self.summary["simulator_ms_per_inference"] = round(1e3 * statistics.median(times), 2)
        return out
