"""Bias correction: give back the mean output that rounding the weights took away.

Quantizing a weight W to Ŵ = dequantize(quantize(W)) changes a node's output by (W − Ŵ) ⊛ x.
Its mean over the data is not zero wherever the input's channel means μ_c are not: the
rounding errors of one output channel add up the same way at every position.  Away from the
padded border, with ΔW = W − Ŵ:

    Conv           (W: [M, C/g, k...])     δ_m = Σ_{c in m's group} μ_c · Σ_k ΔW[m, c, k]
    ConvTranspose  (W: [C, M/g, k...])     δ_m = Σ_{c in m's group} μ_c · Σ_k ΔW[c, m, k] / Π strides
    Gemm           y = α·A·B + β·C         δ_n = α · Σ_k μ_k · ΔB[k, n]   (B as [K, N]; C += δ / β)

(a ConvTranspose output position receives Π kernel / Π strides taps on average).  Adding δ to
the bias restores the float model's mean output per channel: the empirical bias correction of
Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (2019),
§4.2, with μ measured by `calibrate` on the calibration data (the float input's mean per channel).
Before calibration `OwnBiases` gives each such node a bias of its own (zeros where it has none,
a copy where it shares one), so the saved plan names tensors the model has; δ is then added in
place, before the plan's int32 bias specs are derived, so they cover it.

Only nodes that the plan runs in integer, with a quantized weight (per tensor or per channel,
no blocks) and a measured input mean, are corrected; inside Loop/Scan bodies nothing is
(their observed values are stacked over iterations).  Where it matters: a Conv that a
BatchNorm or a per-channel scale was folded into (PP-OCRv5 det: naive int8 4.9 → 11.5 dB on
ORT, measured on held-out images).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import FreshNames, add_initializer, const_array, is_float_value, name_of
from qcompile.plan import QuantPlan, QuantSpec
from qcompile.quant_math import INT_RANGES, dequantize, quantize

__all__ = [
    "CORRECTED_OPS",
    "BiasCorrection",
    "OwnBiases",
    "bias_shifts",
    "correctable_nodes",
    "mean_axes",
    "own_bias_values",
]

CORRECTED_OPS = ("Conv", "ConvTranspose", "Gemm")
_STACKING = ("Loop", "Scan")


def _nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Nodes of `graph` and of the If branches inside it (never Loop/Scan bodies)."""
    for node in graph:
        yield node
        if node.op_type in _STACKING:
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _nodes(attr.as_graph())


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def correctable_nodes(model: ir.Model) -> list[ir.Node]:
    """Conv, ConvTranspose and Gemm (A not transposed) with a float input and a constant weight."""
    found = []
    for node in _nodes(model.graph):
        if node.op_type not in CORRECTED_OPS or len(node.inputs) < 2 or not is_float_value(node.inputs[0]):
            continue
        if const_array(node.inputs[1]) is None:
            continue
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or _gemm_bias(node) is False):
            continue
        found.append(node)
    return found


def _input_and_weight(node: ir.Node) -> tuple[str, str]:
    """Names of a correctable node's input x and weight W."""
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None
    return name_of(x), name_of(w)


def _gemm_bias(node: ir.Node) -> np.ndarray | None | bool:
    """Gemm's C when it is a constant vector, None when absent, False when it cannot take δ."""
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is None:
        return None
    arr = const_array(c)
    if arr is None or arr.ndim != 1 or _attr(node, "beta", 1.0) == 0:
        return False
    return arr


def mean_axes(model: ir.Model) -> dict[str, int]:
    """The tensors whose per-channel mean bias correction needs: each corrected node's input, axis 1."""
    return {_input_and_weight(node)[0]: 1 for node in correctable_nodes(model)}


def _rounded(weight: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Ŵ: the weight as the quantized model computes it."""
    q = quantize(weight, spec.scale_array(), spec.zero_point_array(), INT_RANGES[spec.dtype], spec.axis)
    return dequantize(q, spec.scale_array(), spec.zero_point_array(), spec.axis).astype(np.float64)


def _shift(node: ir.Node, delta_w: np.ndarray, mu: np.ndarray) -> np.ndarray | None:
    """δ per output channel (see the module docstring), or None when μ does not fit the weight."""
    group = _attr(node, "group", 1)
    if node.op_type == "Conv":
        m, cg = delta_w.shape[0], delta_w.shape[1]
        if mu.size != cg * group:
            return None
        taps = delta_w.reshape(group, m // group, cg, -1).sum(axis=-1)
        return np.einsum("gmc,gc->gm", taps, mu.reshape(group, cg)).reshape(m)
    if node.op_type == "ConvTranspose":
        c, mg = delta_w.shape[0], delta_w.shape[1]
        if mu.size != c:
            return None
        strides = _attr(node, "strides", None) or [1] * (delta_w.ndim - 2)
        taps = delta_w.reshape(group, c // group, mg, -1).sum(axis=-1) / float(np.prod(strides))
        return np.einsum("gcm,gc->gm", taps, mu.reshape(group, c // group)).reshape(group * mg)
    b = delta_w.T if _attr(node, "transB", 0) else delta_w  # [K, N]
    if delta_w.ndim != 2 or mu.size != b.shape[0]:
        return None
    return _attr(node, "alpha", 1.0) * (mu @ b) / _attr(node, "beta", 1.0)


def bias_shifts(model: ir.Model, plan: QuantPlan, means: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Node name → δ to add to its bias, for every node whose weight `plan` quantizes.  An analysis:
    reads the model, changes nothing."""
    shifts = {}
    for node in correctable_nodes(model):
        x, w = _input_and_weight(node)
        spec, mu = plan.tensors.get(w), means.get(x)
        decision = plan.nodes.get(node.name or "")
        if decision is None or decision.precision == "float":  # a float node reads its float weight
            continue
        if spec is None or spec.is_float or not spec.is_resolved or spec.block_size is not None or mu is None:
            continue
        weight = const_array(node.inputs[1])
        assert weight is not None
        shift = _shift(node, weight.astype(np.float64) - _rounded(weight, spec), np.asarray(mu, np.float64))
        if shift is not None and np.all(np.isfinite(shift)) and np.any(shift):
            shifts[node.name or name_of(node.outputs[0])] = shift
    return shifts


class OwnBiases(ir.passes.InPlacePass):
    """Give every correctable node a bias initializer of its own: zeros where it has none, a copy
    where another node shares it.  The float model computes the same; run before the plan is
    made, so a saved plan names the biases that the corrected model has."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified, fresh = False, FreshNames(model.graph)
        for node in correctable_nodes(model):
            old = node.inputs[2] if len(node.inputs) > 2 else None
            if old is not None and old.is_initializer() and len(old.uses()) == 1 and not old.is_graph_output():
                continue
            base = const_array(old)
            if base is None:  # no bias yet: one zero per output channel
                base = np.zeros(_output_channels(node), np.float32)
            graph = node.graph
            assert graph is not None
            value = add_initializer(graph, f"{node.name or 'node'}_bias", np.array(base), fresh)
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, value)
            modified = True
        return ir.passes.PassResult(model, modified)


def _output_channels(node: ir.Node) -> int:
    weight = const_array(node.inputs[1])
    assert weight is not None
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * _attr(node, "group", 1)
    return weight.shape[0] if _attr(node, "transB", 0) else weight.shape[1]


def own_bias_values(model: ir.Model) -> dict[str, np.ndarray]:
    """Node name → its bias as the float model has it (after `OwnBiases`): what every correction
    starts from, so a later plan's correction replaces an earlier one instead of adding to it."""
    found = {}
    for node in correctable_nodes(model):
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
        if bias is not None:
            found[node.name or name_of(node.outputs[0])] = bias.copy()
    return found


class BiasCorrection(ir.passes.InPlacePass):
    """Set each node's own bias (`OwnBiases` ran first) to its float value plus δ (`bias_shifts`;
    nodes without δ get their float value back)."""

    def __init__(self, originals: Mapping[str, np.ndarray], shifts: Mapping[str, np.ndarray]):
        super().__init__()
        self.originals, self.shifts = originals, shifts

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in correctable_nodes(model):
            key = node.name or name_of(node.outputs[0])
            if key not in self.originals:
                continue
            bias = node.inputs[2]
            assert bias is not None and len(bias.uses()) == 1, f"{key}: run OwnBiases first"
            base = self.originals[key]
            want = (base.astype(np.float64) + self.shifts[key]).astype(base.dtype) if key in self.shifts else base
            current = const_array(bias)
            if current is None or not np.array_equal(current, want):
                bias.const_value = ir.tensor(want, name=bias.name)
                modified = True
        return ir.passes.PassResult(model, modified)
