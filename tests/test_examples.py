"""Built-in examples: they load, have the right shapes, train to target deterministically,
and their ground-truth labels agree with how they were constructed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis import examples
from intermod.analysis.core.activations import layer_activations
from intermod.analysis.examples import digits, two_tasks
from intermod.analysis.examples.truth import ProductTruth, group_shares

MLP_EXAMPLES = ["planted", "two_tasks", "deep_linear", "digits"]  # transformers: test_modadd, test_hf; CNN: test_layout


@pytest.fixture(scope="module", params=MLP_EXAMPLES)
def example(request) -> examples.Example:
    return examples.load(request.param)


def test_registry_lists_the_examples():
    assert set(examples.names()) == {*MLP_EXAMPLES, "digits_cnn", "modadd", "minilm"}
    with pytest.raises(ValueError, match="unknown example"):
        examples.load("no_such_example")


def test_example_loads_with_consistent_shapes(example):
    acts = layer_activations(example.model, example.inputs[:64], example.layers)
    assert list(acts) == list(example.layers)
    assert example.layers[-1] == "output"
    assert example.inputs.ndim == 2
    for layer, f in acts.items():
        assert f.shape[0] == min(64, example.inputs.shape[0]) and np.isfinite(f).all(), layer
    assert example.description


def test_truth_is_aligned_with_graph_nodes(example):
    basis = ia.compute_basis(example.model, example.inputs, example.layers, kind="neuron",
                             progress=False)
    graph = ia.build_graph(example.model, example.inputs, basis, progress=False)
    if example.truth is None:
        return
    labels = example.truth(graph)
    assert labels.shape == (graph.n_nodes,) and labels.dtype == np.int64
    assert all(labels[i] == -1 for i, node in enumerate(graph.nodes) if node.is_bias)
    assert len(set(labels[labels >= 0].tolist())) >= 2


def test_two_tasks_truth_matches_the_construction():
    """Neuron basis: inputs 0–2 and outputs 0–1 belong to task A, the rest to task B."""
    ex = examples.load("two_tasks")
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, kind="neuron", progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    labels = ex.truth(graph)
    for layer, expected in (("0", [0, 0, 0, 1, 1, 1]), ("output", [0, 0, 1, 1])):
        got = [labels[i] for i, n in enumerate(graph.nodes) if n.layer == layer and not n.is_bias]
        assert got == expected, layer


def test_two_tasks_outputs_depend_only_on_their_own_task():
    """Exact independence of the targets on product data: S_B(y_A) = S_A(y_B) = 0."""
    x = two_tasks.product_inputs(12)
    S = group_shares(two_tasks.task_targets(x).numpy(), (12, 12))
    assert np.allclose(S[1, :2], 0, atol=1e-12) and np.allclose(S[0, 2:], 0, atol=1e-12)
    assert (S[0, :2] > 0.01).all() and (S[1, 2:] > 0.01).all()


def test_two_tasks_reaches_its_training_target():
    ex = examples.load("two_tasks")
    assert min(ex.extra["test_r2"]) >= two_tasks.TARGET_R2
    assert ex.inputs.shape == (40 * 40, 6)
    assert [m.out_features for m in ex.model if isinstance(m, torch.nn.Linear)] == [32, 32, 4]


def test_two_tasks_training_is_deterministic():
    config = {**two_tasks.CONFIG, "steps": 300}
    a, info_a = two_tasks.train(config)
    b, info_b = two_tasks.train(config)
    assert info_a == info_b
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_tasks_training_from_scratch_reaches_target():
    """Retraining from scratch (the shipped configuration) reaches the R² target on every
    output; its wall time is a benchmark figure, not asserted here."""
    _, info = two_tasks.train(two_tasks.CONFIG)
    assert min(info["test_r2"]) >= two_tasks.TARGET_R2
    assert examples.load("two_tasks").extra["weights"] == "shipped"


def test_cache_is_used_for_non_default_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERMOD_CACHE", str(tmp_path))
    first = two_tasks.build(n_grid=4, steps=50)
    assert first.extra["weights"] == "trained"
    assert len(list(tmp_path.glob("two_tasks-*.safetensors"))) == 1
    second = two_tasks.build(n_grid=4, steps=50)
    assert second.extra["weights"] == "cache"
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])


def test_digits_reaches_its_training_target():
    ex = examples.load("digits")
    assert ex.extra["test_accuracy"] >= digits.TARGET_ACCURACY
    assert ex.inputs.shape[1] == 64 and ex.inputs.min() >= 0 and ex.inputs.max() <= 1
    assert ex.truth is None


def test_planted_truth_matches_the_construction():
    """Neuron basis: input and output coordinates of sub-network m belong to module m; and
    the example's truth agrees with the independent product-grid variance split."""
    ex = examples.load("planted")
    d_in, _, _, d_out = ex.extra["widths"]
    K = ex.extra["n_modules"]
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, kind="neuron", progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    labels = ex.truth(graph)
    for layer, d in (("0", d_in), ("output", d_out)):
        got = [labels[i] for i, n in enumerate(graph.nodes) if n.layer == layer and not n.is_bias]
        assert got == [m for m in range(K) for _ in range(d)], layer
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    n_per = round(ex.inputs.shape[0] ** (1 / K))
    grid_truth = ProductTruth(ex.model, ex.inputs, ex.layers, (n_per,) * K)
    np.testing.assert_array_equal(grid_truth(graph), ex.truth(graph))
    assert grid_truth.shares(graph).max(axis=1)[ex.truth(graph) >= 0].min() > 1 - 1e-8


def test_deep_linear_truth_is_one_chain_per_direction():
    ex = examples.load("deep_linear")
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, jacobian_target="next_layer",
                             center=False, include_bias=False, progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    labels = ex.truth(graph)
    assert labels.tolist() == [n.index for n in graph.nodes]
    assert {graph.layer_sizes[layer] for layer in ex.layers} == {ex.extra["rank"]}


@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_interaction_basis_of_every_example_equals_the_batched_vjps(example, target):
    """The default interaction basis of every built-in MLP example (closed forms and pulled-back
    cotangents where they apply) equals the one from batched VJPs everywhere (structured=False):
    Λ to 1e-9 relative, and Cinvᵀ C = I. deep_linear has no activation at all, so its
    output-target cotangents stay one matrix for every sample (a path `make validate` takes)."""
    opts = dict(jacobian_target=target, progress=False)
    fast = ia.compute_basis(example.model, example.inputs, example.layers, **opts)
    plain = ia.compute_basis(example.model, example.inputs, example.layers, structured=False, **opts)
    for n in example.layers:
        a, b = fast[n], plain[n]
        assert a.Lambda.shape == b.Lambda.shape, n
        np.testing.assert_allclose(a.Lambda, b.Lambda, rtol=1e-9, atol=1e-12 * b.Lambda.max(), err_msg=n)
        np.testing.assert_allclose(a.Cinv.T @ a.C, np.eye(a.C.shape[1]), atol=1e-9, err_msg=n)
