"""QNN context binaries: the HTP graph compiled ahead of time, for deployment without compiling on the phone.

Creating a session with `ep.context_enable=1` makes the QNN EP write an ONNX model holding one
`com.microsoft:EPContext` node whose attribute carries the compiled QNN context (`embed_mode=1`:
inside the file).  The binary carries its SoC (`soc_model`); a phone with that SoC loads it
directly.  `context_outputs` loads it back on the HTP backend so the card can show that it gives the
outputs of the model it was compiled from.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.errors import QCompileError, first_line
from qcompile.runtime import feeds_of
from qcompile.targets.qnn_run import qnn_session

__all__ = ["write_context", "context_outputs"]


def write_context(path: Path, provider: Mapping[str, str], allow_fallback: bool, summary: dict[str, Any]) -> bytes:
    """The EPContext model of the QDQ model at `path`, compiled for `provider`'s SoC."""
    with tempfile.TemporaryDirectory(prefix="qcompile-qnn-ctx-") as tmp:
        out = Path(tmp) / "model_ctx.onnx"
        entries = {"ep.context_enable": "1", "ep.context_file_path": str(out), "ep.context_embed_mode": "1"}
        start = time.perf_counter()
        try:
            qnn_session(path, provider, allow_fallback=allow_fallback, entries=entries)
        except Exception as e:
            raise QCompileError(f"QNN HTP could not compile a context binary: {first_line(e)}") from e
        if not out.exists():
            raise QCompileError("the QNN EP wrote no context model")
        data = out.read_bytes()
    summary["context_binary"] = {"bytes": len(data), "compile_seconds": round(time.perf_counter() - start, 3)}
    return data


def context_outputs(
    data: bytes, provider: Mapping[str, str], allow_fallback: bool, samples: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, list[np.ndarray]]:
    """Every output of the context model on every sample, on the HTP backend."""
    with tempfile.TemporaryDirectory(prefix="qcompile-qnn-ctx-") as tmp:
        path = Path(tmp) / "model_ctx.onnx"
        path.write_bytes(data)
        session = qnn_session(path, provider, allow_fallback=allow_fallback)
        names = [o.name for o in session.get_outputs()]
        out: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for sample in samples:
            for n, y in zip(names, session.run(names, feeds_of(session, sample)), strict=True):
                out[n].append(np.asarray(y))
    return out
