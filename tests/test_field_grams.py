"""core/field_grams.py: the next-layer Jacobian Gram of conv sections summed over each output
position's receptive field equals the plain VJPs' (1e-10), slot row and column included, on
residual units with an activation after the sum and / or a projection shortcut (torchvision's
ResNet blocks), on plain [Conv] [activation] [Conv] sections whose slot moves positions (the
mean slot, b₁ and b₂ driven by different rules) and on a convolution before a max or average
pool (with or without a second convolution; windows that tile the map or overlap), in 1-d, 2-d and 3-d, with strides, dilation, valid
and 'same' padding, batch norms and no activation; the sum does not depend on the chunk size."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import field_grams, jacobian_grams
from intermod.analysis.core.convolution import conv_section
from intermod.analysis.core.setup import prepare
from nets import batch_norm_statistics
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")
F64 = torch.float64
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class Unit(nn.Module):
    """post(bn₂(conv₂(pool(σ(bn₁(conv₁ x))))) + shortcut(x)): shortcut None (no residual),
    "identity" or a [Conv, BN] projection; post, pool and conv₂ None or a module (conv2 None: no
    second convolution)."""

    def __init__(self, nd, cin, cout, conv1, conv2, act, shortcut, post, bn, pool=None):
        super().__init__()
        C, B = CONV[nd], BN[nd]
        self.conv1 = C(cin, 4, **conv1)
        self.conv2 = nn.Identity() if conv2 is None else C(4, cout, **conv2)
        self.bn1, self.bn2 = (B(4), B(cout)) if bn else (nn.Identity(), nn.Identity())
        self.act, self.post, self.pool = act, post, pool
        self.downsample = shortcut if isinstance(shortcut, nn.Module) else None
        self.identity = shortcut == "identity"

    def forward(self, x):
        out = self.conv1(x)
        out = self.bn1(out)
        if self.act is not None:
            out = self.act(out)
        if self.pool is not None:
            out = self.pool(out)
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            out = out + self.downsample(x)
        elif self.identity:
            out = out + x
        return out if self.post is None else self.post(out)


class Net(nn.Module):
    def __init__(self, nd, unit, cout):
        super().__init__()
        self.stem, self.act, self.unit = CONV[nd](2, 3, 3, padding=1), nn.Tanh(), unit
        self.head, self.pool = CONV[nd](cout, 2, 1), nn.Flatten()

    def forward(self, x):
        return self.pool(self.head(self.unit(self.act(self.stem(x)))))


def _projection(nd, cout, stride):
    return nn.Sequential(CONV[nd](3, cout, 1, stride=stride), BN[nd](cout))


P1 = dict(kernel_size=3, padding=1)
KINDS = {   # nd, cout, conv1, conv2, act, shortcut, post, bn, spatial[, pool]
    "identity, post": (2, 3, P1, P1, nn.ReLU(), "identity", nn.ReLU(), True, (9, 8)),
    "projection, stride 2, post": (2, 4, dict(P1, stride=2), P1, nn.ReLU(), "proj 2", nn.ReLU(), True, (9, 8)),
    "projection, stride 1, softplus": (2, 4, P1, P1, nn.Softplus(), "proj 1", nn.Softplus(), True, (7, 8)),
    "dilated, identity, post": (2, 3, dict(kernel_size=3, padding=2, dilation=2), dict(kernel_size=(3, 1),
                                padding=(1, 0)), nn.SiLU(), "identity", nn.ReLU(), False, (9, 8)),
    "no activation, post": (2, 3, P1, P1, None, "identity", nn.GELU(), True, (6, 7)),
    "projection, no post": (2, 4, dict(P1, stride=2), P1, nn.ReLU(), "proj 2", None, True, (8, 8)),
    "1-d": (1, 3, dict(kernel_size=5, padding=2), P1, nn.ReLU(), "identity", nn.ReLU(), True, (15,)),
    "3-d": (3, 3, P1, P1, nn.ReLU(), "identity", nn.Softplus(), True, (5, 4, 4)),
    "plain, second strided": (2, 3, P1, dict(P1, stride=2), nn.ReLU(), None, None, False, (9, 8)),
    "plain, first strided": (2, 3, dict(P1, stride=2), P1, nn.Tanh(), None, None, True, (9, 8)),
    "plain, valid": (2, 3, dict(kernel_size=3), dict(kernel_size=2, dilation=2), nn.GELU(), None, None, False,
                     (10, 9)),
    "plain, valid then padded": (2, 3, dict(kernel_size=3), dict(kernel_size=3, padding=2), nn.ReLU(), None, None,
                                 False, (8, 7)),
    "even 'same'": (2, 3, dict(kernel_size=2, padding="same"), dict(kernel_size=(2, 3), padding="same"), nn.ReLU(),
                    "identity", nn.ReLU(), True, (6, 5)),
    "field wider than the map": (2, 3, dict(kernel_size=5, padding=2), dict(kernel_size=5, padding=2), nn.ReLU(),
                                 "identity", nn.ReLU(), True, (3, 3)),
    "conv, max pool": (2, 4, P1, None, nn.ReLU(), None, None, False, (9, 8), nn.MaxPool2d(2)),
    "conv, avg pool, conv": (2, 3, P1, P1, nn.GELU(), None, None, False, (8, 8), nn.AvgPool2d(2)),
    "strided conv, max pool, conv": (2, 3, dict(P1, stride=2), dict(kernel_size=2), nn.ReLU(), None, None, True,
                                     (11, 9), nn.MaxPool2d(2)),
    "1-d conv, max pool 3": (1, 4, dict(kernel_size=5, padding=2), None, nn.Tanh(), None, None, False, (16,),
                             nn.MaxPool1d(3)),
    "conv, overlapping max pool (ResNet's stem)": (2, 4, P1, None, nn.ReLU(), None, None, False, (11, 10),
                                                   nn.MaxPool2d(3, 2, 1)),
    "conv, overlapping avg pool, conv": (2, 3, P1, P1, nn.GELU(), None, None, True, (9, 8),
                                         nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
    "1-d conv, max pool 4/2, strided conv": (1, 3, dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2),
                                             nn.Tanh(), None, None, False, (17,), nn.MaxPool1d(4, 2, 1)),
}


def _model(kind):
    torch.manual_seed(11)
    nd, cout, conv1, conv2, act, shortcut, post, bn, spatial, *pool = KINDS[kind]
    if isinstance(shortcut, str) and shortcut.startswith("proj"):
        shortcut = _projection(nd, cout, int(shortcut[-1]))
    model = Net(nd, Unit(nd, 3, cout, conv1, conv2, act, shortcut, post, bn, *pool), cout)
    batch_norm_statistics(model)
    return model.double().eval(), ["unit", "head", "output"], (2,) + spatial


def _gram(model, X, layers, include_bias, structured, C, **kw):
    s = prepare(model, X, layers, output_fn=None, include_bias=include_bias, dtype=F64, batch_size=4, device="cpu",
                seed=0, progress=False, callback=None, structured=structured, **kw)
    return jacobian_grams.next_layer_jacobians(s, 0, C, None)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("include_bias", [True, False])
def test_field_grams_equal_the_plain_vjps(kind, include_bias, monkeypatch):
    """Section 0 (the unit) with a random next-layer C: M and n equal the plain VJPs' and the
    receptive-field sum is what computed it (every batch)."""
    model, layers, shape = _model(kind)
    X = torch.randn((7,) + shape, dtype=F64)
    d_next = KINDS[kind][1] + int(include_bias)
    C = torch.randn(d_next, d_next - 1, dtype=F64, generator=torch.Generator().manual_seed(2))
    calls = []
    real = jacobian_grams.field_gram
    monkeypatch.setattr(jacobian_grams, "field_gram", lambda *a, **k: calls.append(1) or real(*a, **k))
    M, n = _gram(model, X, layers, include_bias, True, C)
    assert len(calls) == 2                                                  # batches of 4 and 3 maps
    M_plain, n_plain = _gram(model, X, layers, include_bias, False, C)
    assert n == n_plain
    np.testing.assert_allclose(M.numpy(), M_plain.numpy(), rtol=1e-10, atol=1e-12 * float(M_plain.abs().max()))
    small, _ = _gram(model, X, layers, include_bias, True, C, max_memory=1 << 12)   # a few outputs per chunk
    np.testing.assert_allclose(small.numpy(), M.numpy(), rtol=1e-12, atol=1e-14 * float(M.abs().max()))


def test_slot_rules_per_map():
    """The slot rule of each map (docs/models.md): b₁ per position where the middle map keeps the
    input's positions, b₂ and the next slot where the output does, else the mean slot."""
    want = {"identity, post": (True, True), "projection, stride 2, post": (False, False),
            "plain, second strided": (True, False), "plain, valid then padded": (False, True),
            "plain, valid": (False, False)}
    for kind, kept in want.items():
        model, layers, shape = _model(kind)
        net = prepare(model, torch.randn((2,) + shape, dtype=F64), layers, output_fn=None, include_bias=True,
                      dtype=F64, batch_size=4, device="cpu", seed=0, progress=False, callback=None).net
        f = field_grams.receptive_fields(conv_section(net, 0), (3,) + shape[1:], True)
        assert (f.mid_kept, f.out_kept) == kept, kind
        g = field_grams.receptive_fields(conv_section(net, 0), (3,) + shape[1:], False)
        assert (g.mid_kept, g.out_kept) == (False, False)


def test_fields_of_a_3x3_block_are_the_5x5_window():
    """Two 3×3 convolutions with padding 1 on 6×6 maps: 25 offsets; an interior output's field is
    all of them, a corner's the 3×3 quarter on the map; the classes partition the positions."""
    model, layers, shape = _model("identity, post")
    net = prepare(model, torch.randn(2, 2, 6, 6, dtype=F64), layers, output_fn=None, include_bias=True, dtype=F64,
                  batch_size=4, device="cpu", seed=0, progress=False, callback=None).net
    f = field_grams.receptive_fields(conv_section(net, 0), (3, 6, 6), True)
    assert f.R == 25
    on = {int(t): f.patterns[c] for c, ts in enumerate(f.members) for t in ts}
    assert sorted(on) == list(range(36))
    assert int(on[14].sum()) == 25 and int(on[0].sum()) == 9 and int(on[3].sum()) == 15


def test_torchvision_blocks_end_to_end_take_the_fields():
    """compute_basis with the next-layer target on a model of two torchvision-style blocks equals
    the plain VJPs' (M, Λ, C) and sums both blocks over their receptive fields."""
    model, layers, shape = _model("projection, stride 2, post")
    X = torch.randn((5,) + shape, dtype=F64)
    opts = dict(jacobian_target="next_layer", progress=False, batch_size=3)
    fast, plain = (ia.compute_basis(model, X, layers, structured=s, **opts) for s in (True, False))
    for n in layers[:-1]:
        np.testing.assert_allclose(fast[n].M, plain[n].M, rtol=1e-10, atol=1e-12 * np.abs(plain[n].M).max())
        np.testing.assert_allclose(fast[n].Lambda, plain[n].Lambda, rtol=1e-10, atol=1e-13 * plain[n].Lambda.max())
        np.testing.assert_allclose(fast[n].C, plain[n].C, rtol=1e-7, atol=1e-10)
