"""Where the time goes: ONNX Runtime's profiler, per node of our graph, at one thread.

ORT names a kernel it fused from our nodes after the node it replaced (`Conv@6` becomes the
QLinearConv `Conv@6_token_39`), and the Q/DQ nodes after their tensor (`x_Q`, `x_DQ`).  So a
profile of the float model and one of the int8 model, both reduced to our node names, say
per node what int8 costs next to float on this CPU.  Times are means per run over every
profiled run (`warmup` + `runs`), in microseconds; kernels ORT adds of its own (layout
reorders) are kept under their own names.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.runtime import feeds_of, make_session

__all__ = ["node_times_us", "our_name"]

_ORT_SUFFIX = re.compile(r"_token_\d+$")
_KERNEL = "_kernel_time"
_NCHWC = "_nchwc"


def our_name(ort_name: str, producers: Mapping[str, str] | None = None, nodes: frozenset[str] = frozenset()) -> str:
    """The name of the node an ORT kernel came from: `Conv@6_token_39` → `Conv@6`; a kernel ORT
    converted to its blocked layout is named after its output, `conv_out_nchwc`, and maps to
    that tensor's producer in `producers` (tensor name → node name); a float fusion appends
    its own name, `fc1/MatMulAddFusion` → `fc1` (when `fc1` is in `nodes`)."""
    name = _ORT_SUFFIX.sub("", ort_name)
    if producers and name.endswith(_NCHWC) and name[: -len(_NCHWC)] in producers:
        return producers[name[: -len(_NCHWC)]]
    if "/" in name and (head := name.rsplit("/", 1)[0]) in nodes:
        return head
    return name


def node_times_us(
    model: Any,
    sample: Mapping[str, np.ndarray],
    producers: Mapping[str, str] | None = None,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Mean kernel time per node name (ours where ORT's name leads back to it, see `our_name`)."""
    with tempfile.TemporaryDirectory(prefix="qcompile-profile-") as tmp:
        session = make_session(model, threads=1, profile_prefix=str(Path(tmp) / "profile"))
        feeds = feeds_of(session, sample)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    nodes = frozenset((producers or {}).values())
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith(_KERNEL):
            totals[our_name(event["name"][: -len(_KERNEL)], producers, nodes)] += float(event["dur"])
    return {name: totals[name] / (warmup + runs) for name in sorted(totals)}
