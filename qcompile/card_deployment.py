"""The card's section on a target's own file (a `.tflite`): what it holds, where it was run, and how
its outputs compare with the same plan's QDQ model on ONNX Runtime."""

from __future__ import annotations

from typing import Any

__all__ = ["deployment_lines", "runtime_note"]

_RUNTIMES = {
    "litert_reference": "LiteRT, reference kernels",
    "litert_xnnpack": "LiteRT, default kernels (XNNPACK)",
    "tflm": "TFLite Micro host interpreter",
}


def runtime_note(card: dict) -> list[str]:
    """One line under the fidelity heading saying which runtime ran the figures."""
    dep = card.get("deployment")
    return [f"Measured on {dep['runtime']}, running the `.{dep['format']}` file.", ""] if dep else []


def _sqnr(fidelity: dict | None, name: str) -> Any:
    for o in (fidelity or {}).get("outputs", []):
        if o["name"] == name:
            return o["sqnr_db"]
    return None


def deployment_lines(card: dict) -> list[str]:
    dep = card.get("deployment")
    if not dep:
        return []
    ops = ", ".join(f"{k} ×{v}" for k, v in dep["ops"].items())
    lines = [
        f"## The .{dep['format']} file",
        "",
        f"- {dep['bytes']:,} bytes; ops: {ops}",
        f"- float ops: {dep['float_ops']}; TRANSPOSEs inside the graph: {dep['transposes_inside']}; "
        f"requantizing QUANTIZEs: {dep['requantized']}",
    ]
    if "arena_bytes" in dep:
        lines += [
            f"- TFLite Micro tensor arena: {dep['arena_bytes']:,} bytes measured, "
            f"{dep['arena_rounded']:,} bytes in `model_data.h`",
            f"- op resolver: {', '.join(dep['op_resolver'])}",
        ]
    checks: dict[str, dict[str, dict]] = dep.get("runtimes_vs_qdq") or {}
    outputs = list(next(iter(checks.values()), {}))
    if outputs:
        lines += [
            "",
            "Against the same plan's QDQ model on ONNX Runtime (largest difference, in steps of the output's scale):",
            "",
            "| runtime | " + " | ".join(outputs) + " |",
            "|---|" + "---|" * len(outputs),
        ]
        for runtime, per_output in checks.items():
            cells = [str(per_output[o]["max_lsb"] if per_output[o]["max_lsb"] is not None else "–") for o in outputs]
            lines.append(f"| {_RUNTIMES.get(runtime, runtime)} | " + " | ".join(cells) + " |")
        qdq = dep.get("qdq_on_ort")
        if qdq:
            sqnrs = [
                f"{o}: {_sqnr(card.get('fidelity'), o):.2f} dB here, {_sqnr(qdq, o):.2f} dB for the QDQ model on ORT"
                for o in outputs
                if _sqnr(card.get("fidelity"), o) is not None and _sqnr(qdq, o) is not None
            ]
            lines += ["", "SQNR against float: " + "; ".join(sqnrs) + "."]
    return [*lines, ""]
