"""Bias correction inside the searches: a corrected bias switched on with its weight.

The compiled model's biases are corrected (`qcompile.passes.correct_bias`): wherever a weight W
is rounded to Ŵ, its node's bias b becomes b + δ.  A search that scored its candidates with
float biases would judge a model that is never built (PP-OCRv5 det: all int8 read 20.1 dB
uncorrected, 22 dB corrected, and the search refined calibrators for 14 minutes to make up a
difference the compiled model never had).  So in the switchable fake-quant model each corrected
node reads

    Where(on_W, b + δ, b)

with on_W the switch that quantizes W: the bias is corrected exactly when the weight is
rounded, and with every switch off (the float reference) the model is the float model.  δ is the
one the final plan gets (same weight specs, same measured input means).  A weight with several
candidate specs (a calibrator's each) keeps its float bias: its δ would differ per spec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import FreshNames, add_initializer, const_array
from qcompile.passes.correct_bias import correctable_nodes, input_and_weight, node_key

__all__ = ["bias_targets", "switch_biases"]


def bias_targets(model: ir.Model, shifts: Mapping[str, np.ndarray]) -> list[tuple[ir.Node, str, np.ndarray]]:
    """(node, its weight's name, δ) for each node of `model` that `shifts` corrects.  Taken before
    any switch is inserted: once a weight is read through its switch, it is no longer a constant."""
    return [(n, input_and_weight(n)[1], shifts[node_key(n)]) for n in correctable_nodes(model) if node_key(n) in shifts]


def switch_biases(
    graph: ir.Graph, targets: list[tuple[ir.Node, str, np.ndarray]], weight_switches: Mapping[str, Mapping[str, str]]
) -> None:
    """Give each target node the bias Where(on_W, b + δ, b), on_W its weight's only switch (a main
    graph input, read from any branch)."""
    inputs, fresh = {v.name: v for v in graph.inputs}, FreshNames(graph)
    for node, weight, shift in targets:
        switches = weight_switches.get(weight, {})
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        base = const_array(bias)
        if len(switches) != 1 or bias is None or base is None:
            continue
        home = node.graph
        assert home is not None
        corrected = add_initializer(
            home, f"{bias.name}_corrected", (base.astype(np.float64) + shift).astype(base.dtype), fresh
        )
        picked = ir.Value(name=fresh(f"{bias.name}_switched"), type=bias.type, shape=bias.shape)
        on = inputs[next(iter(switches.values()))]
        home.insert_before(node, ir.Node("", "Where", [on, corrected, bias], outputs=[picked]))
        node.replace_input_with(2, picked)
