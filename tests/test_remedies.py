"""Remedies for finite-sample mixing, and the measures the validation report uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis import examples
from intermod.analysis.core.basis import LayerBasis
from intermod.analysis.validation.recovery import SweepRow, cross_share, edge_sparsity, plateau, transformed_sequential
from intermod.analysis.validation.remedies import (
    degenerate_groups,
    energy_dependence,
    noise_epsilon,
    orthogonal_ica,
    rerotate_degenerate,
    rerotate_layer,
)


def _rotation(theta: float) -> np.ndarray:
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


@pytest.fixture
def sources() -> np.ndarray:
    """Two independent unit-variance uniform sources, (20000, 2)."""
    return np.random.default_rng(0).uniform(-math.sqrt(3), math.sqrt(3), size=(20000, 2))


def test_degenerate_groups_are_runs_of_near_equal_values():
    groups = degenerate_groups(np.array([10, 9.5, 5, 1, 0.95, 0.9, 0.1]), rel_gap=0.1)
    assert [g.tolist() for g in groups] == [[0, 1], [3, 4, 5]]
    assert degenerate_groups(np.array([1.0]), 0.1) == []


def test_energy_dependence_separates_independent_from_mixed(sources):
    assert energy_dependence(sources) < 0.03
    assert energy_dependence(sources @ _rotation(math.pi / 5).T) > 0.1


def test_orthogonal_ica_unmixes_a_rotation(sources):
    R = _rotation(math.pi / 5)
    W = orthogonal_ica(sources @ R.T)
    np.testing.assert_allclose(W @ W.T, np.eye(2), atol=1e-10)
    assert np.sort(np.abs(W @ R).max(axis=1)).min() > 0.995   # W R = signed permutation


def test_rerotate_layer_recovers_independent_directions(sources):
    """A degenerate pair (Λ = 1, 0.99) whose basis mixes two independent sources."""
    R = _rotation(math.pi / 5)
    C = R.T.copy()                        # f̂ = Cᵀ f = R f: mixed coordinates
    lb = LayerBasis(name="h", dim=2, C=C, Cinv=np.linalg.inv(C.T), Lambda=np.array([1.0, 0.99]),
                    G=np.eye(2), M=np.eye(2), mean=np.zeros(2),
                    bias_direction=False, include_bias=False, center=False)
    new, moved = rerotate_layer(lb, sources, rel_gap=0.1)
    assert moved == 2
    fhat = new.transform(sources)
    corr = np.abs(np.corrcoef(fhat.T, sources.T)[:2, 2:])
    assert np.sort(corr.max(axis=1)).min() > 0.995
    np.testing.assert_allclose(new.C.T @ new.Cinv, np.eye(2), atol=1e-10)


def test_rerotate_layer_leaves_gaussian_coordinates_alone():
    z = np.random.default_rng(1).standard_normal((20000, 2))
    lb = LayerBasis(name="h", dim=2, C=_rotation(0.4).T, Cinv=_rotation(0.4).T,
                    Lambda=np.array([1.0, 0.99]), G=np.eye(2), M=np.eye(2),
                    mean=np.zeros(2), bias_direction=False, include_bias=False, center=False)
    new, moved = rerotate_layer(lb, z, rel_gap=0.1)
    assert moved == 0 and np.array_equal(new.C, lb.C)


def test_rerotate_degenerate_keeps_planted_product_directions_pure():
    ex = examples.load("planted")
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, progress=False)
    rb = rerotate_degenerate(ex.model, ex.inputs, basis, rel_gap=0.1)
    assert set(rb.options["rerotate"]["moved"]) == set(ex.layers)
    graph = ia.build_graph(ex.model, ex.inputs, rb, progress=False)
    labels = ex.truth(graph)
    assert cross_share(graph, labels, 1e-4) < 1e-6
    for layer in ex.layers:
        np.testing.assert_allclose(rb[layer].C.T @ rb[layer].Cinv, np.eye(rb[layer].k),
                                   atol=1e-8)


def test_noise_epsilon_is_above_every_insignificant_edge():
    ex = examples.load("planted", iid_samples=500)
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    est = noise_epsilon(ex.model, ex.inputs, basis, graph, n_boot=3)
    assert 0 < est.epsilon < 1 and est.n_boot == 3
    for (a, b), dev in zip(zip(ex.layers[:-1], ex.layers[1:]), est.deviation):
        w = graph.edge_matrix(a, b)
        assert dev.shape == w.shape
        insignificant = (w > 0) & (w < est.z * dev)
        assert (w[insignificant] <= math.sqrt(est.epsilon) + 1e-15).all()
    assert 0 < est.n_insignificant <= est.n_edges


def test_edge_sparsity_and_cross_share_by_hand():
    w = np.array([[2.0, 0.001], [0.0, 0.5]])         # (k_dst, k_src)
    g = ia.InteractionGraph.from_arrays(["a", "b"], [np.ones(2), np.ones(2)], [w])
    eps = 1e-4                                        # √ε = 0.01: two edges above
    sp = edge_sparsity(g, eps)
    what = np.log(np.array([2.0, 0.5]) / 0.01)
    assert sp["n_pairs"] == 4 and sp["n_above"] == 2
    assert sp["top1"] == pytest.approx(what[0] / what.sum())
    assert sp["top10"] == pytest.approx(what[0] / what.sum())
    labels = np.array([0, 1, 0, 1])                   # a0, a1, b0, b1
    assert cross_share(g, labels, eps) == 0.0
    assert cross_share(g, np.array([0, 1, 1, 1]), eps) == pytest.approx(what[0] / what.sum())


def test_plateau_picks_the_longest_nontrivial_run():
    counts = [1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 12, 12, 12, 12]
    rows = [SweepRow(10.0 ** (i / 4), c, 30, 0.0) for i, c in enumerate(counts)]
    chosen = plateau(rows)
    assert chosen.n_modules == 3 and chosen.resolution == rows[7].resolution
    assert plateau(rows[:4]) is None


def test_transformed_sequential_keeps_the_function():
    ex = examples.load("two_tasks")
    R = torch.eye(32, dtype=torch.float64) + 0.1 * torch.randn(
        32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model, names = transformed_sequential(ex.model, "2", R)
    assert [names[layer] for layer in ex.layers] == ["0", "3", "5", "output"]
    with torch.no_grad():
        torch.testing.assert_close(model(ex.inputs), ex.model(ex.inputs), rtol=1e-10, atol=1e-10)


def test_rerotation_reads_conv_maps_as_channels_at_positions():
    """A conv layer's directions are over channels: the re-rotation works on (image, position)
    samples of C features, and the rotated basis stays a basis (Cᵀ C⁻¹ = I, Λ's sum kept)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 25, 3)).double()
    X = torch.rand(200, 1, 5, 5, dtype=torch.float64)
    basis = ia.compute_basis(model, X, ["1", "2", "output"], progress=False)
    assert basis["2"].layout == "channels"
    rb = rerotate_degenerate(model, X, basis, rel_gap=0.9, min_gain=-1.0)   # every group, no gate
    assert rb.options["rerotate"]["moved"]["2"] >= 2
    for layer in ("1", "2"):
        np.testing.assert_allclose(rb[layer].C.T @ rb[layer].Cinv, np.eye(rb[layer].k), atol=1e-8)
        np.testing.assert_allclose(rb[layer].Lambda.sum(), basis[layer].Lambda.sum(), rtol=1e-10)
