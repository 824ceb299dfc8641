"""What a target can run, as data: per-op quantization rules and dtypes.

Shared code reads these tables and never asks which target it is compiling
for.  An `OpRule` says which inputs of an op are activations, which is the
weight (and along which axis its per-channel scales run), which is the bias,
and how the output's quantization relates to the inputs:

- "own":   the output gets its own scale from calibration;
- "tied":  the output shares input 0's scale and zero point (MaxPool, Reshape…:
           pure data movement, so ORT can drop the Q/DQ pair around it);
- "tied_all": every input and the output share one scale (Concat);
- "fixed": the runtime fixes the output's (scale, zero point) to `fixed` (TFLite's
           LOGISTIC and SOFTMAX: 1/256, -128 in int8).

`fuses_activation` marks ops whose following Relu/Clip the runtime folds into
the output quantization, so the tensor between them is not quantized.
`float_output_ok` marks ops with an integer kernel that can write float (ORT's
QGemm, MatMulIntegerToFloat): a graph output they produce, or one only float nodes read, stays
float; `bias_add` also stores a float bias Add after such an output as the op's int32 bias.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.ir_utils import is_float_value

__all__ = ["OpRule", "Target", "WeightAxis", "OUTPUT_MODES", "LegalityError", "Lowered", "Lower"]

OUTPUT_MODES = ("own", "tied", "tied_all", "fixed")
WeightAxis = Callable[[ir.Node, int], int | None]  # (node, weight rank) -> channel axis


class LegalityError(QCompileError):
    """The compiled graph breaks one of the target's rules (names node and rule)."""


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized on a target."""

    op_type: str
    activations: tuple[int, ...] = (0,)
    weight: int | None = None
    weight_axis: WeightAxis | None = None
    bias: int | None = None
    output: str = "own"
    fuses_activation: bool = False
    float_output_ok: bool = False  # integer kernel with a float output (graph outputs stay float)
    # with a float output, a float Add of a constant [N] vector after it is stored as its int32 bias
    # (ORT merges MatMul + Add into a Gemm when shapes are static: QGemm only with an int32 bias)
    bias_add: bool = False
    fixed: tuple[float, int] | None = None  # the output's (scale, zero point) when output == "fixed"
    a16: bool = False  # the target also runs it with 16-bit activations (the plan's "int16" precision)
    fixed16: tuple[float, int] | None = None  # the fixed output quantization with 16-bit activations
    weight_dtype: str | None = None  # the weight's own type, asymmetric (None: the target's, symmetric)
    a16_needs_weight: bool = False  # 16-bit only with a constant weight (QNN: two 16-bit activations into a MatMul)

    def runs_a16(self, node: ir.Node) -> bool:
        """The target runs `node` with 16-bit activations."""
        if not self.a16:
            return False
        if not self.a16_needs_weight:
            return True
        weight = node.inputs[self.weight] if self.weight is not None and self.weight < len(node.inputs) else None
        producer = weight.producer() if weight is not None else None
        if producer is not None and producer.op_type == "DequantizeLinear":  # a QDQ graph: the DQ's data
            weight = producer.inputs[0]
        return weight is not None and weight.is_initializer()

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"{self.op_type}: output mode {self.output!r} not in {OUTPUT_MODES}")
        if (self.output == "fixed") != (self.fixed is not None):
            raise ValueError(f"{self.op_type}: output mode 'fixed' goes with a fixed (scale, zero point)")


@dataclass
class Lowered:
    """What a target writes besides the QDQ ONNX model (e.g. a `.tflite`), and how to run it.

    `runner.outputs(samples, progress)` returns every output on every sample, as the float ONNX
    model would (its layout, float values), so fidelity is measured as for ONNX models;
    `check(samples, qdq_outputs, runner_outputs)` runs the other runtimes and compares each, and the
    runner's own outputs, with the QDQ model
    on ONNX Runtime, for the card.
    """

    files: dict[str, bytes]  # file name suffix ("tflite", "cc", ...) → content
    runner: Any
    summary: dict[str, Any]
    # (samples, QDQ outputs, deployed outputs, streams or None) → the other runtimes' agreement with the QDQ model
    check: Callable[[list, dict[str, list], dict[str, list], Any], dict[str, Any]] | None = None


Lower = Callable[[ir.Model, "Target"], Lowered]


@dataclass(frozen=True)
class Target:
    """A deployment target as data: its per-op rules, dtypes, opset range and options."""

    name: str
    description: str
    ops: Mapping[str, OpRule]
    activation_dtype: str
    weight_dtype: str
    min_opset: int = 13
    preferred_opset: int = 21
    max_opset: int = 21
    per_channel: bool = True
    weight_reduce_range: bool = False
    activation_symmetric: bool = False
    fusable_activations: tuple[str, ...] = ("Relu", "Clip")
    float_kernels: tuple[str, ...] = ()  # ops it runs natively in float (decomposed forms are fused into them)
    allowed_qdq_dtypes: tuple[str, ...] = ("int8", "uint8", "int32")
    a16_dtype: str | None = None  # 16-bit activation type where a node's precision is "int16" (None: no 16-bit)
    a16_symmetric: bool = True  # TFLite's 16x8: zero point 0
    notes: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    lower: Lower | None = None  # writes the deployment file and runs it; None: the QDQ ONNX model is the file
    static_graph: bool = False  # one graph, static shapes: integer inputs are fixed to the data's values
    explicit_shapes: bool = False  # dynamic input dimensions need --input-shape (not the data's sizes)
    float_runs: bool = True  # a node kept float runs on the target (False: an NPU, where it leaves for the CPU)
    uniform_widths: bool = False  # a node reads and writes one integer width (passes/convert_widths)
    keeps_integer_inputs: bool = False  # static graph: only scalar integer inputs (a rate, a flag) become constants
    # its integer convolutions take a scale per channel of the activations they write and (depthwise) read,
    # folded into their weights' scales (qcompile.channel_scales)
    absorbs_channel_scales: bool = False
    ort_is_runtime: bool = False  # ORT's CPU runs the QDQ model in deployment (else it stands in for the target's)
    # before calibration: raises on a float graph `lower` could never take; returns extra files to write
    precheck: Callable[[ir.Model, Target], dict[str, bytes]] | None = None

    def rule(self, node: ir.Node) -> OpRule | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        return self.ops.get(node.op_type)

    def has_kernel(self, op_type: str) -> bool:
        """The target runs `op_type` as one kernel, integer or float."""
        return op_type in self.ops or op_type in self.float_kernels

    def quantizable_nodes(self, model: ir.Model) -> list[ir.Node]:
        """Nodes with an integer rule that carry float data (not the int64 arithmetic of shape computations)."""
        return [
            n for n in model.graph.all_nodes() if self.rule(n) is not None and any(is_float_value(v) for v in n.outputs)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "activation_dtype": self.activation_dtype,
            "weight_dtype": self.weight_dtype,
            "per_channel": self.per_channel,
            "weight_reduce_range": self.weight_reduce_range,
            "notes": list(self.notes),
            "options": dict(self.options),
        }


def conv_weight_axis(node: ir.Node, rank: int) -> int:
    return 1 if node.op_type == "ConvTranspose" else 0


def gemm_weight_axis(node: ir.Node, rank: int) -> int:
    attr = node.attributes.get("transB")
    return 0 if (attr is not None and attr.as_int()) else 1


def matmul_weight_axis(node: ir.Node, rank: int) -> int | None:
    return rank - 1 if rank == 2 else None
