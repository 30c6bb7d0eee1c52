"""Graph jobs: a bounded queue, one worker per device, progress and cancellation.

The computation runs in a worker thread; the library calls ``callback(stage, done, total)``
from inside it, which updates the job and wakes its watchers on the event loop. Cancelling
sets a flag that makes the next callback raise, unwinding the computation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from .errors import NotFound, ResourceExhausted, bounded, echo
from .storage import Store

log = logging.getLogger("intermod.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL = {SUCCEEDED, FAILED, CANCELLED, INTERRUPTED}
#: Phases of a graph job and their share of the overall fraction.
PHASES = {"basis": (0.0, 0.5), "graph": (0.5, 0.5)}

T = TypeVar("T")
Progress = Callable[[str, int, int], None]
#: work(device, progress) -> graph id; runs in a worker thread.
Work = Callable[[str, Progress], str]


class JobCancelled(Exception):
    """Raised from the progress callback to stop a cancelled job."""


@dataclass
class JobStatus:
    """A snapshot of one job."""

    id: str
    model_id: str
    state: str
    created: float
    stage: str = ""
    stage_done: int = 0
    stage_total: int = 0
    fraction: float = 0.0
    started: float | None = None
    finished: float | None = None
    graph_id: str = ""
    error: str = ""
    device: str = ""

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def eta(self) -> float:
        """Seconds left, extrapolated from the fraction done; -1 when unknown."""
        if self.state in FINAL:
            return 0.0
        if self.fraction <= 0.01:
            return -1.0
        return self.elapsed * (1.0 - self.fraction) / self.fraction


@dataclass
class _Job:
    status: JobStatus
    work: Work
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> JobStatus:
        with self.lock:
            return replace(self.status)


class JobManager:
    """Queues graph jobs and runs them, one at a time per device."""

    def __init__(self, store: Store, devices: list[str], max_queued: int,
                 max_finished: int = 1000) -> None:
        self.store = store
        self.devices = devices
        self.max_queued = max_queued
        self.max_finished = max_finished
        self._jobs: dict[str, _Job] = {}   # live jobs, then the latest max_finished finished
        self._finished: list[str] = []
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=len(devices),
                                            thread_name_prefix="intermod-job")
        self._workers: list[asyncio.Task] = []
        self._device_locks = {d: asyncio.Lock() for d in devices}

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(d)) for d in self.devices]

    async def stop(self) -> None:
        """Cancel running jobs and stop the workers (the jobs end as interrupted)."""
        for job in self._jobs.values():
            job.cancel.set()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_on_device(self, fn: Callable[[str], T]) -> T:
        """Run fn(device) in a worker thread once the first device is free (one computation
        per device at a time, shared with the job workers)."""
        device = self.devices[0]
        async with self._device_locks[device]:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, device)

    def submit(self, job_id: str, model_id: str, request_json: str, work: Work) -> JobStatus:
        """Queue a job; ResourceExhausted when the queue holds max_queued jobs already."""
        queued = sum(1 for j in self._jobs.values() if j.status.state == QUEUED)
        if queued >= self.max_queued:
            raise ResourceExhausted(f"the job queue is full ({queued} queued jobs, limit "
                                    f"{self.max_queued}); retry later")
        status = JobStatus(id=job_id, model_id=model_id, state=QUEUED, created=time.time())
        job = _Job(status, work)
        self.store.add_job({"id": job_id, "model_id": model_id, "request": request_json,
                            "state": QUEUED, "device": "", "created": status.created})
        self._jobs[job_id] = job
        self._queue.put_nowait(job)
        return job.snapshot()

    def get(self, job_id: str) -> JobStatus:
        job = self._jobs.get(job_id)
        if job is not None:
            return job.snapshot()
        rec = self.store.job(job_id)
        if rec is None:
            raise NotFound(f"no job {echo(job_id)}")
        return JobStatus(id=rec["id"], model_id=rec["model_id"], state=rec["state"],
                         created=rec["created"], started=rec["started"],
                         finished=rec["finished"], graph_id=rec["graph_id"] or "",
                         error=rec["error"] or "", device=rec["device"] or "",
                         fraction=1.0 if rec["state"] == SUCCEEDED else 0.0)

    def cancel(self, job_id: str) -> JobStatus:
        job = self._jobs.get(job_id)
        if job is None:
            return self.get(job_id)  # finished before this process started: nothing to do
        job.cancel.set()
        if job.status.state == QUEUED:
            self._finish(job, CANCELLED, error="cancelled before it started")
        return job.snapshot()

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now and after every change, until it is final."""
        job = self._jobs.get(job_id)
        if job is None:
            yield self.get(job_id)
            return
        while True:
            job.changed.clear()
            snap = job.snapshot()
            yield snap
            if snap.state in FINAL:
                return
            try:
                await asyncio.wait_for(job.changed.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass  # re-send so elapsed/ETA tick even when the library reports rarely
            await asyncio.sleep(0.05)  # coalesce bursts of updates

    # internals
    def _notify(self, job: _Job) -> None:
        job.changed.set()

    def _finish(self, job: _Job, state: str, error: str = "", graph_id: str = "") -> None:
        error = bounded(error)
        with job.lock:
            s = job.status
            s.state, s.error, s.graph_id, s.finished = state, error, graph_id, time.time()
            if state == SUCCEEDED:
                s.fraction = 1.0
        self.store.update_job(s.id, state=state, error=error, graph_id=graph_id,
                              finished=s.finished)
        self._notify(job)
        self._finished.append(s.id)   # older finished jobs are answered from the database
        while len(self._finished) > self.max_finished:
            self._jobs.pop(self._finished.pop(0), None)

    def _progress(self, job: _Job, loop: asyncio.AbstractEventLoop) -> Progress:
        def callback(stage: str, done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled("cancelled")
            phase = stage.split("/", 1)[0]
            start, width = PHASES.get(phase, (0.0, 1.0))
            frac = start + width * (min(done, total) / total if total > 0 else 0.0)
            with job.lock:
                s = job.status
                s.stage, s.stage_done, s.stage_total = stage, int(done), int(total)
                s.fraction = max(s.fraction, min(frac, 1.0))
            loop.call_soon_threadsafe(self._notify, job)
        return callback

    async def _worker(self, device: str) -> None:
        while True:
            job = await self._queue.get()
            async with self._device_locks[device]:
                if job.status.state == QUEUED:
                    await self._run(job, device)

    async def _run(self, job: _Job, device: str) -> None:
        loop = asyncio.get_running_loop()
        with job.lock:
            job.status.state, job.status.started = RUNNING, time.time()
            job.status.device = device
        self.store.update_job(job.status.id, state=RUNNING, started=job.status.started,
                              device=device)
        self._notify(job)
        try:
            graph_id = await loop.run_in_executor(self._executor, job.work, device,
                                                  self._progress(job, loop))
        except JobCancelled:
            self._finish(job, CANCELLED, error="cancelled while running")
        except asyncio.CancelledError:
            self._finish(job, INTERRUPTED, error="the server stopped while the job ran")
            raise
        except Exception as exc:  # noqa: BLE001 - a failed job must not stop the worker
            if job.cancel.is_set():
                self._finish(job, CANCELLED, error="cancelled while running")
            else:
                log.warning("job %s failed: %s", job.status.id, exc)
                self._finish(job, FAILED, error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job, SUCCEEDED, graph_id=graph_id)
