"""End to end over loopback: a real `intermod serve` process and the Python client."""

from __future__ import annotations

import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import safetensors.numpy
import torch
from compare import assert_same_numbers
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from intermod import analysis as ia
from intermod.client import Client, RemoteError
from intermod.client.spawn import ServerProcess, running_server
from intermod.v1 import intermod_pb2 as pb
from torch import nn

LAYERS = ["0", "2", "output"]
MAX_UPLOAD = 2 * 1024 * 1024
Code = grpc.StatusCode


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def small_data(n: int = 300) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def local_graph(model, data, layers=LAYERS, **options) -> ia.InteractionGraph:
    graph_keys = {"edge_method", "n_alpha", "n_probes", "batch_size", "dtype", "seed"}
    basis_kw = {k: v for k, v in options.items() if k not in ("edge_method", "n_alpha")}
    graph_kw = {k: v for k, v in options.items() if k in graph_keys}
    basis = ia.compute_basis(model, data, layers, progress=False, **basis_kw)
    return ia.build_graph(model, data, basis, progress=False, **graph_kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("svc") / "data",
                        ["--max-upload-bytes", str(MAX_UPLOAD), "--max-queued-jobs", "1",
                         "--max-samples", "60000", "--max-nodes", "200"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with Client(server.address) as c:
        yield c


@pytest.fixture(scope="module")
def graph_id(client):
    return client.compute_graph(small_model(), small_data(), LAYERS, progress=False)


def slow_job(client: Client) -> str:
    """A job that takes many seconds: 50k samples in batches of 10."""
    data = torch.randn(50_000, 4, generator=torch.Generator().manual_seed(2))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return client.submit(model, data, LAYERS, batch_size=10, dtype="float32")


def wait_running(client: Client, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.job(job_id).stage == "" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.job(job_id).state == "running"


def test_health_and_reflection(server, client):
    assert client.health() == "SERVING"
    assert client.health("intermod.v1.IntermodService") == "SERVING"
    with grpc.insecure_channel(server.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"intermod.v1.IntermodService", "grpc.health.v1.Health"} <= set(services)


def test_end_to_end_equals_library(client, graph_id):
    model, data = small_model(), small_data()
    local = local_graph(model, data)
    remote = client.graph(graph_id)
    assert remote.layers == local.layers and remote.n_nodes == local.n_nodes
    for a, b in zip(LAYERS, LAYERS[1:]):   # dense matrices: the edge lists may differ by round-off
        np.testing.assert_allclose(remote.edge_matrix(a, b), local.edge_matrix(a, b), rtol=1e-9,
                                   atol=1e-12 * local.w.max())
    assert remote.nodes == local.nodes and remote.bases.keys() == local.bases.keys()
    for layer, (C, _) in local.bases.items():
        np.testing.assert_allclose(remote.bases[layer][0], C, rtol=1e-12, atol=1e-15)

    part = client.find_modules(graph_id, epsilon=1e-3, resolution=0.05, seed=3)
    want = ia.find_modules(local, epsilon=1e-3, resolution=0.05, seed=3)
    assert isinstance(part, ia.Partition)
    np.testing.assert_array_equal(part.membership, want.membership)
    assert part.cost == pytest.approx(want.cost, rel=1e-12)
    assert part.quality == pytest.approx(want.quality, rel=1e-12)

    k2 = client.find_modules(graph_id, epsilon=1e-3, n_modules=2, n_restarts=2)
    assert k2.n_modules == ia.find_modules(local, epsilon=1e-3, n_modules=2,
                                           n_restarts=2).n_modules

    score, want_score = client.score(graph_id, part, 1e-3), ia.partition_cost(local, want, 1e-3)
    assert isinstance(score, ia.Score)
    assert (score, score.cost_units, score.n_cut_edges) == (
        want_score, want_score.cost_units, want_score.n_cut_edges)
    assert client.compare(part, want) == pytest.approx({"ari": 1.0, "nmi": 1.0})
    other = np.arange(local.n_nodes) % 2
    assert client.compare(part, other) == pytest.approx(ia.compare_partitions(want, other))
    assert isinstance(client.compare(part, other), ia.Comparison)
    rb = client.find_modules(graph_id, epsilon=1e-3, objective="rb", resolution=1.0)
    assert rb.objective == ia.find_modules(local, epsilon=1e-3, objective="rb").objective

    sweep = list(client.sweep(graph_id, [1e-3, 1e-2], [0.01, 0.1], objective="cpm"))
    assert [(p.epsilon, p.resolution) for p in sweep] == [
        (1e-3, 0.01), (1e-3, 0.1), (1e-2, 0.01), (1e-2, 0.1)]
    for p in sweep:
        q = ia.find_modules(local, epsilon=p.epsilon, resolution=p.resolution)
        np.testing.assert_array_equal(p.membership, q.membership)


def test_watch_reports_progress(client):
    updates = []
    data = small_data(8000)  # 400 batches per phase: each phase lasts a good fraction of a second
    job_id = client.submit(small_model(), data, LAYERS, batch_size=20)
    job = client.watch(job_id, progress=False, on_update=updates.append)
    assert job.state == "succeeded" and job.graph_id
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {u.stage.split("/")[0] for u in updates if u.stage} == {"basis", "graph"}
    assert any(0 < u.fraction < 1 for u in updates)
    assert job.elapsed > 0


@pytest.mark.parametrize("options", [
    {"jacobian_target": "next_layer", "center": False, "include_bias": False,
     "scaling": "inverse", "edge_method": "integrated", "n_alpha": 3, "batch_size": 64,
     "seed": 5},
    {"kind": "pca", "tol_G": 1e-6, "tol_M": 1e-6, "n_probes": 4, "dtype": torch.float32,
     "seed": 1},
])
def test_every_graph_option_is_forwarded(client, options):
    model, data = small_model(), small_data(200)
    gid = client.compute_graph(model, data, LAYERS, progress=False, **options)
    remote, local = client.graph(gid), local_graph(model, data, **options)
    assert remote.n_nodes == local.n_nodes
    np.testing.assert_allclose(remote.w, local.w, rtol=1e-6, atol=1e-9)
    meta = client.graph_info(gid).summary["metadata"]
    for key in ("jacobian_target", "center", "include_bias", "scaling", "kind", "edge_method",
                "seed"):
        if key in options:
            assert meta[key] == options[key]


def test_exports(client, graph_id, tmp_path):
    local = client.graph(graph_id)
    raw = client.export(graph_id, "json", tmp_path / "g.json")
    assert json.loads(raw)["layers"] == LAYERS
    assert ia.InteractionGraph.from_json(tmp_path / "g.json").n_edges == local.n_edges
    assert client.export(graph_id, "graphml").lstrip().startswith(b"<?xml")
    tensors = safetensors.numpy.load(client.export(graph_id, "safetensors"))
    assert tensors
    assert client.export(graph_id, "png").startswith(b"\x89PNG")
    path = client.plot(graph_id, tmp_path / "g.svg", epsilon=1e-3, top_n=10)
    assert b"<svg" in path.read_bytes()[:2000]


def test_models_and_graphs_listing(client, graph_id):
    models = client.models()
    registered = [m for m in models if m.source == "spec"]
    assert registered and registered[0].spec["layers"][0]["type"] == "linear"
    from intermod.analysis import examples
    assert {m.id for m in models if m.source == "example"} == set(examples.names())
    gid = client.compute_graph("planted", progress=False)  # an example on its own inputs
    assert client.graph_info(gid).layers == examples.load("planted").layers
    planted = next(m for m in client.models() if m.id == "planted")
    assert planted.has_inputs and planted.layers and planted.n_parameters > 0
    ids = [g.id for g in client.graphs()]
    assert graph_id in ids
    info = client.graph_info(graph_id)
    assert info.layers == LAYERS and info.n_samples == 300
    full = client._call("GetGraph", pb.GetGraphRequest(graph_id=graph_id, include_nodes=True,
                                                       include_edges=True))
    graph = client.graph(graph_id)
    assert [(n.layer, n.index, n.is_bias) for n in full.nodes] == [
        (n.layer, n.index, n.is_bias) for n in graph.nodes]
    np.testing.assert_array_equal(full.src, graph.src)
    np.testing.assert_array_equal(full.w, graph.w)


def test_diagnose(client):
    model, data = small_model(), small_data(100)
    report = client.diagnose(model, data, LAYERS, epsilon=1e-4)
    want = json.loads(json.dumps(ia.diagnose(model, data, LAYERS, 1e-4).to_dict(), default=str))
    assert_same_numbers(report, want)


def test_delete_graph(client):
    gid = client.compute_graph(small_model(), small_data(100), LAYERS, progress=False)
    client.delete_graph(gid)
    assert gid not in [g.id for g in client.graphs()]
    with pytest.raises(RemoteError) as err:
        client.find_modules(gid)
    assert err.value.code == Code.NOT_FOUND


def test_cancel_and_full_queue(client, graph_id):
    running = slow_job(client)
    wait_running(client, running)
    started = time.perf_counter()  # the event loop keeps serving while a job computes
    assert client.find_modules(graph_id, epsilon=1e-3).n_modules >= 1
    assert time.perf_counter() - started < 3.0
    queued = slow_job(client)  # waits for the single CPU worker
    with pytest.raises(RemoteError) as err:
        slow_job(client)
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    assert client.cancel(queued).state == "cancelled"
    client.cancel(running)
    job = client.watch(running, progress=False)
    assert job.state == "cancelled" and not job.graph_id
    assert client.health() == "SERVING"


def _upload_raw(client: Client, raw: bytes, fmt: int = 1):
    header = pb.UploadHeader(format=fmt, total_bytes=len(raw),
                             sha256=hashlib.sha256(raw).hexdigest())
    return client._call("UploadTensors", iter([pb.UploadTensorsRequest(header=header),
                                               pb.UploadTensorsRequest(chunk=raw)]))


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def error_cases(client: Client, graph_id: str) -> dict:
    model, data = small_model(), small_data(50)
    model_id = client.register_model(model).id
    data_id = client.upload(data).id
    n = client.graph_info(graph_id).n_nodes
    spec = {"layers": [{"type": "linear", "in_features": 4, "out_features": 8}]}
    good_w = {"0.weight": np.zeros((8, 4)), "0.bias": np.zeros(8)}
    return {
        "unknown layer": (lambda: client.submit(model_id, data_id, ["0", "9"]),
                          Code.INVALID_ARGUMENT, "layers[1]"),
        "shape mismatch": (lambda: client.submit(model_id, np.zeros((5, 7)), LAYERS),
                           Code.INVALID_ARGUMENT, "data_tensor_set_id"),
        "dtype mismatch": (lambda: client.submit(model_id, np.zeros((5, 4), np.int64), LAYERS),
                           Code.INVALID_ARGUMENT, "data_tensor_set_id"),
        "NaN data": (lambda: client.upload(np.array([[np.nan, 0, 0, 0]])),
                     Code.INVALID_ARGUMENT, "chunk"),
        "Inf weights": (lambda: client.register_model(
            spec, {"0.weight": np.full((8, 4), np.inf), "0.bias": np.zeros(8)}),
            Code.INVALID_ARGUMENT, "chunk"),
        "epsilon <= 0": (lambda: client.find_modules(graph_id, epsilon=0.0),
                         Code.INVALID_ARGUMENT, "search.epsilon"),
        "sweep epsilon": (lambda: list(client.sweep(graph_id, [1e-3, -1.0])),
                          Code.INVALID_ARGUMENT, "epsilons[1]"),
        "membership length": (lambda: client.score(graph_id, np.zeros(n + 1), 1e-3),
                              Code.INVALID_ARGUMENT, "membership"),
        "malformed safetensors": (lambda: _upload_raw(client, b"\x08\x00\x00\x00\x00\x00\x00"
                                                              b"\x00{garbage"),
                                  Code.INVALID_ARGUMENT, "chunk"),
        "pickled npy": (lambda: _upload_raw(client, _npy(np.array([{"a": 1}], dtype=object)),
                                            fmt=2), Code.INVALID_ARGUMENT, "chunk"),
        "spec/weights mismatch": (lambda: client.register_model(
            spec, {"0.weight": np.zeros((8, 4))}), Code.INVALID_ARGUMENT, "weights"),
        "weight shape": (lambda: client.register_model(
            spec, {"0.weight": np.zeros((4, 8)), "0.bias": np.zeros(8)}),
            Code.INVALID_ARGUMENT, "weights"),
        "unknown layer type": (lambda: client.register_model(
            {"layers": [{"type": "conv3d"}]}, good_w), Code.INVALID_ARGUMENT,
            "spec.layers[0].type"),
        "diagnose epsilon": (lambda: client.diagnose(model_id, data_id, LAYERS, epsilon=0.0),
                             Code.INVALID_ARGUMENT, "epsilon"),
        "bad option": (lambda: client.submit(model_id, data_id, LAYERS, kind="magic"),
                       Code.INVALID_ARGUMENT, "options.kind"),
        "bad objective": (lambda: client.find_modules(graph_id, objective="louvain"),
                          Code.INVALID_ARGUMENT, "search.objective"),
        "unknown graph": (lambda: client.find_modules("g_nope"), Code.NOT_FOUND, None),
        "unknown job": (lambda: client.job("j_nope"), Code.NOT_FOUND, None),
        "unknown model": (lambda: client.submit("m_nope", data_id, LAYERS), Code.NOT_FOUND,
                          None),
        "unknown data": (lambda: client.submit(model_id, "t_nope", LAYERS), Code.NOT_FOUND,
                         None),
        "too many samples": (lambda: client.submit(model_id, np.zeros((60_001, 4)), LAYERS),
                             Code.INVALID_ARGUMENT, "data_tensor_set_id"),
        "too many nodes": (lambda: client.submit(nn.Sequential(nn.Linear(4, 300), nn.ReLU()),
                                                 data, ["1", "output"]),
                           Code.INVALID_ARGUMENT, "layers"),
        "oversized upload": (lambda: client.upload(np.zeros(MAX_UPLOAD // 8 + 1)),
                             Code.RESOURCE_EXHAUSTED, None),
    }


def test_errors_name_the_field_and_server_stays_healthy(client, graph_id):
    for name, (call, code, field) in error_cases(client, graph_id).items():
        with pytest.raises(RemoteError) as err:
            call()
        assert err.value.code == code, (name, err.value)
        assert err.value.field == field, (name, err.value)
    assert client.health() == "SERVING"
    assert client.find_modules(graph_id, epsilon=1e-3).n_modules >= 1


def test_unsupported_module_is_a_clear_client_error(client):
    with pytest.raises(TypeError, match="intermod.analysis"):
        client.register_model(nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1)))


def test_concurrent_clients(server, graph_id, client):
    expected = client.find_modules(graph_id, epsilon=1e-3)

    def work(i: int) -> bool:
        with Client(server.address) as c:
            for _ in range(3):
                p = c.find_modules(graph_id, epsilon=1e-3)
                assert np.array_equal(p.membership, expected.membership)
                assert c.score(graph_id, p, 1e-3).cost == pytest.approx(expected.cost)
                assert len(list(c.sweep(graph_id, [1e-3, 1e-2]))) == 2
                assert c.graph_info(graph_id).n_nodes == len(expected.membership)
                ts = c.upload(np.full((3, 2), float(i)))
                assert ts.tensors["data"]["shape"] == [3, 2]
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


def test_token_auth_and_tls(tmp_path):
    import subprocess
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with running_server(tmp_path / "data", args, env={"INTERMOD_TOKEN": "s3cret"}) as srv:
        with Client(srv.address, tls=cert) as anonymous:
            assert anonymous.health() == "SERVING"  # probes need no token
            for call in (anonymous.models, lambda: anonymous.upload(np.zeros(3)),
                         lambda: anonymous.watch("j_x", progress=False)):
                with pytest.raises(RemoteError) as err:
                    call()
                assert err.value.code == Code.UNAUTHENTICATED
        with Client(srv.address, token="wrong", tls=cert) as wrong:
            with pytest.raises(RemoteError) as err:
                wrong.graphs()
            assert err.value.code == Code.UNAUTHENTICATED
        with Client(srv.address, token="s3cret", tls=cert) as good:
            assert good.graphs() == []
            assert good.upload(np.zeros(3)).tensors["data"]["shape"] == [3]
        with Client(srv.address, token="s3cret", timeout=5) as plaintext:
            with pytest.raises(RemoteError) as err:
                plaintext.graphs()
            assert err.value.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)


def test_operator_model_restart_and_interrupted_jobs(tmp_path):
    """An operator model runs on its own inputs and layers; after a hard kill and a restart
    its graph is still served and the job that was running is marked interrupted."""
    from intermod.analysis.examples import planted
    data_dir = tmp_path / "data"
    srv = ServerProcess(data_dir, ["--operator-model",
                                   "op_planted=intermod.analysis.examples.planted:build"])
    try:
        with Client(srv.address) as c:
            listed = {m.id: m for m in c.models()}
            assert listed["op_planted"].source == "operator"
            gid = c.compute_graph("op_planted", progress=False)
            ex = planted.build()
            want = local_graph(ex.model, ex.inputs, ex.layers)
            got = c.graph(gid)
            for a, b in zip(ex.layers, ex.layers[1:]):   # dense: round-off may differ
                np.testing.assert_allclose(got.edge_matrix(a, b), want.edge_matrix(a, b),
                                           rtol=1e-9, atol=1e-12 * want.w.max())
            before = c.find_modules(gid, epsilon=1e-3)
            running = slow_job(c)
            wait_running(c, running)
    finally:
        srv.stop(kill=True)
    (data_dir / "graphs" / "g_half.safetensors.1234.partial.safetensors").write_text("{")
    with running_server(data_dir) as srv2, Client(srv2.address) as c:
        assert [g.id for g in c.graphs()] == [gid]
        after = c.find_modules(gid, epsilon=1e-3)
        np.testing.assert_array_equal(after.membership, before.membership)
        assert c.graph(gid).n_nodes == len(before.membership)
        job = c.job(running)
        assert job.state == "interrupted" and "server stopped" in job.error
        assert c.watch(running, progress=False).state == "interrupted"
    assert not list(data_dir.rglob("*.partial*"))
