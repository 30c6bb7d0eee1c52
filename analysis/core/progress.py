"""Progress reporting: tqdm bars (optional) and a callback for services.

``callback(stage, done, total)`` is called after every step; an exception raised by the
callback propagates and aborts the computation (this is how a service cancels a job).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Callback = Callable[[str, int, int], None]


class Progress:
    def __init__(self, enabled: bool = True, callback: Callback | None = None):
        self.enabled = enabled
        self.callback = callback
        self.timings: dict[str, float] = {}   # seconds spent in each stage

    def track(self, items: Iterable[T], stage: str, total: int | None) -> Iterator[T]:
        """Iterate ``items`` reporting ``stage`` progress (total may be unknown: 0)."""
        bar = tqdm(total=total, desc=stage, leave=False, disable=not self.enabled)
        done = 0
        start = time.perf_counter()
        try:
            for item in items:
                yield item
                done += 1
                bar.update(1)
                if self.callback is not None:
                    self.callback(stage, done, total or 0)
        finally:
            bar.close()
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
