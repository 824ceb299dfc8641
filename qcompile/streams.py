"""Recurrent models run as streams: an output carried into an input at the next step.

A VAD, a streaming recognizer or a keyword spotter runs window after window, each window's
state output fed back as the next window's state input.  Judged one window at a time, each
from the state the float model carried, a quantized model's error in its state never builds
up; deployed, it does (silero VAD: speech probability within 0.007 of float window by window,
0.034 once each model carries its own state through a recording).  With feedback pairs
(output o → input x, `OutputKind.feeds`), samples are read as the steps of streams, in order,
and a model under test feeds its own outputs forward:

    step i continues step i−1  ⇔  for every pair:  sample_i[x] ≈ o_float(sample_{i−1})
                                   (allclose, rtol 1e-4, atol 1e-6)
    step i that continues runs on  x := o(step i−1) of the model under test

A step that does not continue the one before starts a stream from the state it holds.  So
samples recorded from one float run over the streams (each with the state it was given) are
those streams, and any subset of them in order (a held-out split, the search's runs of
consecutive samples) is streams again, restarted where it skips.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.metrics import OutputKind

__all__ = ["Streams", "feedback_of", "with_feedback", "STREAM_RUN"]

STREAM_RUN = 32  # with feedback, the held-out split and the search take runs of this many consecutive samples
Step = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def feedback_of(kinds: Mapping[str, OutputKind]) -> dict[str, str]:
    """Output → the input it is carried into at the next step."""
    return {name: kind.feeds for name, kind in sorted(kinds.items()) if kind.feeds}


def with_feedback(
    model: ir.Model, kinds: Mapping[str, OutputKind], feedback: Mapping[str, str]
) -> dict[str, OutputKind]:
    """`kinds` with each output of `feedback` marked as carried into its input; the pairs checked
    against `model` (names, and the dtype and static shape they must share)."""
    outputs = {v.name or "": v for v in model.graph.outputs}
    inputs = {v.name or "": v for v in model.graph.inputs if v.name not in model.graph.initializers}
    if len(set(feedback.values())) < len(feedback):
        raise QCompileError(f"feedback {dict(feedback)}: two outputs fed to the same input")
    out = dict(kinds)
    for output, inp in feedback.items():
        if output not in outputs:
            raise QCompileError(
                f"feedback {output}={inp}: the model has no output {output!r}; it has {sorted(outputs)}"
            )
        if inp not in inputs:
            raise QCompileError(f"feedback {output}={inp}: the model has no input {inp!r}; it has {sorted(inputs)}")
        o, x = outputs[output], inputs[inp]
        if o.dtype != x.dtype or not _same_static_dims(o.shape, x.shape):
            raise QCompileError(
                f"feedback {output}={inp}: output {output!r} ({_describe(o)}) cannot be fed to input {inp!r}"
                f" ({_describe(x)})"
            )
        # a state, not class scores (an Add of ≥ 10 entries would read as logits)
        out[output] = replace(kinds.get(output, OutputKind()), feeds=inp, scores=False)
    return out


def _same_static_dims(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(
        not (isinstance(p, int) and isinstance(q, int)) or p == q for p, q in zip(a, b, strict=True)
    )


def _describe(value: ir.Value) -> str:
    dims = "?" if value.shape is None else "[" + ", ".join(str(d) for d in value.shape) + "]"
    return f"{value.dtype.name if value.dtype is not None else '?'}{dims}"


@dataclass(frozen=True)
class Streams:
    """Which samples continue the one before (`continues[0]` is False), and what is fed forward."""

    feedback: dict[str, str]  # output → input
    continues: tuple[bool, ...]

    @classmethod
    def of(
        cls,
        samples: Sequence[Mapping[str, np.ndarray]],
        float_outputs: Mapping[str, Sequence[np.ndarray]],
        kinds: Mapping[str, OutputKind],
        where: str,
    ) -> Streams | None:
        """The streams of `samples` read off the float model's outputs on them; None without
        feedback.  Raises when no sample continues another: the feedback would change nothing."""
        feedback = feedback_of(kinds)
        if not feedback:
            return None
        continues = [False] + [
            all(np.allclose(samples[i][x], float_outputs[o][i - 1], rtol=1e-4, atol=1e-6) for o, x in feedback.items())
            for i in range(1, len(samples))
        ]
        if len(samples) > 1 and not any(continues):
            pairs = ", ".join(f"{o}={x}" for o, x in feedback.items())
            raise QCompileError(
                f"feedback {pairs}: no sample of {where} continues the one before it (its input is never the float"
                " model's output on the sample before); give the samples in stream order, each with the state"
                " the float model carries into it"
            )
        return cls(feedback, tuple(continues))

    def first(self, n: int) -> Streams:
        return replace(self, continues=self.continues[:n])

    def spans(self) -> list[tuple[int, int]]:
        """[start, stop) of each stream."""
        starts = [i for i, c in enumerate(self.continues) if not c] + [len(self.continues)]
        return list(itertools.pairwise(starts))

    def blocks(self) -> list[tuple[int, int]]:
        """[start, stop) groups of steps for a jackknife: the streams, when there are at least 3
        (independent of each other; the steps of one are not); else each stream cut into runs of
        about √n consecutive steps (a block jackknife, Künsch 1989)."""
        spans = self.spans()
        if len(spans) >= 3:
            return spans
        length = math.ceil(math.sqrt(len(self.continues)))
        return [
            (start + offset, min(stop, start + offset + length))
            for start, stop in spans
            for offset in range(0, stop - start, length)
        ]

    def describe(self, blocks: bool = False) -> dict:
        """For the card; with `blocks`, how many groups a jackknife over these steps takes (a search's)."""
        out = {"feedback": dict(self.feedback), "streams": len(self.spans()), "steps": len(self.continues)}
        return out | {"jackknife_blocks": len(self.blocks())} if blocks else out

    def run(
        self,
        step: Step,
        samples: Sequence[Mapping[str, np.ndarray]],
        threads: int = 1,
        order: Callable[[Iterable[int]], Iterable[int]] = iter,
    ) -> list[Mapping[str, np.ndarray]]:
        """`step` on every sample, in order within each stream, each continuing step fed the outputs
        `step` gave on the one before; streams side by side on `threads` (`order` wraps the
        indices of a single-threaded run: a progress bar)."""
        if len(samples) != len(self.continues):
            raise ValueError(f"{len(samples)} samples for streams of {len(self.continues)} steps")
        if threads <= 1:
            return self._run_span(step, samples, order(range(len(samples))))
        with ThreadPoolExecutor(min(threads, len(self.spans())), thread_name_prefix="qcompile-stream") as pool:
            parts = pool.map(lambda span: self._run_span(step, samples, range(*span)), self.spans())
            return [out for part in parts for out in part]

    def _run_span(
        self, step: Step, samples: Sequence[Mapping[str, np.ndarray]], indices: Iterable[int]
    ) -> list[Mapping[str, np.ndarray]]:
        outs: list[Mapping[str, np.ndarray]] = []
        carried: dict[str, np.ndarray] = {}
        for i in indices:
            out = step({**samples[i], **carried} if self.continues[i] else samples[i])
            carried = {x: np.asarray(out[o]) for o, x in self.feedback.items()}
            outs.append(out)
        return outs
