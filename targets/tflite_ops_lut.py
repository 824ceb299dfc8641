"""Elementwise functions TFLite has no integer kernel for, as a 256-entry lookup table.

Between an int8 input (s_x, z_x) and an int8 output (s_y, z_y) any elementwise f is a
function of 256 integers:

    table[q + 128] = clamp(round(f(s_x · (q − z_x)) / s_y) + z_y, −128, 127)

which is what the QDQ model computes (DequantizeLinear, f in float, QuantizeLinear, rounding
half to even).  In TFLite: CAST the int8 input to int32, ADD 128, GATHER from the table
(a constant carrying the output's quantization): integer-only, so TFLite Micro and Ethos-U's
CPU side run it too.  In float mode the function's float kernel is used where TFLite has one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qcompile.targets.tflite_graph import TflTensor
from qcompile.targets.tflite_lower import Lowering, register

__all__ = ["FUNCTIONS", "lookup_table"]

FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str | None]] = {
    # ONNX op: (f in float32, TFLite float kernel or None)
    "Sqrt": (lambda x: np.sqrt(np.maximum(x, 0)), "SQRT"),
    "Exp": (np.exp, "EXP"),
    "Log": (lambda x: np.log(np.maximum(x, np.finfo(np.float32).tiny)), "LOG"),
    "Abs": (np.abs, "ABS"),
    "Neg": (np.negative, "NEG"),
    "Reciprocal": (np.reciprocal, None),  # float: DIV(1, x) below
}


def lookup_table(f: Callable[[np.ndarray], np.ndarray], scale_in: float, zp_in: int, scale_out: float, zp_out: int):
    """The int8 table of f between the two quantizations (index q + 128)."""
    q = np.arange(-128, 128, dtype=np.int64)
    x = (np.float32(scale_in) * (q - zp_in).astype(np.float32)).astype(np.float32)
    with np.errstate(all="ignore"):
        y = np.asarray(f(x), np.float32)
    big = float(np.finfo(np.float32).max)
    y = np.nan_to_num(y, nan=0.0, posinf=big, neginf=-big)
    with np.errstate(over="ignore"):  # beyond the int8 range either way: the clip saturates it
        steps = np.round(y / np.float32(scale_out))
    return np.clip(steps + zp_out, -128, 127).astype(np.int8)


@register(*FUNCTIONS)
def lower_function(low: Lowering, node: ir.Node) -> None:
    f, float_kernel = FUNCTIONS[node.op_type]
    if low.mode == "float":
        x = low.float_input(node.inputs[0])  # type: ignore[arg-type]
        if float_kernel is None:  # Reciprocal: 1 / x
            one = low.g.constant(f"{node.name}_one", np.ones((1,) * len(x.perm), np.float32), "float32")
            low.g.emit("DIV", [one, x.index], [low.output(node.outputs[0], x.perm)], "DivOptions")
            return
        low.g.emit(float_kernel, [x.index], [low.output(node.outputs[0], x.perm)])
        return
    x = low.int_input(node.inputs[0])  # type: ignore[arg-type]
    t = low.g.tensors[x.index]
    out_quant = low.quant_of_output(node.outputs[0])
    assert t.quant is not None and out_quant is not None
    table = lookup_table(f, t.quant.scale[0], t.quant.zero_point[0], out_quant.scale[0], out_quant.zero_point[0])
    name = node.name or node.op_type
    wide = low.g.add(TflTensor(f"{name}_int32", t.shape, "int32"))
    low.g.emit("CAST", [x.index], [wide])
    offset = low.g.constant(f"{name}_offset", np.asarray(128, np.int32), "int32")
    index = low.g.add(TflTensor(f"{name}_index", t.shape, "int32"))
    low.g.emit("ADD", [wide, offset], [index], "AddOptions", fusedActivationFunction="NONE")
    table_index = low.g.constant(f"{name}_table", table, "int8", out_quant)
    low.g.emit("GATHER", [table_index, index], [low.output(node.outputs[0], x.perm)], "GatherOptions", axis=0)
