"""The verdict on a compile: a bad result must read as bad, in the card and on stderr.

Problems found in a finished card (no budget needed):
- an output collapsed (`qcompile.metrics.COLLAPSE`: SQNR < 10 dB, cosine < 0.9, top-1
  agreement < 90%): it fails the compile unless the user set a budget and it is met (a task
  metric, such as a recognizer's exact-line accuracy, can hold while raw outputs differ a lot);
- nothing was quantized (no int8 node, or no integer kernel in ORT's optimized graph);
- the int8 model runs slower than the float one at one thread.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from qcompile.metrics import COLLAPSE
from qcompile.plan import QuantPlan

SLOWER = 1.1  # int8 slower than float by more than timing noise on a small model

__all__ = ["Problem", "problems", "ADVICE", "SLOWER"]

ADVICE = {
    "collapsed": "let a search choose calibrators and float nodes: try --policy selective",
    "nothing": "see which ops the target quantizes: qcompile inspect MODEL",
    "slower": "this CPU's int8 kernels do not pay off for this model",
    "weight-only": "qcompile adds no activation quantization to it; pass the float model to quantize activations",
    "searched": "the selective search could not do better: give more calibration data, a larger --margin, "
    "or a lower budget",
    "search": "set a lower budget, or expect it to be missed",
    "cut": "the plan is the best found in time; a longer --time-budget may find a better one",
    "met": "the budget you set is met, and its metric decides; the outputs themselves differ this much from float",
}


class Problem(NamedTuple):
    text: str
    advice: str
    fails: bool


def _collapse(output: dict[str, Any]) -> str | None:
    if not output["sqnr_db"] >= COLLAPSE["sqnr_db"]:  # NaN too
        return f"SQNR {output['sqnr_db']:.1f} dB (below {COLLAPSE['sqnr_db']:g})"
    if not output["cosine"] >= COLLAPSE["cosine"]:
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


def _bound(bound: dict[str, float]) -> str:
    return f"≥ {bound['floor']:g}" if "floor" in bound else f"within {bound['max_drop']:g} of float"


def problems(card: dict[str, Any], plan: QuantPlan) -> list[Problem]:
    """Each problem of the compile, what to do about it, and whether it fails the compile."""
    found = []
    remedy = ADVICE["searched" if card.get("policy") == "selective" else "collapsed"]
    budget = card.get("budget")
    met = bool(budget and budget["met"])  # the user's own metric holds: a collapse is then a warning
    for output in card["fidelity"]["outputs"]:
        if (why := _collapse(output)) is not None:
            advice = ADVICE["met"] if met else remedy
            found.append(Problem(f"output {output['name']!r} collapsed: {why}", advice, not met))
    if budget and not budget["met"]:
        found.append(Problem(f"budget not met: {_budget_line(budget)}", remedy, True))
    kernels = card["ort_kernels"]
    weight_only = "weight-only" in (card.get("given_quantization") or {}).get("kinds", [])
    if weight_only and kernels.get("weight_only") and kernels["integer"] == 0:
        kept = f"{kernels['weight_only']} weight-only kernels (low-bit weights, float activations), kept as they were"
        found.append(Problem(f"a weight-only model: {kept}", ADVICE["weight-only"], False))
    elif (dep := card.get("deployment")) is not None:  # the target's own file decides, not ORT's fusions
        if not any(d.precision != "float" for d in plan.nodes.values()) or dep["integer_ops"] == 0:
            what = f"{dep['integer_ops']} integer and {dep['float_ops']} float ops in the .{dep['format']} file"
            found.append(Problem(f"nothing runs in integer: {what}", ADVICE["nothing"], True))
    elif not any(d.precision != "float" for d in plan.nodes.values()) or kernels["integer"] == 0:
        what = f"{kernels['integer']} integer and {kernels['float']} float compute kernels after ORT's fusions"
        found.append(Problem(f"nothing runs in integer: {what}", ADVICE["nothing"], True))
    if (dep := card.get("deployment")) is not None:  # what the target's own runtime reported
        found += [Problem(p["problem"], p["advice"], p["fails"]) for p in dep.get("problems", [])]
    search = card.get("search")
    if search and not search["met"]:
        short = (
            f"the precision search did not reach {search['metric']} {_bound(search['bound'])} with its "
            f"margin {search['margin']:.3g} on its samples (best {search['chosen']:.4g})"
        )
        found.append(Problem(short, ADVICE["search"], False))
    if search and search.get("cut"):
        found.append(Problem("the precision search was cut by its time budget", ADVICE["cut"], False))
    latency = card.get("latency_ms")
    if latency and latency["quantized"]["1"] > SLOWER * latency["float"]["1"]:
        ratio = latency["quantized"]["1"] / latency["float"]["1"]
        slower = f"the int8 model is slower than float at 1 thread ({ratio:.2f}× its latency)"
        found.append(Problem(slower, ADVICE["slower"], False))
    return found
