"""Make a graph static for targets that need one: input shapes and integer inputs from the data.

Symbolic input dimensions take the sizes given with --input-shape, else (unless the target asks
for them explicitly, as TFLite Micro does) the first calibration sample's, and shape inference
runs again, so that every tensor has a static shape (recorded in the card).

A TFLite file has one graph with static shapes and no control flow.  A model that takes a
sample rate or a mode flag as an integer input (silero VAD's `sr`, branching on it with an If)
is compiled for the value its calibration data carries: the input becomes a constant, constant
folding evaluates what depends on it, and an If on a constant condition is replaced by the
branch taken.  Every calibration and evaluation sample must carry that same value (a sample
that does not raises, naming the input); the card records the values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompile.data import Sample
from qcompile.errors import QCompileError
from qcompile.passes.infer_shapes import InferShapes
from qcompile.pipeline import run_passes
from qcompile.prepare import Prepared, fold_constants_pass

__all__ = ["fix_integer_inputs", "check_fixed"]


def _integer(value: ir.Value) -> bool:
    return value.dtype is not None and value.dtype.is_integer()


def _given_shape(value: ir.Value, shape: Sequence[int]) -> list[int]:
    dims = list(value.shape) if value.shape is not None else None
    if dims is not None and len(dims) != len(shape):
        raise QCompileError(
            f"--input-shape {value.name}={','.join(map(str, shape))} has {len(shape)} dimensions; "
            f"input {value.name!r} has {len(dims)}"
        )
    for d, n in zip(dims or [], shape, strict=False):
        if isinstance(d, int) and d != n:
            raise QCompileError(
                f"--input-shape {value.name}={','.join(map(str, shape))}: input {value.name!r} is "
                f"{[x if isinstance(x, int) else str(x) for x in dims or []]}"
            )
    return [int(n) for n in shape]


def _static_shapes(
    model: ir.Model, sample: Sample, given: Mapping[str, Sequence[int]], explicit: bool
) -> dict[str, list[int]]:
    """Symbolic dimensions of float inputs set from `given` (--input-shape), else from `sample` unless the
    target asks for them `explicit`ly; the shapes so fixed."""
    unknown = sorted(set(given) - {v.name for v in model.graph.inputs})
    if unknown:
        raise QCompileError(
            f"--input-shape names {unknown[0]!r}, which is not an input of the model; inputs: "
            f"{', '.join(v.name or '?' for v in model.graph.inputs)}"
        )
    fixed = {}
    for value in model.graph.inputs:
        dims = list(value.shape) if value.shape is not None else None
        name = value.name or ""
        static = dims is not None and all(isinstance(d, int) for d in dims)
        if name in given:
            shape = _given_shape(value, given[name])
        elif static or name not in sample:
            continue
        elif explicit:
            seen = ",".join(str(int(d)) for d in np.shape(sample[name]))
            raise QCompileError(
                f"input {name!r} has dynamic dimensions {[d if isinstance(d, int) else str(d) for d in dims or []]}; "
                f"this target needs static shapes: give --input-shape {name}={seen} (the first calibration "
                "sample's)"
            )
        else:
            shape = [int(d) for d in np.shape(sample[name])]
        value.shape = ir.Shape(shape)
        fixed[name] = shape
    return fixed


def fix_integer_inputs(
    prepared: Prepared,
    sample: Sample,
    given: Mapping[str, Sequence[int]] | None = None,
    explicit: bool = False,
    *,
    scalars_only: bool = False,
) -> Prepared:
    """`prepared` with static input shapes and every integer input that `sample` carries made a constant
    (with `scalars_only`, only those of one element: token ids stay inputs, a sample rate does not)."""
    model = prepared.model
    shapes = _static_shapes(model, sample, given or {}, explicit)
    fixed: dict[str, list | int | float] = {}
    for value in list(model.graph.inputs):
        if not _integer(value) or value.name not in sample or value.dtype is None:
            continue
        array = np.asarray(sample[value.name]).astype(value.dtype.numpy())
        if scalars_only and array.size > 1:
            continue
        model.graph.inputs.remove(value)
        value.const_value = ir.tensor(array, name=value.name)
        model.graph.register_initializer(value)
        fixed[value.name or ""] = array.tolist()
    if not fixed and not shapes:
        return prepared
    _settle_shapes(model)
    return dataclasses.replace(prepared, fixed_inputs=fixed, static_shapes=shapes)


def _settle_shapes(model: ir.Model, rounds: int = 6) -> None:
    """Shape inference and constant folding in turn until nothing changes: each round's static shapes let
    the next fold Shape → Gather → Concat chains (a Reshape's target shape), which sizes what follows.
    Symbolic dimensions left from the dynamic model are dropped first, so inference can replace them."""
    for node in model.graph:
        for value in node.outputs:
            if value.shape is not None and not value.shape.is_static():
                value.shape = None
    for _ in range(rounds):
        passes = ir.passes.Sequential(InferShapes(), fold_constants_pass(), RemoveUnusedNodesPass())
        modified = run_passes(passes, model).modified
        computed = [v for node in model.graph for v in node.outputs]
        for value in [*computed, *model.graph.initializers.values()]:  # a folded value has its tensor's shape
            if value.const_value is not None and value.shape != value.const_value.shape:
                value.shape, modified = ir.Shape(value.const_value.shape.numpy()), True
        if not modified:
            break
    run_passes(InferShapes(), model)


def check_fixed(samples: Iterator[Sample], fixed: Mapping[str, object], what: str) -> Iterator[Sample]:
    """`samples`, each checked to carry the fixed inputs' values."""
    for i, sample in enumerate(samples):
        for name, value in fixed.items():
            if name in sample and not np.array_equal(np.asarray(sample[name]), np.asarray(value)):
                raise QCompileError(
                    f"input {name!r} was fixed to {value} (the first calibration sample's) because the target's "
                    f"graph is static, but {what} sample {i} has {np.asarray(sample[name]).tolist()}; "
                    "compile one model per value"
                )
        yield sample
