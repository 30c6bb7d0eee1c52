"""A CNN over the wire: declared with conv2d / maxpool2d / flatten layers, computed on the
server equal to the library in process (conv maps as channels at positions, or a layout given
per layer), ablated there in its layout; bad specs and layouts refused with the field named."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.client import Client, RemoteError
from intermod.client.spawn import running_server
from intermod.server.model_spec import build_model, describe_model, load_model
from torch import nn

LAYERS = ["1", "3", "7", "output"]     # conv1's map, pooled map into conv2, the flattened features, output
Q = {"progress": False}


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 5), nn.Tanh(), nn.Linear(5, 3)).double()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    X = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with running_server(tmp_path_factory.mktemp("conv") / "data") as srv, Client(srv.address) as client:
        model = cnn()
        info = client.register_model(model, name="tiny-cnn")
        data = client.upload(X.numpy())
        yield client, info.id, data.id, model, X


def test_spec_round_trip_keeps_the_function():
    model = cnn()
    spec, weights = describe_model(model)
    assert [layer["type"] for layer in spec["layers"]][:7] == [
        "conv2d", "relu", "maxpool2d", "conv2d", "relu", "avgpool2d", "flatten"]
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(load_model(spec, weights)(x), model(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("layout", [None, {"3": "flatten"}])
def test_cnn_over_the_wire_equals_the_library(setup, layout):
    client, model_id, data_id, model, X = setup
    kw = {} if layout is None else {"layout": layout}
    remote = client.graph(client.compute_graph(model_id, data_id, LAYERS, progress=False, **kw))
    basis = ia.compute_basis(model, X, LAYERS, **kw, **Q)
    local = ia.build_graph(model, X, basis, **Q)
    assert remote.metadata["layout"] == local.metadata["layout"]
    assert local.metadata["layout"]["1"] == "channels"
    assert local.metadata["layout"]["3"] == ("flatten" if layout else "channels")
    assert remote.layer_sizes == local.layer_sizes
    for a, b in zip(LAYERS, LAYERS[1:]):
        np.testing.assert_allclose(remote.edge_matrix(a, b), local.edge_matrix(a, b), rtol=1e-9, atol=1e-12)


def test_cnn_ablation_on_the_server_reads_conv_maps_as_channels(setup):
    client, model_id, data_id, model, X = setup
    gid = client.compute_graph(model_id, data_id, LAYERS, progress=False)
    local = client.graph(gid)
    curve = client.ablation_curve(gid, "3", schedule="all", progress=False)
    want = ia.ablation_curve(model, X, local, "3", schedule="all", **Q)
    np.testing.assert_allclose(curve.loss, want.loss, rtol=1e-8, atol=1e-15)
    assert curve.loss[-1] < 1e-20 * float((model(X) ** 2).mean())    # all kept: nothing changes


@pytest.mark.parametrize("layout,needle", [({"3": "pixels"}, "layout must be one of"),
                                           ({"9": "flatten"}, "not node layers")])
def test_bad_layouts_are_named(setup, layout, needle):
    client, model_id, data_id, *_ = setup
    with pytest.raises(RemoteError) as err:
        client.submit(model_id, data_id, LAYERS, layout=layout)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.field == "options.layout"
    assert needle in err.value.message
    assert client.health() == "SERVING"


@pytest.mark.parametrize("layer,field", [
    ({"type": "conv2d", "in_channels": 1, "out_channels": 4}, "spec.layers[0].kernel_size"),
    ({"type": "conv2d", "in_channels": 0, "out_channels": 4, "kernel_size": 3}, "spec.layers[0].in_channels"),
    ({"type": "maxpool2d", "kernel_size": [2, 0]}, "spec.layers[0].kernel_size"),
    ({"type": "conv1d", "in_channels": 2, "out_channels": 4, "kernel_size": 3, "padding": -1},
     "spec.layers[0].padding"),
])
def test_bad_conv_specs_are_named(layer, field):
    from intermod.server.model_spec import SpecError
    with pytest.raises(SpecError) as err:
        build_model({"layers": [layer]})
    assert err.value.field == field
