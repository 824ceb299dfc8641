"""What quantization a model already carries, read off its ops and weights at load.

    qdq           QuantizeLinear → DequantizeLinear pairs on activations (ORT's `quantize_static`,
                  NNCF, quantization-aware-training exports, qcompile's own output)
    weight-only   DequantizeLinear on constant weights only, or ops such as MatMulNBits
    qoperator     integer kernels with their scales as inputs: QLinearConv, QLinearMatMul, QGemm,
                  QLinearAdd, ... (ORT's QOperator format)
    integer-ops   ConvInteger, MatMulInteger, DynamicQuantizeLinear: scales computed at run time
                  (ORT's `quantize_dynamic`, onnx.quantize)
    float16       float16 or bfloat16 weights

A float model has none of these.  Several can hold at once (QDQ with float16 weights).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx_ir as ir

__all__ = ["QuantForm", "detect_form", "QDQ_OPS", "WEIGHT_ONLY_OPS"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_INTEGER_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "DynamicQuantizeLSTM")  # fmt: skip
_QOPERATOR_OPS = ("QGemm", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul")
WEIGHT_ONLY_OPS = ("MatMulNBits", "GatherBlockQuantized", "MatMulBnb4")
_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclass(frozen=True)
class QuantForm:
    """The quantization forms found (empty: a float model) and the ops behind each."""

    kinds: tuple[str, ...] = ()
    ops: dict[str, int] = field(default_factory=dict)  # quantization op → count, subgraphs included
    activation_dtypes: tuple[str, ...] = ()  # of QuantizeLinear outputs
    weight_dtypes: tuple[str, ...] = ()  # of the constants DequantizeLinear reads
    quantized_ops: dict[str, int] = field(default_factory=dict)  # ops reading a DequantizeLinear output

    @property
    def is_float(self) -> bool:
        return not self.kinds

    @property
    def quantized(self) -> bool:
        """Quantized in any form (half-precision weights alone are not)."""
        return bool(set(self.kinds) - {"float16"})

    def summary(self) -> str:
        """One line, e.g. "QDQ: 37 DequantizeLinear, 17 QuantizeLinear (uint8 activations, int8 weights) on 12 Conv"."""
        if self.is_float:
            return "float (no quantization)"
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])))
        dtypes = [f"{'/'.join(self.activation_dtypes)} activations"] if self.activation_dtypes else []
        dtypes += [f"{'/'.join(self.weight_dtypes)} weights"] if self.weight_dtypes else []
        on = ", ".join(f"{n} {op}" for op, n in sorted(self.quantized_ops.items(), key=lambda kv: (-kv[1], kv[0])))
        text = f"{' + '.join(self.kinds)}: {ops}" if ops else " + ".join(self.kinds)
        text += f" ({', '.join(dtypes)})" if dtypes else ""
        return text + (f" on {on}" if on else "")

    def describe(self) -> dict:
        return {
            "kinds": list(self.kinds),
            "ops": dict(self.ops),
            "activation_dtypes": list(self.activation_dtypes),
            "weight_dtypes": list(self.weight_dtypes),
            "quantized_ops": dict(self.quantized_ops),
            "summary": self.summary(),
        }


def _is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def detect_form(model: ir.Model) -> QuantForm:
    """The quantization forms `model` carries (it is only read)."""
    ops: Counter = Counter()
    quantized_ops: Counter = Counter()
    act_dtypes, weight_dtypes = set(), set()
    activation_q = False
    for node in model.graph.all_nodes():
        op = node.op_type
        if (
            op in QDQ_OPS
            or op in _INTEGER_OPS
            or op in _QOPERATOR_OPS
            or op in WEIGHT_ONLY_OPS
            or op.startswith("QLinear")
        ):
            ops[op] += 1
        if op == "QuantizeLinear" and not _is_constant(node.inputs[0]):
            activation_q = True
            zp = node.inputs[2] if len(node.inputs) > 2 else None
            dtype = node.outputs[0].dtype or (zp.dtype if zp is not None else None) or ir.DataType.UINT8
            act_dtypes.add(dtype.name.lower())
        if op == "DequantizeLinear":
            source = node.inputs[0]
            if _is_constant(source) and source is not None and source.dtype is not None:
                weight_dtypes.add(source.dtype.name.lower())
            for use in node.outputs[0].uses():
                if use.node.op_type not in QDQ_OPS:
                    quantized_ops[use.node.op_type] += 1
    kinds = []
    if activation_q:
        kinds.append("qdq")
    elif ops["DequantizeLinear"] or any(ops[o] for o in WEIGHT_ONLY_OPS):
        kinds.append("weight-only")
    if any(o.startswith("QLinear") or o in _QOPERATOR_OPS for o in ops):
        kinds.append("qoperator")
    if any(ops[o] for o in _INTEGER_OPS):
        kinds.append("integer-ops")
    if any(v.dtype in _HALF for g in (model.graph, *model.graph.subgraphs()) for v in g.initializers.values()):
        kinds.append("float16")
    return QuantForm(
        tuple(kinds), dict(ops), tuple(sorted(act_dtypes)), tuple(sorted(weight_dtypes)), dict(quantized_ops)
    )
