"""The checks of docs/design.md §1 that must hold: App. A, §6.2 invariance, exact degeneracy,
planted modules, the probe estimator."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.examples import deep_linear, planted
from torch import Tensor, nn

pytestmark = pytest.mark.usefixtures("float64_default")


# -- Appendix A: deep linear network -----------------------------------------------------------
def test_deep_linear_network_appendix_a():
    ex = deep_linear.build(width=8, depth=3, rank=5)
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, jacobian_target="next_layer",
                             center=False, include_bias=False, progress=False)
    W = [lin.weight.detach() for lin in ex.model]
    rank = int(torch.linalg.matrix_rank(W[2] @ W[1] @ W[0]))
    assert rank == 5
    lam0 = basis["output"].Lambda
    for name in ex.layers:
        assert basis[name].k == rank
        np.testing.assert_allclose(basis[name].Lambda, lam0, rtol=1e-8)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    for a, b in zip(ex.layers, ex.layers[1:]):
        E = graph.edge_matrix(a, b) ** 2
        off = E - np.diag(np.diag(E))
        assert off.max() <= 1e-10 * E.max()
        np.testing.assert_allclose(np.diag(E), basis[a].Lambda, rtol=1e-8)
    part = ia.find_modules(graph, epsilon=1e-8, resolution=1e-3)
    assert part.n_modules == rank
    assert ia.compare_partitions(part.membership, ex.truth(graph))["ari"] == pytest.approx(1.0)


# -- §6.2 invariance ---------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _with_R(model, R):
    """The same function with f at node layer '2' replaced by R f and the next weight by W R⁻¹."""
    mix = nn.Linear(6, 6, bias=False).double()
    nxt = nn.Linear(6, 4).double()
    with torch.no_grad():
        mix.weight.copy_(R)
        nxt.weight.copy_(model[2].weight @ torch.linalg.inv(R))
        nxt.bias.copy_(model[2].bias)
    return nn.Sequential(model[0], model[1], mix, nxt, model[3], model[4])


def _acts(model, X, name):
    out = {}
    h = dict(model.named_modules())[name].register_forward_pre_hook(lambda m, a: out.setdefault("f", a[0]))
    with torch.no_grad():
        model(X)
    h.remove()
    return out["f"]


@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center", [True, False])
def test_invariance_under_invertible_reparametrisation(target, center):
    model = _mlp()
    X = torch.randn(200, 5)
    R = torch.randn(6, 6) + 3 * torch.eye(6)
    model_R = _with_R(model, R)
    np.testing.assert_allclose(model_R(X).detach(), model(X).detach(), rtol=1e-10, atol=1e-13)
    layers, layers_R = ["0", "2", "4", "output"], ["0", "3", "5", "output"]
    kw = dict(jacobian_target=target, center=center, progress=False, batch_size=64)
    b1 = ia.compute_basis(model, X, layers, **kw)
    b2 = ia.compute_basis(model_R, X, layers_R, **kw)
    for n1, n2 in zip(layers, layers_R):
        np.testing.assert_allclose(b2[n2].Lambda, b1[n1].Lambda, rtol=1e-8)
    f1 = b1["2"].transform(_acts(model, X, "2"))
    f2 = b2["3"].transform(_acts(model_R, X, "3"))
    np.testing.assert_allclose(np.abs(f2), np.abs(f1), rtol=1e-8, atol=1e-10 * np.abs(f1).max())
    g1 = ia.build_graph(model, X, b1, progress=False)
    g2 = ia.build_graph(model_R, X, b2, progress=False)
    for (a, b), (c, d) in zip(zip(layers, layers[1:]), zip(layers_R, layers_R[1:])):
        e1, e2 = g1.edge_matrix(a, b), g2.edge_matrix(c, d)
        assert np.abs(e2 - e1).max() <= 1e-8 * e1.max()


# -- exact degeneracy --------------------------------------------------------------------------
def test_linearly_dependent_features_shrink_the_basis_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    X = torch.randn(300, 6)
    X[:, 5] = X[:, 0] + X[:, 1]          # linearly dependent
    X[:, 4] = 2 * X[:, 2]
    basis = ia.compute_basis(model, X, ["0", "2", "output"], progress=False)
    assert basis["0"].k == 4 + 1         # 4 independent input directions + the constant
    assert basis["0"].D.shape[0] == 4


@pytest.mark.parametrize("center,include_bias", [(True, True), (False, True), (True, False), (False, False)])
def test_cholesky_whitening_equals_the_eigendecomposition(center, include_bias, monkeypatch):
    """A well-conditioned G is whitened by its Cholesky factor; forcing U D^{1/2} from eigh
    instead gives the same C, C⁻¹ and Λ (any square root of G gives the same basis), and D is
    G's spectrum either way."""
    from intermod.analysis.core import rotation

    model = _mlp()
    X = torch.randn(400, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    layers = ["0", "2", "4", "output"]
    opts = dict(center=center, include_bias=include_bias, jacobian_target="next_layer", progress=False)
    calls = []
    real = rotation._cholesky_if_well_conditioned
    monkeypatch.setattr(rotation, "_cholesky_if_well_conditioned", lambda *a: calls.append(1) or real(*a))
    chol = ia.compute_basis(model, X, layers, **opts)
    assert calls
    # a step generator that asks for nothing and returns None: "not well conditioned"
    monkeypatch.setattr(rotation, "_cholesky_if_well_conditioned", lambda *a: iter(()))
    eig = ia.compute_basis(model, X, layers, **opts)
    for n in layers:
        a, b = chol[n], eig[n]
        assert a.k == b.k and a.bias_direction == b.bias_direction
        np.testing.assert_allclose(a.Lambda, b.Lambda, rtol=1e-10, atol=1e-14 * b.Lambda.max())
        np.testing.assert_allclose(a.C, b.C, rtol=1e-7, atol=1e-9 * np.abs(b.C).max())
        np.testing.assert_allclose(a.Cinv, b.Cinv, rtol=1e-7, atol=1e-9 * np.abs(b.Cinv).max())
        block = a.G[:-1, :-1] if center and include_bias else a.G
        np.testing.assert_allclose(a.D, np.sort(np.linalg.eigvalsh(block))[::-1], rtol=1e-10,
                                   atol=1e-14 * a.D.max())


def test_duplicated_neurons_shrink_the_basis_exactly():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6)).double()
    dup = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 6)).double()
    with torch.no_grad():   # neurons 5, 6 copy neurons 0, 1; their outgoing weight is split
        dup[0].weight.copy_(torch.cat([base[0].weight, base[0].weight[:2]]))
        dup[0].bias.copy_(torch.cat([base[0].bias, base[0].bias[:2]]))
        W = base[2].weight
        dup[2].weight.copy_(torch.cat([W[:, :2] * 0.3, W[:, 2:], W[:, :2] * 0.7], 1))
        dup[2].bias.copy_(base[2].bias)
    X = torch.randn(300, 4)
    np.testing.assert_allclose(dup(X).detach(), base(X).detach(), rtol=1e-12, atol=1e-14)
    b0 = ia.compute_basis(base, X, ["0", "2", "output"], progress=False)
    b1 = ia.compute_basis(dup, X, ["0", "2", "output"], progress=False)
    assert b0["2"].k == 6 and b1["2"].k == 6          # 7 neurons, 2 of them copies
    np.testing.assert_allclose(b1["2"].Lambda, b0["2"].Lambda, rtol=1e-8)


def test_dead_end_direction_is_dropped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 8)).double()
    with torch.no_grad():
        model[2].weight[:, 3] = 0.0       # neuron 3 varies but nothing downstream reads it
    X = torch.randn(300, 4)
    basis = ia.compute_basis(model, X, ["0", "2", "output"], progress=False)
    assert basis["2"].D.shape[0] == 6     # it has variance ...
    assert basis["2"].k == 5 + 1          # ... but no Jacobian: 5 data directions + constant
    np.testing.assert_allclose(basis["2"].C[3, :], 0.0, atol=1e-10)


def _constant_head(dtype: torch.dtype) -> tuple[nn.Module, Tensor]:
    """An MLP whose output is constant up to rounding: its last weights are 2ε (ε: the dtype's
    unit roundoff), so the outputs move by a few ulps of their bias at most."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    with torch.no_grad():
        model[2].weight.mul_(2 * torch.finfo(dtype).eps)
        model[2].bias.copy_(torch.tensor([0.35, -1.3, 2.2]))
    return model, torch.randn(300, 4, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_size", [512, 7])
def test_a_layer_constant_up_to_rounding_keeps_only_the_slot(dtype, batch_size):
    """Centring removes the mean, so a constant layer's covariance is its rounding noise alone;
    its directions fall below the absolute floor (4 ulps of the largest mean, squared) at any
    batch size, and only the constant direction is left."""
    model, X = _constant_head(dtype)
    with torch.no_grad():
        y = model(X)
    assert (y.max(0).values > y.min(0).values).any()        # the outputs do vary, by rounding
    basis = ia.compute_basis(model, X, ["0", "2", "output"], dtype=dtype, batch_size=batch_size,
                             progress=False)
    out = basis["output"]
    assert out.k == 1 and out.bias_direction and out.D.shape == (0,)
    assert basis["0"].k == 5                                 # the input's 4 directions are real


def test_the_rounding_floor_keeps_small_real_variance():
    """δ = (4·ε·max|μ|)²: a known value, and a variance 1e-12 of a mean 1e4 (relative 1e-10,
    far above the float64 ulps) is kept, while the relative cut alone is what limits it."""
    from intermod.analysis.core.rotation import rounding_floor

    assert rounding_floor(torch.tensor([0.5, -2.0]), 1e-16) == pytest.approx((4 * 1e-16 * 2.0) ** 2, rel=1e-12)
    assert rounding_floor(torch.tensor([0.5, -2.0]), 0.0) == 0.0
    X = 1e4 + 1e-6 * torch.randn(500, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    basis = ia.compute_basis(model, X, ["0", "output"], progress=False)
    assert basis["0"].D.shape == (4,)
    np.testing.assert_allclose(basis["0"].D, np.sort(np.linalg.eigvalsh(np.cov(X.T.numpy(), bias=True)))[::-1],
                               rtol=1e-6)


# -- planted modules ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_example():
    return planted.build(n_modules=2, widths=(5, 8, 8, 3), n_per_module=24, seed=0)


@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_planted_modules_are_recovered_in_the_interaction_basis(planted_example, target):
    ex = planted_example
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, jacobian_target=target, progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    truth = ex.truth(graph)
    assert (truth[~graph.is_bias] >= 0).all()
    assert ia.partition_cost(graph, truth, 1e-4).cost == pytest.approx(0.0, abs=1e-9)
    part = ia.find_modules(graph, epsilon=1e-4)
    assert part.n_modules == 2
    assert ia.compare_partitions(part.membership, truth)["ari"] == pytest.approx(1.0)


@pytest.mark.parametrize("kind,center", [("neuron", True), ("pca", True), ("interaction", False)])
def test_planted_modules_are_not_recovered_without_the_invariant_centred_basis(planted_example, kind, center):
    """The contrast: neuron basis, activation PCA and the uncentred interaction basis mix the
    modules, so the true partition cuts many interactions and the search does not find it."""
    ex = planted_example
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, kind=kind, center=center, progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    truth = ex.truth(graph)
    assert ia.partition_cost(graph, truth, 1e-4).cost > 50.0
    part = ia.find_modules(graph, epsilon=1e-4, n_modules=2)
    assert ia.compare_partitions(part.membership, truth)["ari"] < 0.5


# -- probes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_probe_estimate_of_M_converges_to_the_exact_M(target):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)).double()
    X = torch.randn(50, 4)
    kw = dict(jacobian_target=target, progress=False)
    exact = ia.compute_basis(model, X, ["0", "output"], **kw)["0"].M
    estimates = [ia.compute_basis(model, X, ["0", "output"], n_probes=2, seed=s, **kw)["0"].M
                 for s in range(300)]
    one = np.abs(estimates[0] - exact).max() / np.abs(exact).max()
    mean = np.abs(np.mean(estimates, 0) - exact).max() / np.abs(exact).max()
    assert one > 0.05          # a single 2-probe estimate is noisy ...
    assert mean < 0.05         # ... the mean of 300 converges (≈ 1/√300 of the single error)
    assert mean < one / 5


def test_gram_factor_for_definite_and_singular_grams():
    """Pᵀ M P = Fᵀ F from the Cholesky factor (M definite) or the eigendecomposition (singular)."""
    from intermod.analysis.core.rotation import gram_factor

    g = torch.Generator().manual_seed(5)
    A = torch.randn(7, 5, generator=g, dtype=torch.float64)
    P = torch.randn(5, 9, generator=g, dtype=torch.float64)
    for M in (A.T @ A, A[:3].T @ A[:3]):                    # rank 5 (definite) and rank 3
        F = gram_factor(M, P)
        assert F.shape[1] == 9 and F.shape[0] <= 5
        torch.testing.assert_close(F.T @ F, P.T @ M @ P, rtol=1e-10, atol=1e-12 * float(M.abs().max()))


@pytest.mark.parametrize("shape", [(40, 100), (40, 59), (40, 61), (60, 40), (30, 30)])
def test_svd_eig_is_the_eigendecomposition_of_ftf(shape):
    """_svd_eig(F) = the eigenpairs of FᵀF with λ > 0, on both sides of the QR switch (k ≥ 1.5 r):
    λ against numpy's eigvalsh to 1e-12 · λ_max, orthonormal vectors, residual FᵀF V − V λ ≈ 0,
    also for a rank-deficient F (rank 25) whose spectrum spans 1e8."""
    from intermod.analysis.core.lapack import run_one
    from intermod.analysis.core.rotation import WIDE_SVD, _svd_eig_steps

    r, k = shape
    assert (k >= WIDE_SVD * r) == (shape in [(40, 100), (40, 61)])
    g = torch.Generator().manual_seed(r * k)
    scale = torch.logspace(0, -4, min(r, k), dtype=torch.float64)
    for rank in (min(r, k), 25):
        A = torch.randn(r, rank, generator=g, dtype=torch.float64) * scale[:rank]
        F = A @ torch.randn(rank, k, generator=g, dtype=torch.float64)
        lam, V = run_one(_svd_eig_steps(F))
        assert lam.shape == (min(r, k),) and V.shape == (k, min(r, k))
        M = (F.T @ F).numpy()
        ref = np.sort(np.linalg.eigvalsh(M))[::-1][:min(r, k)]
        top = float(ref[0])
        assert np.all(np.diff(lam.numpy()) <= 1e-12 * top)                  # descending
        assert np.abs(lam.numpy() - ref).max() <= 1e-12 * top
        keep = lam > 1e-10 * top
        Vk = V[:, keep].numpy()
        assert np.abs(Vk.T @ Vk - np.eye(int(keep.sum()))).max() <= 1e-12
        assert np.abs(M @ Vk - Vk * lam[keep].numpy()).max() <= 1e-12 * top
