"""Turn precision decisions and calibrated ranges into per-tensor QuantSpecs (an analysis).

For every int8 node, the target's `OpRule` says which tensors are quantized:

- activations get `target.activation_dtype` from the calibrated range [lo, hi]
  (`target.a16_dtype`, e.g. int16 symmetric, for the tensors of "int16" nodes that no
  8-bit node writes or reads)
  (asymmetric unless the target says otherwise); tensors tied by the rule
  (MaxPool in/out, Concat inputs/output) share one spec computed from the
  union of their ranges; an op whose runtime fixes its output's quantization
  (`rule.fixed`: TFLite's LOGISTIC and SOFTMAX write scale 1/256, zero point
  -128) gives that spec to its output's whole group;
- weights (constant inputs at `rule.weight`) get `target.weight_dtype`,
  symmetric, per channel along `rule.weight_axis` (or per tensor), from their
  own values: scale_c = max|W_c| / qmax;
- an activation whose integer neighbours are convolutions that absorb a scale per channel
  (`target.absorbs_channel_scales`; the tensors `calibrate` ranged per channel) gets one scale
  per channel where its channels' ranges spread (`qcompile.channel_scales`);
- bias gets int32 with scale_c = s_input · s_weight_c, zero point 0 (a derived
  spec: it is what lets the runtime accumulate in int32 without rescaling).
  Where |b_c| / scale_c would not fit in 2^30 (a channel whose weights are ~0,
  as BatchNorm or bias folding of a dead channel leaves), s_weight_c is first
  raised to |b_c| / (2^30 · s_input): otherwise the bias saturates and the
  channel's output is lost; its near-zero weights lose nothing they had.

A tensor between a compute op and the Relu/Clip the runtime fuses into it is
not quantized.  Specs in a user plan override computed ones; a user spec with
no scale asks for that dtype with a calibrated scale.

`assign_specs` only reads the model and returns a new `QuantPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qcompile.channel_scales import channel_spec
from qcompile.errors import QCompileError
from qcompile.ir_utils import (
    all_initializers,
    const_array,
    is_float_value,
    name_of,
    release_external,
    single_consumer,
    values_by_name,
)
from qcompile.passes.calibrate import CalibrationResult
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec
from qcompile.quant_math import int_range, scale_zero_point
from qcompile.targets.base import OpRule, Target

__all__ = ["assign_specs", "BIAS_HEADROOM"]

BIAS_HEADROOM = 2.0**30  # |int32 bias| stays below this, leaving room for the accumulated products


def _per_output(w_scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The weight scale of each bias element: a grouped ConvTranspose's per-channel weight scales
    run over M/group of its M outputs (output g·M/group + m reads scale m), so they repeat per group."""
    if bias is None or w_scale.size <= 1 or bias.size == w_scale.size or bias.size % w_scale.size:
        return w_scale
    return np.tile(w_scale, bias.size // w_scale.size)


def _input_scale(a: QuantSpec, outputs: int) -> np.ndarray:
    """The input scale that a bias of `outputs` channels is stored against: a depthwise Conv's input
    with a scale per channel (qcompile.channel_scales) has one per output channel; an input with a
    scale per channel that another node reads (a pinned plan) reaches it through a Mul by its
    channel factors at the largest scale (passes/absorb_channel_scales), so that one."""
    scale = a.scale_array().astype(np.float64)
    return scale if scale.size in (1, outputs) else np.asarray(scale.max())


def _input(node: ir.Node, index: int | None) -> ir.Value | None:
    return node.inputs[index] if index is not None and index < len(node.inputs) else None


class _Groups:
    """Union-find over tensor names: tied tensors share a spec."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, names: list[str]) -> None:
        roots = [self.find(n) for n in names]
        for r in roots[1:]:
            self.parent[r] = roots[0]


@dataclass
class _Roles:
    """What the int8 nodes' rules make of their tensors."""

    activations: list[str] = field(default_factory=list)
    weights: dict[str, tuple[int | None, str | None]] = field(default_factory=dict)  # name → (axis, own dtype)
    biases: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (activation, weight)
    groups: _Groups = field(default_factory=_Groups)
    fixed: dict[str, tuple[float, int]] = field(default_factory=dict)  # name → the op's fixed (scale, zero point)
    wide: set[str] = field(default_factory=set)  # activations written (or, graph inputs, read) by int16 nodes


def assign_specs(
    model: ir.Model,
    target: Target,
    calib: CalibrationResult,
    decisions: Mapping[str, NodeDecision],
    *,
    per_channel: bool = True,
    pinned: QuantPlan | None = None,
) -> QuantPlan:
    """The plan for `model`: `decisions` as its nodes, a spec for every tensor the int8 nodes quantize.

    Its meta records the weight range used and whether weights are per channel.
    """
    return _Assigner(target, calib, decisions, per_channel, pinned).run(model)


class _Assigner:
    """The state of one `assign_specs` call."""

    def __init__(
        self,
        target: Target,
        calib: CalibrationResult,
        decisions: Mapping[str, NodeDecision],
        per_channel: bool,
        pinned: QuantPlan | None,
    ):
        self.plan = QuantPlan(nodes=dict(decisions))
        self.target, self.calib = target, calib
        self.per_channel = per_channel and target.per_channel
        self.pinned = pinned.tensors if pinned else {}
        self.initializers: dict[str, ir.Value] = {}

    def _int8(self, node: ir.Node | None) -> bool:
        decision = self.plan.nodes.get(node.name or "") if node is not None else None
        return decision is not None and decision.precision != "float"

    def _int16(self, node: ir.Node | None) -> bool:
        decision = self.plan.nodes.get(node.name or "") if node is not None else None
        return decision is not None and decision.precision == "int16" and self.target.a16_dtype is not None

    def _fused_away(self, node: ir.Node, out: ir.Value) -> bool:
        rule = self.target.rule(node)
        nxt = single_consumer(out)
        return bool(
            rule
            and rule.fuses_activation
            and nxt is not None
            and nxt.op_type in self.target.fusable_activations
            and self._int8(nxt)
        )

    def _fused_tensor(self, value: ir.Value) -> bool:
        producer = value.producer()
        return producer is not None and self._int8(producer) and self._fused_away(producer, value)

    def run(self, model: ir.Model) -> QuantPlan:
        roles = _Roles()
        self.initializers = all_initializers(model.graph)
        for node in model.graph.all_nodes():
            rule = self.target.rule(node)
            if rule is not None and self._int8(node):
                self._collect(node, rule, roles)
        self._assign_activations(model, roles.activations, roles.groups, roles.fixed, roles.wide)
        self._assign_weights(model, roles.weights)
        self._apply_pins(model)  # biases derive from the pinned weights and activations (an int4 weight)...
        self._assign_biases(model, roles.biases)
        self._apply_pins(model)  # ...and a pinned bias is the user's
        spreads = self.plan.meta.pop("channel_scales", {})  # those the pins left
        if kept := {t: x for t, x in spreads.items() if t not in self.pinned and t in self.plan.tensors}:
            self.plan.meta["channel_scales"] = kept
        self.plan.meta["per_channel"] = self.per_channel
        return self.plan

    def _collect(self, node: ir.Node, rule: OpRule, roles: _Roles) -> None:
        """Record which tensors of one int8 node are activations, weight and bias, and which are tied."""
        inputs = list(node.inputs) if rule.output == "tied_all" else [_input(node, i) for i in rule.activations]
        acts = [v for v in inputs if is_float_value(v) and not self._fused_tensor(v)]
        w, b = _input(node, rule.weight), _input(node, rule.bias)
        w_const = w.const_value if is_float_value(w) else None
        if w is not None and w_const is not None:
            axis = rule.weight_axis(node, len(w_const.shape)) if (self.per_channel and rule.weight_axis) else None
            roles.weights[name_of(w)] = (axis, rule.weight_dtype)
            if is_float_value(b) and b.const_value is not None and acts:
                roles.biases[name_of(b)] = (name_of(acts[0]), name_of(w))
        elif is_float_value(w):
            acts.append(w)
        out = node.outputs[0]
        quantize_out = is_float_value(out) and not self._fused_away(node, out)
        if quantize_out and rule.float_output_ok and (out.is_graph_output() or not self._int8_readers(out)):
            quantize_out = False  # the integer kernel writes float itself, for a graph output or float readers
            absorbs = rule.bias_add and w is not None and w_const is not None
            bias = self._float_bias_add(out, w_const.shape.numpy()[-1]) if absorbs else None  # type: ignore[union-attr]
            if bias is not None and acts:
                roles.biases[name_of(bias)] = (name_of(acts[0]), name_of(w))  # type: ignore[arg-type]
        if quantize_out:
            acts.append(out)
        if self._int16(node):  # tensors whose integer producer and readers are all 16-bit
            roles.wide.update(name_of(v) for v in acts if self._only_wide_readers(v))
        roles.activations += [name_of(v) for v in acts]
        if rule.output == "tied_all" and quantize_out:
            roles.groups.union([name_of(v) for v in acts])
        elif rule.output == "tied" and quantize_out and is_float_value(src := node.inputs[0]):
            extra = [o for o in node.outputs[1:] if is_float_value(o)]  # Split: every piece keeps the scale
            roles.activations += [name_of(o) for o in extra]
            roles.groups.union([name_of(src), name_of(out), *(name_of(o) for o in extra)])
        elif quantize_out and (fixed := rule.fixed16 if self._int16(node) and rule.fixed16 else rule.fixed):
            roles.fixed[name_of(out)] = fixed

    def _int8_readers(self, value: ir.Value) -> bool:
        return any(self._int8(u.node) for u in value.uses())

    def _float_bias_add(self, out: ir.Value, channels: int) -> ir.Value | None:
        """The constant [channels] operand of a float Add that alone reads `out`: stored as an int32
        bias (scale = input scale × weight scale), so that ORT, which merges MatMul + Add into a Gemm
        when shapes are static, fuses DQ → Gemm into QGemm instead of leaving a float Gemm."""
        add = single_consumer(out)
        if add is None or add.op_type != "Add" or self._int8(add) or len(add.inputs) != 2:
            return None
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        arr = const_array(other) if other is not None and other.is_initializer() else None
        if arr is None or arr.shape != (channels,) or arr.dtype != np.float32 or len(other.uses()) != 1:  # type: ignore[union-attr]
            return None
        return other

    def _only_wide_readers(self, value: ir.Value) -> bool:
        """Every integer node that writes or reads `value` is 16-bit (a tensor between a 16-bit and an
        8-bit node is 8-bit: the 8-bit kernel reads it as the QDQ model does)."""
        producer = value.producer()
        if self._int8(producer) and not self._int16(producer):
            return False
        readers = [u.node for u in value.uses() if self._int8(u.node)]
        return all(self._int16(n) for n in readers) and (bool(readers) or self._int16(producer))

    def _range_of(self, model: ir.Model, name: str) -> tuple[float, float] | None:
        if name in self.calib.ranges:
            return self.calib.ranges[name]
        init = self.initializers.get(name)
        arr = const_array(init) if init is not None else None
        if arr is not None and arr.size:
            return float(arr.min()), float(arr.max())
        return None

    def _assign_activations(
        self,
        model: ir.Model,
        names: list[str],
        groups: _Groups,
        fixed: dict[str, tuple[float, int]],
        wide: set[str],
    ) -> None:
        members: dict[str, list[str]] = {}
        for n in dict.fromkeys(names):
            members.setdefault(groups.find(n), []).append(n)
        for group in members.values():
            # a group with a 16-bit member is 16-bit, in the target's 16-bit type and symmetry
            is_wide = self.target.a16_dtype is not None and bool(wide.intersection(group))
            dtype = self.target.a16_dtype if is_wide and self.target.a16_dtype else self.target.activation_dtype
            sym = self.target.a16_symmetric if is_wide else self.target.activation_symmetric
            qrange = int_range(dtype, symmetric=sym)
            ranges = [r for n in group if (r := self._range_of(model, n)) is not None]
            pinned = [fixed[n] for n in group if n in fixed]
            if pinned:  # an op with a fixed output range (Sigmoid, Softmax on TFLite) sets its whole group's
                scale, zp = np.asarray(pinned[0][0], np.float32), np.asarray(pinned[0][1], np.int64)
            elif not ranges:
                continue
            else:
                lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
                scale, zp = scale_zero_point(lo, hi, qrange, symmetric=sym)
            spec = QuantSpec(dtype, symmetric=sym).with_params(scale, zp)
            if len(group) == 1 and not pinned and not is_wide and group[0] in self.calib.channel_ranges:
                spec = self._per_channel(group[0], spec, (lo, hi), qrange)
            for n in group:
                self.plan.tensors[n] = spec

    def _per_channel(self, name: str, spec: QuantSpec, tensor_range: tuple[float, float], qrange) -> QuantSpec:
        """`spec` with a scale per channel where the channels' ranges spread (qcompile.channel_scales)."""
        found = channel_spec(spec, tensor_range, *self.calib.channel_ranges[name], qrange)
        if found is None:
            return spec
        self.plan.meta.setdefault("channel_scales", {})[name] = round(found[1], 1)
        return found[0]

    def _assign_weights(self, model: ir.Model, weights: dict[str, tuple[int | None, str | None]]) -> None:
        for name, (axis, own_dtype) in weights.items():
            # an op's own weight type (QNN's LayerNorm gamma: uint8, asymmetric) else the target's, symmetric
            dtype, symmetric = own_dtype or self.target.weight_dtype, own_dtype is None
            qrange = int_range(dtype, symmetric=symmetric, reduce_range=self.target.weight_reduce_range and symmetric)
            init = self.initializers[name]
            values = const_array(init)
            if values is None:
                continue
            lo, hi = _weight_range(values, axis)  # min/max are exact in the stored dtype
            del values
            release_external(init)
            scale, zp = scale_zero_point(lo, hi, qrange, symmetric=symmetric)
            self.plan.tensors[name] = QuantSpec(dtype, axis=axis, symmetric=symmetric).with_params(scale, zp)
            if own_dtype is None:
                self.plan.meta.setdefault("weight_qrange", [qrange.qmin, qrange.qmax])

    def _assign_biases(self, model: ir.Model, biases: dict[str, tuple[str, str]]) -> None:
        for name, (act, weight) in biases.items():
            a, w = self.plan.tensors.get(act), self.plan.tensors.get(weight)
            if a is None or w is None or a.is_float or w.is_float:
                continue
            bias = const_array(self.initializers[name])
            w = self._widen_for_bias(weight, w, a, bias)
            # the product in float64, stored as the float32 the file will hold (what an import reads back)
            w_scale = _per_output(w.scale_array().astype(np.float64), bias)
            outputs = bias.size if bias is not None else np.size(w_scale)
            scale = (_input_scale(a, outputs) * w_scale).astype(np.float32)
            zp = np.zeros(np.shape(scale), np.int32)
            axis = 0 if w.per_channel or np.size(scale) > 1 else None  # per channel: of the weight or the input
            self.plan.tensors[name] = QuantSpec("int32", axis=axis, symmetric=True).with_params(scale, zp)

    def _widen_for_bias(self, name: str, w: QuantSpec, a: QuantSpec, bias: np.ndarray | None) -> QuantSpec:
        """The weight spec with each s_w_c ≥ |b_c| / (2^30 · s_a), so that the int32 bias cannot saturate."""
        if bias is None:
            return w
        needed = np.abs(bias.astype(np.float64)).reshape(-1) / (BIAS_HEADROOM * _input_scale(a, bias.size))
        current = w.scale_array().astype(np.float64)
        if w.per_channel and needed.size != current.size and needed.size % current.size == 0:
            needed = needed.reshape(-1, current.size).max(axis=0)  # grouped ConvTranspose: per group
        widened = np.maximum(current, needed if w.per_channel else needed.max(initial=0.0))
        if np.array_equal(widened, current):
            return w
        widened = np.nextafter(widened.astype(np.float32), np.float32(np.inf))  # stays ≥ after float32 rounding
        spec = w.with_params(np.where(widened > current, widened, current), w.zero_point_array())
        self.plan.tensors[name] = spec
        self.plan.meta.setdefault("weights_widened_for_bias", []).append(name)
        return spec

    def _apply_pins(self, model: ir.Model) -> None:
        known = values_by_name(model.graph)
        for name, spec in self.pinned.items():
            if name not in known:
                raise QCompileError(f"plan names tensor {name!r}, which the model does not have")
            if spec.is_float:
                self.plan.tensors.pop(name, None)
            elif spec.is_resolved:
                self.plan.tensors[name] = spec
            else:
                init = self.initializers.get(name)
                values = const_array(init) if init is not None and spec.axis is not None else None
                rng = _weight_range(values, spec.axis) if values is not None else self._range_of(model, name)
                if rng is None:
                    raise QCompileError(
                        f"plan asks for tensor {name!r} as {spec.dtype}, but it was never observed as float"
                    )
                qrange = int_range(spec.dtype, symmetric=spec.symmetric)
                scale, zp = scale_zero_point(rng[0], rng[1], qrange, symmetric=spec.symmetric)
                axis = spec.axis if values is not None else None  # a constant's own channels, as asked
                self.plan.tensors[name] = QuantSpec(spec.dtype, axis=axis, symmetric=spec.symmetric).with_params(
                    scale, zp
                )


def _weight_range(w: np.ndarray, axis: int | None) -> tuple:
    """(lo, hi) over the whole tensor, or per slice along `axis`, each widened to include 0."""
    if axis is None:
        return float(w.min(initial=0.0)), float(w.max(initial=0.0))
    others = tuple(i for i in range(w.ndim) if i != axis)
    lo = w.min(axis=others, initial=0.0).astype(np.float64)
    hi = w.max(axis=others, initial=0.0).astype(np.float64)
    return lo, hi
