"""Progress reporting: tqdm bars on a terminal, plain periodic lines in logs, and a callback.

``callback(stage, done, total)`` is called after every step; an exception raised by the
callback propagates and aborts the computation (this is how a service cancels a job).
Inner loops that run long within one step (quadrature nodes, probe groups, restarts) call
:meth:`Progress.heartbeat`, which repeats the last report, so a cancellation is noticed there
too. When stderr is not a terminal (a log file, CI), a tqdm bar would write carriage-return
noise; :class:`PlainLines` writes one line per ``PLAIN_INTERVAL`` seconds instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Callback = Callable[[str, int, int], None]
#: Seconds between two plain progress lines (non-terminal stderr).
PLAIN_INTERVAL = 10.0


class PlainLines:
    """tqdm's update/close interface as plain lines ``"<stage>: done/total (s)"``: the first
    after ``interval`` seconds (default PLAIN_INTERVAL), then at most one per ``interval``, and
    a final one at close when lines were written and the count moved since the last."""

    def __init__(self, stage: str, total: int | None, stream: TextIO,
                 interval: float | None = None) -> None:
        self.stage, self.total, self.stream = stage, total, stream
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.done = self.written = 0
        self.start = self.last = time.monotonic()
        self.wrote = False

    def _line(self, now: float) -> None:
        of = f"/{self.total}" if self.total else ""
        print(f"{self.stage}: {self.done}{of} ({now - self.start:.0f} s)", file=self.stream,
              flush=True)
        self.last, self.wrote, self.written = now, True, self.done

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._line(now)

    def close(self) -> None:
        if self.wrote and self.written != self.done:
            self._line(time.monotonic())


def _bar(stage: str, total: int | None, enabled: bool, stream: TextIO | None = None):
    """A tqdm bar on a terminal or in a notebook (tqdm.auto draws a widget there); plain
    lines when stderr goes to a file or pipe."""
    stream = stream or sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    if enabled and not terminal and "ipykernel" not in sys.modules:
        return PlainLines(stage, total, stream)
    return tqdm(total=total, desc=stage, leave=False, disable=not enabled)


class Progress:
    def __init__(self, enabled: bool = True, callback: Callback | None = None):
        self.enabled = enabled
        self.callback = callback
        self.timings: dict[str, float] = {}   # seconds spent in each stage
        self._last: tuple[str, int, int] | None = None

    def report(self, stage: str, done: int, total: int) -> None:
        """Pass one report to the callback (which may raise to abort)."""
        self._last = (stage, done, total)
        if self.callback is not None:
            self.callback(stage, done, total)

    def heartbeat(self) -> None:
        """Repeat the last report (nothing before the first): lets the callback abort inside
        a long step."""
        if self.callback is not None and self._last is not None:
            self.callback(*self._last)

    def track(self, items: Iterable[T], stage: str, total: int | None) -> Iterator[T]:
        """Iterate ``items`` reporting ``stage`` progress (total may be unknown: 0)."""
        with self.steps(stage, total) as advance:
            for item in items:
                yield item
                advance(1)

    @contextmanager
    def steps(self, stage: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A bar for a loop that counts its own steps: call ``advance(n)`` after every n of
        them (each call reports to the callback, which may raise to abort)."""
        bar = _bar(stage, total, self.enabled)
        done = 0
        start = time.perf_counter()
        self._last = (stage, 0, total or 0)

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            bar.update(n)
            self.report(stage, done, total or 0)

        try:
            yield advance
        finally:
            bar.close()
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
