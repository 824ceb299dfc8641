"""Lowering of data movement: Reshape family, Transpose, Concat, Split, Slice, Pad, Resize, Gather, Identity.

These ops move integers without arithmetic, so in TFLite their output keeps the input's
scale and zero point; where the plan's Q differs, the input is re-scaled first.

Reshape in a permuted layout is a view when `tflite_layout.reshape_layout` finds the output's
storage order; a flatten read only by fully connected layers re-orders their weight columns
instead; otherwise the input is first transposed back to ONNX order.  A Transpose is never
emitted for an ONNX Transpose: the output re-labels the data (p' = t⁻¹ ∘ p).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import name_of
from qcompile.targets.tflite_layout import moves_only_unit_axes, reshape_layout
from qcompile.targets.tflite_lower import NHWC, Bound, Lowering, UnsupportedOp, identity, readers, register, value_name
from qcompile.targets.tflite_ops_math import reduced_perm

__all__: list[str] = []


def _alias(low: Lowering, node: ir.Node, src: Bound, perm: tuple[int, ...]) -> None:
    """Bind `node`'s output to `src`'s tensor, re-labelled `perm` (re-scaled where a reading Q differs)."""
    out = node.outputs[0]
    if low.mode == "float":
        low.floats[name_of(out)] = Bound(src.index, perm)
        return
    quant = low.g.tensors[src.index].quant
    for use in out.uses():
        q = use.node
        if q.op_type != "QuantizeLinear":
            continue
        wanted = low.quant_of_q(q)
        index = src.index if wanted == quant else low.requantize(src.index, wanted, name_of(q.outputs[0]))
        low.ints[name_of(q.outputs[0])] = Bound(index, perm)
        low.done.add(id(q))


@register("Identity", "Dropout")
def lower_identity(low: Lowering, node: ir.Node) -> None:
    x = low.input(node, 0)
    _alias(low, node, x, x.perm)


@register("Transpose")
def lower_transpose(low: Lowering, node: ir.Node) -> None:
    x = low.input(node, 0)
    attr = node.attributes.get("perm")
    t = list(attr.as_ints()) if attr is not None else list(reversed(range(len(x.perm))))
    inverse = np.argsort(t)
    _alias(low, node, x, tuple(int(inverse[a]) for a in x.perm))


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def lower_reshape(low: Lowering, node: ir.Node) -> None:
    in_shape, out_shape = low.shape(node.inputs[0]), low.shape(node.outputs[0])
    x = low.input(node, 0)
    order = None
    out_perm = reshape_layout(in_shape, x.perm, out_shape)
    if out_perm is None and _feeds_fully_connected(low, node, out_shape):
        order = np.arange(int(np.prod(in_shape))).reshape(in_shape).transpose(x.perm).reshape(-1)
        out_perm = identity(len(out_shape))
    elif out_perm is None:
        x = low.permuted(x, identity(len(in_shape)))
        out_perm = identity(len(out_shape))
    x = low.same_quant(x, low.quant_of_output(node.outputs[0]), node.name or "reshape")
    if out_perm == identity(len(out_shape)) and len(out_shape) == 4 and moves_only_unit_axes(out_shape, NHWC):
        out_perm = NHWC  # (N, C, 1, 1): NHWC costs nothing
    index = low.reshape_into(x.index, node.outputs[0], out_perm)
    if order is not None:
        low.flat_order[index] = order


def _feeds_fully_connected(low: Lowering, node: ir.Node, out_shape: tuple[int, ...]) -> bool:
    """A flatten to (N, K) read only by Gemm/MatMul with a constant weight, whose columns can then follow
    the data's order (no TRANSPOSE)."""
    found = list(readers(node.outputs[0]))
    return (
        len(out_shape) == 2
        and bool(found)
        and all(
            n.op_type in ("Gemm", "MatMul")
            and (low.weight(n.inputs[1]) is not None or low.constant(n.inputs[1]) is not None)
            for n in found
        )
    )


@register("Concat")
def lower_concat(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.outputs[0]))
    axis = node.attributes["axis"].as_int() % rank
    perms = [b.perm for v in node.inputs if v is not None and (b := low.ints.get(name_of(v))) is not None]
    perms += [b.perm for v in node.inputs if v is not None and (b := low.floats.get(name_of(v))) is not None]
    perm = max(set(perms), key=perms.count) if perms else identity(rank)
    quant = low.quant_of_output(node.outputs[0])
    inputs = [low.same_quant(low.input(node, i, perm), quant, node.name or "concat") for i in range(len(node.inputs))]
    y = low.output(node.outputs[0], perm)
    low.g.emit(
        "CONCATENATION",
        [b.index for b in inputs],
        [y],
        "ConcatenationOptions",
        axis=perm.index(axis),
        fusedActivationFunction="NONE",
    )


@register("Split")
def lower_split(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.inputs[0]))
    attr = node.attributes.get("axis")
    axis = (attr.as_int() if attr is not None else 0) % rank
    sizes = [low.shape(o)[axis] for o in node.outputs]
    x = low.input(node, 0)
    x = low.same_quant(x, low.quant_of_output(node.outputs[0]), node.name or "split")
    outputs = [low.output(o, x.perm) for o in node.outputs]
    tfl_axis = low.g.constant(f"{node.name}_axis", np.asarray(x.perm.index(axis), np.int32), "int32")
    if len(set(sizes)) == 1:
        low.g.emit("SPLIT", [tfl_axis, x.index], outputs, "SplitOptions", numSplits=len(sizes))
    else:
        splits = low.g.constant(f"{node.name}_sizes", np.asarray(sizes, np.int32), "int32")
        low.g.emit("SPLIT_V", [x.index, splits, tfl_axis], outputs, "SplitVOptions", numSplits=len(sizes))


def _const_ints(low: Lowering, node: ir.Node, i: int) -> list[int] | None:
    if len(node.inputs) <= i or node.inputs[i] is None:
        return None
    value = node.inputs[i]
    arr = low.constant(value)
    if arr is None:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: input {i} ({value_name(value)!r}) is not constant")
    return [int(v) for v in arr.reshape(-1)]


@register("Slice")
def lower_slice(low: Lowering, node: ir.Node) -> None:
    shape = low.shape(node.inputs[0])
    rank = len(shape)
    starts, ends = _const_ints(low, node, 1), _const_ints(low, node, 2)
    axes = _const_ints(low, node, 3) or list(range(len(starts or [])))
    steps = _const_ints(low, node, 4) or [1] * len(axes)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    for s, e, a, st in zip(starts or [], ends or [], axes, steps, strict=True):
        a %= rank
        if st <= 0:
            raise UnsupportedOp(f"Slice {node.name!r}: step {st} (only positive steps lower)")
        size = shape[a]
        begin[a] = min(max(s + size if s < 0 else s, 0), size)
        end[a] = min(max(e + size if e < 0 else e, 0), size)
        stride[a] = st
    x = low.input(node, 0)
    x = low.same_quant(x, low.quant_of_output(node.outputs[0]), node.name or "slice")
    tfl = [(shape[a], begin[a], end[a], stride[a]) for a in x.perm]  # per TFLite axis
    merged = _merge_untouched(tfl) if rank > 4 else tfl
    source = x.index
    if len(merged) < rank:  # TFLite Micro slices at most 4 axes: fold the untouched neighbours together
        source = low.reshape(x, tuple(d for d, *_ in merged)).index
    consts = [
        low.g.constant(f"{node.name}_{k}", np.asarray([axis[i] for axis in merged], np.int32), "int32")
        for i, k in ((1, "begin"), (2, "end"), (3, "strides"))
    ]
    if len(merged) == rank:
        low.g.emit("STRIDED_SLICE", [source, *consts], [low.output(node.outputs[0], x.perm)], "StridedSliceOptions")
        return
    sliced_shape = tuple(-(-(e - b) // st) for _, b, e, st in merged)
    sliced = low.scratch(node.outputs[0], sliced_shape)
    low.g.emit("STRIDED_SLICE", [source, *consts], [sliced], "StridedSliceOptions")
    low.reshape_into(sliced, node.outputs[0], x.perm)


def _merge_untouched(axes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(size, begin, end, stride) per axis, with runs of consecutive axes taken whole merged into one
    (a row-major view: the data does not move)."""
    out: list[tuple[int, int, int, int]] = []
    for size, b, e, st in axes:
        whole = b == 0 and e == size and st == 1
        if whole and out and out[-1][1] == 0 and out[-1][2] == out[-1][0] and out[-1][3] == 1:
            merged = out[-1][0] * size
            out[-1] = (merged, 0, merged, 1)
        else:
            out.append((size, b, e, st))
    return out


@register("Pad")
def lower_pad(low: Lowering, node: ir.Node) -> None:
    attr = node.attributes.get("mode")
    mode = attr.as_string() if attr is not None else "constant"
    if mode not in ("constant", "reflect"):
        raise UnsupportedOp(f"Pad {node.name!r}: mode {mode!r} (constant and reflect lower)")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        raise UnsupportedOp(f"Pad {node.name!r}: the axes input is not supported")
    pads = _const_ints(low, node, 1) or []
    value = low.float_constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if value is not None and float(np.asarray(value).reshape(-1)[0]) != 0.0:
        raise UnsupportedOp(f"Pad {node.name!r}: constant value {float(value)} (only 0 lowers)")
    rank = len(pads) // 2
    x = low.input(node, 0)
    x = low.same_quant(x, low.quant_of_output(node.outputs[0]), node.name or "pad")
    paddings = np.asarray([[pads[a], pads[a + rank]] for a in x.perm], np.int32)
    pad_index = low.g.constant(f"{node.name}_paddings", paddings, "int32")
    y = low.output(node.outputs[0], x.perm)
    if mode == "reflect":  # MirrorPadMode.REFLECT (0): the edge is not repeated, as ONNX's reflect
        low.g.emit("MIRROR_PAD", [x.index, pad_index], [y], "MirrorPadOptions", mode=0)
    else:
        low.g.emit("PAD", [x.index, pad_index], [y], "PadOptions")


_RESIZE = {  # (mode, coordinate transformation, nearest mode) -> (op, align_corners, half_pixel_centers)
    ("nearest", "asymmetric", "floor"): ("RESIZE_NEAREST_NEIGHBOR", False, False),
    ("nearest", "half_pixel", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", False, True),
    ("nearest", "align_corners", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", True, False),
    ("linear", "asymmetric", None): ("RESIZE_BILINEAR", False, False),
    ("linear", "half_pixel", None): ("RESIZE_BILINEAR", False, True),
    ("linear", "pytorch_half_pixel", None): ("RESIZE_BILINEAR", False, True),
    ("linear", "align_corners", None): ("RESIZE_BILINEAR", True, False),
}


def _attr_str(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return attr.as_string() if attr is not None else default


@register("Resize", "Upsample")
def lower_resize(low: Lowering, node: ir.Node) -> None:
    in_shape, out_shape = low.shape(node.inputs[0]), low.shape(node.outputs[0])
    if len(in_shape) != 4 or in_shape[:2] != out_shape[:2]:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: only spatial resizes of 4-D tensors lower")
    mode = _attr_str(node, "mode", "nearest")
    coords = _attr_str(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr_str(node, "nearest_mode", "round_prefer_floor") if mode == "nearest" else None
    if mode == "pytorch_half_pixel" and min(out_shape[2:]) == 1:
        coords = "unsupported"
    choice = _RESIZE.get((mode, coords, nearest))
    if choice is None:
        raise UnsupportedOp(
            f"{node.op_type} {node.name!r}: mode={mode}, coordinate_transformation_mode={coords}"
            f"{f', nearest_mode={nearest}' if nearest else ''} has no TFLite resize; "
            f"supported: {sorted(k for k in _RESIZE)}"
        )
    code, align, half = choice
    x = low.input(node, 0, NHWC)
    x = low.same_quant(x, low.quant_of_output(node.outputs[0]), node.name or "resize")
    factors = [o // i for o, i in zip(out_shape[2:], in_shape[2:], strict=True)]
    repeats = code == "RESIZE_NEAREST_NEIGHBOR" and not align and low.options.get("nearest_as_copies")
    if repeats and all(f * i == o for f, i, o in zip(factors, in_shape[2:], out_shape[2:], strict=True)):
        return _repeat(low, node, x, factors)
    size = low.g.constant(f"{node.name}_size", np.asarray(out_shape[2:], np.int32), "int32")
    options = "ResizeNearestNeighborOptions" if code == "RESIZE_NEAREST_NEIGHBOR" else "ResizeBilinearOptions"
    low.g.emit(
        code, [x.index, size], [low.output(node.outputs[0], NHWC)], options, alignCorners=align, halfPixelCenters=half
    )


def _repeat(low: Lowering, node: ir.Node, x: Bound, factors: list[int]) -> None:
    """Nearest upsampling by whole factors (each pixel repeated fy × fx times; floor and half-pixel
    rounding agree there) as copies: CONCATENATION of fx copies on C, RESHAPE to (N, H, fx·W, C), then
    fy copies on a unit axis and RESHAPE to (N, fy·H, fx·W, C).  Data movement only, so exact; LiteRT's
    XNNPACK takes CONCATENATION and RESHAPE in int8, not RESIZE_NEAREST_NEIGHBOR."""
    n, h, w, c = low.g.tensors[x.index].shape
    fy, fx = factors

    def concat(src: int, copies: int, axis: int, shape: tuple[int, ...]) -> int:
        if copies == 1:
            return src
        out = low.scratch(node.outputs[0], shape)
        low.g.emit(
            "CONCATENATION", [src] * copies, [out], "ConcatenationOptions", axis=axis, fusedActivationFunction="NONE"
        )
        return out

    wide = concat(x.index, fx, 3, (n, h, w, fx * c))
    rows = low.reshape(Bound(wide, x.perm), (n, h, 1, fx * w * c))
    tall = concat(rows.index, fy, 2, (n, h, fy, fx * w * c))
    low.reshape_into(tall, node.outputs[0], NHWC)


@register("Gather")
def lower_gather(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.inputs[0]))
    attr = node.attributes.get("axis")
    axis = (attr.as_int() if attr is not None else 0) % rank
    indices = low.constant(node.inputs[1])
    if indices is None or indices.ndim > 1:
        raise UnsupportedOp(f"Gather {node.name!r}: indices must be a constant scalar or vector")
    size = low.shape(node.inputs[0])[axis]
    idx = np.where(indices < 0, indices + size, indices).astype(np.int32)
    x = low.input(node, 0)
    x = low.same_quant(x, low.quant_of_output(node.outputs[0]), node.name or "gather")
    out_perm = x.perm if idx.ndim == 1 else reduced_perm(x.perm, [axis])
    flat = idx.reshape(-1)
    if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        return _gather_as_slice(low, node, x, axis, int(flat[0]), int(flat.size), out_perm)
    index = low.g.constant(f"{node.name}_indices", idx, "int32")
    y = low.output(node.outputs[0], out_perm)
    low.g.emit("GATHER", [x.index, index], [y], "GatherOptions", axis=x.perm.index(axis))


def _gather_as_slice(
    low: Lowering, node: ir.Node, x: Bound, axis: int, start: int, count: int, out_perm: tuple[int, ...]
) -> None:
    """A Gather of consecutive indices is a STRIDED_SLICE (and a RESHAPE when a scalar index drops the
    axis): data movement every runtime delegates (XNNPACK and Ethos-U have no int8 GATHER)."""
    shape = low.g.tensors[x.index].shape
    at = x.perm.index(axis)
    begin = [0] * len(shape)
    end = list(shape)
    begin[at], end[at] = start, start + count
    consts = [
        low.g.constant(f"{node.name}_{k}", np.asarray(v, np.int32), "int32")
        for k, v in (("begin", begin), ("end", end), ("strides", [1] * len(shape)))
    ]
    if len(out_perm) == len(shape):
        low.g.emit("STRIDED_SLICE", [x.index, *consts], [low.output(node.outputs[0], out_perm)], "StridedSliceOptions")
        return
    sliced = low.scratch(node.outputs[0], tuple(count if i == at else d for i, d in enumerate(shape)))
    low.g.emit("STRIDED_SLICE", [x.index, *consts], [sliced], "StridedSliceOptions")
    low.reshape_into(sliced, node.outputs[0], out_perm)
