"""JobManager without a network: failures stay in their job, cancellation, progress."""

import asyncio
import time

from intermod.server.jobs import JobManager
from intermod.server.storage import Store


def run_jobs(tmp_path, works):
    async def main():
        store = Store(tmp_path)
        jobs = JobManager(store, ["cpu"], max_queued=10)
        jobs.start()
        for i, work in enumerate(works):
            jobs.submit(f"j{i}", "m", "{}", work)
        finals = []
        for i in range(len(works)):
            statuses = [s async for s in jobs.watch(f"j{i}")]
            finals.append(statuses[-1])
        await jobs.stop()
        rows = [store.job(f"j{i}") for i in range(len(works))]
        store.close()
        return finals, rows
    return asyncio.run(main())


def test_a_failing_job_does_not_affect_the_next(tmp_path):
    def fails(device, progress):
        progress("basis/activations", 1, 2)
        raise RuntimeError("boom")

    def succeeds(device, progress):
        for i in range(1, 4):
            progress("graph/edges", i, 3)
        return "g1"

    finals, rows = run_jobs(tmp_path, [fails, succeeds])
    assert finals[0].state == "failed" and "boom" in finals[0].error
    assert finals[1].state == "succeeded" and finals[1].graph_id == "g1"
    assert finals[1].fraction == 1.0 and finals[1].device == "cpu"
    assert [r["state"] for r in rows] == ["failed", "succeeded"]


def test_cancel_raises_from_the_progress_callback(tmp_path):
    async def main():
        store = Store(tmp_path)
        jobs = JobManager(store, ["cpu"], max_queued=10)
        jobs.start()

        def slow(device, progress):
            for i in range(1, 1000):
                progress("basis/activations", i, 1000)
                time.sleep(0.01)
            return "never"

        jobs.submit("j0", "m", "{}", slow)
        seen = []
        async for status in jobs.watch("j0"):
            seen.append(status)
            if status.stage_done >= 3:
                jobs.cancel("j0")
        await jobs.stop()
        store.close()
        return seen

    seen = asyncio.run(main())
    assert seen[-1].state == "cancelled" and seen[-1].graph_id == ""
    assert 0 < seen[-2].fraction < 0.5  # basis phase: the first half of the overall fraction


def test_a_job_whose_graph_was_stored_is_succeeded_after_a_crash(tmp_path):
    """A process killed between storing a job's graph and marking the job leaves the job
    'running' with its graph listed: the next start marks it succeeded with that graph (so a
    listed graph always belongs to a finished job), and the jobs without a graph interrupted."""
    store = Store(tmp_path)
    for i in range(3):
        store.add_job({"id": f"j{i}", "model_id": "m", "request": "{}", "state": "running", "device": "cpu",
                       "created": time.time()})
    store.update_job("j2", state="queued")
    store.add_graph({"id": "g0", "job_id": "j0", "model_id": "m", "path": "g0.safetensors", "layers": ["0"],
                     "n_nodes": 1, "n_edges": 0, "n_samples": 1, "summary": {}, "created": time.time()})
    assert store.interrupt_unfinished_jobs("the server stopped") == 2
    rows = [store.job(f"j{i}") for i in range(3)]
    assert (rows[0]["state"], rows[0]["graph_id"], rows[0]["error"]) == ("succeeded", "g0", "")
    assert [r["state"] for r in rows[1:]] == ["interrupted", "interrupted"]
    assert all(r["finished"] is not None for r in rows)
    store.close()
