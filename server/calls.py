"""Blocking work of one RPC in a thread, stopped when the client gives up on the call.

grpc.aio cancels an RPC's coroutine when the client cancels or the deadline passes, but a
thread started with ``asyncio.to_thread`` would run to its end, holding a worker and the
CPU for calls nobody waits for. :func:`run_blocking` hands the work a ``check`` callable with
the library's callback signature ``(stage, done, total)``; the library calls it per batch,
per quadrature node and per restart, and it raises once the call is cancelled or past its
deadline, which unwinds the computation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import Cancelled, DeadlineExceeded

T = TypeVar("T")
Check = Callable[..., None]


class CallGuard:
    """Cancellation state of one call: `cancel()` from the event loop, `check()` in the work."""

    def __init__(self, context: Any = None) -> None:
        self._cancelled = threading.Event()
        remaining = context.time_remaining() if context is not None else None
        self._deadline = None if remaining is None else time.monotonic() + remaining

    def cancel(self) -> None:
        self._cancelled.set()

    def check(self, *_: Any) -> None:
        """Raise Cancelled / DeadlineExceeded once the call is over; callback-compatible."""
        if self._cancelled.is_set():
            raise Cancelled("the call was cancelled; its work stopped")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DeadlineExceeded("the call's deadline passed; its work stopped")


async def run_blocking(context: Any, fn: Callable[..., T], *,
                       runner: Callable[[Callable[..., T]], Any] | None = None) -> T:
    """``fn(check)`` in a thread, or ``fn(check, *args)`` through ``runner(work)``, an executor
    that calls ``work(*args)`` and returns an awaitable (the job manager's ``run_on_device``
    passes the device); cancelling the awaiting coroutine, or the call's deadline, makes the
    next ``check()`` raise inside the work."""
    guard = CallGuard(context)
    guard.check()
    task = (runner or asyncio.to_thread)(lambda *args: fn(guard.check, *args))
    try:
        return await task
    except asyncio.CancelledError:
        guard.cancel()
        raise
