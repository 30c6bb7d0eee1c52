"""Inputs in every accepted form give the same basis; bad input gets a clear error."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()


def test_dataloader_and_tensor_and_batch_size_agree(model):
    X = torch.randn(100, 4, dtype=torch.float64)
    y = torch.zeros(100)
    ref = ia.compute_basis(model, X, ["0", "2", "output"], batch_size=100, progress=False)
    loader = DataLoader(TensorDataset(X, y), batch_size=13)
    for other in (ia.compute_basis(model, loader, ["0", "2", "output"], progress=False),
                  ia.compute_basis(model, X, ["0", "2", "output"], batch_size=7, progress=False)):
        for name in ref:
            np.testing.assert_allclose(other[name].G, ref[name].G, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(other[name].Lambda, ref[name].Lambda, rtol=1e-9)
    g1 = ia.build_graph(model, X, ref, progress=False)
    g2 = ia.build_graph(model, loader, ref, progress=False)
    for a, b in (("0", "2"), ("2", "output")):   # dense: batching changes the summation order
        np.testing.assert_allclose(g2.edge_matrix(a, b), g1.edge_matrix(a, b), rtol=1e-10,
                                   atol=1e-14 * g1.w.max())


def test_numpy_arrays_are_accepted_like_tensors(model):
    """An array (C or Fortran order) and a list of array batches give the tensor's basis and graph."""
    X = torch.randn(60, 4, dtype=torch.float64)
    layers = ["0", "2", "output"]
    ref = ia.compute_basis(model, X, layers, batch_size=16, progress=False)
    ref_graph = ia.build_graph(model, X, ref, batch_size=16, progress=False)
    arr = X.numpy()
    batches = [arr[i:i + 16] for i in range(0, 60, 16)]
    for inputs in (arr, np.asfortranarray(arr), batches):   # also a non-C-contiguous array
        basis = ia.compute_basis(model, inputs, layers, batch_size=16, progress=False)
        graph = ia.build_graph(model, inputs, basis, batch_size=16, progress=False)
        for name in layers:
            np.testing.assert_allclose(basis[name].Lambda, ref[name].Lambda, rtol=1e-10)
        np.testing.assert_allclose(graph.edge_matrix("0", "2"), ref_graph.edge_matrix("0", "2"),
                                   rtol=1e-9, atol=1e-13)
    with pytest.raises(TypeError, match="numeric"):
        ia.compute_basis(model, np.array([["a"] * 4] * 3), layers, progress=False)


def test_unknown_layer_lists_the_valid_names(model):
    with pytest.raises(ValueError, match=r"unknown layer '3'.*valid layers: '0', '1', '2' and 'output'"):
        ia.compute_basis(model, torch.randn(5, 4, dtype=torch.float64), ["3"], progress=False)


def test_layers_are_sorted_into_forward_order(model):
    X = torch.randn(20, 4, dtype=torch.float64)
    basis = ia.compute_basis(model, X, ["output", "2", "0"], progress=False)
    assert basis.layers == ["0", "2", "output"]


def test_float32_model_and_inputs_are_computed_in_float64(model):
    X = torch.randn(50, 4)
    m32 = model.float()
    basis = ia.compute_basis(m32, X, ["0", "2", "output"], progress=False)
    assert basis["2"].C.dtype == np.float64
    assert next(m32.parameters()).dtype == torch.float32   # the user's model is not modified


def test_callback_reports_progress_and_can_cancel(model):
    X = torch.randn(50, 4, dtype=torch.float64)
    seen = []
    ia.compute_basis(model, X, ["0", "output"], batch_size=10, progress=False,
                     callback=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen[-1][1:] == (5, 5)

    class Cancelled(Exception):
        pass

    def cancel(stage, done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        ia.compute_basis(model, X, ["0", "output"], batch_size=10, progress=False, callback=cancel)


@pytest.mark.parametrize("layers,message", [
    (["0", "3x"], "unknown layer '3x'"),
    (["0", "0"], "duplicates"),
    ([], "non-empty"),
])
def test_bad_layers(model, layers, message):
    with pytest.raises(ValueError, match=message):
        ia.compute_basis(model, torch.randn(8, 4, dtype=torch.float64), layers, progress=False)


def test_nan_inputs_are_named(model):
    X = torch.randn(8, 4, dtype=torch.float64)
    X[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ia.compute_basis(model, X, ["0", "output"], progress=False)


def test_wrong_input_width_is_an_error(model):
    with pytest.raises(RuntimeError):
        ia.compute_basis(model, torch.randn(8, 3, dtype=torch.float64), ["0", "output"], progress=False)


def test_one_shot_iterators_are_refused(model):
    gen = (torch.randn(4, 4, dtype=torch.float64) for _ in range(3))
    with pytest.raises(TypeError, match="one-shot"):
        ia.compute_basis(model, gen, ["0", "output"], progress=False)


def test_bad_options(model):
    X = torch.randn(8, 4, dtype=torch.float64)
    for kw, msg in [({"jacobian_target": "x"}, "jacobian_target"), ({"kind": "x"}, "kind"),
                    ({"scaling": "x"}, "scaling"), ({"n_probes": 0}, "n_probes")]:
        with pytest.raises(ValueError, match=msg):
            ia.compute_basis(model, X, ["0", "output"], progress=False, **kw)
    basis = ia.compute_basis(model, X, ["0", "output"], progress=False)
    with pytest.raises(ValueError, match="edge_method"):
        ia.build_graph(model, X, basis, edge_method="x", progress=False)
    with pytest.raises(ValueError, match="features"):
        other = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2)).double()
        b2 = ia.compute_basis(other, X, ["2", "output"], progress=False)
        ia.build_graph(model, X, b2, progress=False)


def test_inverse_scaling_gives_small_important_directions(model):
    X = torch.randn(100, 4, dtype=torch.float64)
    b = ia.compute_basis(model, X, ["0", "2", "output"], progress=False)
    bi = ia.compute_basis(model, X, ["0", "2", "output"], scaling="inverse", progress=False)
    np.testing.assert_allclose(bi["2"].Lambda, b["2"].Lambda)
    # f̂ = Λ^{-1/2} Vᵀ … instead of Λ^{1/2} Vᵀ …: column j of C shrinks by 1/Λ_j
    np.testing.assert_allclose(bi["2"].C, b["2"].C / b["2"].Lambda, rtol=1e-10, atol=1e-14)


def test_in_place_activations_do_not_corrupt_the_recorded_activations():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    inplace = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).double()
    inplace.load_state_dict(plain.state_dict())
    X = torch.randn(60, 4, dtype=torch.float64)
    for target in ("output", "next_layer"):
        a = ia.compute_basis(plain, X, ["1", "2", "output"], jacobian_target=target, progress=False)
        b = ia.compute_basis(inplace, X, ["1", "2", "output"], jacobian_target=target, progress=False)
        for name in a:
            np.testing.assert_allclose(b[name].G, a[name].G, rtol=1e-12)
            np.testing.assert_allclose(b[name].Lambda, a[name].Lambda, rtol=1e-10)
        ga, gb = (ia.build_graph(m, X, basis, progress=False) for m, basis in ((plain, a), (inplace, b)))
        np.testing.assert_allclose(gb.w, ga.w, rtol=1e-10)


def test_diagnose_of_the_output_alone_is_refused_clearly(model):
    with pytest.raises(ValueError, match="node layer inside the model"):
        ia.diagnose(model, torch.randn(8, 4, dtype=torch.float64), ["output"], 1e-3, progress=False)


def test_inputs_that_require_grad_are_read_as_data():
    """Inputs still attached to an autograd graph (e.g. the output of an embedding) give the
    same basis and edges as their detached values; the user's graph gets no gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    leaf = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    X = 2 * leaf
    layers = ["0", "2", "output"]
    a = ia.compute_basis(model, X, layers, progress=False)
    b = ia.compute_basis(model, X.detach(), layers, progress=False)
    np.testing.assert_allclose(a["0"].C, b["0"].C, rtol=1e-12, atol=1e-14)
    ga, gb = ia.build_graph(model, X, a, progress=False), ia.build_graph(model, X.detach(), b, progress=False)
    np.testing.assert_allclose(ga.w, gb.w, rtol=1e-12)
    assert leaf.grad is None
