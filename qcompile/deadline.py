"""A time budget for a search: checked between evaluations, remembered once it ran out."""

from __future__ import annotations

import math
import time

__all__ = ["Deadline"]


class Deadline:
    """`seconds` from now (None: never).  `expired()` is true from the first check after it passed,
    and `cut` records that some step stopped early because of it."""

    def __init__(self, seconds: float | None = None):
        self.seconds = seconds
        self._end = math.inf if seconds is None else time.monotonic() + seconds
        self.cut = False

    def expired(self) -> bool:
        if time.monotonic() >= self._end:
            self.cut = True
        return self.cut
