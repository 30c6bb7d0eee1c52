"""Brute force: G, M, C, Λ and E of the library equal a plain per-sample loop (float64)."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from reference import align_signs, aug_section, gauss_legendre, rotation
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")


def tiny_mlp():
    torch.manual_seed(1)
    # "0": Linear 6->4, "2": Linear 4->5, "4": Linear 5->2: all Linear heads (heads.head_pays)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def sections(model):
    l0, l2, l4 = model[0], model[2], model[4]
    return [lambda f, s: torch.relu(l0.weight @ f + l0.bias * s),
            lambda f, s: torch.tanh(l2.weight @ f + l2.bias * s),
            lambda f, s: l4.weight @ f + l4.bias * s]


def reference(model, X, center, include_bias, target, basis=None, n_alpha=None):
    """Per-sample loop. Returns G, M, rotations per layer and (given a basis) E per section."""
    secs = [aug_section(s, include_bias) for s in sections(model)]
    aug = lambda f: torch.cat([f, torch.ones(1)]) if include_bias else f
    acts = []  # per sample: [f0, f1, f2, f3]
    for x in X:
        fs = [x]
        for sec in secs:
            fs.append(sec(aug(fs[-1]))[: len(sec(aug(fs[-1]))) - int(include_bias)])
        acts.append(fs)
    L = 4
    out = {}
    means = [np.mean([a[l].detach().numpy() for a in acts], 0) for l in range(L)]
    G = []
    for l in range(L):
        F = np.stack([a[l].detach().numpy() for a in acts])
        if center:
            F = F - means[l]
        if include_bias:
            F = np.concatenate([F, np.ones((len(F), 1))], 1)
        G.append(F.T @ F / len(F))
    Jac = lambda l, f: torch.autograd.functional.jacobian(secs[l], aug(f)).numpy()
    M = [None] * L
    d_out = acts[0][3].shape[0]
    M[3] = np.eye(d_out + int(include_bias))
    if include_bias:
        M[3][-1, -1] = 0
    rots = [None] * L
    if target == "output":
        for l in range(3):
            tot = 0
            for a in acts:
                J = np.eye(d_out + int(include_bias))
                for m in range(2, l - 1, -1):
                    J = J @ Jac(m, a[m])
                Jy = J[:d_out]
                tot = tot + Jy.T @ Jy
            M[l] = tot / len(acts)
        rots = [rotation(G[l], M[l], means[l], center, include_bias) for l in range(L)]
    else:
        rots[3] = rotation(G[3], M[3], means[3], center, include_bias)
        for l in range(2, -1, -1):
            C_next = rots[l + 1][0]
            tot = 0
            for a in acts:
                Jn = C_next.T @ Jac(l, a[l])
                tot = tot + Jn.T @ Jn
            M[l] = tot / len(acts)
            rots[l] = rotation(G[l], M[l], means[l], center, include_bias)
    out.update(G=G, M=M, rots=rots)
    if basis is not None:
        names = ["0", "2", "4", "output"]
        E = []
        alphas, weights = gauss_legendre(n_alpha) if n_alpha else ([1.0], [1.0])
        for l in range(3):
            C_l, Ci_l = basis[names[l]].C, basis[names[l]].Cinv
            C_n = basis[names[l + 1]].C
            tot = 0
            # the path x̂ -> α x̂ in basis coordinates, mapped back to activations: α f_aug with a
            # slot; μ + α (f − μ) when centred without one (f̂ = Cᵀ (f − μ))
            base = torch.as_tensor(means[l]) if (center and not include_bias) else 0 * aug(acts[0][l]).detach()
            for a in acts:
                f_aug = aug(a[l]).detach()
                fhat = (f_aug - base).numpy() @ C_l
                Jint = sum(w * Jac_at(secs[l], base + al * (f_aug - base)) for al, w in zip(alphas, weights))
                A = (C_n.T @ Jint @ Ci_l) * fhat[None, :]
                tot = tot + A ** 2
            E.append(tot / len(acts))
        out["E"] = E
    return out


def Jac_at(sec, point):
    return torch.autograd.functional.jacobian(sec, point).numpy()


CASES = [(True, True), (False, True), (False, False), (True, False)]


@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center,include_bias", CASES)
def test_basis_matches_per_sample_loop(center, include_bias, target):
    model = tiny_mlp()
    X = torch.randn(40, 6)
    basis = ia.compute_basis(model, X, ["0", "2", "4", "output"], jacobian_target=target,
                             center=center, include_bias=include_bias, batch_size=16, progress=False)
    ref = reference(model, X, center, include_bias, target)
    for i, name in enumerate(["0", "2", "4", "output"]):
        b = basis[name]
        np.testing.assert_allclose(b.G, ref["G"][i], atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(b.M, ref["M"][i], atol=1e-12, rtol=1e-9)
        C, Cinv, lam = ref["rots"][i]
        np.testing.assert_allclose(b.Lambda, lam, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(b.C, align_signs(C, b.C), rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(b.Cinv, align_signs(Cinv, b.Cinv), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("edge_method,n_alpha", [("gradient", None), ("integrated", 5)])
@pytest.mark.parametrize("center,include_bias", CASES)
def test_edges_match_per_sample_loop(center, include_bias, edge_method, n_alpha):
    model = tiny_mlp()
    X = torch.randn(30, 6)
    basis = ia.compute_basis(model, X, ["0", "2", "4", "output"], center=center,
                             include_bias=include_bias, batch_size=7, progress=False)
    graph = ia.build_graph(model, X, basis, edge_method=edge_method, n_alpha=n_alpha or 8,
                           batch_size=7, progress=False)
    ref = reference(model, X, center, include_bias, "output", basis=basis, n_alpha=n_alpha)
    for l, (a, b) in enumerate(zip(["0", "2", "4"], ["2", "4", "output"])):
        np.testing.assert_allclose(graph.edge_matrix(a, b) ** 2, ref["E"][l], rtol=1e-8, atol=1e-14)


def test_integrated_differs_from_gradient_on_a_curved_section():
    """Tanh is not homogeneous: the integrated-gradient edges must differ from the gradient ones."""
    model = tiny_mlp()
    X = 2 * torch.randn(30, 6)
    basis = ia.compute_basis(model, X, ["0", "2", "4", "output"], batch_size=30, progress=False)
    g1 = ia.build_graph(model, X, basis, progress=False)
    g2 = ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=6, progress=False)
    diff = np.abs(g1.edge_matrix("2", "4") - g2.edge_matrix("2", "4")).max()
    assert diff > 1e-3 * g1.edge_matrix("2", "4").max()


class Wrapped(nn.Module):
    """The same MLP behind a custom forward: exercises the generic (hook) path, not the
    nn.Sequential fast path."""

    def __init__(self, seq):
        super().__init__()
        self.net = seq

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center,include_bias", CASES)
def test_generic_path_equals_the_sequential_path(center, include_bias, target):
    model = tiny_mlp()
    X = torch.randn(30, 6)
    kw = dict(jacobian_target=target, center=center, include_bias=include_bias, batch_size=8, progress=False)
    a = ia.compute_basis(model, X, ["0", "2", "4", "output"], **kw)
    b = ia.compute_basis(Wrapped(model), X, ["net.0", "net.2", "net.4", "output"], **kw)
    for n, m in zip(a.layers, b.layers):
        np.testing.assert_allclose(b[m].M, a[n].M, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(b[m].Lambda, a[n].Lambda, rtol=1e-10, atol=1e-14)
    ga = ia.build_graph(model, X, a, edge_method="integrated", n_alpha=3, batch_size=8, progress=False)
    gb = ia.build_graph(Wrapped(model), X, b, edge_method="integrated", n_alpha=3, batch_size=8, progress=False)
    np.testing.assert_allclose(gb.w, ga.w, rtol=1e-9, atol=1e-14)   # edges that vanish exactly: round-off


def test_vjp_of_one_cotangent_is_a_plain_backward_pass(monkeypatch):
    """``jacobians.vjp`` takes one cotangent through a plain backward pass (no vmap: torch has no
    batching rule for a convolution's backward) and several through one batched pass; both equal
    a loop of single backward passes on a conv–batch-norm–ReLU graph, and an input the output
    does not depend on gets zeros of its shape (with the cotangent axis) either way."""
    from intermod.analysis.core.jacobians import vjp
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), bn, nn.ReLU(), nn.Conv2d(4, 2, 3)).double().eval()
    x = torch.randn(5, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = model(x)
    cot = torch.randn(4, *y.shape, dtype=torch.float64)
    loop = torch.stack([torch.autograd.grad(y, x, c, retain_graph=True)[0] for c in cot])
    batched = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **kw: batched.append(kw.get("is_grads_batched", False))
                        or real(*a, **kw))
    one = vjp(y, [x, unused], cot[:1])
    assert batched == [False]
    many = vjp(y, [x, unused], cot)
    assert batched[1:] == [True]
    np.testing.assert_allclose(one[0].numpy(), loop[:1].numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(many[0].numpy(), loop.numpy(), rtol=1e-13, atol=1e-13)
    assert one[1].shape == (1, 2, 3) and many[1].shape == (4, 2, 3)
    assert not one[1].any() and not many[1].any()


@pytest.mark.parametrize("act", [nn.Tanh(), nn.GELU(), nn.SiLU()], ids=["tanh", "gelu", "silu"])
def test_batches_of_one_map_through_a_batch_norm(act):
    """torch's batched backward (``is_grads_batched``) returns wrong gradients for a one-sample
    batch through an eval-mode batch norm and an activation when the cotangent has channels-last
    strides (torch 2.13: off by O(1)). ``jacobians.vjp`` makes its cotangents contiguous, so it
    equals a loop over cotangents, and the plain VJPs' Gram and edges on batches of one map equal
    those on one batch of all maps."""
    from intermod.analysis.core.jacobians import vjp
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), bn, act, nn.Conv2d(3, 2, 3, padding=1)).double().eval()
    x = torch.randn(1, 3, 5, 4, requires_grad=True)
    y = model[1:3](x)
    cot = torch.randn(6, 1, 20, 3).reshape(6, 1, 5, 4, 3).movedim(-1, 2)        # channels-last strides
    loop = torch.stack([torch.autograd.grad(y, x, c.contiguous(), retain_graph=True)[0] for c in cot])
    np.testing.assert_allclose(vjp(y, [x], cot)[0].numpy(), loop.numpy(), rtol=1e-13, atol=1e-13)
    X = torch.randn(5, 2, 5, 4)
    layers = ["0", "3", "output"]
    opts = dict(jacobian_target="next_layer", structured=False, progress=False)
    ones, whole = (ia.compute_basis(model, X, layers, batch_size=bs, **opts) for bs in (1, 5))
    np.testing.assert_allclose(ones["0"].M, whole["0"].M, rtol=1e-10, atol=1e-12 * np.abs(whole["0"].M).max())
    ga, gb = (ia.build_graph(model, X, whole, batch_size=bs, structured=False, progress=False) for bs in (1, 5))
    np.testing.assert_allclose(ga.w ** 2, gb.w ** 2, rtol=1e-10, atol=1e-12 * (gb.w ** 2).max())
