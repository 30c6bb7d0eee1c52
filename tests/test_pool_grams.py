"""core/pools.py and core/pool_grams.py: a pool read as the linear map it is at a point, and the
next-layer Gram of [activation] [pool] [Conv] sections whose windows overlap (ResNet's stem,
3 × 3 stride 2 padding 1) or tile the map.

- ``PoolMap.window_values`` summed over each window = the pool's forward-mode derivative
  (torch.func.jvp), max and average (with and without the padding counted), 1-, 2- and 3-d,
  overlapping and tiling windows, on ReLU outputs full of ties (1e-14);
- the Gram from ``PoolMoments`` = a brute-force loop over samples and input positions of the
  section's autograd Jacobian (1e-12), with strided and dilated convolutions after the pool,
  no convolution at all, and a pool of stride 1;
- ``compute_basis`` takes that Gram (no coloured VJPs) and gives the plain VJPs' M and Λ;
- ``build_graph`` takes the conv closed form for the edges of such sections (no JVPs, no VJPs)
  and gives the plain VJPs' edges, gradient and integrated."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import basis as basis_module
from intermod.analysis.core import edges as edges_module
from intermod.analysis.core.conv_grams import conv_moments, conv_next_layer_gram
from intermod.analysis.core.convolution import ConvMap, ConvSection
from intermod.analysis.core.pool_grams import PoolMoments
from intermod.analysis.core.pools import pool_map
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")
F64 = torch.float64
MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

POOLS = [   # nd, kind, kernel, stride, padding, count_include_pad, spatial
    (2, "max", 3, 2, 1, True, (9, 8)),
    (2, "max", 2, 2, 0, True, (9, 7)),
    (1, "max", 5, 2, 2, True, (13,)),
    (3, "max", 3, 2, 1, True, (5, 4, 5)),
    (2, "avg", 3, 2, 1, True, (8, 9)),
    (2, "avg", 3, 2, 1, False, (8, 9)),
    (1, "avg", 4, 1, 2, False, (9,)),
    (2, "max", (3, 2), (1, 2), (1, 0), True, (6, 7)),
]


def _pool(nd, kind, kernel, stride, padding, cip):
    return MAX[nd](kernel, stride, padding) if kind == "max" else AVG[nd](kernel, stride, padding, count_include_pad=cip)


@pytest.mark.parametrize("case", POOLS, ids=[f"{c[0]}-d {c[1]} {c[2]}/{c[3]}/{c[4]} {c[5]}" for c in POOLS])
def test_window_values_are_the_pools_derivative(case):
    """Σ_e w_{e,q} with w = ω ⊙ t read at R(e, q) is the pool's JVP at y along the tangent t; for
    max pooling ω is one-hot over each window (the element autograd routes to), even on ties."""
    nd, kind, kernel, stride, padding, cip, spatial = case
    m = _pool(nd, kind, kernel, stride, padding, cip)
    pool = pool_map(m)
    g = torch.Generator().manual_seed(0)
    y = torch.relu(torch.randn((2, 3) + spatial, generator=g))        # about half the entries tie at 0
    t = torch.randn(y.shape, generator=g)
    w = pool.window_values(t, y)                                         # (N, C, |κ|, P_pooled)
    _, jvp = torch.func.jvp(m, (y,), (t,))
    np.testing.assert_allclose(w.sum(2).numpy(), jvp.flatten(2).numpy(), rtol=1e-14, atol=1e-14)
    assert tuple(jvp.shape[2:]) == pool.out_spatial(spatial)
    if kind == "max":
        omega = pool.window_weights(y, pool.reads(spatial))
        assert bool(((omega == 0) | (omega == 1)).all()) and bool((omega.sum(2) == 1).all())


SECTIONS = [   # nd, pool (kind, kernel, stride, padding, count_include_pad), conv kwargs or None, spatial
    (2, ("max", 3, 2, 1, True), dict(kernel_size=3, padding=1), (9, 8)),
    (2, ("avg", 3, 2, 1, False), dict(kernel_size=3, stride=2, padding=1), (10, 9)),
    (1, ("max", 5, 2, 2, True), dict(kernel_size=3, dilation=2, padding=2), (15,)),
    (1, ("max", 3, 1, 1, True), dict(kernel_size=3), (9,)),
    (2, ("max", 3, 2, 1, True), None, (7, 6)),
    (3, ("avg", 3, 2, 1, True), dict(kernel_size=2), (5, 5, 4)),
]


def _section(nd, pool_args, conv_kw, h=3, d_out=2):
    torch.manual_seed(5)
    kind, kernel, stride, padding, cip = pool_args
    pool = _pool(nd, kind, kernel, stride, padding, cip)
    conv = None if conv_kw is None else CONV[nd](h, d_out, **conv_kw)
    act = nn.GELU()
    cmap = None if conv is None else ConvMap(conv.weight.detach(), conv.bias.detach(), conv.stride, conv.padding,
                                             conv.dilation)
    forward = nn.Sequential(act, pool, *([] if conv is None else [conv]))
    return ConvSection(None, act, cmap, pool_map(pool)), forward


@pytest.mark.parametrize("case", SECTIONS, ids=[f"{c[0]}-d {c[1][0]} {c[1][1]}/{c[1][2]}/{c[1][3]} "
                                                f"{'no conv' if c[2] is None else c[2]}" for c in SECTIONS])
def test_pool_gram_equals_a_loop_over_positions(case):
    """Without the slot, M = Σ_x Σ_s J_sᵀ J_s (J_s = ∂(C_dataᵀ f)/∂p_s, all outputs and every
    channel of input position s) by autograd, one sample at a time, against the moments' sum."""
    nd, pool_args, conv_kw, spatial = case
    h = 3
    sec, forward = _section(nd, pool_args, conv_kw, h=h)
    X = torch.randn((4, h) + spatial, generator=torch.Generator().manual_seed(1))
    d_out = forward(X[:1]).shape[1]
    C = torch.randn(d_out, d_out + 1, generator=torch.Generator().manual_seed(2))
    mom = conv_moments(sec, (h,) + spatial, False, torch.device("cpu"))
    assert isinstance(mom, PoolMoments)
    mom.add(sec, X[:3], torch.ones(3, int(np.prod(spatial))))
    mom.add(sec, X[3:], torch.ones(1, int(np.prod(spatial))))
    M = conv_next_layer_gram(sec, mom, C, False)
    want = torch.zeros(h, h)
    for x in X:
        J = torch.autograd.functional.jacobian(lambda p: torch.einsum("ci,c...->i...", C, forward(p[None])[0]), x)
        J = J.reshape(-1, h, int(np.prod(spatial)))                     # (outputs, h, P_in)
        want += torch.einsum("ohs,ogs->hg", J, J)
    np.testing.assert_allclose(M.numpy(), want.numpy(), rtol=1e-12, atol=1e-13 * float(want.abs().max()))


def _stem():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(4, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                          nn.Conv2d(3, 2, 3, stride=2)).eval()
    model[1].running_mean.normal_(0, 0.3)
    model[1].running_var.uniform_(0.5, 2.0)
    return model, ["2", "5", "output"], torch.randn(7, 2, 12, 11)


@pytest.mark.parametrize("include_bias", [True, False])
def test_basis_takes_the_pool_gram(include_bias, monkeypatch):
    """compute_basis (next-layer target) on a stem [Conv, BN, ReLU, MaxPool 3/2/1, Conv] and an
    average pool 3/2/1: both sections take their Grams from the pool moments, not the coloured
    VJPs, and M and Λ equal the plain VJPs'."""
    model, layers, X = _stem()
    found = []
    real = basis_module.conv_gram
    monkeypatch.setattr(basis_module, "conv_gram", lambda *a: found.append(real(*a)) or found[-1])
    opts = dict(jacobian_target="next_layer", include_bias=include_bias, batch_size=4, progress=False)
    fast = ia.compute_basis(model, X, layers, **opts)
    assert len(found) == 2 and all(f is not None for f in found)
    plain = ia.compute_basis(model, X, layers, structured=False, **opts)
    for n in layers[:-1]:
        np.testing.assert_allclose(fast[n].M, plain[n].M, rtol=1e-10, atol=1e-12 * np.abs(plain[n].M).max())
        np.testing.assert_allclose(fast[n].Lambda, plain[n].Lambda, rtol=1e-10, atol=1e-13 * plain[n].Lambda.max())


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("method,n_alpha", [("gradient", 1), ("integrated", 3)])
def test_edges_of_overlapping_pools_take_the_conv_closed_form(include_bias, method, n_alpha, monkeypatch):
    """build_graph on the same model: with the forward JVPs and the VJPs switched off, the conv
    closed form (ā read through every window, averaged along the path for max pooling's moving
    argmax) gives the plain VJPs' edges."""
    model, layers, X = _stem()
    basis = ia.compute_basis(model, X, layers, jacobian_target="output", include_bias=include_bias, progress=False)
    opts = dict(edge_method=method, n_alpha=n_alpha, batch_size=4, progress=False)
    plain = ia.build_graph(model, X, basis, structured=False, **opts)

    def refuse(*a, **k):
        raise AssertionError("a section took JVPs or VJPs")

    monkeypatch.setattr(edges_module, "tangent_edge_sums", refuse)
    monkeypatch.setattr(edges_module, "_section_edges", refuse)
    fast = ia.build_graph(model, X, basis, **opts)
    np.testing.assert_allclose(fast.w ** 2, plain.w ** 2, rtol=1e-10, atol=1e-12 * (plain.w ** 2).max())
