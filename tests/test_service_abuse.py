"""Requests that used to hurt the server (issue 11): each is refused early, stops when the
client gives up, or is answered with a deliberate status naming the field."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from intermod.client import Client, RemoteError
from intermod.client.fuzz import SERVICE, rss_mb
from intermod.client.spawn import running_server
from intermod.v1 import intermod_pb2 as pb
from intermod.v1 import intermod_pb2_grpc as pb_grpc
from torch import nn

Code = grpc.StatusCode
LAYERS = ["0", "2", "output"]
LIMITS = {"max_n_alpha": 16, "max_n_probes": 32, "max_n_restarts": 50, "max_batch_size": 4096,
          "max_sweep_points": 500, "max_layers": 8, "max_parameters": 10_000_000}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--max-samples", "5000", "--max-nodes", "400", "--max-queued-jobs", "2"]
    for name, value in LIMITS.items():
        args += ["--limit", f"{name}={value}"]
    with running_server(tmp_path_factory.mktemp("abuse") / "data", args) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with Client(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.IntermodServiceStub(channel)


@pytest.fixture(scope="module")
def ids(client):
    """A small model, its data and graph (a Leiden run takes milliseconds), and a graph of 311
    nodes and 24k edges (PCA basis of 150-wide layers: a restart takes ~20 ms)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    wide = nn.Sequential(nn.Linear(4, 150), nn.ReLU(), nn.Linear(150, 150), nn.Tanh(),
                         nn.Linear(150, 3)).double()
    data = torch.randn(400, 4, dtype=torch.float64)
    model_id, wide_id = client.register_model(model).id, client.register_model(wide).id
    data_id = client.upload(data).id
    graph_id = client.compute_graph(model_id, data_id, LAYERS, progress=False)
    big = client.compute_graph(wide_id, data_id, ["0", "2", "4", "output"], kind="pca",
                               progress=False)
    return {"model": model_id, "data": data_id, "graph": graph_id, "big": big}


def invalid(call, field: str | None = None, code: grpc.StatusCode = Code.INVALID_ARGUMENT,
            within: float = 5.0) -> RemoteError:
    """`call` fails with `code` naming `field`, quickly."""
    start = time.perf_counter()
    with pytest.raises(RemoteError) as err:
        call()
    assert err.value.code == code, err.value
    if field is not None:
        assert err.value.field == field, err.value
    assert time.perf_counter() - start < within, f"took {time.perf_counter() - start:.1f} s"
    return err.value


def test_sweep_grid_is_sized_before_it_is_built(client, ids):
    started = time.perf_counter()
    err = invalid(lambda: list(client.sweep(ids["graph"], [1e-3] * 20_000, [0.1] * 20_000)),
                  "epsilons", within=3.0)
    assert "400000000 points" in err.message and time.perf_counter() - started < 3.0
    assert len(list(client.sweep(ids["graph"], [1e-3] * 10, [0.1] * 50))) == 500  # at the limit


@pytest.mark.parametrize("option, value", [("n_alpha", 6000), ("n_probes", 10_000),
                                           ("batch_size", 2**40), ("n_alpha", 0)])
def test_counts_are_bounded(client, ids, option, value):
    kw = {"edge_method": "integrated"} if option == "n_alpha" else {}
    err = invalid(lambda: client.submit(ids["model"], ids["data"], LAYERS, **kw, **{option: value}),
                  f"options.{option}")
    assert str(value) in err.message


def test_repeated_fields_are_sized(client, stub, ids):
    invalid(lambda: client.submit(ids["model"], ids["data"], ["0"] * 10_000), "layers")
    invalid(lambda: client.find_modules(ids["graph"], n_restarts=1000), "search.n_restarts")
    invalid(lambda: client.score(ids["graph"], np.zeros(10**6, dtype=int), 1e-3), "membership")
    invalid(lambda: client.compare(np.zeros(10**5, dtype=int), np.zeros(10**5, dtype=int)),
            "membership_a")


def test_client_mistakes_are_invalid_argument_naming_the_field(client, stub, ids):
    invalid(lambda: client.compare([0, -1, -1], [0, 0, 0]), "membership_b")
    invalid(lambda: client.find_modules(ids["graph"], n_modules=10**6), "search.n_modules")
    weights = client.upload(np.zeros((2, 2))).id
    for i, layer in enumerate([{"type": "linear", "in_features": 2**31, "out_features": 2**31},
                               {"type": "layernorm", "in_features": 2**62}]):
        spec = [{"type": "relu"}] * i + [layer]
        invalid(lambda s=spec: client.register_model({"layers": s}, weights),
                f"spec.layers[{i}]")
    scalar = client.upload({"x": np.zeros((5, 4)), "s": np.zeros(())}).id
    ragged = client.upload({"x": np.zeros((5, 4)), "y": np.zeros((6, 4))}).id
    for data in (scalar, ragged):
        invalid(lambda d=data: client.submit(ids["model"], d, LAYERS), "data_tensor_set_id")
        invalid(lambda d=data: client.diagnose(ids["model"], d, LAYERS), "data_tensor_set_id")


def test_hf_config_is_counted_before_it_is_built(client, server):
    """A BERT-large config (335M parameters) with a tiny weights file: refused on the
    parameter count (meta device), not after building the model in memory."""
    config = {"model_type": "bert", "hidden_size": 1024, "num_hidden_layers": 24,
              "num_attention_heads": 16, "intermediate_size": 4096, "vocab_size": 30522}
    weights = client.upload({"w": np.zeros(8, dtype=np.float32)}).id
    before = rss_mb(server.proc.pid)
    err = invalid(lambda: client.register_hf(config, weights), "hf_config_json", within=30.0)
    assert "limit" in err.message   # 335M > max_parameters: refused before the weights are read
    small = dict(config, num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                 num_attention_heads=2, vocab_size=100)
    err = invalid(lambda: client.register_hf(small, weights), "hf_config_json")
    assert "weights hold 8 values" in err.message
    invalid(lambda: client.register_hf(dict(config, num_hidden_layers=10**6), weights),
            "hf_config_json")
    assert rss_mb(server.proc.pid) - before < 400   # transformers' import, not 2 GB of weights


def test_undecodable_bytes_on_every_rpc(server):
    """Raw bytes that are no message of the request type: INVALID_ARGUMENT on every RPC the
    descriptor declares, unary and streaming alike."""
    garbage = b"\xff\xff\xff\xff\x0f"
    with grpc.insecure_channel(server.address) as channel:
        for method in SERVICE.methods:
            path = f"/{SERVICE.full_name}/{method.name}"
            kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                    (True, False): channel.stream_unary,
                    (True, True): channel.stream_stream}[(method.client_streaming,
                                                         method.server_streaming)]
            call = kind(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            request = iter([garbage]) if method.client_streaming else garbage
            with pytest.raises(grpc.RpcError) as err:
                result = call(request, timeout=30)
                if method.server_streaming:
                    list(result)
            assert err.value.code() == Code.INVALID_ARGUMENT, (method.name, err.value)
            assert "malformed request message" in err.value.details(), method.name


def test_echoed_ids_are_bounded(client):
    for call in (lambda: client.job("j_" + "A" * 10_000),
                 lambda: client.graph_info("g_" + "A" * 10_000),
                 lambda: client.submit("m_" + "A" * 10_000, None, LAYERS)):
        err = invalid(call, code=Code.NOT_FOUND)
        assert len(err.message) < 300 and "10002 characters" in err.message


def test_abandoned_calls_stop_their_work(server, ids, client):
    """Calls past their deadline stop at the next restart: a cheap call right after 12
    abandoned 50-restart searches is not queued behind them (it would wait for ~12 of them)."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.IntermodServiceStub(channel)
        request = pb.FindModulesRequest(graph_id=ids["big"],
                                        search=pb.ModuleSearch(n_restarts=50, epsilon=1e-6))
        start = time.perf_counter()
        stub.FindModules(request, timeout=60)
        one = time.perf_counter() - start

        def abandoned(_: int) -> grpc.StatusCode:
            try:
                stub.FindModules(request, timeout=0.3)
            except grpc.RpcError as exc:
                return exc.code()
            return Code.OK

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(abandoned, range(12)))
        assert Code.DEADLINE_EXCEEDED in codes
        start = time.perf_counter()
        client.find_modules(ids["big"], epsilon=1e-6)
        assert time.perf_counter() - start < max(1.0, one), (one, codes)


def test_memory_stays_bounded_under_bad_requests(server, client, ids):
    """RSS after 300 bad requests of every kind is within 150 MB of RSS before (warm-up
    first: imports and caches that are filled once are no leak)."""
    def bad_requests(n: int) -> None:
        for i in range(n):
            for call in (lambda i=i: client.job(f"j_{i}" * 50),
                         lambda: client.find_modules(ids["graph"], n_modules=10**6),
                         lambda: list(client.sweep(ids["graph"], [2.0])),
                         lambda: client.compare([0, 1], [0]),
                         lambda: client.export(ids["graph"], "png", top_n=-1),
                         lambda: client.submit(ids["model"], ids["data"], ["nope"])):
                with pytest.raises(RemoteError):
                    call()

    bad_requests(20)
    before = rss_mb(server.proc.pid)
    bad_requests(50)
    assert rss_mb(server.proc.pid) - before < 150
    assert client.health() == "SERVING"


def test_garbage_tls_certificate_names_the_files(tmp_path, capsys):
    from intermod.client.cli import main
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    from intermod.server.app import read_tls_pair
    with pytest.raises(ValueError, match="cannot read the certificate .*cert.pem.* key .*key.pem"):
        read_tls_pair(cert, key)
    assert main(["serve", "--port", "0", "--data-dir", str(tmp_path / "d"), "--tls-cert",
                 str(cert), "--tls-key", str(key)]) == 1
    assert "cannot read the certificate" in capsys.readouterr().err


def test_diagnose_of_the_output_alone_is_a_client_error(client, ids):
    invalid(lambda: client.diagnose(ids["model"], ids["data"], ["output"]), "layers")
