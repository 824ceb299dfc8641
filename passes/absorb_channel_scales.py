"""Move an activation's per-channel scales into the convolutions beside it (ORT CPU lowering).

The plan may quantize an activation with a scale per channel s_c and one zero point z (see
`qcompile.channel_scales`); ORT's integer kernels take one scale per activation tensor.  With
s = max_c s_c and r_c = s_c / s, this pass rewrites, for each such QuantizeLinear T → T_q and
its DequantizeLinears, into a model that computes the same values:

- the Q and DQ take the one scale s and zero point z;
- a Conv that writes T through its own DQ'd weight (and int32 bias) writes T / r instead: its
  weight scale w_c and bias scale become w_c / r_c and b_c / r_c (the integers are unchanged);
  any other writer feeds the Q through a Mul by 1 / r;
- a depthwise Conv that reads T_dq multiplies its weight scale by r_c; its bias scale
  s_c · w_c already equals s · (w_c · r_c), so the bias stays;  every other reader reads
  T_dq through one Mul by r (the float kernels between a DQ and a Q: HardSwish, ...).

r is shaped [1, C, 1, 1] (axis 1 of NCHW).  New scales are new initializers: FoldScales stores
equal scales once, so a scale tensor may be shared.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompile.channel_scales import is_depthwise
from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, add_initializer, const_array, name_of

__all__ = ["AbsorbChannelScales"]


def _per_channel_activation_q(node: ir.Node) -> bool:
    if node.op_type != "QuantizeLinear" or node.inputs[0] is None or node.inputs[0].is_initializer():
        return False
    scale = const_array(node.inputs[1])
    return scale is not None and scale.ndim == 1 and scale.size > 1


def _dq_weight(conv: ir.Node) -> ir.Node | None:
    """The DequantizeLinear that alone feeds `conv`'s constant weight, if there is one."""
    weight = conv.inputs[1] if len(conv.inputs) > 1 else None
    dq = weight.producer() if weight is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or len(weight.uses()) != 1:  # type: ignore[union-attr]
        return None
    return dq if dq.inputs[0] is not None and dq.inputs[0].is_initializer() else None


class AbsorbChannelScales(ir.passes.InPlacePass):
    """Per-channel activation Q/DQ → one scale, the factors in the neighbouring Convs or a Mul."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, fresh = model.graph, FreshNames(model.graph)
        found = [n for n in graph if _per_channel_activation_q(n)]
        for q in found:
            _Rewrite(graph, fresh, q).run()
        if found:  # the replaced scales and zero points
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(found))


class _Rewrite:
    def __init__(self, graph: ir.Graph, fresh: FreshNames, q: ir.Node):
        self.graph, self.fresh, self.q = graph, fresh, q
        scales = const_array(q.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
        zeros = const_array(q.inputs[2]) if len(q.inputs) > 2 else np.zeros(len(scales), np.uint8)
        assert zeros is not None
        if len(set(zeros.tolist())) != 1:
            raise QCompileError(
                f"tensor {q.inputs[0].name if q.inputs[0] else None!r}: a scale per channel needs one zero point"
                f" for every channel (the integer kernels take one); the plan gives {sorted(set(zeros.tolist()))[:4]}"
            )
        self.scale, self.zero = np.float32(scales.max()), zeros[:1].reshape(())
        self.ratio = scales / float(self.scale)  # r_c ≤ 1

    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, base, array, self.fresh)

    def _one_scale(self, node: ir.Node, base: str) -> None:
        node.replace_input_with(1, self._const(base + "_scale", np.asarray(self.scale, np.float32)))
        node.replace_input_with(2, self._const(base + "_zero_point", self.zero))
        node.attributes.pop("axis", None)

    def _scale_dq(self, dq: ir.Node, factor: np.ndarray) -> None:
        """Multiply a per-output-channel DQ's scale by `factor` (a per-tensor scale becomes per channel)."""
        scale = const_array(dq.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
        new = (np.broadcast_to(scale, factor.shape) * factor).astype(np.float32)
        dq.replace_input_with(1, self._const(name_of(dq.inputs[1]) + "_absorbed", new))  # type: ignore[arg-type]
        if scale.ndim == 0:
            if len(dq.inputs) > 2 and dq.inputs[2] is not None:
                zp = const_array(dq.inputs[2])
                dq.replace_input_with(2, self._const(name_of(dq.inputs[2]) + "_absorbed", np.full(new.shape, zp)))
            dq.attributes["axis"] = ir.AttrInt64("axis", 0)

    def _mul(self, value: ir.Value, factor: np.ndarray) -> ir.Value:
        """`value` · factor (per channel), computed right after `value`'s producer."""
        shape = (1, len(factor), 1, 1)
        r = self._const(name_of(value) + "_channel_factor", factor.astype(np.float32).reshape(shape))
        out = ir.Value(name=self.fresh(name_of(value) + "_channel_scaled"), type=value.type, shape=value.shape)
        producer = value.producer()
        assert producer is not None
        self.graph.insert_after(producer, [ir.Node("", "Mul", [value, r], outputs=[out], name=self.fresh("Mul"))])
        return out

    def _absorbing_writer(self, x: ir.Value) -> tuple[ir.Node, ir.Node | None] | None:
        """The DQs of weight and bias of the Conv that writes `x` alone, if they are its own."""
        writer = x.producer()
        weight_dq = _dq_weight(writer) if writer is not None and writer.op_type == "Conv" else None
        if writer is None or weight_dq is None or writer.outputs[0] is not x or len(x.uses()) != 1:
            return None
        bias = writer.inputs[2] if len(writer.inputs) > 2 else None
        bias_dq = bias.producer() if bias is not None else None
        if bias is not None and (bias_dq is None or bias_dq.op_type != "DequantizeLinear" or len(bias.uses()) != 1):
            return None
        return weight_dq, bias_dq

    def run(self) -> None:
        q, x = self.q, self.q.inputs[0]
        assert x is not None
        writer = self._absorbing_writer(x)
        if writer is not None:
            for dq in writer:
                if dq is not None:
                    self._scale_dq(dq, 1.0 / self.ratio)
        else:
            q.replace_input_with(0, self._mul(x, 1.0 / self.ratio))
        self._one_scale(q, name_of(x))
        for use in list(q.outputs[0].uses()):
            if use.node.op_type == "DequantizeLinear":
                self._reroute(use.node)

    def _reroute(self, dq: ir.Node) -> None:
        if dq.outputs[0].is_graph_output():
            raise QCompileError(
                f"graph output {name_of(dq.outputs[0])!r} cannot take a scale per channel: only a tensor that"
                " Convs beside it compute with can (ORT's integer kernels take one scale per activation tensor)"
            )
        self._one_scale(dq, name_of(dq.outputs[0]))
        others = []
        for use in list(dq.outputs[0].uses()):
            reader = use.node
            reader_weight = _dq_weight(reader) if is_depthwise(reader) and use.idx == 0 else None
            if reader_weight is not None:
                self._scale_dq(reader_weight, self.ratio)
            else:
                others.append(use)
        if others:
            scaled = self._mul(dq.outputs[0], self.ratio)
            for reader, idx in others:
                reader.replace_input_with(idx, scaled)
