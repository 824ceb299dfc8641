"""The card's section on a target's own file (a `.tflite`): what it holds, where it was run, and how
its outputs compare with the same plan's QDQ model on ONNX Runtime."""

from __future__ import annotations

from typing import Any

__all__ = ["deployment_lines", "runtime_note", "UNFUSED_NOTE"]

UNFUSED_NOTE = (
    "run unfused (DequantizeLinear → float op → QuantizeLinear), since on this x86 CPU without VNNI"
    " ORT's u8s8 kernels saturate with 8-bit weights"
)

_RUNTIMES = {
    "litert_reference": "LiteRT, reference kernels",
    "litert_xnnpack": "LiteRT, default kernels (XNNPACK)",
    "tflm": "TFLite Micro host interpreter",
    "qnn_htp": "QNN HTP (simulator)",
    "qnn_context": "QNN context binary on HTP (simulator)",
    "qnn_context_vs_htp": "context binary vs the HTP run of the QDQ file",
}


def runtime_note(card: dict) -> list[str]:
    """One line under the fidelity heading saying which runtime ran the figures."""
    dep = card.get("deployment")
    if not dep:
        return []
    what = "the QDQ ONNX file" if "npu" in dep else f"the `.{dep['format']}` file"
    unfused = [f"The same plan's QDQ model on ONNX Runtime: {dep['qdq_unfused']}."] if "qdq_unfused" in dep else []
    return [f"Measured on {dep['runtime']}, running {what}.", *unfused, ""]


def _sqnr(fidelity: dict | None, name: str) -> Any:
    for o in (fidelity or {}).get("outputs", []):
        if o["name"] == name:
            return o["sqnr_db"]
    return None


def _vela_lines(vela: dict | None) -> list[str]:
    if not vela:
        return []
    total = vela["npu_operators"] + vela["cpu_operators"]
    lines = [
        f"- Vela for {vela['accelerator']} ({vela['system_config']}): {vela['npu_operators']} of {total} operators "
        f"on the NPU, {vela['cpu_operators']} on the CPU; SRAM {vela['sram_kib']} KiB, flash {vela['flash_kib']} KiB; "
        f"estimated inference {vela['estimated_inference_ms']:.3f} ms (Vela's performance model, not a measurement)",
    ]
    lines += [f"  - falls back to the CPU: {why}" for why in vela["cpu_fallbacks"]]
    return lines


def _npu_lines(dep: dict) -> list[str]:
    npu = dep["npu"]
    ops = ", ".join(f"{k} ×{v}" for k, v in dep.get("qnn_ops", {}).items())
    lines = [
        "## On the NPU",
        "",
        f"- {npu['nodes_on_npu']} of {npu['nodes']} nodes ({100 * npu['node_share']:.1f}%) and "
        f"{100 * npu['mac_share']:.1f}% of the MACs run on the NPU; Q/DQ not counted",
    ]
    if dep.get("provider_options"):
        lines.append(f"- provider options: {', '.join(f'{k}={v}' for k, v in dep['provider_options'].items())}")
    lines += [f"  - falls back to the CPU: {text}" for text in npu["fallback_nodes"][:20]]
    if ops:
        lines.append(f"- QNN graph: {ops}")
    if "ep_nodes" in dep:
        refused = dep.get("ep_refused") or []
        lines.append(
            f"- the EP took {dep['ep_nodes']['taken']} of {dep['ep_nodes']['of']} ONNX nodes (Q/DQ included)"
            + (f"; it left {', '.join(refused[:10])} to the CPU" if refused else "")
        )
    if "float_tensors" in dep:
        floats = dep["float_tensors"]
        listed = f" ({', '.join(floats[:5])})" if floats else ""
        lines.append(f"- float tensors inside the QNN graph: {len(floats)}{listed}")
    if "simulator_ms_per_inference" in dep:
        lines.append(
            f"- simulator: {dep['simulator_ms_per_inference']} ms per inference (median), session "
            f"{dep.get('session_seconds', '?')} s — an x86 emulation of the HTP, not a phone latency"
        )
    if "context_binary" in dep:
        ctx = dep["context_binary"]
        lines.append(f"- context binary: {ctx['bytes']:,} bytes, compiled in {ctx['compile_seconds']} s")
    return lines


def _file_lines(dep: dict) -> list[str]:
    ops = ", ".join(f"{k} ×{v}" for k, v in dep["ops"].items())
    return [
        f"## The .{dep['format']} file",
        "",
        f"- {dep['bytes']:,} bytes; ops: {ops}",
        f"- float ops: {dep['float_ops']}; TRANSPOSEs inside the graph: {dep['transposes_inside']}; "
        f"requantizing QUANTIZEs: {dep['requantized']}",
    ]


def deployment_lines(card: dict) -> list[str]:
    dep = card.get("deployment")
    if not dep:
        return []
    lines = _npu_lines(dep) if "npu" in dep else _file_lines(dep)
    for name, shape in (card.get("static_shapes") or {}).items():
        lines.append(f"- input `{name}` shape fixed to {shape} (the first calibration sample's; the graph is static)")
    for name, value in (card.get("fixed_inputs") or {}).items():
        lines.append(f"- input `{name}` fixed to {value} (the calibration data's; the graph is static)")
    if "arena_bytes" in dep:
        lines += [
            f"- TFLite Micro tensor arena: {dep['arena_bytes']:,} bytes measured, "
            f"{dep['arena_rounded']:,} bytes in `model_data.h`",
            f"- op resolver: {', '.join(dep['op_resolver'])}",
        ]
    lines += _vela_lines(dep.get("vela"))
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
