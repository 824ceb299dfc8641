"""A synthetic MLP whose weights exceed 2 GB, written layer by layer into one external-data file.

    x[1, width] → (MatMul W_i → Relu) × (layers − 1) → MatMul W_last → y[1, width]

W_i ~ N(0, 2/width) (He init, so activations keep their scale).  Only one layer's
weights are in memory at a time: writing the model costs ~width² × 4 bytes of RAM.

`python -m tests.support.huge_model OUT_FOLDER [--layers N] [--width W]` writes
model.onnx, model.onnx.data and calib.npz into OUT_FOLDER.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx_ir as ir

DATA_NAME = "model.onnx.data"


def _typed(value: ir.Value, name: str, width: int) -> ir.Value:
    value.name, value.dtype, value.shape = name, ir.DataType.FLOAT, ir.Shape([1, width])
    return value


def write_huge_model(folder: Path, *, layers: int = 9, width: int = 8192, samples: int = 24, seed: int = 0) -> Path:
    """Write the model and its calibration data into `folder`; returns the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([1, width]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 21}, name="huge_mlp")
    layer_bytes = width * width * 4
    with open(folder / DATA_NAME, "wb") as data:
        h = x
        for i in range(layers):
            w = rng.standard_normal((width, width), dtype=np.float32)
            w *= np.float32(np.sqrt(2.0 / width))
            w.tofile(data)
            tensor = ir.ExternalTensor(
                DATA_NAME,
                offset=i * layer_bytes,
                length=layer_bytes,
                dtype=ir.DataType.FLOAT,
                shape=ir.Shape([width, width]),
                name=f"w{i}",
                base_dir=folder,
            )
            weight = ir.Value(
                name=f"w{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([width, width]), const_value=tensor
            )
            graph.register_initializer(weight)
            mm = ir.node("MatMul", [h, weight], name=f"fc{i}")
            graph.append(mm)
            h = _typed(mm.outputs[0], f"h{i}", width)
            if i < layers - 1:
                relu = ir.node("Relu", [h], name=f"relu{i}")
                graph.append(relu)
                h = _typed(relu.outputs[0], f"r{i}", width)
        h.name = "y"
        graph.outputs.append(h)
    model = ir.Model(graph, ir_version=10, producer_name="qcompile-tests")
    path = folder / "model.onnx"
    ir.save(model, path)  # the tensors are already external: only the graph is written here
    np.savez(folder / "calib.npz", x=rng.standard_normal((samples, 1, width), dtype=np.float32))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--width", type=int, default=8192)
    args = parser.parse_args()
    print(write_huge_model(args.folder, layers=args.layers, width=args.width))


if __name__ == "__main__":
    main()


# VmHWM, not ru_maxrss: ru_maxrss also counts the forked parent's pages from before exec
PEAK_RSS_WRAPPER = (
    "import sys\n"
    "from qcompile.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
    "print('peak_rss_bytes', int(hwm) * 1024, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def compile_peak_rss(argv: list[str]) -> tuple[int, int, str]:
    """Run `qcompile <argv>` in a fresh process: (exit code, its peak RSS in bytes, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *argv], capture_output=True, text=True)
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("peak_rss_bytes")]
    return proc.returncode, (peak[0] if peak else 0), proc.stderr
