"""What an NPU runs, as data, and which nodes of a QDQ model would leave it.

An NPU execution provider takes a node only as a quantized *node unit*: DequantizeLinear on every
float input, the op, QuantizeLinear on every float output (a Relu/Clip the op fuses may sit
between).  Everything else (an op outside its table, a float island, a 16-bit tensor where it
has only an 8-bit kernel, a dynamic shape) falls back to the CPU, silently unless the session
forbids it.  `NpuRules` holds the NPU-specific facts; `fallbacks` reads them and the op table
and lists every node that would leave the NPU with the rule it breaks.  Nothing here names an NPU:
a second NPU is a second table.

MACs (for the share on the NPU) count, per node, output elements × the reduction length:
Conv: Π(out) · C_in/g · Π(kernel); MatMul/Gemm: Π(out) · K.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import is_float_value
from qcompile.targets.base import LegalityError, Target

__all__ = [
    "NpuRules",
    "Fallback",
    "fallbacks",
    "npu_share",
    "node_macs",
    "quantized_casts",
    "check_npu",
    "npu_precheck",
    "CHECKS",
]

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SIXTEEN = ("uint16", "int16")
_FLOAT_IO = ("quantized-inputs", "quantized-outputs")


@dataclass(frozen=True)
class NpuRules:
    """The NPU's rules beyond its op table."""

    activation_dtypes: tuple[str, ...]  # integer types its kernels read and write
    weight_dtypes: tuple[str, ...]  # integer types of constant weights (signed ones with zero point 0)
    forbidden_ops: tuple[str, ...] = ("If", "Loop", "Scan")
    static_shapes: bool = True
    # op type → names of extra checks (keys of CHECKS) its nodes must pass
    op_checks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    wide_weights_need_wide_activations: bool = True  # 16-bit weights only with 16-bit activations
    integer_ops: tuple[str, ...] = ()  # ops it runs on integer tensors (token ids, masks, indices)
    float_ops: tuple[str, ...] = ()  # ops it runs in float itself (fp16 NPUs): a float node of these stays on it


@dataclass(frozen=True)
class Fallback:
    """A node the NPU would not run: its name, op, the rule and what breaks it."""

    node: str
    op_type: str
    rule: str
    problem: str

    def text(self) -> str:
        return f"node {self.node!r} ({self.op_type}): rule {self.rule}: {self.problem}"


def _dtype(value: ir.Value | None) -> str | None:
    return value.dtype.name.lower() if value is not None and value.dtype is not None else None


def _constant(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer()


def _dq_source(value: ir.Value | None) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def _consumed_by_q(value: ir.Value, fusable: tuple[str, ...]) -> bool:
    """Every reader of `value` is a QuantizeLinear, or one Relu/Clip whose output is."""
    uses = [u.node for u in value.uses()]
    if value.is_graph_output() or not uses:
        return False
    if len(uses) == 1 and uses[0].op_type in fusable and not uses[0].outputs[0].is_graph_output():
        return all(u.node.op_type == "QuantizeLinear" for u in uses[0].outputs[0].uses())
    return all(n.op_type == "QuantizeLinear" for n in uses)


def _last_axis(node: ir.Node, _: Target) -> str | None:
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else -1
    x = node.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    if axis == -1 or (rank is not None and axis == rank - 1):
        return None
    return f"axis {axis} is not the last axis"


def _not_both_wide(node: ir.Node, _: Target) -> str | None:
    sources = [_dq_source(v) for v in node.inputs[:2]]
    wide = [d is not None and not _constant(d.inputs[0]) and _dtype(d.inputs[0]) in _SIXTEEN for d in sources]
    return "both inputs are 16-bit activations (the NPU converts one to 8 bits)" if all(wide) else None


def _unsigned_weight(node: ir.Node, _: Target) -> str | None:
    dq = _dq_source(node.inputs[1] if len(node.inputs) > 1 else None)
    dtype = _dtype(dq.inputs[0]) if dq is not None else None
    return None if dtype is None or dtype.startswith("uint") else f"its weight is {dtype}; it needs an unsigned type"


CHECKS = {"last-axis": _last_axis, "not-both-16-bit": _not_both_wide, "unsigned-weight": _unsigned_weight}


def _io_problems(node: ir.Node, target: Target, rules: NpuRules) -> list[tuple[str, str]]:
    rule = target.rule(node)
    assert rule is not None
    problems = []
    wide_acts = False
    data = range(len(node.inputs)) if rule.output == "tied_all" else (*rule.activations, rule.weight, rule.bias)
    for i, value in enumerate(node.inputs):
        if value is None or i not in data or not is_float_value(value) or (i == rule.bias and value.is_initializer()):
            continue  # a parameter (shape, indices, Resize's scales), or a float bias the NPU quantizes itself
        dq = _dq_source(value)
        if dq is None:
            problems.append(("quantized-inputs", f"input {value.name!r} is float (no DequantizeLinear)"))
            continue
        dtype, constant = _dtype(dq.inputs[0]), _constant(dq.inputs[0])
        if constant and i == rule.weight:
            problems += _weight_problems(value.name or "?", dtype, dq, rules)
        elif not constant and dtype not in rules.activation_dtypes and i != rule.bias:
            allowed = ", ".join(rules.activation_dtypes)
            problems.append(("activation-dtype", f"input {value.name!r} is {dtype}; activations must be {allowed}"))
        wide_acts |= not constant and dtype in _SIXTEEN
    for value in node.outputs:
        if is_float_value(value) and not _consumed_by_q(value, target.fusable_activations):
            problems.append(("quantized-outputs", f"output {value.name!r} stays float (no QuantizeLinear follows)"))
    if wide_acts and not rule.runs_a16(node):
        problems.append(("16-bit-kernel", f"{node.op_type} has no 16-bit kernel here"))
    said = {r for r, _ in problems}
    if (
        rules.wide_weights_need_wide_activations
        and not wide_acts
        and "weight-dtype" not in said
        and _wide_weight(node, rule.weight)
    ):
        problems.append(("weight-dtype", "16-bit weights need 16-bit activations"))
    return problems


def _wide_weight(node: ir.Node, index: int | None) -> bool:
    dq = _dq_source(node.inputs[index]) if index is not None and index < len(node.inputs) else None
    return dq is not None and _dtype(dq.inputs[0]) in _SIXTEEN


def _weight_problems(name: str, dtype: str | None, dq: ir.Node, rules: NpuRules) -> list[tuple[str, str]]:
    if dtype not in rules.weight_dtypes:
        return [("weight-dtype", f"weight {name!r} is {dtype}; weights must be {', '.join(rules.weight_dtypes)}")]
    zp = dq.inputs[2] if len(dq.inputs) > 2 else None
    zp_values = zp.const_value.numpy() if zp is not None and zp.const_value is not None else np.zeros(1)
    if dtype is not None and not dtype.startswith("uint") and np.any(zp_values != 0):
        return [("weight-zero-point", f"signed weight {name!r} has a non-zero zero point (symmetric only)")]
    return []


def _dynamic_inputs(model: ir.Model) -> list[str]:
    return [
        v.name or "?"
        for v in model.graph.inputs
        if v.shape is None or not all(isinstance(d, int) and d > 0 for d in v.shape)
    ]


def fallbacks(model: ir.Model, target: Target, rules: NpuRules) -> list[Fallback]:
    """Every node of the QDQ `model` the NPU would hand back to the CPU, with the rule it breaks."""
    found: list[Fallback] = []
    if rules.static_shapes and (dynamic := _dynamic_inputs(model)):
        found.append(Fallback("<inputs>", "-", "static-shapes", f"inputs {dynamic} have dynamic dimensions"))
    for node in model.graph.all_nodes():
        if node.op_type in _QDQ and node.domain in ("", "ai.onnx"):
            continue
        name: str = node.name or node.op_type

        def add(rule: str, problem: str, node: ir.Node = node, name: str = name) -> None:
            found.append(Fallback(name, node.op_type, rule, problem))

        integer = not any(is_float_value(v) for v in (*node.inputs, *node.outputs) if v is not None)
        if node.op_type in rules.forbidden_ops:
            add("no-control-flow", f"{node.op_type} (control flow) cannot run on {target.name}")
        elif integer and node.op_type in rules.integer_ops:
            continue
        elif target.rule(node) is None:
            if node.op_type not in rules.float_ops:
                add("op-table", f"{node.op_type} is not in {target.name}'s op table")
        elif target.fusable_activations and node.op_type in target.fusable_activations and _fused(node, target):
            continue
        else:
            for rule_name, problem in _io_problems(node, target, rules):
                if not (rule_name in _FLOAT_IO and node.op_type in rules.float_ops):  # it may run in float
                    add(rule_name, problem)
            for check in rules.op_checks.get(node.op_type, ()):
                if (said := CHECKS[check](node, target)) is not None:
                    add(check, said)
    return found


def _listed(found: list[Fallback], most: int = 20) -> str:
    """The first `most` fallbacks, one per line, and how many more."""
    more = f"\n  ... and {len(found) - most} more" if len(found) > most else ""
    return "\n  ".join(f.text() for f in found[:most]) + more


def check_npu(model: ir.Model, target: Target, rules: NpuRules, allow_fallback: bool) -> dict[str, Any]:
    """The NPU's legality verdict on the QDQ `model`: a `LegalityError` listing every node and the rule it
    breaks (unless `allow_fallback`), else the card's summary: the NPU's share and any fallback."""
    found = fallbacks(model, target, rules)
    if found and not allow_fallback:
        raise LegalityError(
            f"{target.name}: {len(found)} node(s) break the NPU's rules (each would fall back to the CPU, "
            f"or lose precision):\n  {_listed(found)}\n"
            "(--allow-cpu-fallback writes the model anyway and reports the NPU's share)"
        )
    share = npu_share(model, found)
    summary: dict[str, Any] = {
        "npu": share,
        "integer_ops": share["nodes_on_npu"],
        "float_ops": share["nodes"] - share["nodes_on_npu"],
    }
    if found:
        summary["problems"] = [
            {
                "problem": f"{len(found)} node(s) fall back to the CPU ({100 * share['node_share']:.1f}% of nodes, "
                f"{100 * share['mac_share']:.1f}% of MACs on the NPU)",
                "advice": "see the card's NPU section for each node and the rule it breaks",
                "fails": False,
            }
        ]
    return summary


def npu_precheck(model: ir.Model, target: Target, rules: NpuRules, allow_fallback: bool) -> None:
    """Before calibrating, on the float graph: ops the NPU has no kernel for, control flow and dynamic
    shapes fail now (the rules on quantization come after it)."""
    if allow_fallback:
        return
    early = ("op-table", "no-control-flow", "static-shapes")
    found = [f for f in fallbacks(model, target, dataclasses.replace(rules, op_checks={})) if f.rule in early]
    if found:
        raise LegalityError(
            f"{target.name}: {len(found)} node(s) cannot run on the NPU:\n  {_listed(found)}\n"
            f"supported ops: {', '.join(sorted(target.ops))}\n"
            "(--allow-cpu-fallback compiles anyway and reports the NPU's share)"
        )


def quantized_casts(model: ir.Model) -> list[str]:
    """Cast(integer → float) → QuantizeLinear(s, z) becomes Cast(→ uint8) → DequantizeLinear(1, 0) →
    QuantizeLinear(s, z): an NPU has no float tensor to cast into, the DQ → Q pair is one requantizing
    op there.  Exact for integers in [0, 255] (a mask, a flag); applied only where the Q's whole
    range, (0 − z)·s … (255 − z)·s for uint8, lies in [0, 255], so the plan never meant to carry more.
    Returns the names of the rewritten Casts."""
    done = []
    for node in list(model.graph):
        out = node.outputs[0] if node.op_type == "Cast" and node.outputs else None
        src = node.inputs[0] if node.inputs else None
        if out is None or src is None or src.dtype is None or not src.dtype.is_integer() or not is_float_value(out):
            continue
        readers = [u.node for u in out.uses()]
        if not readers or out.is_graph_output() or not all(_small_unsigned_q(q) for q in readers):
            continue
        node.attributes["to"] = ir.AttrInt64("to", ir.DataType.UINT8.value)
        out.dtype = ir.DataType.UINT8
        one = _initializer(model, f"{out.name}_unit_scale", np.array(1.0, np.float32))
        zero = _initializer(model, f"{out.name}_unit_zero_point", np.array(0, np.uint8))
        as_float = ir.Value(name=f"{out.name}_as_float", shape=out.shape, type=ir.TensorType(ir.DataType.FLOAT))
        dq = ir.Node("", "DequantizeLinear", [out, one, zero], outputs=[as_float], name=f"{node.name}_DQ")
        model.graph.insert_after(node, dq)
        for q in readers:
            q.replace_input_with(0, as_float)
        done.append(node.name or "?")
    return done


def _initializer(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    from qcompile.ir_utils import add_initializer

    return add_initializer(model.graph, name, array)


def _small_unsigned_q(node: ir.Node) -> bool:
    """A QuantizeLinear to uint8 whose real range lies within [0, 255]."""
    if node.op_type != "QuantizeLinear" or len(node.inputs) < 3 or _dtype(node.inputs[2]) != "uint8":
        return False
    scale, zp = node.inputs[1], node.inputs[2]
    if scale is None or zp is None or scale.const_value is None or zp.const_value is None:
        return False
    s, z = scale.const_value.numpy().astype(np.float64), zp.const_value.numpy().astype(np.float64)
    return bool(np.all((0 - z) * s >= -1e-6) and np.all((255 - z) * s <= 255 + 1e-6))


def _fused(node: ir.Node, target: Target) -> bool:
    """A Relu/Clip that its producer's node unit absorbs (the producer's output has no Q)."""
    producer = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    rule = target.rule(producer) if producer is not None else None
    return bool(rule and rule.fuses_activation and _dq_source(node.inputs[0]) is None)


def _dims(value: ir.Value | None) -> list[int] | None:
    """The static dimensions of `value`, or None."""
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return [int(d) for d in value.shape.numpy()]


def node_macs(node: ir.Node) -> int:
    """Multiply-accumulates of a Conv/ConvTranspose/Gemm/MatMul from its shapes (0 if unknown)."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return 0
    out, x, w = _dims(node.outputs[0]), _dims(node.inputs[0]), _dims(node.inputs[1])
    if out is None or x is None or w is None:
        return 0
    if node.op_type == "Conv":
        return math.prod(out) * math.prod(w[1:])
    if node.op_type == "ConvTranspose":  # each input element meets C_out/g · Π kernel weights
        return math.prod(x) * math.prod(w[1:])
    trans_a = node.op_type == "Gemm" and "transA" in node.attributes and node.attributes["transA"].as_int() == 1
    return math.prod(out) * x[0 if trans_a else -1]


def npu_share(model: ir.Model, found: list[Fallback]) -> dict[str, Any]:
    """Nodes (not counting Q/DQ) and MACs the NPU runs, of the whole model's."""
    nodes = [n for n in model.graph.all_nodes() if not (n.op_type in _QDQ and n.domain in ("", "ai.onnx"))]
    off = {f.node for f in found}
    on_nodes = [n for n in nodes if (n.name or n.op_type) not in off]
    macs = sum(node_macs(n) for n in nodes)
    on_macs = sum(node_macs(n) for n in on_nodes)
    return {
        "nodes_on_npu": len(on_nodes),
        "nodes": len(nodes),
        "node_share": round(len(on_nodes) / len(nodes), 4) if nodes else 1.0,
        "mac_share": round(on_macs / macs, 4) if macs else 1.0,
        "fallback_nodes": [f.text() for f in found],
    }
