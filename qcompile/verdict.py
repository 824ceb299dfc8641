"""The verdict on a compile: a bad result must read as bad, in the card and on stderr.

Problems found in a finished card (no budget needed):
- an output collapsed (`qcompile.metrics.COLLAPSE`: SQNR < 10 dB, cosine < 0.9, top-1
  agreement < 90%);
- nothing was quantized (no int8 node, or no integer kernel in ORT's optimized graph);
- the int8 model runs slower than the float one at one thread.
"""

from __future__ import annotations

from typing import Any

from qcompile.metrics import COLLAPSE
from qcompile.plan import QuantPlan

__all__ = ["problems", "ADVICE"]

ADVICE = {
    "collapsed": "keep the sensitive nodes in float: try --policy hybrid",
    "nothing": "see which ops the target quantizes: qcompile inspect MODEL",
    "slower": "this CPU's int8 kernels do not pay off for this model",
}


def _collapse(output: dict[str, Any]) -> str | None:
    if output["sqnr_db"] < COLLAPSE["sqnr_db"]:
        return f"SQNR {output['sqnr_db']:.1f} dB (below {COLLAPSE['sqnr_db']:g})"
    if output["cosine"] < COLLAPSE["cosine"]:
        return f"cosine {output['cosine']:.3f} (below {COLLAPSE['cosine']:g})"
    agree = output["top1_agreement"]
    if agree is not None and agree < COLLAPSE["agreement"]:
        return f"top-1 agreement {100 * agree:.0f}% (below {100 * COLLAPSE['agreement']:.0f}%)"
    return None


def _budget_line(budget: dict[str, Any]) -> str:
    if "floor" in budget:
        return f"{budget['metric']} is {budget['value']:.4g}, below the floor {budget['floor']:g}"
    drop = budget["float_value"] - budget["value"]
    allowed = budget["max_drop"]
    return f"{budget['metric']} fell by {drop:.4g} from float's {budget['float_value']:.4g} (allowed {allowed:g})"


def problems(card: dict[str, Any], plan: QuantPlan) -> list[tuple[str, str]]:
    """(problem, what to do about it) for each problem of the compile."""
    found = []
    for output in card["fidelity"]["outputs"]:
        if (why := _collapse(output)) is not None:
            found.append((f"output {output['name']!r} collapsed: {why}", ADVICE["collapsed"]))
    budget = card.get("budget")
    if budget and not budget["met"]:
        found.append((f"budget not met: {_budget_line(budget)}", ADVICE["collapsed"]))
    kernels = card["ort_kernels"]
    if not any(d.precision != "float" for d in plan.nodes.values()) or kernels["integer"] == 0:
        what = f"{kernels['integer']} integer and {kernels['float']} float compute kernels after ORT's fusions"
        found.append((f"nothing runs in integer: {what}", ADVICE["nothing"]))
    latency = card.get("latency_ms")
    if latency and latency["quantized"]["1"] > latency["float"]["1"]:
        ratio = latency["quantized"]["1"] / latency["float"]["1"]
        found.append((f"the int8 model is slower than float at 1 thread ({ratio:.2f}× its latency)", ADVICE["slower"]))
    return found
