"""A bounded fuzz run (seeded; INTERMOD_FUZZ_SEED picks another seed) over every RPC of the
service descriptor: random messages, raw bytes and the abuse cases. No answer may be UNKNOWN
or INTERNAL, the health check must stay fast, and the server must serve normally after."""

from __future__ import annotations

import os

import grpc
from intermod.client import Client
from intermod.client.fuzz import SERVICE, Fuzzer, rss_mb, seed_server
from intermod.client.spawn import running_server

N_REQUESTS = 1200


def test_fuzz_every_rpc(tmp_path):
    seed = int(os.environ.get("INTERMOD_FUZZ_SEED", "0"))
    limits = ["--max-samples", "5000", "--max-nodes", "500", "--max-queued-jobs", "2"]
    with running_server(tmp_path / "data", limits) as server:
        ids = seed_server(server.address)
        before = rss_mb(server.proc.pid)
        with grpc.insecure_channel(server.address) as channel:
            report = Fuzzer(channel, ids, seed=seed, timeout=20).run(N_REQUESTS)
        assert not report.failures, "\n".join(report.failures[:20])
        assert set(report.codes) == {m.name for m in SERVICE.methods}   # every RPC was hit
        assert report.p95_health_ms < 100, report.health_ms
        assert rss_mb(server.proc.pid) - before < 300
        with Client(server.address) as client:
            assert client.health() == "SERVING"
            assert client.find_modules(ids.graphs[0], epsilon=1e-3).n_modules >= 1
