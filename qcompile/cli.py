"""Command line: `qcompile compile …` and `qcompile inspect …`.

Exit codes: 0 success, 1 verification below the requested budget (the files are written), 2 bad input,
3 internal error (a bug: please report it with the --debug traceback),
130 interrupted by SIGINT, 143 terminated by SIGTERM.  An interrupted run
leaves its output complete or absent, never partial (see `qcompile.atomic`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path

from qcompile.errors import FAILED_CHECK, QCompileError, QCompileWarning, first_line
from qcompile.workers import process_pool

__all__ = ["main"]

INTERNAL_ERROR = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and staging clean-up runs."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qcompile")
    except PackageNotFoundError:  # run from a source tree that was never installed
        import qcompile

        return qcompile.__version__


def _build_parser() -> argparse.ArgumentParser:
    from qcompile.calibrators import CALIBRATORS
    from qcompile.passes.select_precision import POLICIES
    from qcompile.targets import TARGET_NAMES

    parser = argparse.ArgumentParser(prog="qcompile", description="Compile ONNX models to int8 for edge targets.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"qcompile {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="calibrate, quantize, lower and verify a model")
    c.add_argument("model", type=Path)
    c.add_argument("--target", default="ort-cpu", choices=TARGET_NAMES)
    c.add_argument("--calib", required=True, help=".npz file or folder of calibration samples")
    c.add_argument("--eval", default=None, help="evaluation data (default: held-out fifth of --calib)")
    c.add_argument("--plan", type=Path, default=None, help="plan.json whose decisions and specs override the policy")
    c.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales instead of per-channel")
    c.add_argument(
        "--no-bias-correction",
        action="store_true",
        help="leave biases as they are (by default each Conv/Gemm bias absorbs its rounded weight's mean error)",
    )
    c.add_argument("--calibrator", default="minmax", choices=CALIBRATORS)
    c.add_argument("--policy", default="naive", choices=POLICIES)
    c.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="calibrate, and rank the precision search's candidates, in N worker processes (same output as N=1)",
    )
    _add_budget_options(c)
    c.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    c.add_argument(
        "--no-canonicalize",
        action="store_true",
        help="keep the float graph as exported: no Transpose, affine or pattern rewriting before quantizing",
    )
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on when stderr is a terminal)",
    )
    c.add_argument(
        "--requantize",
        action="store_true",
        help="a model that arrives quantized (QDQ): calibrate afresh on the float graph beneath its Q/DQ",
    )
    c.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="the float model to compare a model that arrives quantized with (default: its dequantized graph)",
    )
    c.add_argument(
        "--dequantize",
        action="store_true",
        help="a dynamically quantized model: take its int8 weights back to float and compile afresh",
    )
    c.add_argument(
        "--float-io",
        action="store_true",
        help="tflite/tflm: float inputs and outputs, with QUANTIZE/DEQUANTIZE at the edges (default: int8)",
    )
    c.add_argument(
        "--float",
        dest="float_model",
        action="store_true",
        help="tflite/tflm: also write the float model as MODEL.float.tflite, to compare on the same runtime",
    )
    c.add_argument(
        "--precision",
        choices=("a8w8", "a16w8"),
        default=None,
        help="tflite/tflm/ethos-u/qnn-htp: a16w8 runs 16-bit activations (int8 weights) wherever an op has the kernel",
    )
    c.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="qnn-htp: write the model even if some nodes would leave the NPU; the card reports the NPU's share",
    )
    c.add_argument(
        "--qnn-context",
        action="store_true",
        help="qnn-htp: also write the QNN context binary model (MODEL.qnn_ctx.onnx), checked on the HTP backend",
    )
    c.add_argument(
        "--soc-model",
        default=None,
        metavar="ID",
        help="qnn-htp: the Snapdragon SoC (QNN soc_model id, default 57 = SM8650); it sets the HTP's arch and numerics",
    )
    c.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="tflite/tflm/ethos-u/qnn-htp: the static shape of an input with dynamic dimensions (repeat per input)",
    )
    c.add_argument(
        "--feedback",
        action="append",
        default=[],
        metavar="OUTPUT=INPUT",
        help="a recurrent state: OUTPUT is fed to INPUT at the next step; samples are read as streams in order, "
        "each with the state the float model carries into it (repeat per state)",
    )
    c.add_argument("-o", "--output", type=Path, required=True, help="output folder")

    i = sub.add_parser("inspect", help="op histogram, opset, I/O and what each target could quantize")
    i.add_argument("model", type=Path)
    return parser


def _add_budget_options(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--metric",
        default=None,
        help="what the budget is on: fidelity (default), sqnr, cosine, top1, max-rel-error "
        "(each optionally :OUTPUT), accuracy (with labels), or file.py:function",
    )
    bound = c.add_mutually_exclusive_group()
    bound.add_argument(
        "--floor", type=float, default=None, help="the metric must stay at or above this (exit 1 if not)"
    )
    bound.add_argument(
        "--max-drop",
        type=float,
        default=None,
        help="a task metric may fall at most this far below float's (exit 1 if not)",
    )
    c.add_argument(
        "--margin",
        type=float,
        default=None,
        help="what --policy hybrid or selective keeps above the budget on its search samples "
        "(default 1 dB; for cosine, top1 and max-rel-error the same 1 dB as 20.6%% of the distance to perfect)",
    )
    c.add_argument(
        "--search-samples",
        type=int,
        default=None,
        metavar="N",
        help="calibration samples the precision search sets aside to judge on (default 8; time grows with N)",
    )
    c.add_argument("--report", action="store_true", help="also write card.html, one page with the plots inlined")
    c.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="bound the precision search: when the time runs out, the best choice so far wins",
    )


def _feedback(given: list[str]) -> dict[str, str] | None:
    """OUTPUT=INPUT flags as a dict."""
    pairs = {}
    for item in given:
        output, sep, inp = item.partition("=")
        if not sep or not output or not inp:
            raise QCompileError(f"--feedback takes OUTPUT=INPUT (a state output and the input it feeds), got {item!r}")
        if output in pairs:
            raise QCompileError(f"--feedback names output {output!r} twice")
        pairs[output] = inp
    return pairs or None


def _input_shapes(given: list[str]) -> dict[str, list[int]] | None:
    """NAME=D0,D1,... flags as a dict."""
    shapes = {}
    for item in given:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            shapes[name] = []
        if not name or not shapes[name] or any(d <= 0 for d in shapes[name]):
            raise QCompileError(f"--input-shape {item!r}: expected NAME=D0,D1,... with positive sizes")
    return shapes or None


def _target_options(args: argparse.Namespace) -> dict[str, object]:
    """Target options from their flags (a target that has no such option says so)."""
    options: dict[str, object] = {k: True for k in ("float_io", "float_model") if getattr(args, k)}
    if args.precision is not None:
        options["precision"] = args.precision
    if args.allow_cpu_fallback:
        options["allow_cpu_fallback"] = True
    if args.qnn_context:
        options["context"] = True
    if args.soc_model is not None:
        options["soc_model"] = args.soc_model
    return options


def _cmd_compile(args: argparse.Namespace) -> int:
    import qcompile
    from qcompile.card import render_markdown

    if args.output.resolve() == args.model.resolve() or args.output.is_file():
        raise QCompileError(f"-o must be a folder, not a file: {args.output}")
    if args.jobs < 1:
        raise QCompileError(f"--jobs must be at least 1, got {args.jobs}")
    with process_pool(args.jobs) as executor:
        result = qcompile.compile(
            args.model,
            target=args.target,
            calibration=args.calib,
            evaluation=args.eval,
            plan=args.plan,
            per_channel=not args.per_tensor,
            bias_correction=not args.no_bias_correction,
            calibrator=args.calibrator,
            policy=args.policy,
            progress=args.progress,
            measure_latency=not args.no_latency,
            executor=executor,
            canonicalize=not args.no_canonicalize,
            metric=args.metric,
            floor=args.floor,
            max_drop=args.max_drop,
            margin=args.margin,
            time_budget=args.time_budget,
            search_samples=args.search_samples,
            requantize=args.requantize,
            reference=args.reference,
            dequantize=args.dequantize,
            target_options=_target_options(args),
            input_shapes=_input_shapes(args.input_shape),
            feedback=_feedback(args.feedback),
        )
    files = result.save(args.output, report=args.report)
    sys.stdout.write(render_markdown(result.card))
    sys.stdout.write("\nWrote " + ", ".join(str(p) for p in files.values()) + "\n")
    return FAILED_CHECK if any(v["fails"] for v in result.card["verdict"]) else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from qcompile.card import format_changes
    from qcompile.ir_utils import onnx_opset, op_histogram
    from qcompile.model_io import load_model
    from qcompile.prepare import prepare
    from qcompile.quant_form import detect_form
    from qcompile.targets import TARGET_NAMES, get_target

    model = load_model(args.model)
    out = sys.stdout
    total = sum(1 for _ in model.graph.all_nodes())
    inner = f" ({total - len(model.graph)} inside If/Loop/Scan bodies)" if total > len(model.graph) else ""
    out.write(f"{args.model}: opset {onnx_opset(model)}, ir_version {model.ir_version}, {total} nodes{inner}\n")
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for v in values:
            if not v.is_initializer():
                out.write(f"  {kind} {v.name}: {v.dtype.name if v.dtype else '?'}{list(v.shape) if v.shape else '?'}\n")
    out.write(f"quantization: {detect_form(model).summary()}\n")
    out.write("ops:\n")
    for op, n in op_histogram(model).most_common():
        out.write(f"  {op:28s} {n}\n")
    for name in TARGET_NAMES:
        target = get_target(name)
        try:
            prepared = prepare(args.model, target)
        except QCompileError as e:  # the model's own facts above still stand
            out.write(f"{name}: cannot prepare the model: {e}\n")
            continue
        summary = prepared.describe()
        nodes = target.quantizable_nodes(prepared.model)
        ops = ", ".join(sorted({n.op_type for n in nodes})) or "none"
        out.write(
            f"{name}: {summary['nodes_before']} nodes → {summary['nodes_after']} after prepare; "
            f"{len(nodes)} quantizable ({ops})\n"
        )
        for change in summary["passes"]:
            out.write(f"  {change['pass']}: {format_changes(change['removed'], change['added'])}\n")
    return 0


def _interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """A Ctrl-C or SIGTERM behind `error` (onnxruntime's import turns one into an ImportError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _interrupted(signal_error: KeyboardInterrupt) -> int:
    terminated = isinstance(signal_error, Terminated)
    print(f"qcompile: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    return 143 if terminated else 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, QCompileWarning):
        print(f"qcompile: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():  # every warning of this run shown, each as one line; restored after
        warnings.simplefilter("always", QCompileWarning)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler = {"compile": _cmd_compile, "inspect": _cmd_inspect}[args.command]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return handler(args)
    except QCompileError as e:
        if args.debug:
            raise
        print(f"qcompile: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except Exception as e:  # a bug, not bad input; or a signal a library turned into its own error
        interrupt = _interrupt_in(e)
        if interrupt is not None:
            return _interrupted(interrupt)
        if args.debug:
            raise
        first = first_line(e, "")
        print(
            f"qcompile: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
