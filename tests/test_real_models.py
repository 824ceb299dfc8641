"""Real trained models (fetched by package name) compile, load and run on ORT with the card filled in.

Deselect with `-m "not real_model"`.  Fidelity with the naive policy is recorded, not asserted:
the hybrid/selective policies are the ones with accuracy budgets.
"""

import math

import numpy as np
import pytest

import qcompile
from tests.support import real_data
from tests.support.real_models import REAL_MODELS, fetch

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

SIZE_BUDGET = {"ppocrv4_det": 0.30, "ppocrv4_rec": 0.30}


def _without_labels(samples):
    return [{k: v for k, v in s.items() if k != "labels" or v.dtype.kind != "U"} for s in samples]


@pytest.fixture(scope="module")
def speech_available():
    try:
        real_data.speech_16k()
    except qcompile.QCompileError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_model_compiles_and_runs(name, request, tmp_path):
    if name == "silero_vad":
        request.getfixturevalue("speech_available")
    path = fetch(name)
    samples = _without_labels(real_data.SAMPLE_BUILDERS[name](path))
    calib, held = real_data.split(samples)
    result = qcompile.compile(path, "ort-cpu", calib, held, measure_latency=False)
    files = result.save(tmp_path)
    card = result.card
    assert card["fidelity"]["samples"] == len(held) > 0
    for out in card["fidelity"]["outputs"]:
        assert not math.isnan(out["sqnr_db"]) and -1.0 <= out["cosine"] <= 1.0 + 1e-9
    assert card["sizes"]["quantized_bytes"] == files["model"].stat().st_size
    if name in SIZE_BUDGET:
        assert card["sizes"]["ratio"] <= SIZE_BUDGET[name]
    # the written file runs on ORT and reproduces what the card measured
    import onnxruntime as ort

    sess = ort.InferenceSession(str(files["model"]), providers=["CPUExecutionProvider"])
    feeds = {i.name: held[0][i.name] for i in sess.get_inputs()}
    assert all(np.all(np.isfinite(o)) for o in sess.run(None, feeds) if o.dtype.kind == "f")
