"""kill -9 at random moments: no graph the server reported finished is ever lost."""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from intermod.client import Client
from intermod.client.spawn import ServerProcess, running_server
from torch import nn

TRIALS = 2
LAYERS = ["0", "2", "output"]


def test_kill_9_at_random_moments_loses_no_finished_graph(tmp_path):
    rng = random.Random(11)
    data_dir = tmp_path / "data"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    data = torch.randn(300, 4, dtype=torch.float64)
    finished: dict[str, int] = {}   # graph id -> n_nodes, as reported before a kill
    for _ in range(TRIALS):
        srv = ServerProcess(data_dir, ["--max-queued-jobs", "8"])
        try:
            with Client(srv.address, timeout=30) as c:
                jobs = [c.submit(model, data, LAYERS, batch_size=rng.choice([10, 50, 300]))
                        for _ in range(4)]
                kill_at = time.monotonic() + rng.uniform(0.3, 2.0)
                while time.monotonic() < kill_at:
                    for job_id in jobs:
                        job = c.job(job_id)
                        if job.state == "succeeded" and job.graph_id not in finished:
                            finished[job.graph_id] = c.graph_info(job.graph_id).n_nodes
                    time.sleep(0.05)
        finally:
            srv.stop(kill=True)
    with running_server(data_dir) as srv, Client(srv.address) as c:
        listed = {g.id: g for g in c.graphs()}
        lost = [g for g in finished if g not in listed]
        assert not lost, f"{len(lost)} of {len(finished)} finished graphs lost"
        for graph_id, n_nodes in finished.items():
            graph = c.graph(graph_id)
            assert graph.n_nodes == n_nodes and np.isfinite(graph.w).all()
            assert c.find_modules(graph_id, epsilon=1e-3).n_modules >= 1
        unfinished = [j for j in (c.job(g.job_id) for g in listed.values() if g.job_id)
                      if j.state != "succeeded"]
        assert not unfinished   # a listed graph belongs to a job that finished
    assert finished, "no job finished before the kills: the trial proved nothing"
    assert not list(data_dir.rglob("*.partial*"))
