"""core/conv_dense.py: the float64 convolution of small maps as one GEMM with the dense matrix D
equals torch's (values, the input gradient, a batched backward pass) on random 1-, 2- and 3-d
geometries; only ungrouped float64 CPU calls with S ≤ 2T input positions, D within its cap and
no weight gradient take it; D is built once per weight and geometry, rebuilt when the weight
changes in place and dropped when the weight is freed; a model inside ``tap_convs`` records the
dense GEMM in its graph and keeps torch's gradients."""

import gc
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from intermod.analysis.core import conv_dense, conv_taps
from intermod.analysis.core.conv_dense import by_dense, dense_conv, dense_matrix
from torch import nn

F64 = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _geometries(n: int):
    """Random small geometries (1-, 2-, 3-d; kernels 1–3, strides, dilations, integer / "same" /
    "valid" padding) whose convolution torch accepts and that D takes."""
    r = random.Random(7)
    found = []
    while len(found) < n:
        nd = r.choice([1, 2, 2, 3])
        kernel = tuple(r.choice([1, 2, 3]) for _ in range(nd))
        spatial = tuple(r.choice([1, 2, 3, 4]) for _ in range(nd))
        stride = tuple(r.choice([1, 2]) for _ in range(nd))
        dilation = tuple(r.choice([1, 2]) for _ in range(nd))
        padding = r.choice([0, 1, 2, "same", "valid", tuple(r.choice([0, 1]) for _ in range(nd))])
        stride = (1,) * nd if padding == "same" else stride
        x = torch.zeros((1, 3) + spatial, dtype=F64)
        w = torch.zeros((4, 3) + kernel, dtype=F64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                CONV[nd](x, w, None, stride, padding, dilation)
        except RuntimeError:
            continue
        if by_dense(x, w, 1, stride, padding, dilation):
            found.append((spatial, kernel, stride, padding, dilation))
    return found


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("spatial,kernel,stride,padding,dilation", _geometries(24))
def test_dense_equals_torch(spatial, kernel, stride, padding, dilation):
    """y, the input gradient of one cotangent and of three at once (``is_grads_batched``) to
    1e-13 of torch's."""
    gen = torch.Generator().manual_seed(len(spatial) * 10 + sum(kernel))
    x = torch.randn((5, 3) + spatial, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn((4, 3) + kernel, generator=gen, dtype=F64)
    want = CONV[len(spatial)](x, w, None, stride, padding, dilation)
    got = dense_conv(x, w, stride, padding, dilation)
    tol = dict(rtol=1e-13, atol=1e-13 * want.abs().max().item())
    torch.testing.assert_close(got, want, **tol)
    with torch.no_grad():
        torch.testing.assert_close(dense_conv(x, w, stride, padding, dilation), want.detach(), **tol)
    gy = torch.randn((3,) + want.shape, generator=gen, dtype=F64)
    g_want = torch.autograd.grad(want, x, gy, is_grads_batched=True)[0]
    g_batched = torch.autograd.grad(got, x, gy, is_grads_batched=True, retain_graph=True)[0]
    g_one = torch.autograd.grad(got, x, gy[1])[0]
    torch.testing.assert_close(g_batched, g_want, rtol=1e-13, atol=1e-13 * g_want.abs().max().item())
    torch.testing.assert_close(g_one, g_want[1], rtol=1e-13, atol=1e-13 * g_want.abs().max().item())


@pytest.mark.parametrize("case,dense", [("2×2", True), ("4×4", True), ("4×4 stride 2", True), ("8×8", False),
                                        ("grouped", False), ("float32", False), ("weight gradient", False),
                                        ("over the cap", False), ("1×1 kernel on 2×2", False)])
def test_which_calls_take_the_dense_matrix(case, dense, monkeypatch):
    """S ≤ 2T input positions (3×3 kernels: maps up to 4×4; a 1×1 kernel: one position),
    ungrouped, float64, no weight gradient, D within ``DENSE_MAX_BYTES``."""
    H = {"4×4": 4, "4×4 stride 2": 4, "8×8": 8}.get(case, 2)
    k = 1 if case == "1×1 kernel on 2×2" else 3
    x = torch.randn(2, 8, H, H, dtype=torch.float32 if case == "float32" else F64)
    w = torch.randn(8, 4 if case == "grouped" else 8, k, k, dtype=x.dtype, requires_grad=case == "weight gradient")
    if case == "over the cap":
        monkeypatch.setattr(conv_dense, "DENSE_MAX_BYTES", 8 * 4 * 8 * 4 * 8 - 1)   # C·S·O·U doubles
    stride = (2, 2) if case == "4×4 stride 2" else (1, 1)
    assert by_dense(x, w, 2 if case == "grouped" else 1, stride, 1, (1, 1)) is dense


def test_dense_matrix_is_kept_per_weight_and_dropped_with_it():
    """The same weight and geometry give the same D; an in-place change of the weight gives a
    new D (the convolution of the new weight); a freed weight's D leaves the cache."""
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    x = torch.randn(2, 3, 2, 2, dtype=F64)
    D, _ = dense_matrix(w, (2, 2), (1, 1), 1, (1, 1))
    assert dense_matrix(w, (2, 2), (1, 1), 1, (1, 1))[0] is D
    assert dense_matrix(w, (3, 3), (1, 1), 1, (1, 1))[0] is not D
    w.mul_(2.0)
    torch.testing.assert_close(dense_conv(x, w, (1, 1), 1, (1, 1)), F.conv2d(x, w, None, 1, 1), rtol=1e-13, atol=1e-13)
    keys = {k for k in conv_dense._cache if k[0] == id(w)}
    assert len(keys) == 3
    del w, D
    gc.collect()
    assert not keys & set(conv_dense._cache)


def test_a_recorded_pass_of_a_model_takes_the_dense_gemm():
    """Inside ``tap_convs`` a model's convolutions on 2×2 maps run as the dense GEMM while the
    pass records a graph through the input (its backward node in the graph; the weights are
    constants, as intermod's parameter copies are), with torch's output and input gradient to
    1e-12; the 8×8 convolution stays torch's."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)).double().requires_grad_(False)
    x = torch.randn(4, 3, 8, 8, dtype=F64, requires_grad=True)
    want = model(x)
    g_want = torch.autograd.grad(want.square().sum(), x)[0]
    with conv_taps.tap_convs(True):
        got = model(x)
    names, stack = set(), [got.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None:
            names.add(type(fn).__name__)
            stack += [f for f, _ in fn.next_functions]
    assert "_DenseConvBackward" in names and "ConvolutionBackward0" in names
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got.square().sum(), x)[0], g_want, rtol=1e-12, atol=1e-12)
