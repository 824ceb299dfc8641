"""Target `ethos-u`: the integer-only `.tflite` compiled by Arm's Vela for an Ethos-U NPU.

The file is the `tflm` one (Ethos-U runs inside TFLite Micro: Vela replaces the NPU-able part
of the graph by one `ethos-u` custom op and leaves the rest to TFLM's kernels); it is checked
on TFLite Micro's host interpreter like `tflm`, then compiled by `ethos-u-vela` for the chosen
accelerator (default ethos-u55-128).  From Vela's summary the card reports operators on the NPU
and on the CPU (with Vela's reason for each that falls back), SRAM and flash use, and Vela's
estimate of the inference time, which is a model of the NPU, not a measurement.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.targets.base import Lowered, Target

__all__ = ["make_ethos_u", "run_vela", "ACCELERATORS"]

ACCELERATORS = (
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
)
_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)", re.M)
_KIB = re.compile(r"^Total (SRAM|Off-chip Flash) used\s+([\d.]+) KiB", re.M)
# "Warning (supported operators) operator: GATHER, ofm: 'y_q'" then "Reason: Unsupported opType"
_FALLBACK = re.compile(r"^Warning \(supported operators\) operator: (\w+), ofm: '([^']*)'\s*\nReason: (.*)$", re.M)


def run_vela(data: bytes, accelerator: str, stem: str = "model") -> tuple[bytes, dict[str, Any]]:
    """Compile a `.tflite` with Vela; its output file and the figures of its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{stem}.tflite"
        source.write_bytes(data)
        cmd = [sys.executable, "-m", "ethosu.vela", str(source), "--accelerator-config", accelerator]
        cmd += ["--output-dir", str(Path(tmp) / "out")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise QCompileError(f"Vela could not compile the model for {accelerator}: {' | '.join(tail)}")
        out = Path(tmp) / "out"
        compiled = (out / f"{stem}_vela.tflite").read_bytes()
        rows = [row for path in out.glob("*_summary_*.csv") for row in csv.DictReader(path.open())]
    text = done.stdout + done.stderr
    counts = {kind.lower(): int(n) for kind, n in _COUNT.findall(text)}
    memory = {kind: float(kib) for kind, kib in _KIB.findall(text)}
    summary = {
        "accelerator": accelerator,
        "npu_operators": counts.get("npu", 0),
        "cpu_operators": counts.get("cpu", 0),
        "cpu_fallbacks": [f"{op} ({out!r}): {why.strip()}" for op, out, why in _FALLBACK.findall(text)][:20],
        "sram_kib": memory.get("SRAM"),
        "flash_kib": memory.get("Off-chip Flash"),
        "estimated_inference_ms": 1000 * float(rows[0]["inference_time"]) if rows else None,
        "estimated_cycles": int(float(rows[0]["cycles_total"])) if rows else None,
        "system_config": rows[0]["system_config"] if rows else None,
        "vela_bytes": len(compiled),
    }
    return compiled, summary


def _lower(model: ir.Model, target: Target) -> Lowered:
    from qcompile.targets.tflite import lower_file

    lowered = lower_file(model, target)
    accelerator = str(target.options["accelerator"])
    compiled, vela = run_vela(lowered.files["{stem}.tflite"], accelerator)
    lowered.files["{stem}_vela.tflite"] = compiled
    lowered.summary["vela"] = vela
    return lowered


def make_ethos_u(**options) -> Target:
    from qcompile.targets.tflite import make_tflite_family

    accelerator = options.pop("accelerator", "ethos-u55-128")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown Ethos-U accelerator {accelerator!r}; known: {', '.join(ACCELERATORS)}")
    description = f"Arm Ethos-U ({accelerator}) through Vela, inside TFLite Micro"
    base = make_tflite_family("ethos-u", description, True, options, ("accelerator",))
    return dataclasses.replace(base, options={**base.options, "accelerator": accelerator}, lower=_lower)
