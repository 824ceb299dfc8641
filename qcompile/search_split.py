"""Which calibration samples the precision search sets aside: a uniform sample of the stream.

The search judges each candidate on samples calibration did not see, as the held-out check
will.  Taking the first samples would judge on the start of the stream only: for data that
arrives in order (windows of one recording after another, pages of one document) that is one
recording.  So the set aside is a reservoir sample (Vitter's algorithm R) with a fixed seed:

    the first `count` samples fill the reservoir; sample i (0-based, i ≥ count) replaces
    reservoir slot j = rng.integers(0, i + 1) when j < count

so every sample of the stream is equally likely to end in the reservoir, and the same stream
always gives the same reservoir.  A sample passed over, or evicted from the reservoir, goes to
calibration right then: calibration stays streaming, and memory holds `count` samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from qcompile.data import Sample

__all__ = ["SearchSplit", "SEED"]

SEED = 0


class SearchSplit:
    """Iterating yields the samples to calibrate on; afterwards `samples` holds the search's.

    With fewer than 2·`count` samples in all there is too little to spare (`too_few`): `samples`
    + `rest` are then every sample, to calibrate on them all."""

    def __init__(self, samples: Iterable[Sample], count: int):
        self._samples, self.count = samples, count
        self.samples: list[Sample] = []  # the search's
        self.rest: list[Sample] = []  # the first `count` samples handed to calibration
        self.calibrated = 0

    def __iter__(self) -> Iterator[Sample]:
        rng = np.random.default_rng(SEED)
        for i, sample in enumerate(self._samples):
            if len(self.samples) < self.count:
                self.samples.append(sample)
                continue
            j = int(rng.integers(0, i + 1))
            if j < self.count:
                self.samples[j], sample = sample, self.samples[j]
            if len(self.rest) < self.count:
                self.rest.append(sample)
            self.calibrated += 1
            yield sample

    @property
    def too_few(self) -> bool:
        return 0 < self.count and self.calibrated < self.count
