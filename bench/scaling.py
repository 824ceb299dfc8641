"""Compile time against graph size: a chain of N × (MatMul 16×16 → Relu), N = 250 … 4000.

Every pass should be linear in the number of nodes; the ratio time(N) / time(smallest N)
against N / smallest N shows it.  Each size compiles in a fresh process (10 calibration
samples, no latency measurement).  Results: bench/results/scaling.json, with the machine.

    python -m bench.scaling [N ...]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).parent


def chain(
    rng: np.random.Generator, layers: int, shape: list[int], std: float, opset: int = 17, ir_version: int = 8
) -> onnx.ModelProto:
    """x → N × (MatMul by a random [width, width] weight → Relu), width = shape[-1]."""
    width = shape[-1]
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(onnx.numpy_helper.from_array(rng.normal(0, std, (width, width)).astype(np.float32), f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def write_chain(folder: Path, layers: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(layers)
    model = chain(rng, layers, [1, 16], 0.3)
    path, calib = folder / f"chain{layers}.onnx", folder / f"chain{layers}.npz"
    onnx.save(model, path)
    np.savez(calib, x=rng.normal(size=(10, 1, 16)).astype(np.float32))
    return path, calib


def compile_seconds(model: Path, calib: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qcompile.cli",
            "compile",
            str(model),
            "--calib",
            str(calib),
            "--no-latency",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main(sizes: list[int]) -> None:
    from qcompile.cpu import cpu_info

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            model, calib = write_chain(Path(tmp), n)
            seconds = compile_seconds(model, calib, Path(tmp) / f"out{n}")
            rows.append({"layers": n, "nodes": 2 * n, "seconds": round(seconds, 2)})
            print(rows[-1], flush=True)
    base = rows[0]
    for r in rows:
        r["size_ratio"] = r["nodes"] / base["nodes"]
        r["time_ratio"] = round(r["seconds"] / base["seconds"], 2)
    report = {
        "machine": {**cpu_info().summary(), "python": platform.python_version(), "cores": os.cpu_count()},
        "runs": rows,
    }
    (HERE / "results" / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [250, 500, 1000, 2000, 4000])
