"""Fold inference-mode BatchNormalization into the Conv/ConvTranspose/Gemm before it.

With a = gamma / sqrt(var + eps) per output channel c:

    W'[c] = W[c] * a[c]               (Conv: W is [M, C/g, k...], channel axis 0;
                                      ConvTranspose with group 1: [C, M, k...], axis 1;
                                      Gemm: B is [K, N] (axis 1) or, with transB, [N, K] (axis 0))
    b'[c] = (b[c] - mean[c]) * a[c] + beta[c]

The producer's output must feed only the BatchNormalization, and every weight
and statistic must be a constant.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import FreshNames, add_initializer, const_array, replace_value, single_consumer
from qcompile.pipeline import CompilePass

__all__ = ["FoldBatchNorm"]


def _channel_axis(node: ir.Node) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        group = node.attributes.get("group")
        return 1 if group is None or group.as_int() == 1 else None
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 0 if trans_b is not None and trans_b.as_int() else 1
    return None


def _bn_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    params = [const_array(v) for v in bn.inputs[1:5]]
    if any(p is None for p in params) or any(len(o.uses()) for o in bn.outputs[1:]):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    eps_attr = bn.attributes.get("epsilon")
    eps = eps_attr.as_float() if eps_attr is not None else 1e-5
    a = gamma / np.sqrt(var + eps)
    return a, mean, beta


def _fold_one(graph: ir.Graph, producer: ir.Node, bn: ir.Node, fresh: FreshNames) -> bool:
    axis = _channel_axis(producer)
    weight = const_array(producer.inputs[1]) if len(producer.inputs) > 1 else None
    params = _bn_scale_shift(bn)
    if axis is None or weight is None or params is None:
        return False
    if producer.op_type == "Gemm":
        alpha, beta_attr = producer.attributes.get("alpha"), producer.attributes.get("beta")
        if (alpha and alpha.as_float() != 1.0) or (beta_attr and beta_attr.as_float() != 1.0):
            return False
    a, mean, beta = params
    if weight.shape[axis] != a.shape[0]:
        return False
    has_bias = len(producer.inputs) > 2 and producer.inputs[2] is not None
    bias = const_array(producer.inputs[2]) if has_bias else np.zeros(a.shape, np.float32)
    if bias is None or bias.shape != a.shape:
        return False
    shape = [1] * weight.ndim
    shape[axis] = -1
    new_w = (weight.astype(np.float64) * a.reshape(shape)).astype(weight.dtype)
    new_b = ((bias.astype(np.float64) - mean) * a + beta).astype(weight.dtype)
    w_val = add_initializer(graph, producer.inputs[1].name + "_bnfolded", new_w, fresh)
    b_val = add_initializer(graph, (producer.name or "node") + "_bias_bnfolded", new_b, fresh)
    producer.replace_input_with(1, w_val)
    if has_bias:
        producer.replace_input_with(2, b_val)
    else:
        producer.resize_inputs(3)
        producer.replace_input_with(2, b_val)
    replace_value(bn.outputs[0], producer.outputs[0])
    graph.remove(bn, safe=True)
    return True


class FoldBatchNorm(CompilePass):
    requires = ("constants_folded",)
    provides = ("batchnorm_folded",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        fresh = FreshNames(model.graph)
        for bn in [n for n in model.graph if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]:
            producer = bn.inputs[0].producer() if bn.inputs[0] is not None else None
            if producer is None or producer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
                continue
            if single_consumer(producer.outputs[0]) is not bn:
                continue
            modified |= _fold_one(model.graph, producer, bn, fresh)
        if modified:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
