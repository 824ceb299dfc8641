"""Lowering of the weighted and windowed ops: Conv, ConvTranspose, Gemm, MatMul, pools.

Filters are re-laid at compile time: ONNX Conv W[o, i, kh, kw] → CONV_2D W[o, kh, kw, i]
(per-channel axis 0); depthwise (group = C_in) W[o, 1, kh, kw] → DEPTHWISE_CONV_2D
W[1, kh, kw, o] (axis 3, depth multiplier o / C_in); ConvTranspose W[i, o, kh, kw] →
TRANSPOSE_CONV W[o, kh, kw, i]; Gemm/MatMul B → FULLY_CONNECTED W[o, k].  A 1-D Conv runs
as a 2-D one over a height of 1 (RESHAPEs around it, free in NLC layout).

Padding: TFLite knows SAME (out = ⌈in / s⌉, total = max((out − 1)·s + (k − 1)·d + 1 − in, 0),
total // 2 before) and VALID.  ONNX pads that equal one of them map to it; other pads become
an explicit PAD (integer PAD fills with the zero point: real 0, what Conv and AveragePool
with count_include_pad pad with) followed by VALID.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import name_of
from qcompile.targets.tflite_graph import INT_BOUNDS, OMITTED, TflQuant, TflTensor
from qcompile.targets.tflite_lower import (
    NHWC,
    Bound,
    Lowering,
    UnsupportedOp,
    identity,
    register,
    value_name,
)

__all__ = ["same_padding", "choose_padding"]

NLC = (0, 2, 1)


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else list(default)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """(out, before, after) of TFLite's SAME padding along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return out, total // 2, total - total // 2


def choose_padding(
    pads: list[int],
    auto_pad: str,
    in_hw: tuple[int, ...],
    out_hw: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    dil: list[int],
) -> tuple[str, list[tuple[int, int]] | None]:
    """("SAME" | "VALID", None) when TFLite's padding gives ONNX's windows, else ("VALID", explicit pads)."""
    n = len(in_hw)
    same = [same_padding(in_hw[i], kernel[i], strides[i], dil[i]) for i in range(n)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * n
        for i, (_, before, after) in enumerate(same):
            pads[i], pads[i + n] = (after, before) if auto_pad == "SAME_LOWER" else (before, after)
    elif auto_pad == "VALID":
        pads = [0] * 2 * n
    valid = [(in_hw[i] - (kernel[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(n)]
    if not any(pads) and list(out_hw) == valid:
        return "VALID", None
    if all(out_hw[i] == same[i][0] and pads[i] == same[i][1] for i in range(n)):
        return "SAME", None
    return "VALID", [(pads[i], pads[i + n]) for i in range(n)]


def _padding_of(node: ir.Node, n: int) -> tuple[list[int], str]:
    auto = node.attributes.get("auto_pad")
    return _ints(node, "pads", [0] * 2 * n), auto.as_string() if auto is not None else "NOTSET"


def _pad(low: Lowering, x: Bound, pads: list[tuple[int, int]], name: str) -> Bound:
    """An explicit PAD on the spatial axes of an NHWC tensor."""
    t = low.g.tensors[x.index]
    full = [(0, 0), *pads, (0, 0)]
    shape = tuple(d + b + a for d, (b, a) in zip(t.shape, full, strict=True))
    out = low.g.add(TflTensor(f"{name}_padded", shape, t.dtype, t.quant))
    paddings = low.g.constant(f"{name}_paddings", np.asarray(full, np.int32), "int32")
    low.g.emit("PAD", [x.index, paddings], [out], "PadOptions")
    return Bound(out, x.perm)


def _filter(low: Lowering, node: ir.Node, i: int) -> tuple[np.ndarray, TflQuant | None]:
    """The weight of input `i`: int8 with its quantization in int mode, else float32."""
    value = node.inputs[i]
    if value is None:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: no weight")
    w = low.weight(value)
    if low.mode == "int":
        if w is None or w[0].dtype != np.int8:
            raise UnsupportedOp(f"{node.op_type} {node.name!r}: weight {name_of(value)!r} is not int8 in [-127, 127]")
        return w[0], w[1]
    arr = low.float_constant(value)
    if arr is None:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: weight {name_of(value)!r} is not a constant")
    return arr.astype(np.float32), None


def _bias(low: Lowering, node: ir.Node, i: int | None, channels: int, x_scale: float, w_quant: TflQuant | None) -> int:
    """The bias tensor: int32 (int64 for 16x8) with scale = s_x · s_w of the input the kernel reads (zeros if
    the node has none), or float32.  An input converted to the op's width has another s_x than the plan's:
    the stored integers are rescaled, b' = round(b · s_plan / s_x'), exactly for int8 → int16 (× 128)."""
    value = node.inputs[i] if i is not None and len(node.inputs) > i else None
    if low.mode == "float":
        arr = low.float_constant(value) if value is not None else None
        data = np.zeros(channels, np.float32) if arr is None else arr.reshape(-1).astype(np.float32)
        return low.g.constant(f"{node.name}_bias", data, "float32")
    assert w_quant is not None
    scale = (np.float64(x_scale) * w_quant.scale_array().astype(np.float64)).astype(np.float32)
    quant = TflQuant.of(scale, np.zeros(scale.size, np.int64), 0)
    wide = "int64" if low.width == "int16" else "int32"  # 16x8 kernels read an int64 bias
    if value is None:
        return low.g.constant(f"{node.name}_bias", np.zeros(channels, wide), wide, quant)
    w = low.weight(value)
    if w is None or w[0].dtype != np.int32:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: bias {value.name!r} is not int32")
    data, bias_quant = w[0].reshape(-1).astype(np.int64), w[1]
    stored = np.broadcast_to(bias_quant.scale_array().astype(np.float64), data.shape)
    wanted = np.broadcast_to(scale.astype(np.float64), data.shape)
    if not np.allclose(stored, wanted, rtol=1e-6, atol=0):
        data, bias_quant = np.round(data * (stored / wanted)).astype(np.int64), quant
    if wide == "int32":
        data = np.clip(data, np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    return low.g.constant(value.name or f"{node.name}_bias", data.astype(wide), wide, bias_quant)


def _x_scale(low: Lowering, x: Bound) -> float:
    q = low.g.tensors[x.index].quant
    return q.scale[0] if q is not None else 1.0


@register("Conv")
def lower_conv(low: Lowering, node: ir.Node) -> None:
    in_shape = low.shape(node.inputs[0])
    if len(in_shape) not in (3, 4):
        raise UnsupportedOp(f"Conv {node.name!r}: {len(in_shape) - 2}-D convolution has no TFLite kernel")
    weight, w_quant = _filter(low, node, 1)
    act, final = low.take_activation(node)
    out_shape = low.shape(final)
    pads, auto_pad = _padding_of(node, len(in_shape) - 2)
    strides, dil = (
        _ints(node, "strides", [1] * (len(in_shape) - 2)),
        _ints(node, "dilations", [1] * (len(in_shape) - 2)),
    )
    if len(in_shape) == 3:  # (N, C, L): a 2-D convolution over a height of 1, in NLC layout
        x = low.reshape(low.input(node, 0, NLC), (in_shape[0], 1, in_shape[2], in_shape[1]))
        weight, in_shape, out_shape = (
            weight[:, :, None, :],
            (*in_shape[:2], 1, in_shape[2]),
            (*out_shape[:2], 1, out_shape[2]),
        )
        pads, strides, dil = [0, pads[0], 0, pads[1]], [1, *strides], [1, *dil]
    else:
        x = low.input(node, 0, NHWC)
    padding, explicit = choose_padding(
        pads, auto_pad, in_shape[2:], out_shape[2:], list(weight.shape[2:]), strides, dil
    )
    if explicit is not None:
        x = _pad(low, x, explicit, node.name or "conv")
    group = node.attributes.get("group")
    groups, channels_in, channels_out = (group.as_int() if group is not None else 1), in_shape[1], weight.shape[0]
    depthwise = groups > 1 and groups == channels_in
    if groups > 1 and not depthwise and not low.options.get("grouped_conv"):
        raise UnsupportedOp(
            f"Conv {node.name!r}: grouped convolution (group={groups} of {channels_in} channels) has no kernel "
            "in TFLite Micro; group=1 and depthwise (group = input channels) lower there, grouped ones on LiteRT "
            "(target tflite)"
        )
    if depthwise:
        filt = np.transpose(weight, (1, 2, 3, 0))
        quant = None if w_quant is None else TflQuant(w_quant.scale, w_quant.zero_point, 3)
    else:
        filt, quant = np.transpose(weight, (0, 2, 3, 1)), w_quant
    w_index = low.g.constant(f"{value_name(node.inputs[1])}_ohwi", filt, filt.dtype.name, quant)
    b_index = _bias(low, node, 2, channels_out, _x_scale(low, x), w_quant)
    if len(low.shape(final)) == 3:
        y = low.scratch(final, tuple(out_shape[a] for a in NHWC))
    else:
        y = low.output(final, NHWC)
    fields = dict(
        padding=padding,
        strideH=strides[0],
        strideW=strides[1],
        dilationHFactor=dil[0],
        dilationWFactor=dil[1],
        fusedActivationFunction=act,
    )
    if depthwise:
        low.g.emit(
            "DEPTHWISE_CONV_2D",
            [x.index, w_index, b_index],
            [y],
            "DepthwiseConv2DOptions",
            depthMultiplier=channels_out // channels_in,
            **fields,
        )
    else:
        low.g.emit("CONV_2D", [x.index, w_index, b_index], [y], "Conv2DOptions", **fields)
    if len(low.shape(final)) == 3:
        low.reshape_into(y, final, NLC)


@register("Gemm", "MatMul")
def lower_fully_connected(low: Lowering, node: ir.Node) -> None:
    if node.op_type == "MatMul" and low.weight(node.inputs[1]) is None and low.constant(node.inputs[1]) is None:
        return _batch_matmul(low, node)
    attrs = {k: v.value for k, v in node.attributes.items()}
    if attrs.get("transA", 0):
        raise UnsupportedOp(f"Gemm {node.name!r}: transA=1 has no FULLY_CONNECTED form")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    weight, w_quant = _filter(low, node, 1)
    if weight.ndim != 2:
        raise UnsupportedOp(f"MatMul {node.name!r}: a constant operand of rank {weight.ndim} is not a weight matrix")
    transposed = node.op_type == "Gemm" and attrs.get("transB", 0)
    if not transposed:
        weight = weight.T
        if w_quant is not None and w_quant.per_channel:
            w_quant = TflQuant(w_quant.scale, w_quant.zero_point, 0)
    if alpha != 1.0 or beta != 1.0:
        if low.mode == "int":
            raise UnsupportedOp(f"Gemm {node.name!r}: alpha={alpha}, beta={beta} in int8 (only 1 lowers)")
        weight = weight * np.float32(alpha)
    rank = len(low.shape(node.inputs[0]))
    x = low.input(node, 0, identity(rank))
    if x.index in low.flat_order:  # the input is a flatten of NHWC data: the weight's columns follow it
        weight = weight[:, low.flat_order[x.index]]
    act, final = low.take_activation(node)
    w_index = low.g.constant(
        f"{value_name(node.inputs[1])}_ok", np.ascontiguousarray(weight), weight.dtype.name, w_quant
    )
    has_bias = node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None
    b_index = _bias(low, node, 2, weight.shape[0], _x_scale(low, x), w_quant) if has_bias else OMITTED
    if has_bias and low.mode == "float" and beta != 1.0:
        bias = low.g.tensors[b_index]
        bias.data = np.asarray(bias.data) * np.float32(beta)
    y = low.output(final, identity(len(low.shape(final))))
    low.g.emit(
        "FULLY_CONNECTED",
        [x.index, w_index, b_index],
        [y],
        "FullyConnectedOptions",
        fusedActivationFunction=act,
        keepNumDims=rank > 2,
    )
    return None


def _batch_matmul(low: Lowering, node: ir.Node) -> None:
    """BATCH_MATMUL on ONNX-ordered operands; an operand stored with its last two axes swapped is
    read as it is (adj_x / adj_y) instead of being transposed."""
    ranks = [len(low.shape(v)) for v in node.inputs]
    operands, adjoint = [], []
    for i, rank in enumerate(ranks):
        x = low.input(node, i)
        swapped = (*range(rank - 2), rank - 1, rank - 2)
        adjoint.append(rank >= 2 and x.perm == swapped)
        operands.append(x if adjoint[-1] else low.permuted(x, identity(rank)))
    y = low.output(node.outputs[0], identity(len(low.shape(node.outputs[0]))))
    low.g.emit(
        "BATCH_MATMUL",
        [operands[0].index, operands[1].index],
        [y],
        "BatchMatMulOptions",
        adjX=adjoint[0],
        adjY=adjoint[1],
    )


def _pool_geometry(low: Lowering, node: ir.Node) -> tuple[list[int], list[int], tuple[int, ...], tuple[int, ...]]:
    in_shape, out_shape = low.shape(node.inputs[0]), low.shape(node.outputs[0])
    if len(in_shape) != 4:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: only 2-D pooling lowers (input rank {len(in_shape)})")
    return _ints(node, "kernel_shape", []), _ints(node, "strides", [1, 1]), in_shape[2:], out_shape[2:]


@register("MaxPool", "AveragePool")
def lower_pool(low: Lowering, node: ir.Node) -> None:
    kernel, strides, in_hw, out_hw = _pool_geometry(low, node)
    dil = _ints(node, "dilations", [1, 1])
    if dil != [1, 1]:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: dilated pooling has no TFLite kernel")
    x = low.input(node, 0, NHWC)
    pads, auto_pad = _padding_of(node, 2)
    padding, explicit = choose_padding(pads, auto_pad, in_hw, out_hw, kernel, strides, dil)
    include_pad = node.attributes.get("count_include_pad")
    if explicit is not None:
        t = low.g.tensors[x.index]
        zp_is_min = low.mode == "int" and t.quant is not None and t.quant.zero_point[0] == INT_BOUNDS[t.dtype][0]
        if node.op_type == "MaxPool" and not zp_is_min:
            raise UnsupportedOp(
                f"MaxPool {node.name!r}: pads {explicit} are neither SAME nor VALID in TFLite "
                "and padding with zeros would change the max"
            )
        if node.op_type == "AveragePool" and not (include_pad is not None and include_pad.as_int()):
            raise UnsupportedOp(
                f"AveragePool {node.name!r}: pads {explicit} with count_include_pad=0 "
                "are neither SAME nor VALID in TFLite"
            )
        x = _pad(low, x, explicit, node.name or "pool")
    elif padding == "SAME" and node.op_type == "AveragePool" and include_pad is not None and include_pad.as_int():
        if any(k > 1 for k in kernel) and any(
            b for _, b, _ in (same_padding(i, k, s, 1) for i, k, s in zip(in_hw, kernel, strides, strict=True))
        ):
            raise UnsupportedOp(f"AveragePool {node.name!r}: count_include_pad=1 with SAME padding")
    act, final = low.take_activation(node)
    x = low.same_quant(x, low.quant_of_output(final), node.name or node.op_type)
    y = low.output(final, NHWC)
    code = "MAX_POOL_2D" if node.op_type == "MaxPool" else "AVERAGE_POOL_2D"
    low.g.emit(
        code,
        [x.index],
        [y],
        "Pool2DOptions",
        padding=padding,
        strideH=strides[0],
        strideW=strides[1],
        filterHeight=kernel[0],
        filterWidth=kernel[1],
        fusedActivationFunction=act,
    )


@register("GlobalAveragePool", "GlobalMaxPool")
def lower_global_pool(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.inputs[0]))
    perm = NHWC if rank == 4 else NLC if rank == 3 else identity(rank)
    x = low.input(node, 0, perm)
    axes = low.g.constant(f"{node.name}_axes", np.arange(1, rank - 1, dtype=np.int32), "int32")
    y = low.output(node.outputs[0], perm)
    code, options = (
        ("MEAN", "ReducerOptions") if node.op_type == "GlobalAveragePool" else ("REDUCE_MAX", "ReducerOptions")
    )
    low.g.emit(code, [x.index, axes], [y], options, keepDims=True)


@register("ConvTranspose")
def lower_conv_transpose(low: Lowering, node: ir.Node) -> None:
    """TRANSPOSE_CONV: inputs (output shape, W[o, kh, kw, i], x, bias); out = (in − 1)·s + k (VALID) or in·s (SAME)."""
    in_shape, out_shape = low.shape(node.inputs[0]), low.shape(node.outputs[0])
    if len(in_shape) != 4:
        raise UnsupportedOp(f"ConvTranspose {node.name!r}: only 2-D transposed convolution lowers")
    weight, w_quant = _filter(low, node, 1)
    group = node.attributes.get("group")
    if (group.as_int() if group is not None else 1) != 1 or _ints(node, "dilations", [1, 1]) != [1, 1]:
        raise UnsupportedOp(f"ConvTranspose {node.name!r}: grouped or dilated transposed convolution")
    kernel, strides = list(weight.shape[2:]), _ints(node, "strides", [1, 1])
    pads = _ints(node, "pads", [0, 0, 0, 0])
    valid = [(in_shape[2 + i] - 1) * strides[i] + kernel[i] for i in range(2)]
    if not any(pads) and list(out_shape[2:]) == valid:
        padding = "VALID"
    elif all(out_shape[2 + i] == in_shape[2 + i] * strides[i] for i in range(2)) and all(
        pads[i] == max(valid[i] - out_shape[2 + i], 0) // 2 for i in range(2)
    ):
        padding = "SAME"
    else:
        raise UnsupportedOp(
            f"ConvTranspose {node.name!r}: pads {pads} with output {list(out_shape[2:])} are neither SAME nor VALID"
        )
    x = low.input(node, 0, NHWC)
    filt = np.transpose(weight, (1, 2, 3, 0))
    quant = None if w_quant is None else TflQuant(w_quant.scale, w_quant.zero_point, 0)
    w_index = low.g.constant(f"{value_name(node.inputs[1])}_ohwi", filt, filt.dtype.name, quant)
    b_index = _bias(low, node, 2, filt.shape[0], _x_scale(low, x), quant)
    shape_index = low.g.constant(
        f"{node.name}_output_shape", np.asarray([out_shape[a] for a in NHWC], np.int32), "int32"
    )
    y = low.output(node.outputs[0], NHWC)
    low.g.emit(
        "TRANSPOSE_CONV",
        [shape_index, w_index, x.index, b_index],
        [y],
        "TransposeConvOptions",
        padding=padding,
        strideH=strides[0],
        strideW=strides[1],
    )
