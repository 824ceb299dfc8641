"""Move an activation's per-channel scales into the convolutions beside it (ORT CPU lowering).

The plan may quantize an activation with a scale per channel s_c and one zero point z (see
`qcompile.channel_scales`); ORT's integer kernels take one scale per activation tensor.  With
s = max_c s_c and r_c = s_c / s, this pass rewrites each such QuantizeLinear T → T_q and its
DequantizeLinears into a model that computes the same values:

- the Q and DQs take the one scale s and zero point z;
- a Conv that writes T through its DQ'd weight (and int32 bias) writes T / r instead: its
  weight scale w_c and bias scale become w_c / r_c and b_c / r_c (the integers are unchanged);
  any other writer (a graph input too) feeds the Q through a Mul by 1 / r;
- a depthwise Conv that reads T_dq multiplies its weight scale by r_c; its bias scale
  s_c · w_c (`assign_specs`) already equals s · (w_c · r_c), so the bias stays;  every other
  reader reads T_dq through one Mul by r (the float kernels between a DQ and a Q: HardSwish, ...).

r lies along axis 1 (the channels of NCHW).  A weight or bias DQ that another node shares is
copied first, so the change is this Conv's alone; a DQ that is a graph output hands its name to
the Mul.  New scales are new initializers (FoldScales stores equal scales once, so a scale tensor
may be shared).  A per-channel Q this cannot rewrite (another axis, several zero points, inside an
If/Loop body: a pinned plan's) raises: ORT would fuse it into a QLinearConv and fail at run time.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompile.channel_scales import CHANNEL_AXIS, is_depthwise
from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, add_initializer, const_array, name_of, prepend

__all__ = ["AbsorbChannelScales", "per_channel_activation_q"]


def per_channel_activation_q(node: ir.Node) -> bool:
    """A QuantizeLinear of a computed tensor with a 1-D scale of several values."""
    if node.op_type != "QuantizeLinear" or node.inputs[0] is None or node.inputs[0].is_initializer():
        return False
    scale = const_array(node.inputs[1])
    return scale is not None and scale.ndim == 1 and scale.size > 1


def _check(q: ir.Node, graph: ir.Graph) -> None:
    """Raise unless `q` is a main-graph Q with one scale per channel along axis 1 and one zero point,
    read only by DQs (ORT cannot run the others: it fuses a per-axis Q into QLinearConv and fails)."""
    x = q.inputs[0]
    name = x.name if x is not None else None
    zero = const_array(q.inputs[2]) if len(q.inputs) > 2 else None
    rank = len(x.shape) if x is not None and x.shape is not None else 0
    problem = None
    if q.graph is not graph:
        problem = "inside an If/Loop/Scan body"
    elif rank < 3 or q.attributes.get_int("axis", 1) not in (CHANNEL_AXIS, CHANNEL_AXIS - rank):
        problem = f"along axis {q.attributes.get_int('axis', 1)} of a rank-{rank} tensor (only axis 1, the channels)"
    elif zero is None or len(set(np.ravel(zero).tolist())) != 1:
        zeros = sorted(set(np.ravel(zero).tolist()))[:4] if zero is not None else "none"
        problem = f"with zero points {zeros} (the integer kernels take one for every channel)"
    elif any(u.node.op_type != "DequantizeLinear" for u in q.outputs[0].uses()) or q.outputs[0].is_graph_output():
        problem = "read as integers by something other than a DequantizeLinear"
    if problem:
        raise QCompileError(f"tensor {name!r}: ort-cpu cannot take a scale per channel {problem}")


class AbsorbChannelScales(ir.passes.InPlacePass):
    """Per-channel activation Q/DQ → one scale, the factors in the neighbouring Convs or a Mul."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, fresh = model.graph, FreshNames(model.graph)
        found = [n for n in graph.all_nodes() if per_channel_activation_q(n)]
        for q in found:
            _check(q, graph)
            _Rewrite(graph, fresh, q).run()
        if found:  # the replaced scales and zero points
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(found))


class _Rewrite:
    def __init__(self, graph: ir.Graph, fresh: FreshNames, q: ir.Node):
        self.graph, self.fresh, self.q = graph, fresh, q
        scales = const_array(q.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
        self.scale = np.float32(scales.max())
        self.zero = const_array(q.inputs[2]).ravel()[:1].reshape(())  # type: ignore[union-attr]
        self.ratio = scales / float(self.scale)  # r_c ≤ 1
        self.rank = len(q.inputs[0].shape)  # type: ignore[union-attr, arg-type]

    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, base, array, self.fresh)

    def _one_scale(self, node: ir.Node, base: str) -> None:
        node.replace_input_with(1, self._const(base + "_scale", np.asarray(self.scale, np.float32)))
        node.replace_input_with(2, self._const(base + "_zero_point", self.zero))
        node.attributes.pop("axis", None)

    def _own_dq(self, conv: ir.Node, index: int) -> ir.Node | None:
        """The DequantizeLinear of a constant that feeds `conv` at `index`, copied if others read it too."""
        value = conv.inputs[index] if len(conv.inputs) > index else None
        dq = value.producer() if value is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None or not dq.inputs[0].is_initializer():
            return None
        if len(value.uses()) > 1 or value.is_graph_output():  # type: ignore[union-attr]
            out = ir.Value(name=self.fresh(name_of(value) + "_own"), type=value.type, shape=value.shape)  # type: ignore[arg-type, union-attr]
            copy = ir.Node(
                "", "DequantizeLinear", list(dq.inputs), attributes=list(dq.attributes.values()), outputs=[out]
            )
            self.graph.insert_after(dq, [copy])
            conv.replace_input_with(index, out)
            dq = copy
        return dq

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
        """`value` · factor along axis 1, computed right after `value` is."""
        shape = [1] * self.rank
        shape[CHANNEL_AXIS] = len(factor)
        r = self._const(name_of(value) + "_channel_factor", factor.astype(np.float32).reshape(shape))
        out = ir.Value(name=self.fresh(name_of(value) + "_channel_scaled"), type=value.type, shape=value.shape)
        mul = ir.Node("", "Mul", [value, r], outputs=[out], name=self.fresh("Mul"))
        producer = value.producer()
        if producer is None:  # a graph input
            prepend(self.graph, [mul])
        else:
            self.graph.insert_after(producer, [mul])
        return out

    def _absorbing_writer(self, x: ir.Value) -> list[ir.Node] | None:
        """The weight and bias DQs of the Conv that writes `x` for the Q alone (made its own)."""
        writer = x.producer()
        if writer is None or writer.op_type != "Conv" or writer.outputs[0] is not x or len(x.uses()) != 1:
            return None
        weight = self._own_dq(writer, 1)
        if weight is None:
            return None
        if len(writer.inputs) > 2 and writer.inputs[2] is not None:
            bias = self._own_dq(writer, 2)
            return None if bias is None else [weight, bias]
        return [weight]

    def run(self) -> None:
        q, x = self.q, self.q.inputs[0]
        assert x is not None
        writer = self._absorbing_writer(x)
        for dq in writer or []:
            self._scale_dq(dq, 1.0 / self.ratio)
        if writer is None:
            q.replace_input_with(0, self._mul(x, 1.0 / self.ratio))
        self._one_scale(q, name_of(x))
        for use in list(q.outputs[0].uses()):
            self._reroute(use.node)

    def _reroute(self, dq: ir.Node) -> None:
        self._one_scale(dq, name_of(dq.outputs[0]))
        others = []
        for use in list(dq.outputs[0].uses()):
            weight = self._own_dq(use.node, 1) if is_depthwise(use.node) and use.idx == 0 else None
            if weight is not None:
                self._scale_dq(weight, self.ratio)
            else:
                others.append(use)
        if others or dq.outputs[0].is_graph_output():
            scaled = self._mul(dq.outputs[0], self.ratio)
            for reader, idx in others:
                reader.replace_input_with(idx, scaled)
            if (out := dq.outputs[0]).is_graph_output():  # the Mul writes it, under its name
                name, outputs = name_of(out), self.graph.outputs
                outputs[list(outputs).index(out)] = scaled
                out.name, scaled.name = self.fresh(name + "_unscaled"), name
