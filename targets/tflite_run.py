"""Run a lowered `.tflite` on the real runtimes: LiteRT (reference or XNNPACK kernels) and TFLite Micro.

A runner takes the same samples as the ONNX model (float, ONNX layout) and returns outputs
the same way, so that fidelity is measured by the code that measures ONNX models.  On the
way in an int8 input is quantized as ONNX's QuantizeLinear does it, q = clamp(round_half_even
(x / s) + z), so that the runtime sees the integers the QDQ model sees; on the way out an int8
output is dequantized, r = s · (q − z), and both are transposed between layouts.

The tensor arena TFLite Micro needs is what its recording allocator reports after one
inference (`tflm_arena_bytes`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from qcompile.errors import QCompileError
from qcompile.targets.tflite_model import IoTensor, TfliteModel

__all__ = [
    "LiteRtRunner",
    "TflmRunner",
    "to_runtime",
    "from_runtime",
    "tflm_arena_bytes",
    "arena_with_headroom",
    "KERNELS",
]

KERNELS = ("reference", "xnnpack")


def to_runtime(tensor: IoTensor, x: np.ndarray) -> np.ndarray:
    """A float ONNX-layout array as the TFLite input `tensor` takes it."""
    x = np.transpose(np.asarray(x, np.float32), tensor.perm)
    if tensor.quant is None:
        return np.ascontiguousarray(x, np.float32)
    q = np.round(x / np.float32(tensor.quant.scale[0])) + tensor.quant.zero_point[0]
    info = np.iinfo(tensor.dtype)
    return np.clip(q, info.min, info.max).astype(tensor.dtype)


def from_runtime(tensor: IoTensor, y: np.ndarray) -> np.ndarray:
    """A TFLite output as a float array in ONNX layout."""
    if tensor.quant is not None:
        y = (y.astype(np.float32) - np.float32(tensor.quant.zero_point[0])) * np.float32(tensor.quant.scale[0])
    return np.transpose(y, np.argsort(tensor.perm))


class _Runner:
    """Shared sample handling: `outputs` runs every sample; subclasses `invoke` one."""

    def __init__(self, model: TfliteModel):
        self.model = model

    def invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [t.name for t in self.model.inputs if t.name not in sample]
        if missing:
            raise QCompileError(f"sample has no input {missing[0]!r}")
        raw = self.invoke([to_runtime(t, sample[t.name]) for t in self.model.inputs])
        return {t.name: from_runtime(t, y) for t, y in zip(self.model.outputs, raw, strict=True)}

    def raw(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The runtime's own outputs (integers for int8 outputs), in TFLite layout."""
        return self.invoke([to_runtime(t, sample[t.name]) for t in self.model.inputs])

    def outputs(
        self, samples: Sequence[dict[str, np.ndarray]], progress: Callable[[Iterable], Iterable] | None = None
    ) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {t.name: [] for t in self.model.outputs}
        for sample in (progress or (lambda it: it))(samples):
            for name, y in self.run(sample).items():
                out[name].append(y)
        return out


class LiteRtRunner(_Runner):
    """The `ai-edge-litert` interpreter, one thread, with TFLite's reference kernels or its default
    (XNNPACK-delegated) ones."""

    def __init__(self, model: TfliteModel, kernels: str = "reference", threads: int = 1):
        super().__init__(model)
        if kernels not in KERNELS:
            raise ValueError(f"kernels {kernels!r} not in {KERNELS}")
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.BUILTIN_REF if kernels == "reference" else OpResolverType.AUTO
        with _quiet():
            self.interpreter = Interpreter(
                model_content=model.data, experimental_op_resolver_type=resolver, num_threads=threads
            )
            self.interpreter.allocate_tensors()

    def invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for t, x in zip(self.model.inputs, arrays, strict=True):
            self.interpreter.set_tensor(t.index, x)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(t.index)) for t in self.model.outputs]


def _tflm_interpreter(data: bytes, arena: int) -> Any:
    """A TFLite Micro interpreter; if it cannot start, an error quoting what TFLite Micro logged."""
    from tflite_micro.python.tflite_micro import runtime

    with tempfile.TemporaryFile() as log:
        try:
            with _output_to(log):
                return runtime.Interpreter.from_bytes(data, arena_size=arena)
        except RuntimeError as e:
            log.seek(0)
            said = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
            raise QCompileError(f"TFLite Micro cannot run the model: {e}; it logged: {' | '.join(said[-4:])}") from e


class TflmRunner(_Runner):
    """TFLite Micro's host interpreter (the `tflite-micro` package: TFLM's own kernels), in an arena of
    `arena` bytes (measured if not given)."""

    def __init__(self, model: TfliteModel, arena: int | None = None):
        super().__init__(model)
        self.arena = arena or arena_with_headroom(tflm_arena_bytes(model))
        self.interpreter = _tflm_interpreter(model.data, self.arena)

    def invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for i, x in enumerate(arrays):
            self.interpreter.set_input(x, i)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_output(i)) for i in range(len(self.model.outputs))]


_GENEROUS_ARENA = 256 << 20
_TOTAL = re.compile(rb"Arena allocation total (\d+) bytes")


def arena_with_headroom(measured: int) -> int:
    """The arena to ship: the measured one plus 25%, in whole KiB (the allocator aligns each buffer, and a
    target's kernels may keep more scratch than the host's reference kernels)."""
    return -(-measured * 5 // 4 // 1024) * 1024


def tflm_arena_bytes(model: TfliteModel) -> int:
    """The tensor arena TFLite Micro's recording allocator reports after one inference in a generous arena.

    (Bisecting over arena sizes is not an option: the host interpreter may crash, not fail, in an arena
    that is too small.)"""
    inputs = [np.zeros(t.shape, t.dtype) for t in model.inputs]
    with tempfile.TemporaryFile() as log:
        with _output_to(log):
            it = _tflm_interpreter(model.data, _GENEROUS_ARENA)
            for i, x in enumerate(inputs):
                it.set_input(x, i)
            it.invoke()
            it.print_allocations()
        log.seek(0)
        found = _TOTAL.search(log.read())
    if found is None:
        raise QCompileError("TFLite Micro did not report its arena use")
    return int(found.group(1))


@contextlib.contextmanager
def _output_to(file: Any):
    """C-level stdout and stderr into `file` (TFLite Micro logs its allocation records there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    libc = ctypes.CDLL(None)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        yield
    finally:
        libc.fflush(None)  # C stdio buffers a redirected stream: flush it into `file`, not the restored fd
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def _quiet():
    """Silence the runtimes' C-level chatter on stderr ("Created TensorFlow Lite XNNPACK delegate")."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
