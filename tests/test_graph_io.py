"""Graph exports round-trip; plots are written."""

import json

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from torch import nn


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    X = torch.randn(64, 5, dtype=torch.float64)
    basis = ia.compute_basis(model, X, ["0", "2", "output"], progress=False)
    return ia.build_graph(model, X, basis, progress=False)


def test_nodes_and_edges_are_consistent(graph):
    assert [n.layer for n in graph.nodes][:graph.layer_sizes["0"]] == ["0"] * graph.layer_sizes["0"]
    assert graph.nodes[0].is_bias and graph.nodes[0].index == 0
    E = graph.edge_matrix("0", "2")
    assert E.shape == (graph.layer_sizes["2"], graph.layer_sizes["0"])
    sel = (graph.src < graph.layer_sizes["0"])
    rebuilt = np.zeros_like(E)
    rebuilt[graph.dst[sel] - graph.node_offset["2"], graph.src[sel]] = graph.w[sel]
    np.testing.assert_array_equal(rebuilt, E)
    with pytest.raises(ValueError, match="adjacent"):
        graph.edge_matrix("0", "output")
    with pytest.raises(KeyError, match="unknown layer"):
        graph.edge_matrix("0", "nope")


def test_json_round_trip(graph, tmp_path):
    graph.to_json(tmp_path / "g.json")
    back = ia.InteractionGraph.from_json(tmp_path / "g.json")
    assert back.nodes == graph.nodes
    for a, b in zip(graph.layers, graph.layers[1:]):
        np.testing.assert_array_equal(back.edge_matrix(a, b), graph.edge_matrix(a, b))
    assert json.loads((tmp_path / "g.json").read_text())["format"] == "intermod.graph/1"
    np.testing.assert_array_equal(back.bases["2"][0], graph.bases["2"][0])   # C travels too


def test_safetensors_round_trip(graph, tmp_path):
    graph.save_safetensors(tmp_path / "g.safetensors")
    back = ia.InteractionGraph.load_safetensors(tmp_path / "g.safetensors")
    assert back.nodes == graph.nodes
    np.testing.assert_array_equal(back.bases["2"][0], graph.bases["2"][0])
    np.testing.assert_array_equal(back.edge_matrix("2", "output"), graph.edge_matrix("2", "output"))


def test_graphml_export(graph, tmp_path):
    import igraph as ig

    graph.to_graphml(tmp_path / "g.graphml")
    g = ig.Graph.Read_GraphML(str(tmp_path / "g.graphml"))
    assert g.vcount() == graph.n_nodes and g.ecount() == graph.n_edges
    np.testing.assert_allclose(sorted(g.es["w"]), sorted(graph.w))


def test_from_dict_rejects_foreign_json():
    with pytest.raises(ValueError, match="not an intermod graph"):
        ia.InteractionGraph.from_dict({"format": "something"})


def test_from_arrays_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected"):
        ia.InteractionGraph.from_arrays(["a", "b"], [np.ones(2), np.ones(3)], [np.ones((2, 2))])
    with pytest.raises(ValueError, match="non-negative"):
        ia.InteractionGraph.from_arrays(["a", "b"], [np.ones(2), np.ones(2)], [-np.ones((2, 2))])


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_plot_graph_writes_files(graph, tmp_path, suffix):
    part = ia.find_modules(graph, 1e-4)
    path = ia.plot_graph(graph, part, tmp_path / f"g.{suffix}", top_n=4)
    data = open(path, "rb").read()
    assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data[:2000]


def test_edges_below_the_relative_threshold_are_dropped_in_list_and_matrix():
    """The edge list must not depend on round-off: w ≤ EDGE_RTOL · max(w) is 0, above it is kept."""
    w_max = 3.0
    tiny, kept = 0.5 * ia.EDGE_RTOL * w_max, 2.0 * ia.EDGE_RTOL * w_max
    mats = [np.array([[w_max, tiny], [0.0, kept]]), np.array([[tiny], [1.0]]).T]
    g = ia.InteractionGraph.from_arrays(["a", "b", "c"], [np.ones(2), np.ones(2), np.ones(1)], mats)
    assert g.n_edges == 3                                   # w_max, kept, 1.0
    assert sorted(g.w.tolist()) == [kept, 1.0, w_max]
    np.testing.assert_array_equal(g.edge_matrix("a", "b"), [[w_max, 0.0], [0.0, kept]])
    np.testing.assert_array_equal(g.edge_matrix("b", "c"), [[0.0, 1.0]])
    exact = ia.InteractionGraph.from_arrays(["a", "b", "c"], [np.ones(2), np.ones(2), np.ones(1)], mats,
                                            edge_rtol=0.0)
    assert exact.n_edges == 5
    with pytest.raises(ValueError, match="finite"):
        ia.InteractionGraph.from_arrays(["a", "b"], [np.ones(1), np.ones(1)], [np.array([[np.nan]])])
