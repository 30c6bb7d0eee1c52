"""The Ablate job RPC end to end: a real server, the client's result objects against the
library run in process, field-named errors, cancellation."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.client import Client, RemoteError
from intermod.client.spawn import running_server
from intermod.v1 import intermod_pb2 as pb
from test_service import LAYERS, local_graph, small_data, small_model

Q = {"progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("abl") / "data", ["--max-samples", "60000"]) as srv:
        with Client(srv.address) as client:
            model, data = small_model(), small_data()
            graph_id = client.compute_graph(model, data, LAYERS, progress=False)
            yield client, graph_id, model, data, local_graph(model, data)


def test_every_kind_returns_the_library_result(setup):
    client, gid, model, data, graph = setup
    curve = client.ablation_curve(gid, "2", schedule="all", progress=False)
    want = ia.ablation_curve(model, data, graph, "2", schedule="all", **Q)
    assert isinstance(curve, ia.AblationCurve)
    np.testing.assert_allclose(curve.loss, want.loss, rtol=1e-8, atol=1e-15)
    edges = client.edge_ablation(gid, keep=5, progress=False)
    assert edges.loss == pytest.approx(ia.edge_ablation(model, data, graph, keep=5, **Q).loss, rel=1e-8)
    part = ia.find_modules(graph, epsilon=1e-3, n_modules=2)
    cut = client.module_cut(gid, part, n_baseline=3, progress=False)
    local = ia.module_cut(model, data, graph, part, n_baseline=3, **Q)
    assert isinstance(cut, ia.ModuleCut)
    np.testing.assert_allclose([cut.loss, cut.baseline, cut.inactive_loss],
                               [local.loss, local.baseline, local.inactive_loss], rtol=1e-8, atol=1e-15)
    fx = client.module_effects(gid, search={"epsilon": 1e-3, "n_modules": 2}, progress=False)
    np.testing.assert_allclose(fx.loss_increase, ia.module_effects(model, data, graph, part, **Q).loss_increase,
                               rtol=1e-8, atol=1e-15)
    auto = client.modules_from_ablation(gid, progress=False)
    local = ia.modules_from_ablation(model, data, graph, **Q)
    assert auto.epsilon == pytest.approx(local.epsilon, rel=1e-8)
    np.testing.assert_array_equal(auto.partition.membership, local.partition.membership)


def test_typed_response(setup):
    client, gid, *_ = setup
    job_id = client.submit_ablation(gid, "cut", search={"epsilon": 1e-3, "n_modules": 2}, n_baseline=2)
    assert client.watch(job_id, progress=False).state == "succeeded"
    msg = client._call("GetAblation", pb.GetAblationRequest(job_id=job_id))
    assert msg.WhichOneof("result") == "cut" and msg.loss == "mse" and msg.scale > 0
    assert len(msg.cut.baseline_losses) == 2 and msg.cut.n_modules == 2


@pytest.mark.parametrize("fields, field", [
    ({"kind": pb.ABLATION_KIND_UNSPECIFIED}, "kind"),
    ({"kind": pb.ABLATION_KIND_CURVE, "layer": "nope"}, "layer"),
    ({"kind": pb.ABLATION_KIND_CURVE, "layer": "2", "schedule": "linear"}, "schedule"),
    ({"kind": pb.ABLATION_KIND_EDGES}, "epsilon"),
    ({"kind": pb.ABLATION_KIND_EDGES, "epsilon": 2.0}, "epsilon"),
    ({"kind": pb.ABLATION_KIND_CUT}, "membership"),
    ({"kind": pb.ABLATION_KIND_CUT, "membership": [0, 1]}, "membership"),
    ({"kind": pb.ABLATION_KIND_CUT, "membership": [0] * 21, "n_baseline": 10**6}, "n_baseline"),
    ({"kind": pb.ABLATION_KIND_AUTO, "loss": "hinge"}, "loss"),
    ({"kind": pb.ABLATION_KIND_AUTO, "tolerance": -1.0}, "tolerance"),
    ({"kind": pb.ABLATION_KIND_AUTO, "max_modules": 0}, "max_modules"),
    ({"kind": pb.ABLATION_KIND_AUTO, "resolutions": [float("nan")]}, "resolutions[0]"),
])
def test_bad_requests_name_the_field(setup, fields, field):
    client, gid, *_ = setup
    n_nodes = client.graph_info(gid).n_nodes
    if fields.get("membership") == [0] * 21:
        fields = dict(fields, membership=[0] * n_nodes)
    with pytest.raises(RemoteError) as err:
        client._call("Ablate", pb.AblateRequest(graph_id=gid, **fields))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.field == field


def test_unknown_graph_and_unfinished_job(setup):
    client, gid, *_ = setup
    with pytest.raises(RemoteError) as err:
        client._call("Ablate", pb.AblateRequest(graph_id="g-none", kind=pb.ABLATION_KIND_AUTO))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(RemoteError) as err:
        client.ablation_result("j-none")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_cancel_a_running_ablation(setup):
    client, gid, *_ = setup
    big = torch.randn(40_000, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    job_id = client.submit_ablation(gid, "curve", layer="2", schedule="all", data=big, batch_size=40)
    deadline = time.monotonic() + 60
    while client.job(job_id).stage == "" and time.monotonic() < deadline:
        time.sleep(0.05)
    client.cancel(job_id)
    assert client.watch(job_id, progress=False).state == "cancelled"
    with pytest.raises(RemoteError) as err:
        client.ablation_result(job_id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_ablate_and_modules_auto(setup, capsys, tmp_path):
    import json

    from intermod.client.cli import main

    client, gid, model, data, graph = setup
    addr = ["--address", client.address, "--no-progress"]
    assert main(["ablate", gid, "cut", "--epsilon", "1e-3", "--n-modules", "2", "--n-baseline", "2", *addr, "--json"]) == 0
    cut = json.loads(capsys.readouterr().out)
    part = ia.find_modules(graph, epsilon=1e-3, n_modules=2)
    assert cut["loss"] == pytest.approx(ia.module_cut(model, data, graph, part, n_baseline=0, **Q).loss, rel=1e-8)
    assert main(["ablate", gid, "effects", "--epsilon", "1e-3", "--n-modules", "2", *addr]) == 0
    assert "increase per coordinate" in capsys.readouterr().out
    assert main(["ablate", gid, "curve", "--layer", "2", "--plot", str(tmp_path / "c"), *addr]) == 0
    assert "reconstruction loss" in capsys.readouterr().out and (tmp_path / "c.svg").exists()
    assert main(["modules", gid, "--auto", "--tolerance", "1e-3", *addr, "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["tolerance"] == 1e-3 and auto["cut_loss"] <= 1e-3 or not auto["within_tolerance"]
    assert main(["ablate", gid, "edges", *addr]) == 1
    assert "epsilon" in capsys.readouterr().err


def test_rerotated_graph_over_the_wire_equals_the_library(setup):
    """GraphOptions.rerotate: the server re-rotates near-degenerate groups before the edges,
    as ia.rerotate_degenerate does in process (two_tasks on i.i.d. inputs, where it moves
    directions), and the truth-free pipeline on that graph is the library's."""
    from intermod.analysis import examples
    client = setup[0]
    ex = examples.load("two_tasks")
    X = torch.rand(6400, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    gid = client.compute_graph(ex.model, X, ex.layers, rerotate=True, progress=False)
    remote = client.graph(gid)
    basis = ia.rerotate_degenerate(ex.model, X, ia.compute_basis(ex.model, X, ex.layers, **Q))
    local = ia.build_graph(ex.model, X, basis, **Q)
    assert sum(remote.metadata["rerotate"]["moved"].values()) > 0
    assert remote.metadata["rerotate"] == local.metadata["rerotate"]
    for a, b in zip(ex.layers, ex.layers[1:]):
        np.testing.assert_allclose(remote.edge_matrix(a, b), local.edge_matrix(a, b), rtol=1e-8, atol=1e-12)
    auto = client.modules_from_ablation(gid, progress=False)
    want = ia.modules_from_ablation(ex.model, X, local, **Q)
    assert auto.partition.n_modules == want.partition.n_modules
    assert auto.epsilon == pytest.approx(want.epsilon, rel=1e-6)
