"""core/two_conv_grams.py: the next-layer Gram of [Conv] [activation] [Conv] sections from paired
σ′ moments equals the plain VJPs' (1e-10) on every geometry (strides, dilation, valid and
asymmetric padding, 1-d, 3-d, no activation, no biases), with and without the slot; sections
whose slot would move positions, and batches the moments cannot sum, fall back to the coloured
VJPs with the same result."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import conv_grams
from intermod.analysis.core.convolution import conv_section, read_index
from intermod.analysis.core.setup import prepare
from intermod.analysis.core.two_conv_grams import pair_moments
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")
F64 = torch.float64
CASES = [(True, True), (True, False), (False, False)]   # (include_bias, center)


def _model(kind: str) -> tuple[nn.Sequential, list[str], tuple[int, ...]]:
    """A stem convolution, the two-convolution section under test (cut at "1" and "4" or "3"),
    then a conv section to the output."""
    torch.manual_seed(3)
    c2, c1, c3 = nn.Conv2d, nn.Conv1d, nn.Conv3d
    body = {
        "same 3×3": (c2(3, 4, 3, padding=1), nn.ReLU(), c2(4, 3, 3, padding=1)),
        "5×3 dilated": (c2(3, 5, (5, 3), padding=(2, 1)), nn.SiLU(), c2(5, 3, 3, dilation=2, padding=2)),
        "valid": (c2(3, 5, 3), nn.GELU(), c2(5, 3, 2, dilation=2)),
        "second strided": (c2(3, 4, 3, padding=1), nn.ReLU(), c2(4, 3, 3, stride=2, padding=1)),
        "first strided": (c2(3, 4, 3, stride=2, padding=1), nn.ReLU(), c2(4, 3, 3, padding=1)),
        "no activation": (c2(3, 4, 3, padding=1), c2(4, 3, 3, padding=1)),
        "no biases": (c2(3, 4, 3, padding=1, bias=False), nn.ReLU(), c2(4, 3, 3, padding=1, bias=False)),
        "1-d": (c1(3, 4, 5, padding=2), nn.ReLU(), c1(4, 3, 3, padding=1)),
        "3-d": (c3(3, 4, 3, padding=1), nn.ReLU(), c3(4, 3, 3, padding=1)),
    }[kind]
    conv = c1 if kind == "1-d" else c3 if kind == "3-d" else c2
    model = nn.Sequential(conv(2, 3, 3, padding=1), *body, nn.Tanh(), conv(3, 2, 3))
    shape = {"1-d": (2, 15), "3-d": (2, 5, 4, 4), "valid": (2, 10, 9)}.get(kind, (2, 9, 8))
    return model.double().eval(), ["1", str(1 + len(body)), "output"], shape


KINDS = ["same 3×3", "5×3 dilated", "valid", "second strided", "first strided", "no activation", "no biases",
         "1-d", "3-d"]
MOVES_POSITIONS = {"valid", "second strided", "first strided"}   # with the slot: the coloured VJPs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("include_bias,center", CASES)
def test_two_conv_grams_equal_the_plain_vjps(kind, include_bias, center, monkeypatch):
    """M, Λ and C of the first layer (the section under test) equal the plain VJPs', and the
    closed form is used exactly where the slot keeps its positions (or there is no slot)."""
    model, layers, shape = _model(kind)
    X = torch.randn((7,) + shape, dtype=F64)
    found = []
    two_conv = conv_grams.two_conv_next_layer_gram
    monkeypatch.setattr(conv_grams, "two_conv_next_layer_gram",
                        lambda *a, **k: found.append((out := two_conv(*a, **k)) is not None) or out)
    opts = dict(jacobian_target="next_layer", include_bias=include_bias, center=center, batch_size=4, progress=False)
    fast = ia.compute_basis(model, X, layers, **opts)
    plain = ia.compute_basis(model, X, layers, structured=False, **opts)
    assert found == [not (include_bias and kind in MOVES_POSITIONS)]
    for n in layers[:-1]:
        np.testing.assert_allclose(fast[n].M, plain[n].M, rtol=1e-10, atol=1e-12 * np.abs(plain[n].M).max())
        np.testing.assert_allclose(fast[n].Lambda, plain[n].Lambda, rtol=1e-10, atol=1e-13 * plain[n].Lambda.max())
        np.testing.assert_allclose(fast[n].C, plain[n].C, rtol=1e-7, atol=1e-10)


def test_read_index_names_the_input_position_of_each_tap():
    """read_index = a loop over output positions and taps: the input index at stride·t + dilation·δ
    − padding, −1 in the padding."""
    model, _, _ = _model("5×3 dilated")
    net = prepare(model, torch.randn(2, 2, 9, 8, dtype=F64), ["1", "4", "output"], output_fn=None,
                  include_bias=True, dtype=F64, batch_size=4, device="cpu", seed=0, progress=False, callback=None).net
    sec = conv_section(net, 1)                                     # the section "4" -> output: conv(3, 2, 3), no padding
    for conv, spatial, stride, dil, pad in ((conv_section(net, 0).first, (9, 8), (1, 1), (1, 1), (2, 1)),
                                            (conv_section(net, 0).second, (9, 8), (1, 1), (2, 2), (2, 2)),
                                            (sec.second, (9, 8), (1, 1), (1, 1), (0, 0))):
        idx = read_index(conv, spatial)
        kh, kw = conv.weight.shape[2:]
        H = (spatial[0] + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
        W = (spatial[1] + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
        want = torch.full((kh * kw, H * W), -1, dtype=torch.int64)
        for i in range(H):
            for j in range(W):
                for a in range(kh):
                    for b in range(kw):
                        y, x = i * stride[0] + a * dil[0] - pad[0], j * stride[1] + b * dil[1] - pad[1]
                        if 0 <= y < spatial[0] and 0 <= x < spatial[1]:
                            want[a * kw + b, i * W + j] = y * spatial[1] + x
        assert torch.equal(idx, want)


def test_moments_refuse_batches_they_cannot_sum():
    """A batch on other positions, or with masked samples, makes the paired moments inexact (the
    Gram is None, the coloured VJPs take the section); with the slot, a section that moves the
    positions is inexact from the start."""
    model, layers, shape = _model("same 3×3")
    net = prepare(model, torch.randn((2,) + shape, dtype=F64), layers, output_fn=None, include_bias=True,
                  dtype=F64, batch_size=2, device="cpu", seed=0, progress=False, callback=None).net
    sec = conv_section(net, 0)
    C = torch.randn(4, 3, dtype=F64)
    mom = pair_moments(sec, (3,) + shape[1:], True, torch.device("cpu"))
    point = torch.randn(2, 3, *shape[1:], dtype=F64)
    mom.add(sec, point, torch.ones(2, point[0, 0].numel(), dtype=F64))
    assert conv_grams.conv_next_layer_gram(sec, mom, C, True) is not None
    w = torch.ones(2, point[0, 0].numel(), dtype=F64)
    w[1, 3] = 0.0
    mom.add(sec, point, w)
    assert not mom.exact and conv_grams.conv_next_layer_gram(sec, mom, C, True) is None
    strided, layers_s, shape_s = _model("second strided")
    net_s = prepare(strided, torch.randn((2,) + shape_s, dtype=F64), layers_s, output_fn=None, include_bias=True,
                    dtype=F64, batch_size=2, device="cpu", seed=0, progress=False, callback=None).net
    sec_s = conv_section(net_s, 0)
    assert not pair_moments(sec_s, (3,) + shape_s[1:], True, torch.device("cpu")).exact
    assert pair_moments(sec_s, (3,) + shape_s[1:], False, torch.device("cpu")).exact


def test_other_positions_in_a_later_batch_fall_back_to_the_same_gram():
    """Maps of two sizes: the moments turn inexact and the section's Gram comes from the coloured
    VJPs, equal to the plain path's."""
    model, layers, shape = _model("same 3×3")
    X = [torch.randn(3, 2, 9, 8, dtype=F64), torch.randn(2, 2, 7, 8, dtype=F64)]
    opts = dict(jacobian_target="next_layer", progress=False)
    fast, plain = (ia.compute_basis(model, X, layers, structured=s, **opts) for s in (True, False))
    np.testing.assert_allclose(fast["1"].M, plain["1"].M, rtol=1e-10, atol=1e-12 * np.abs(plain["1"].M).max())
