"""core/separable_grams.py and core/separable_edges.py: the next-layer Gram of depthwise-separable
blocks (MobileNetV2's inverted residual: 1×1 conv, BN, activation, depthwise conv, BN,
activation, 1×1 conv, BN, + x) from σ′ moments, and their edges in closed form, equal the plain
VJPs' (1e-10) on every geometry (kernels 3 and 5, dilation, biases, 1-d, grouped 1×1 maps, no
residual, stride 2: its biases and the next slot follow the mean slot), with and without the
slot, gradient and integrated; sections of another shape keep the VJPs."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import conv_grams
from intermod.analysis.core import edges as edges_module
from intermod.analysis.core.separable_grams import separable_section
from intermod.analysis.core.setup import prepare
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")
F64 = torch.float64
CASES = [(True, True), (True, False), (False, False)]   # (include_bias, center)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: x + [1×1 conv, BN, act, depthwise conv, BN, act, 1×1 conv, BN](x)
    when it keeps the map (stride 1, same channels) and ``residual``, else the body alone."""

    def __init__(self, c: int, expand: int, *, stride: int = 1, k: int = 3, dilation: int = 1, bias: bool = False,
                 act: type[nn.Module] = nn.ReLU6, dim: int = 2, groups: int = 1, residual: bool = True,
                 out: int | None = None):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        h = c * expand
        self.conv = nn.Sequential(conv(c, h, 1, bias=bias, groups=groups), bn(h), act(),
                                  conv(h, h, k, stride, dilation * (k // 2), dilation=dilation, groups=h, bias=bias),
                                  bn(h), act(), conv(h, out or c, 1, bias=bias, groups=groups), bn(out or c))
        self.use_res = residual and stride == 1 and out in (None, c)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


GEOMETRIES = {
    "relu6": {},
    "biases, SiLU": dict(bias=True, act=nn.SiLU),
    "5×5": dict(k=5),
    "dilated, GELU": dict(dilation=2, act=nn.GELU),
    "1-d": dict(dim=1),
    "grouped 1×1": dict(groups=2, bias=True),
    "no residual": dict(residual=False, act=nn.Hardswish),
    "stride 2": dict(stride=2),
    "widening, stride 2": dict(expand=1, out=8, stride=2, bias=True),   # d' = 8 outputs from h = 4
}


def _model(kind: str) -> tuple[nn.Module, list[str], tuple[int, ...]]:
    """A stem convolution, two blocks (the second of ``kind``), a 1×1 head pooled to the output,
    batch norms with trained-looking statistics."""
    torch.manual_seed(5)
    kw = GEOMETRIES[kind]
    dim = kw.get("dim", 2)
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    pool = nn.AdaptiveAvgPool1d if dim == 1 else nn.AdaptiveAvgPool2d
    kw = {"expand": 3} | kw
    model = nn.Sequential(conv(2, 4, 3, padding=1), InvertedResidual(4, 3, dim=dim), InvertedResidual(4, **kw),
                          conv(kw.get("out", 4), 3, 1), pool(1), nn.Flatten())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model.double().eval(), ["1", "2", "3", "output"], (2, 13) if dim == 1 else (2, 7, 6)


@pytest.mark.parametrize("kind", list(GEOMETRIES))
@pytest.mark.parametrize("include_bias,center", CASES)
def test_separable_grams_equal_the_plain_vjps(kind, include_bias, center, monkeypatch):
    """M, Λ and C of both blocks equal the plain VJPs', and the closed form is used for both
    blocks (a stride-2 one with the slot by the mean slot's rule)."""
    model, layers, shape = _model(kind)
    X = torch.randn((5,) + shape, dtype=F64)
    found = []
    closed = conv_grams.separable_next_layer_gram
    monkeypatch.setattr(conv_grams, "separable_next_layer_gram",
                        lambda *a, **k: found.append((out := closed(*a, **k)) is not None) or out)
    opts = dict(jacobian_target="next_layer", include_bias=include_bias, center=center, batch_size=3, progress=False)
    fast = ia.compute_basis(model, X, layers, **opts)
    plain = ia.compute_basis(model, X, layers, structured=False, **opts)
    assert found == [True, True]
    for n in layers[:2]:
        np.testing.assert_allclose(fast[n].M, plain[n].M, rtol=1e-10, atol=1e-12 * np.abs(plain[n].M).max())
        np.testing.assert_allclose(fast[n].Lambda, plain[n].Lambda, rtol=1e-10, atol=1e-13 * plain[n].Lambda.max())
        np.testing.assert_allclose(fast[n].C, plain[n].C, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kind", list(GEOMETRIES))
@pytest.mark.parametrize("include_bias,center", CASES)
def test_separable_edges_equal_the_plain_vjps(kind, include_bias, center, monkeypatch):
    """w² of both blocks' sections equal the plain VJPs', gradient and integrated (3 nodes: a₁
    and a₂ move together along the path), and the closed form takes both blocks (two batches
    each)."""
    model, layers, shape = _model(kind)
    X = torch.randn((5,) + shape, dtype=F64)
    basis = ia.compute_basis(model, X, layers, include_bias=include_bias, center=center, batch_size=3,
                             progress=False)
    used = []
    real = edges_module.separable_edge_sums
    monkeypatch.setattr(edges_module, "separable_edge_sums", lambda *a, **k: used.append(1) or real(*a, **k))
    for method in ("gradient", "integrated"):
        opts = dict(edge_method=method, n_alpha=3, batch_size=3, progress=False)
        fast = ia.build_graph(model, X, basis, **opts)
        plain = ia.build_graph(model, X, basis, structured=False, **opts)
        for a, b in zip(layers[:2], layers[1:3]):
            want = plain.edge_matrix(a, b) ** 2
            np.testing.assert_allclose(fast.edge_matrix(a, b) ** 2, want, rtol=1e-10, atol=1e-12 * want.max())
    assert len(used) == 2 * 2 * 2


def test_the_closed_form_runs_no_vjp(monkeypatch):
    """On the blocks the next-layer Grams come from the moments alone: the section VJPs run for
    the head only."""
    from intermod.analysis.core import basis as basis_module

    model, layers, shape = _model("biases, SiLU")
    ran = []
    real = basis_module.next_layer_jacobians
    monkeypatch.setattr(basis_module, "next_layer_jacobians", lambda s, j, *a: ran.append(j) or real(s, j, *a))
    ia.compute_basis(model, torch.randn((4,) + shape, dtype=F64), layers, jacobian_target="next_layer",
                     progress=False)
    assert ran == [2]


def _net(model: nn.Module, layers: list[str], shape: tuple[int, ...]):
    return prepare(model, torch.randn((2,) + shape, dtype=F64), layers, output_fn=None, include_bias=True,
                   dtype=F64, batch_size=2, device="cpu", seed=0, progress=False, callback=None).net


@pytest.mark.parametrize("body", [
    "no first activation", "a 3×3 first map", "a dense middle map", "a second depthwise map"])
def test_other_sections_are_not_read_as_separable(body):
    """The closed form's Jacobian needs a 1×1 map, an activation, a depthwise map, an activation
    and a 1×1 map; anything else is not a separable section."""
    mods = {
        "no first activation": [nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                                nn.Conv2d(8, 4, 1)],
        "a 3×3 first map": [nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                            nn.ReLU(), nn.Conv2d(8, 4, 1)],
        "a dense middle map": [nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(8, 4, 1)],
        "a second depthwise map": [nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                   nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8)],
    }[body]
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Sequential(*mods), nn.Conv2d(mods[-1].out_channels, 3, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().eval()
    assert separable_section(_net(model, ["1", "2", "output"], (2, 7, 6)), 0) is None
    good, layers, shape = _model("relu6")
    assert separable_section(_net(good, layers, shape), 0) is not None


def test_moments_refuse_batches_they_cannot_sum():
    """Maps of another size in a later batch make the moments inexact and the section's Gram
    comes from the coloured VJPs, equal to the plain path's."""
    model, layers, _ = _model("relu6")
    X = [torch.randn(3, 2, 7, 6, dtype=F64), torch.randn(2, 2, 5, 6, dtype=F64)]
    opts = dict(jacobian_target="next_layer", progress=False)
    fast, plain = (ia.compute_basis(model, X, layers, structured=s, **opts) for s in (True, False))
    for n in layers[:2]:
        np.testing.assert_allclose(fast[n].M, plain[n].M, rtol=1e-10, atol=1e-12 * np.abs(plain[n].M).max())
