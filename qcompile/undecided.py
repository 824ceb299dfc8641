"""Whether the float model is undecided on a sample: where quantization error concentrates.

For each output whose argmax means something (`OutputKind.scores`: class scores, per-position
sequence logits), with p the probabilities over the last axis (the output itself when a Softmax
made it, else the softmax of the logits, or of a LogSoftmax's log-probabilities):

    margin(sample) = min over positions of  p_(1) − p_(2)      (largest minus second largest)
    undecided      ⇔  margin < UNDECIDED_MARGIN for some such output

A quantized model's probabilities move most where p is spread (∂softmax/∂logit = p(1 − p)),
and its class flips only where the margin is small: such samples carry nearly all of the error
of a model that is confident elsewhere.  `qcompile.search_split` stratifies the precision
search's samples by this.  Costs one float run per calibration sample; models without a scores
output need none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from qcompile.data import Sample
from qcompile.metrics import OutputKind
from qcompile.runtime import SessionSource, make_session, run_session
from qcompile.search_split import UNDECIDED_MARGIN

__all__ = ["top_margin", "float_undecided"]


def top_margin(scores: np.ndarray, probabilities: bool) -> float:
    """The smallest gap between the two largest probabilities over the last axis, at any position."""
    x = np.asarray(scores, np.float64)
    if x.ndim == 0 or x.shape[-1] < 2 or x.size == 0:
        return 1.0
    if not probabilities:
        x = np.exp(x - x.max(axis=-1, keepdims=True))
        x /= x.sum(axis=-1, keepdims=True)
    top = np.sort(x.reshape(-1, x.shape[-1]), axis=-1)[:, -2:]
    return float((top[:, 1] - top[:, 0]).min())


def float_undecided(model: ir.Model, kinds: Mapping[str, OutputKind]) -> Callable[[Sample], bool] | None:
    """`undecided(sample)` for float `model`, or None when no output holds scores."""
    names = [name for name, kind in kinds.items() if kind.scores]
    if not names:
        return None
    session = make_session(SessionSource.of(model))

    def undecided(sample: Sample) -> bool:
        outputs = run_session(session, sample, names)
        return any(top_margin(outputs[n], kinds[n].probabilities) < UNDECIDED_MARGIN for n in names)

    return undecided
