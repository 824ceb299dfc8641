"""The prepared float graph must compute what the user's model computes: checked on real input.

`float_drift(prepared, sample)` runs the user's model and the prepared graph on one sample:

    drift = max over outputs o of  max|a_o − b_o| / max(max|a_o|, 1e-6)

Folding reorders float arithmetic, so drift is typically 1e-7 to 1e-4.  Above
`FLOAT_TOLERANCE` the canonical stage changed what the model computes: a qcompile bug, never
something to quantize on.  `compile()` then warns and prepares again without the stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import numpy as np

from qcompile.data import Sample
from qcompile.prepare import Prepared
from qcompile.runtime import SessionSource, make_session, run_session

__all__ = ["FLOAT_TOLERANCE", "float_drift", "peek"]

FLOAT_TOLERANCE = 1e-3


def float_drift(prepared: Prepared, sample: Sample) -> float:
    """Largest relative difference between the user's model and `prepared.model` on `sample`."""
    want = run_session(make_session(prepared.float_ref, optimize=False), sample)
    got = run_session(make_session(SessionSource.of(prepared.model), optimize=False), sample)
    drift = 0.0
    for name, a in want.items():
        a64, b64 = np.asarray(a, np.float64), np.asarray(got[name], np.float64)
        if a64.size and a64.dtype.kind == "f":
            drift = max(drift, float(np.max(np.abs(a64 - b64)) / max(float(np.max(np.abs(a64))), 1e-6)))
    return drift


def peek(samples: Iterator[Sample]) -> tuple[Sample | None, Iterator[Sample]]:
    """The first sample, and an iterator that still yields it."""
    first = next(samples, None)
    return first, (chain([first], samples) if first is not None else samples)
