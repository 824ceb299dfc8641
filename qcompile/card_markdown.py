"""The quantization card as Markdown (`card.md`): the same figures as `card.json`, for people."""

from __future__ import annotations

import math
from typing import Any

from qcompile.card_deployment import deployment_lines, runtime_note
from qcompile.search_split import UNDECIDED_MARGIN

__all__ = ["render_markdown", "format_changes"]


def format_changes(removed: dict[str, int], added: dict[str, int]) -> str:
    return ", ".join([f"−{n} {op}" for op, n in removed.items()] + [f"+{n} {op}" for op, n in added.items()])


def _search_lines(search: dict | None) -> list[str]:
    if not search:
        return []
    bound = (
        f"≥ {search['bound']['floor']:g}" if "floor" in search["bound"] else f"drop ≤ {search['bound']['max_drop']:g}"
    )
    where = "samples set aside from calibration" if search.get("unseen") else "calibration samples"
    on_target = search.get("on_target") or {}
    chosen = (
        f"on {on_target['runtime']}'s runtime with {len(on_target['widened'])} node(s) at 16 bits"
        if on_target
        else f"with {len(search['float_groups'])} group(s) in float"
    )
    lines = [
        f"## Precision search ({search.get('policy', 'hybrid')})",
        "",
        f"Budget {search['metric']} {bound}, kept with a margin of {search['margin']:g} on {search['search_samples']} "
        f"{where}: all int8 gives {_fmt(search['all_int8'], 3)}; {chosen}, "
        f"{_fmt(search['chosen'], 3)} ({'met' if search['met'] else '**not met**'}; "
        f"{search['evaluations']} evaluations).",
        "",
    ]
    if (undecided := search.get("undecided")) and undecided["stream"]:
        lines += [
            f"Search samples the float model is undecided on (top class ahead by less than {UNDECIDED_MARGIN:g}): "
            f"{undecided['search']} of {search['search_samples']}, as the calibration stream had "
            f"{undecided['stream']} of {undecided['of']} (quantization error concentrates there).",
            "",
        ]
    if (error := search.get("sampling_error")) is not None:
        lines += [
            f"Sampling error of {search['metric']} at the choice (jackknife over the {search['search_samples']} "
            f"search samples{_jackknife_groups(search.get('streams'))}): {_fmt(error, 3)}; a margin smaller than "
            "that is raised to it where a choice meets the budget.",
            "",
        ]
    if streams := search.get("streams"):
        lines += [_streams_line(streams, "each candidate carried its own"), ""]
    if ranked := search.get("ranked_by"):
        lines += [
            f"Candidates ranked on the first {ranked['samples']} search samples ({search['metric']} may move in "
            f"steps, hardly at all when one group changes); among equal gains, the larger gain in "
            f"{ranked['tie_break']} first (in brackets in the table).",
            "",
        ]
    if confirmed := search.get("confirmed"):
        floated = confirmed["floated"]
        more = f"; {len(floated)} more candidate(s) float to meet it there ({', '.join(floated)})" if floated else ""
        lines += [
            f"The choice built as compiled and run on ONNX Runtime on the same search samples: "
            f"{_fmt(confirmed['value'], 3)} "
            f"({'met' if confirmed['met'] else '**not met**'}; the search's estimate was "
            f"{_fmt(confirmed['estimate'], 3)}){more}.",
            "",
        ]
    if search.get("built_up"):
        lines += [
            "Keeping groups float one at a time from all int8 did not meet the budget (several groups break it on "
            "their own): built up from float instead, each group quantized in turn, least harmful first, kept int8 "
            "where the budget still held.",
            "",
        ]
    if search.get("cut"):
        lines += ["**The search was cut by its time budget**: the plan is the best choice found by then.", ""]
    a16 = search.get("a16") or {}
    if a16:
        promoted = a16.get("promoted", [])
        lines += [
            f"16-bit activations instead of float: {len(promoted)} of the {len(a16['nodes'])} float node(s)"
            f" ({', '.join(promoted[:8]) or 'none'}); the budget then reads {_fmt(a16['value'], 3)} on the"
            " search samples.",
            "",
        ]
    if on_target:
        trials = "; ".join(f"{t['widened']} group(s) widened: {_fmt(t['value'], 3)}" for t in on_target["trials"])
        lines += [
            f"On {on_target['runtime']}'s own runtime (search samples): {trials}. Chosen: "
            f"{len(on_target['widened'])} node(s) at 16 bits, budget {'met' if on_target['met'] else '**not met**'}.",
            "",
        ]
    if search.get("calibrator"):
        own = search.get("calibrators") or {}
        lines += [
            f"Calibrator **{search['calibrator']}** for every tensor"
            + (f" but {len(own)}: " + ", ".join(f"{t} ({c})" for t, c in list(own.items())[:8]) if own else "")
            + ("…" if len(own) > 8 else "")
            + ".",
            "",
        ]
    speed = search.get("speed")
    if speed and speed.get("budget_blocked"):
        lines += [
            f"Speed: {len(speed['slower'])} group(s) ran slower in int8 than in float on this CPU, but the "
            "budget would not hold with them in float: left in int8.",
            "",
        ]
    elif speed and speed["slower"]:
        lat = speed["latency_ms"]
        kept = speed["kept_float"]
        lines += [
            f"Speed: {len(speed['slower'])} group(s) ran slower in int8 than in float on this CPU "
            f"({', '.join(list(speed['slower'])[:8])}{'…' if len(speed['slower']) > 8 else ''}); with them in float "
            f"the model takes {_fmt(lat['with float groups'], 3)} ms against {_fmt(lat['int8'], 3)} ms "
            f"(float {_fmt(lat['float'], 3)} ms), so they were "
            + ("**kept in float for speed**." if kept else "left in int8."),
            "",
        ]
    guard = (speed or {}).get("never_slower")
    if guard and guard.get("confirmed") is False:
        lines += [
            f"The first timing read the int8 model at {guard['first']:.2f}× float at one thread; timed again for "
            f"longer it is no slower ({_fmt(guard['plan_ms'], 3)} ms against {_fmt(guard['float_ms'], 3)} ms), "
            "so nothing went float for speed.",
            "",
        ]
    elif guard:
        kept = guard["kept_float"]
        tried = ", ".join(f"{k} group(s) float: {ratio:.2f}×" for k, ratio in guard["tried"])
        lines += [
            f"**The int8 model was slower than float on this CPU** at one thread ({_fmt(guard['plan_ms'], 3)} ms "
            f"against {_fmt(guard['float_ms'], 3)} ms); groups went float, the costliest int8 first"
            + (f" ({tried})" if tried else "")
            + (
                f": **{len(kept)} group(s) kept in float** so that it is no slower."
                if kept
                else ": the budget needed them in int8, so it stays slower than float."
            ),
            "",
        ]
    if search.get("plots"):
        lines += [f"![{name}]({name})" for name in search["plots"]] + [""]
    if not search["table"]:
        return [*lines, "Nothing ranked: the budget holds with every group in int8.", ""]
    lines += [
        "| rank | candidate | ops | MACs | local SQNR (dB) | only it int8 | all but it int8 | gain | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    floats, wide = set(search["float_groups"]), set((search.get("on_target") or {}).get("widened", []))
    for k, s in enumerate(search["table"][:15], 1):
        kept = "float" if set(s["groups"]) <= floats else "int16" if set(s["groups"]) <= wide else "int8"
        lines.append(
            f"| {k} | {s['candidate']} | {'+'.join(s['ops'])} | {s['macs']:,} | {_fmt(s['local_sqnr_db'])} | "
            f"{_fmt(s['only'], 3)} | {_fmt(s['without'], 3)} | {_gain(s)} | {kept} |"
        )
    return [*lines, ""]


def _gain(s: dict) -> str:
    tie = s.get("tie_gain")
    return _fmt(s["gain"], 3) + (f" ({_fmt(tie, 3)})" if tie is not None else "")


def _verdict_lines(verdict: list[dict] | None, latency_measured: bool = True) -> list[str]:
    if verdict is None:
        return []
    if not verdict:
        speed = "int8 is not slower" if latency_measured else "latency not measured"
        return ["## Verdict", "", f"No problem found: no output collapsed, integer kernels run, {speed}.", ""]
    return ["## Verdict", "", *(f"- **{v['problem']}**: {v['advice']}" for v in verdict), ""]


def _prepare_lines(prep: dict | None, imported: bool = False) -> list[str]:
    if not prep:
        return []
    after = (
        "the graph beneath its Q/DQ"
        if imported
        else "prepare (outputs equal within float rounding; fidelity below is against the given model)"
    )
    counts = f"{prep['nodes_before']} nodes in the given model, {prep['nodes_after']} in {after}."
    lines = ["## Float graph", "", counts]
    lines += [f"- {p['pass']}: {format_changes(p['removed'], p['added'])}" for p in prep["passes"]]
    check = prep.get("float_check")
    if check and check.get("canonical_stage") == "skipped":
        lines.append(
            f"- **canonical stage skipped**: it changed the outputs by {check['max_relative_difference']:.2g} "
            "(relative) on calibration sample 0, a qcompile bug"
        )
    elif check:
        drift = check["max_relative_difference"]
        within = "identical to" if drift == 0 else f"within {drift:.1g} (relative) of"
        lines.append(f"- checked on calibration sample 0: outputs {within} the given model's")
    return [*lines, ""]


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "-∞"
        return f"{x:.{digits}f}"
    return str(x)


def _jackknife_groups(streams: dict | None) -> str:
    """How a recurrent model's jackknife groups its steps (`Streams.blocks`)."""
    if not streams:
        return ""
    if streams["jackknife_blocks"] == streams["streams"]:
        return f", a stream at a time: {streams['streams']} streams"
    return f", in {streams['jackknife_blocks']} blocks of consecutive steps"


def _streams_line(streams: dict, carried: str) -> str:
    pairs = ", ".join(f"{o} → {x}" for o, x in streams["feedback"].items())
    return (
        f"Run as {streams['streams']} stream(s) of {streams['steps']} steps in all: {carried} state ({pairs}) "
        "from step to step, as deployed."
    )


def _fidelity_lines(card: dict) -> list[str]:
    fid = card.get("fidelity")
    if not fid:
        return ["_Not verified._"]
    where = "held-out calibration split" if card["evaluation"].get("held_out") else card["evaluation"].get("source", "")
    lines = [f"Evaluated on {fid['samples']} samples ({where}).", ""]
    if streams := fid.get("streams"):
        lines += [_streams_line(streams, "the quantized model carried its own"), ""]
    lines += [
        "| output | SQNR (dB) | worst channel (dB) | cosine | max abs err | top-1 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for o in fid["outputs"]:
        agree = None if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.1f}%"
        cells = [
            o["name"],
            _fmt(o["sqnr_db"]),
            _fmt(o["channel_sqnr_db"]),
            _fmt(o["cosine"], 5),
            _fmt(o["max_abs_error"], 4),
            _fmt(agree),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    budget = card.get("budget")
    if budget:
        bound = f"≥ {budget['floor']:g}" if "floor" in budget else f"within {budget['max_drop']:g} of float"
        lines += [
            "",
            f"Budget: {budget['metric']} {bound}: {budget['value']:.4g} here, "
            f"**{'met' if budget['met'] else 'not met'}**.",
        ]
    if fid.get("float_accuracy") is not None:
        lines += [
            "",
            f"Top-1 accuracy on labels: float {100 * fid['float_accuracy']:.2f}%, "
            f"quantized {100 * fid['quant_accuracy']:.2f}%.",
        ]
    return lines


def _bias_line(card: dict) -> list[str]:
    n = len(card.get("bias_corrected", []))
    if not n:
        return []
    return [f"- bias correction: {n} Conv/Gemm bias(es) shifted by the mean error of their rounded weights"]


def _channel_line(card: dict) -> list[str]:
    spreads = card.get("channel_scales", {})
    if not spreads:
        return []
    widest = max(spreads, key=spreads.get)
    return [
        f"- scales per channel: {len(spreads)} activation(s) whose channels' ranges spread (up to"
        f" {spreads[widest]:g}×, {widest}), folded into the weight scales of the Convs beside them"
    ]


def _cpu_line(target: dict) -> list[str]:
    cpu = target.get("options", {}).get("cpu")
    if not cpu:
        return []
    return [
        f"- CPU {cpu['model']} ({cpu['machine']}, VNNI {'yes' if cpu['vnni'] else 'no'}): {'; '.join(target['notes'])}"
    ]


def _imported_lines(card: dict) -> list[str]:
    imported = card.get("imported")
    if "dequantized" in card:
        against = "the reference model given" if card["dequantized"]["reference"] == "given" else "that float graph"
        given = card["given_quantization"]
        how = (
            f"dynamically quantized ({given['summary']}); its int8 weights were taken back to float"
            if "integer-ops" in given["kinds"]
            else f"already quantized ({given['summary']}); --requantize took its Q/DQ off"
        )
        done = f"and it was compiled afresh. Fidelity below is against {against}."
        return [f"- **dequantized**: the given model was {how} {done}"]
    if imported is None:
        return []
    against = (
        "the reference model given"
        if imported["reference"] == "given"
        else "**the dequantized graph** (the float graph beneath the file's Q/DQ, not an original float "
        "model: pass `--reference FLOAT.onnx` to compare with one)"
    )
    legalised = imported.get("legalised") or {}
    fixes = [
        f"  - {'' if t.startswith('node ') else 're-planned '}{t}: {why}" for t, why in list(legalised.items())[:8]
    ]
    fixes += [f"  - … and {len(legalised) - 8} more (plan.json, meta.legalised)"] if len(legalised) > 8 else []
    relus = imported.get("reference_relus") or []
    if relus and imported["reference"] != "given":
        fixes.append(
            f"  - {len(relus)} Relu(s) the file's Q/DQ perform by saturating at 0 (the quantizer dropped them) "
            "are back in the dequantized graph: " + ", ".join(relus[:6]) + (" …" if len(relus) > 6 else "")
        )
    return [
        f"- **imported**: the given model was already quantized ({card['given_quantization']['summary']}); its "
        f"{imported['tensors']} tensor specs are the plan, nothing was calibrated. "
        f"Fidelity below is against {against}.",
        *fixes,
    ]


def _half_lines(card: dict) -> list[str]:
    given = card.get("given_quantization") or {}
    if "float16" not in given.get("kinds", []):
        return []
    return [
        "- the given model holds float16/bfloat16 weights: compiled in float32 around its int8 kernels "
        "(float parts run in float32), its inputs and outputs keep their half type",
    ]


def render_markdown(card: dict) -> str:
    t = card["target"]
    sizes = card["sizes"]
    policy = (
        f"- policy **{card['policy']}**, calibrator **{card['calibrator']}** on {card['calibration_samples']} samples"
        if "imported" not in card
        else "- policy **imported**: the file's own scales and zero points"
    )
    lines = [
        f"# Quantization card: {card['model']} → {t['name']}",
        "",
        *_imported_lines(card),
        *_half_lines(card),
        policy,
        f"- activations {t['activation_dtype']}, weights {t['weight_dtype']} "
        f"{'per-channel' if card['per_channel'] else 'per-tensor'}{' (7-bit)' if t['weight_reduce_range'] else ''}"
        if "imported" not in card
        else "- dtypes, granularity and scales as the file has them",
        *_bias_line(card),
        *_channel_line(card),
        *_cpu_line(t),
        f"- opset {card['opset']['before']} → {card['opset']['after']}; shape inference: {card['shape_inference']}",
        f"- size {sizes['float_bytes']:,} B → {sizes['quantized_bytes']:,} B ({100 * sizes['ratio']:.1f}%)",
        f"- nodes: {card['nodes']['int8']} int8, {card['nodes']['float']} float; "
        f"ORT kernels after fusion: {card['ort_kernels']['integer']} integer, "
        f"{card['ort_kernels']['float']} float compute",
        "",
        *_verdict_lines(card.get("verdict"), bool(card.get("latency_ms"))),
        *_prepare_lines(card.get("prepare"), "imported" in card),
        "## Fidelity",
        "",
        *runtime_note(card),
        *_fidelity_lines(card),
        "",
        *deployment_lines(card),
        *_search_lines(card.get("search")),
    ]
    lat = card.get("latency_ms")
    if lat:
        lines += [
            "",
            "## Latency (ONNX Runtime CPU, median ms)",
            "",
            "| threads | float | quantized | ratio |",
            "|---|---|---|---|",
        ]
        for k in ("1", "default"):
            f, q = lat["float"][k], lat["quantized"][k]
            lines.append(f"| {k} | {_fmt(f, 3)} | {_fmt(q, 3)} | {_fmt(q / f if f else None)} |")
    lines += ["", "## Per-node precision", "", "| node | op | precision | reason |", "|---|---|---|---|"]
    for n in card["per_node"]:
        lines.append(f"| {n['name']} | {n['op']} | {n['precision']} | {n['reason']} |")
    return "\n".join(lines) + "\n"
