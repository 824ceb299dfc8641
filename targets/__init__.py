"""Deployment targets: one module per target, capabilities as data."""

from __future__ import annotations

from collections.abc import Callable

from qcompile.errors import QCompileError
from qcompile.targets.base import LegalityError, Lowered, OpRule, Target

__all__ = ["get_target", "TARGET_NAMES", "Target", "OpRule", "LegalityError", "Lowered"]


def _ort_cpu(**options) -> Target:
    from qcompile.targets.ort_cpu import make_target

    return make_target(**options)


def _tflite(**options) -> Target:
    from qcompile.targets.tflite import make_tflite

    return make_tflite(**options)


def _tflm(**options) -> Target:
    from qcompile.targets.tflite import make_tflm

    return make_tflm(**options)


def _ethos_u(**options) -> Target:
    from qcompile.targets.ethos_u import make_ethos_u

    return make_ethos_u(**options)


def _qnn_htp(**options) -> Target:
    from qcompile.targets.qnn_htp import make_qnn_htp

    return make_qnn_htp(**options)


def _intel_npu(**options) -> Target:
    from qcompile.targets.intel_npu import make_intel_npu

    return make_intel_npu(**options)


_FACTORIES: dict[str, Callable[..., Target]] = {
    "ort-cpu": _ort_cpu,
    "tflite": _tflite,
    "tflm": _tflm,
    "ethos-u": _ethos_u,
    "qnn-htp": _qnn_htp,
    "intel-npu": _intel_npu,
}
TARGET_NAMES = tuple(_FACTORIES)


def get_target(name: str | Target, **options) -> Target:
    if isinstance(name, Target):
        return name
    if name not in _FACTORIES:
        raise QCompileError(f"unknown target {name!r}; known: {', '.join(TARGET_NAMES)}")
    try:
        return _FACTORIES[name](**options)
    except ValueError as e:
        raise QCompileError(str(e)) from e
