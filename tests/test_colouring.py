"""Coloured cotangents (core/colouring.py) for local sections between conv maps.

The structural receptive fields must cover the Jacobian's support (autograd at a random point),
one colour's receptive fields must be disjoint, and the coloured VJPs must give the plain
per-position VJPs' Jacobian Grams and edges (``structured=False``, itself pinned to a per-sample
brute force in test_conv.py) to 1e-10 in float64: every target, with and without the bias slot
and centring, gradient and integrated edges, for sections whose biases are driven by their own
position's slot, by the mean slot, or both.
"""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import edges as edges_module
from intermod.analysis.core import jacobian_grams as grams_module
from intermod.analysis.core.colouring import greedy_colours, position_dependency, section_colouring
from intermod.analysis.core.conv_grams import conv_moments, conv_next_layer_gram
from intermod.analysis.core.convolution import conv_section
from intermod.analysis.core.field_grams import field_section
from intermod.analysis.core.sequence import Residual
from intermod.analysis.core.setup import prepare
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")

F64 = torch.float64
CPU = torch.device("cpu")


def _jacobian_support(section: nn.Module, spatial: tuple[int, ...], c_in: int) -> np.ndarray:
    """(P_out, P_in) bool: where ∂f_t/∂x_s ≠ 0 for some pair of channels, at a random point."""
    x = torch.randn((1, c_in) + spatial, dtype=F64)
    c_out = section(x).shape[1]
    J = torch.autograd.functional.jacobian(section, x).reshape(c_out, -1, c_in, int(np.prod(spatial)))
    return (J != 0).any(0).any(1).numpy()


SECTIONS = {   # (modules, in channels, spatial shape)
    "3x3": ([nn.Conv2d(2, 3, 3, padding=1), nn.Tanh()], 2, (6, 5)),
    "two 3x3": ([nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, padding=1)], 2, (7, 7)),
    "strided": ([nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Softplus()], 2, (7, 6)),
    "dilated valid": ([nn.Conv2d(2, 2, 3, dilation=2), nn.Tanh()], 2, (8, 7)),
    "reflect": ([nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Tanh()], 2, (5, 6)),
    "circular 1-d": ([nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular"), nn.Tanh()], 2, (9,)),
    "groups and batch norm": ([nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.BatchNorm2d(4), nn.Tanh()], 4, (5, 5)),
    "3-d": ([nn.Conv3d(1, 2, 3, padding=1), nn.Tanh()], 1, (4, 3, 4)),
    "max pool": ([nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1)], 2, (8, 6)),
    "avg pool padded": ([nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(2, 2, 2)], 2, (7, 7)),
    "residual, wider shortcut": ([Residual([nn.Conv2d(2, 2, 1), nn.Tanh()], [nn.Conv2d(2, 2, 3, padding=1)])], 2, (6, 5)),
    "residual projection": ([Residual([nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1)],
                                      [nn.Conv2d(2, 3, 1, stride=2)]), nn.Softplus()], 2, (9, 8)),
}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_receptive_fields_cover_the_jacobian_support(name):
    """D ⊇ supp(J) at random points; without pooling (whose Jacobian selects one input of each
    window) D = supp(J) exactly: the structural pass neither misses nor invents dependencies."""
    torch.manual_seed(0)
    mods, c_in, spatial = SECTIONS[name]
    section = nn.Sequential(*mods).double().eval()
    D, _ = position_dependency(list(section), spatial, lambda m: False, include_bias=False)
    D = D.toarray() > 0
    for _ in range(3):
        support = _jacobian_support(section, spatial, c_in)
        assert support.shape == D.shape
        assert not (support & ~D).any(), "a dependency the colouring does not know of"
    if "pool" not in name:
        assert (support == D).all()


def test_colours_have_disjoint_receptive_fields_and_do_not_grow_with_the_map():
    """Same-colour positions share no input position; the count is ⌈r/S⌉ per axis (r: the
    receptive field, S: the stride) on every map size: 9 for a 3×3 conv, 25 for two, 4 for a
    strided 3×3, 1 for 2×2 pooling."""
    cases = [([nn.Conv2d(1, 1, 3, padding=1)], 9), ([nn.Conv2d(1, 1, 3, padding=1)] * 2, 25),
             ([nn.Conv2d(1, 1, 3, stride=2, padding=1)], 4), ([nn.MaxPool2d(2)], 1),
             ([nn.Conv1d(1, 1, 5, padding=2)], 5)]
    for mods, expected in cases:
        for size in (8, 12, 20):
            spatial = (size,) if isinstance(mods[0], nn.Conv1d) else (size, size)
            D, _ = position_dependency(mods, spatial, lambda m: False, include_bias=False)
            colour = greedy_colours(D)
            assert colour.max() + 1 == expected, (mods, size)
            overlap = (D @ D.T).toarray() > 0
            same = colour[:, None] == colour[None, :]
            assert not (overlap & same & ~np.eye(len(colour), dtype=bool)).any()


def _random_statistics(model: nn.Module) -> None:
    """Batch-norm statistics and affine parameters away from the identity."""
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            if mod.affine:
                mod.weight.data.normal_()
                mod.bias.data.normal_()


def _model(kind: str) -> tuple[nn.Sequential, list[str], tuple[int, ...]]:
    torch.manual_seed(1)
    if kind == "same positions":       # every bias driven by its own position's slot
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(3, 2, 3, padding=1))
        return m, ["1", "3", "output"], (2, 7, 6)
    if kind == "strided":              # the biases after the stride and the next slot: the mean slot
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, padding=1),
                          nn.GELU(), nn.Conv2d(3, 2, 2))
        return m, ["1", "3", "output"], (2, 9, 8)
    if kind == "both slots":           # a bias at the input's positions, then one after the stride
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, padding=1))
        return m, ["2", "5", "output"], (2, 8, 8)
    if kind == "pool and batch norm":
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 3, padding=1),
                          nn.BatchNorm2d(3), nn.SiLU(), nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ELU()),
                          nn.Conv2d(3, 2, 1))
        _random_statistics(m)
        return m, ["1", "3", "6", "output"], (2, 10, 8)
    if kind == "off-centre kernel":    # taps at t ± 1, not t: the slot of t reaches t all the same
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 2, dilation=2, padding="same", bias=False),
                          nn.Tanh(), nn.Conv2d(3, 2, 3, padding=1))
        return m, ["1", "3", "output"], (2, 8, 7)
    if kind == "conv inputs":          # [Conv] [activation] sections: positions kept, then strided, dilated
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.Tanh(),
                          nn.Conv2d(3, 3, 3, dilation=2, padding=2), nn.GELU(), nn.Conv2d(3, 2, 3), nn.Softplus())
        return m, ["0", "2", "4", "6", "output"], (2, 9, 8)
    if kind == "pools":                # max / average pooling between the activation and the conv,
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 9×7: a remainder
                          nn.Conv2d(4, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Conv2d(3, 3, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 1))
        return m, ["1", "4", "7", "9", "output"], (2, 18, 14)
    if kind == "conv before pool":     # [Conv] [activation] [MaxPool]: closed-form edges, coloured Gram
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 3, padding=1))
        return m, ["0", "3", "output"], (2, 10, 9)
    if kind == "conv and batch norm":  # [activation] [Conv, BN]: folded, positions kept, then strided
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                          nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.BatchNorm2d(2, affine=False))
        _random_statistics(m)
        return m, ["2", "5", "output"], (2, 9, 8)
    if kind == "1-d dilated":
        m = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Conv1d(4, 3, 3, dilation=2, padding=2),
                          nn.Tanh(), nn.Conv1d(3, 2, 3, stride=2))
        return m, ["1", "3", "output"], (2, 20)
    if kind == "pool undone":          # the conv's padding restores the pooled map's size: no self tap
        m = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(3, 3, 1, padding=2),
                          nn.Tanh(), nn.Conv1d(3, 2, 3, padding=1))
        return m, ["1", "4", "output"], (2, 8)
    if kind == "grouped":              # groups = 2, a depthwise strided conv, a grouped 1×1 conv
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, groups=2),
                          nn.BatchNorm2d(6), nn.Tanh(), nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), nn.GELU(),
                          nn.Conv2d(6, 2, 1, groups=2))
        _random_statistics(m)
        return m, ["1", "4", "6", "output"], (2, 8, 7)
    if kind == "grouped two convs":    # [Conv] [activation] [Conv], both grouped
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.Softplus(), nn.Conv2d(6, 2, 3, padding=1))
        return m, ["2", "4", "output"], (2, 7, 7)
    if kind == "overlapping pools":    # ResNet's stem pool (3, 2, 1), then an average without the padding
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 3, 3, padding=1),
                          nn.Tanh(), nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.Conv2d(3, 2, 2))
        return m, ["1", "4", "output"], (2, 11, 9)
    if kind == "1-d overlapping pools":  # windows 2 apart shared through a dilated conv; a pool of stride 1
        m = nn.Sequential(nn.Conv1d(2, 3, 5, padding=2), nn.GELU(), nn.MaxPool1d(5, 2, 2),
                          nn.Conv1d(3, 3, 3, dilation=2, padding=2), nn.ReLU(), nn.AvgPool1d(3, 1, 1),
                          nn.Conv1d(3, 2, 3, padding=1))
        return m, ["1", "4", "output"], (2, 17)
    if kind == "conv, overlapping pool":  # [Conv, BN] [activation] [MaxPool 3/2], then [Conv] [act] [AvgPool] [Conv]
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, 2, 1), nn.Conv2d(4, 2, 1))
        _random_statistics(m)
        return m, ["0", "4", "output"], (2, 10, 9)
    raise KeyError(kind)


KINDS = ["same positions", "strided", "both slots", "pool and batch norm", "off-centre kernel", "conv inputs",
         "pools", "conv before pool", "conv and batch norm", "1-d dilated", "pool undone", "grouped",
         "grouped two convs", "overlapping pools", "1-d overlapping pools", "conv, overlapping pool"]
CASES = [(True, True), (False, True), (False, False), (True, False)]


def test_these_sections_take_the_paths_under_test():
    """Every section of the test models between conv maps is coloured, and the conv closed form
    takes the [Conv] [activation] [Conv] ones (G: its Gram too, with one convolution or two
    without a pool, or a pool and one convolution after it; F: its Gram over receptive fields;
    two convolutions that move the slot's positions, "both slots" with the slot, fall back to the
    coloured VJPs when summed), so that the tests below compare each structured path with the
    plain one, not with itself."""
    colours = {"same positions": [9, 9], "strided": [4, 4], "both slots": [9, 9],
               "pool and batch norm": [1, 9, 9], "off-centre kernel": [7, 9], "conv inputs": [9, 4, 6, None], "pools": [9, 9, 1, 1], "conv before pool": [4, 9], "conv and batch norm": [9, 4],
               "1-d dilated": [3, 2], "pool undone": [2, 3], "grouped": [9, 4, 1], "grouped two convs": [9, 25],
               "overlapping pools": [16, None], "1-d overlapping pools": [7, 5], "conv, overlapping pool": [9, None]}
    closed = {"same positions": ["G", "G"], "strided": ["G", "G"], "both slots": ["G", "G"],
              "pool and batch norm": ["G", "G", None], "off-centre kernel": ["G", "G"],
              "conv inputs": ["G", "G", "G", "G"], "pools": ["G", "G", "G", "G"],
              "conv before pool": ["F", "G"], "conv and batch norm": ["G", "G"], "1-d dilated": ["G", "G"],
              "pool undone": ["G", "G"], "grouped": ["G", "G", "G"],   # "pool undone": its first Gram
              "grouped two convs": ["G", "G"],                          # falls back to the coloured VJPs
              "overlapping pools": ["G", "G"], "1-d overlapping pools": ["G", "G"],
              "conv, overlapping pool": ["F", "F"]}
    found = {}
    for kind in KINDS:
        model, layers, shape = _model(kind)
        X = torch.randn((3,) + shape, dtype=F64)
        s = prepare(model.double().eval(), X, layers, output_fn=None, include_bias=True, dtype=F64,
                    batch_size=4, device="cpu", seed=0, progress=False, callback=None)
        acts = s.net.forward(X)
        found[kind] = [section_colouring(s.net, j, tuple(acts[s.net.chain[j]].shape), CPU)
                       for j in range(len(layers) - 1)]
        assert [None if c is None else c.n_colours for c in found[kind]] == colours[kind], kind
        secs = [conv_section(s.net, j) for j in range(len(layers) - 1)]
        assert [None if c is None else "G" if c.gram_closed else "F" if field_section(c) else "E"
                for c in secs] == closed[kind], kind
    assert not found["same positions"][0].mean_hooks and found["same positions"][0].keeps_positions
    assert found["strided"][0].mean_hooks and not found["strided"][0].keeps_positions
    assert found["both slots"][0].mean_hooks      # and a bias at the input's positions before the stride


def test_conv_moments_refuse_batches_they_cannot_sum():
    """A batch on other positions than the first makes the per-tap moments inexact: the Gram is
    then None, and the basis takes the coloured VJPs for that section."""
    model, layers, shape = _model("same positions")
    s = prepare(model.double().eval(), torch.randn((2,) + shape, dtype=F64), layers, output_fn=None,
                include_bias=True, dtype=F64, batch_size=2, device="cpu", seed=0, progress=False, callback=None)
    sec = conv_section(s.net, 0)
    mom = conv_moments(sec, (4,) + shape[1:], True, CPU)
    point = torch.randn(2, 4, *shape[1:], dtype=F64)
    mom.add(sec, point, torch.ones(2, point[0, 0].numel(), dtype=F64))
    C = torch.randn(4, 3, dtype=F64)
    assert conv_next_layer_gram(sec, mom, C, True) is not None
    other = torch.randn(2, 4, 5, 5, dtype=F64)
    mom.add(sec, other, torch.ones(2, 25, dtype=F64))
    assert not mom.exact and conv_next_layer_gram(sec, mom, C, True) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["next_layer", "output"])
@pytest.mark.parametrize("center,include_bias", CASES)
@pytest.mark.parametrize("path", ["closed forms", "coloured VJPs"])
def test_structured_paths_equal_the_plain_vjps(kind, target, center, include_bias, path, monkeypatch):
    """The conv closed forms (where a section is [Conv] [activation] [Conv]) and, with them
    switched off, the coloured VJPs give the plain VJPs' M, Λ and edges (the edges' forward JVPs,
    which would take the coloured sections, switched off too)."""
    if path == "coloured VJPs":
        _coloured_only(monkeypatch)
    _same_as_plain(kind, target, center, include_bias, basis_too=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("center,include_bias", CASES)
def test_forward_jvp_edges_equal_the_plain_vjps(kind, center, include_bias, monkeypatch):
    """With the conv closed forms switched off, the edges of the coloured sections take forward
    JVPs (core/tangent_edges.py) and equal the plain VJPs'."""
    monkeypatch.setattr(grams_module, "conv_section", lambda net, j: None)
    monkeypatch.setattr(edges_module, "conv_section", lambda net, j: None)
    _same_as_plain(kind, "output", center, include_bias, basis_too=False)


def _coloured_only(monkeypatch) -> None:
    monkeypatch.setattr(grams_module, "conv_section", lambda net, j: None)
    monkeypatch.setattr(edges_module, "conv_section", lambda net, j: None)
    monkeypatch.setattr(edges_module, "_forward_pays", lambda *a: False)


def _same_as_plain(kind: str, target: str, center: bool, include_bias: bool, basis_too: bool) -> None:
    """M and Λ (``basis_too``) and the edges (gradient, integrated) equal the plain VJPs'."""
    model, layers, shape = _model(kind)
    model = model.double().eval()
    X = torch.randn((11,) + shape, dtype=F64)
    opts = dict(jacobian_target=target, center=center, include_bias=include_bias, batch_size=4, progress=False)
    b = ia.compute_basis(model, X, layers, structured=False, **opts)
    if basis_too:
        a = ia.compute_basis(model, X, layers, **opts)
        for n in layers:
            if b[n].M is not None:
                np.testing.assert_allclose(a[n].M, b[n].M, rtol=1e-10, atol=1e-12 * np.abs(b[n].M).max())
            np.testing.assert_allclose(a[n].Lambda, b[n].Lambda, rtol=1e-10, atol=1e-13 * b[n].Lambda.max())
    for method, n_alpha in (("gradient", 1), ("integrated", 3)):
        ga, gb = (ia.build_graph(model, X, b, edge_method=method, n_alpha=n_alpha, batch_size=4, progress=False,
                                 structured=s) for s in (True, False))
        np.testing.assert_allclose(ga.w ** 2, gb.w ** 2, rtol=1e-10, atol=1e-12 * (gb.w ** 2).max())


@pytest.mark.parametrize("path", ["closed forms", "coloured VJPs", "forward JVPs"])
def test_chunks_split_anywhere(path, monkeypatch):
    """Chunks bounded by a tiny max_memory (a colour's directions split over several chunks and
    the graphs of the quadrature rebuilt per chunk; the conv closed forms' samples and
    positions split; the JVPs' input directions split) give the same Gram and edges."""
    if path != "closed forms":
        monkeypatch.setattr(grams_module, "conv_section", lambda net, j: None)
        monkeypatch.setattr(edges_module, "conv_section", lambda net, j: None)
    if path == "coloured VJPs":
        _coloured_only(monkeypatch)
    model, layers, shape = _model("both slots")
    model = model.double().eval()
    X = torch.randn((6,) + shape, dtype=F64)
    opts = dict(jacobian_target="next_layer", batch_size=3, progress=False)
    big, small = (ia.compute_basis(model, X, layers, max_memory=m, **opts) for m in (1 << 29, 1 << 15))
    for n in layers[:-1]:
        np.testing.assert_allclose(small[n].M, big[n].M, rtol=1e-10, atol=1e-12 * np.abs(big[n].M).max())
    ga, gb = (ia.build_graph(model, X, big, edge_method="integrated", n_alpha=2, batch_size=3, progress=False,
                             max_memory=m) for m in (1 << 29, 1 << 15))
    np.testing.assert_allclose(gb.w, ga.w, rtol=1e-10, atol=1e-13 * ga.w.max())


def test_sections_that_are_not_local_take_the_plain_cotangents():
    """No colouring for a module not known to be local (LayerNorm over positions' features,
    Upsample), a global pool, a transposed convolution, or a model that is not a sequence of
    modules (a residual block); a class whose forward is a chain is coloured as the same
    Sequential."""
    X = torch.randn(2, 2, 6, 6, dtype=F64)
    cases = [nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.GroupNorm(1, 2), nn.Conv2d(2, 2, 3, padding=1)),
             nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=1)),
             nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ConvTranspose2d(2, 2, 3), nn.Conv2d(2, 2, 3, padding=1)),
             nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(2, 2, 1))]
    for model in cases:
        s = prepare(model.double().eval(), X, ["1", "2"], output_fn=None, include_bias=True, dtype=F64,
                    batch_size=2, device="cpu", seed=0, progress=False, callback=None)
        assert section_colouring(s.net, 0, tuple(s.net.forward(X)["1"].shape), CPU) is None, model

    class Wrapped(nn.Module):
        def __init__(self, residual: bool):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
            self.residual = residual

        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return x + y if self.residual else y

    def colouring(model, layers):
        s = prepare(model.double(), X, layers, output_fn=None, include_bias=True, dtype=F64,
                    batch_size=2, device="cpu", seed=0, progress=False, callback=None)
        return section_colouring(s.net, 0, (2, 2, 6, 6), CPU)

    assert colouring(Wrapped(residual=True), ["a", "b"]) is None
    chain, seq = colouring(Wrapped(residual=False), ["a", "b"]), colouring(nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)), ["0", "2"])
    assert chain is not None and seq is not None
    assert torch.equal(chain.colour, seq.colour)


@pytest.mark.parametrize("kind", ["conv inputs", "both slots", "pool and batch norm"])
def test_float32_compute_takes_the_same_paths(kind):
    """float32 compute (sums in float64) through the conv closed forms and the coloured VJPs
    agrees with float64 to float32 round-off: M within 1e-4 of its scale, the edges with
    w > 1e-3·max within 1e-4 (the same float64 basis for both)."""
    model, layers, shape = _model(kind)
    model = model.double().eval()
    X = torch.randn((9,) + shape, dtype=F64)
    opts = dict(jacobian_target="next_layer", batch_size=4, progress=False)
    b64, b32 = (ia.compute_basis(model, X, layers, dtype=dt, **opts) for dt in (F64, torch.float32))
    for n in layers[:-1]:
        np.testing.assert_allclose(b32[n].M, b64[n].M, rtol=0, atol=1e-4 * np.abs(b64[n].M).max())
    g64, g32 = (ia.build_graph(model, X, b64, edge_method="integrated", n_alpha=2, batch_size=4, progress=False,
                               dtype=dt) for dt in (F64, torch.float32))
    big = g64.w > 1e-3 * g64.w.max()
    np.testing.assert_allclose(g32.w[big], g64.w[big], rtol=1e-4)


def test_a_layer_without_directions_has_no_edges_on_any_path():
    """A dead ReLU (its input ≈ −100 everywhere) leaves the layers before it without basis
    directions (no bias slot: nothing reaches the output), and the output (not centred) with
    one: the edge sums skip empty sections (the conv and Linear closed forms and the plain VJPs
    alike) and give empty edge matrices of the right shapes."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    mlp = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    for model, X in ((cnn, torch.randn(4, 2, 6, 6, dtype=F64)), (mlp, torch.randn(6, 4, dtype=F64))):
        _dead_layer_has_no_edges(model.double().eval(), X)


def _dead_layer_has_no_edges(model: nn.Module, X: torch.Tensor) -> None:
    with torch.no_grad():
        model[2].bias.fill_(-100.0)
    layers = ["1", "3", "output"]
    graphs = []
    for structured in (True, False):
        basis = ia.compute_basis(model, X, layers, include_bias=False, center=False, structured=structured,
                                 progress=False)
        assert [basis[n].C.shape[1] for n in layers] == [0, 0, 1]
        graphs.append(ia.build_graph(model, X, basis, structured=structured, progress=False))
    for g in graphs:
        assert g.edge_matrix("1", "3").shape == (0, 0) and g.edge_matrix("3", "output").shape == (1, 0)
        assert g.n_nodes == 1 and g.w.size == 0
