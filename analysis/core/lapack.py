"""Dense decompositions on the CPU: each on one LAPACK thread, independent ones side by side.

LAPACK's multithreaded eigen-, singular-value and Cholesky routines gain little below a few
thousand rows and, when the cores are shared, wait at every barrier for a descheduled thread:
measured 10–25× slower than one thread for 800 × 800 on a loaded 2-core machine (GEMMs are not
affected). So a decomposition of a matrix of size ≤ SERIAL_LAPACK_MAX runs on one thread
(:func:`serial_lapack`), and the cores are used by running independent decompositions side by
side instead: a computation written as a generator of :class:`Call` tuples (a *step*: "these
decompositions, then continue with their results") is driven by :func:`run_steps`, which runs
every call that the live generators ask for in one round on a pool of one-thread workers, one
per torch thread, and sends each generator its results; the code between its yields (GEMMs,
QR) keeps every thread. Measured (2 cores, float64, the output-target basis of MLP 784-400-400-10,
old and new code in alternating processes): the rotations 0.116–0.121 → 0.089–0.091 s, with the
two 401 × 401 SVDs side by side and the whitening Choleskys of all layers in one round. There are
no barriers between the workers, so a loaded core only slows its own call.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

SERIAL_LAPACK_MAX = 2048   # matrices up to this size are decomposed on one CPU thread
_T = TypeVar("_T")


def _serial_applies(A: Tensor) -> bool:
    return A.device.type == "cpu" and max(A.shape, default=0) <= SERIAL_LAPACK_MAX


def serial_lapack(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Run ``fn(A, …)``, a CPU decomposition of a matrix of size ≤ SERIAL_LAPACK_MAX, on one
    thread (module docstring); larger matrices and other devices keep every thread."""
    @functools.wraps(fn)
    def run(A: Tensor, *args, **kwargs) -> _T:
        if not _serial_applies(A):
            return fn(A, *args, **kwargs)
        with _one_thread():
            return fn(A, *args, **kwargs)
    return run


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch's thread count lowered to one for the block, then restored (untouched when one
    already, e.g. inside a round's workers: a thread only ever restores a count it read)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Call:
    """One decomposition a step asks for: ``fn(A, *args)`` (``fn`` wrapped in :func:`serial_lapack`)."""

    fn: Callable[..., Any]
    A: Tensor
    args: tuple[Any, ...] = field(default=())

    def __call__(self) -> Any:
        return self.fn(self.A, *self.args)


Steps = Generator[tuple[Call, ...], list[Any], _T]   # yields calls, receives their results


def _run_round(calls: Sequence[Call]) -> list[Any]:
    """Every call's result, side by side on one-thread workers when there are several, all small
    CPU matrices and more than one torch thread; else one after another."""
    workers = min(len(calls), torch.get_num_threads())
    if workers < 2 or not all(_serial_applies(c.A) for c in calls):
        return [c() for c in calls]
    with _one_thread():   # fresh workers start with the global count: one thread each
        with ThreadPoolExecutor(workers, thread_name_prefix="intermod-lapack") as pool:
            return list(pool.map(Call.__call__, calls))


def run_steps(steps: Sequence[Steps[_T]]) -> list[_T]:
    """Drive several step generators to their return values, in rounds: each round runs the
    calls all live generators yield (:func:`_run_round`), then resumes each with its results."""
    results: list[Any] = [None] * len(steps)
    asked: dict[int, tuple[Call, ...]] = {}

    def advance(i: int, sent: list[Any] | None) -> None:
        try:
            asked[i] = next(steps[i]) if sent is None else steps[i].send(sent)
        except StopIteration as stop:
            results[i] = stop.value

    for i in range(len(steps)):
        advance(i, None)
    while asked:
        order = list(asked)
        done = _run_round([c for i in order for c in asked[i]])
        ends = list(itertools.accumulate(len(asked.pop(i)) for i in order))
        for i, start, end in zip(order, [0] + ends, ends):
            advance(i, done[start:end])
    return results


def run_one(steps: Steps[_T]) -> _T:
    """:func:`run_steps` of one generator (its own calls of a round still run side by side)."""
    return run_steps([steps])[0]
