"""core/conv_taps.py: the float64 convolution by one GEMM per kernel tap equals torch's on every
geometry the closed forms meet (1-, 2-, 3-d; stride, dilation, integer / "same" / "valid"
padding, even kernels, maps smaller than the kernel's reach), across chunk boundaries, and
leaves every other call (grouped, float32, under autograd) to torch; ``tap_convs`` runs a
model's own convolutions by taps in passes without autograd and never inside autograd, vmap,
jvp or forward AD."""

import pytest
import torch
import torch.nn.functional as F
from intermod.analysis.core import conv_taps
from intermod.analysis.core.conv_taps import convolve
from torch import nn

F64 = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
GEOMETRIES = [   # (spatial, kernel, stride, padding, dilation)
    ((9, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((9, 7), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((10, 8), (5, 3), (1, 2), (2, 0), (2, 1)),
    ((8, 8), (4, 4), (1, 1), "same", (1, 1)),       # even kernel: the odd pad goes after
    ((8, 9), (2, 3), (1, 1), "same", (3, 2)),
    ((6, 6), (3, 3), (1, 1), "valid", (1, 1)),
    ((5, 5), (1, 1), (2, 2), (0, 0), (1, 1)),
    ((3, 3), (3, 3), (1, 1), (3, 3), (1, 1)),       # padding wider than the map
    ((13,), (3,), (2,), (1,), (3,)),
    ((5, 4, 6), (3, 3, 3), (1, 2, 1), (1, 1, 1), (1, 1, 2)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("spatial,kernel,stride,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("chunk", [1 << 21, 64])
def test_taps_equal_torch(spatial, kernel, stride, padding, dilation, chunk, monkeypatch):
    """Every output element to 1e-13 of torch's, without torch's convolution (a 64-byte chunk:
    one sample per chunk)."""
    monkeypatch.setattr(conv_taps, "TAP_CHUNK_BYTES", chunk)
    monkeypatch.setattr(conv_taps, "TAP_MIN_BYTES", 0)
    gen = torch.Generator().manual_seed(len(spatial) + sum(kernel))
    x = torch.randn((5, 8) + spatial, generator=gen, dtype=F64)
    w = torch.randn((12, 8) + kernel, generator=gen, dtype=F64)
    want = CONV[len(spatial)](x, w, None, stride, padding, dilation)
    monkeypatch.setattr(conv_taps, "_CONV", {})      # torch's fallback would fail
    got = convolve(x, w, stride, padding, dilation)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13 * want.abs().max().item())


def test_integer_arguments_and_an_empty_batch(monkeypatch):
    monkeypatch.setattr(conv_taps, "TAP_MIN_BYTES", 0)
    x = torch.randn(3, 8, 7, 7, dtype=F64)
    w = torch.randn(4, 8, 3, 3, dtype=F64)
    torch.testing.assert_close(convolve(x, w, 2, 1, 1), F.conv2d(x, w, None, 2, 1, 1), rtol=1e-13, atol=1e-13)
    assert convolve(x[:0], w, 1, 1, 1).shape == (0, 4, 7, 7)


@pytest.mark.parametrize("case", ["grouped", "float32", "autograd", "small input", "4 channels", "9 outputs each"])
def test_other_calls_are_torch(case, monkeypatch):
    """Grouped, float32 and differentiated convolutions, inputs under ``TAP_MIN_BYTES``, fewer
    than 8 input channels or more than 4 outputs per input channel are torch's own (the taps
    never run; the gradient flows)."""
    monkeypatch.setattr(torch, "mm", lambda *a, **k: pytest.fail("the taps ran"))
    if case != "small input":
        monkeypatch.setattr(conv_taps, "TAP_MIN_BYTES", 0)
    C = 4 if case == "4 channels" else 8
    x = torch.randn(2, C, 6, 6, dtype=torch.float32 if case == "float32" else F64)
    w = torch.randn(9 * C if case == "9 outputs each" else C, C // 2 if case == "grouped" else C, 3, 3, dtype=x.dtype,
                    requires_grad=case == "autograd")
    groups = 2 if case == "grouped" else 1
    y = convolve(x, w, (1, 1), (1, 1), (1, 1), groups)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1, 1, groups))
    if case == "autograd":
        y.sum().backward()
        assert w.grad is not None


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2, padding="valid"),
                          nn.BatchNorm2d(8))
    return model.double().eval()


@pytest.fixture
def counted(monkeypatch):
    """Calls of the taps (the mode forced on every size)."""
    monkeypatch.setattr(conv_taps, "TAP_MIN_BYTES", 0)
    calls = []
    real = conv_taps.convolve
    monkeypatch.setattr(conv_taps, "convolve", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_the_model_runs_its_convolutions_by_taps(counted):
    """Inside ``tap_convs`` a float64 model's forward pass without autograd takes the taps for
    both convolutions (bias added) and equals torch's to 1e-13."""
    model = _conv_model()
    x = torch.randn(3, 8, 9, 9, dtype=F64)
    with torch.no_grad():
        want = model(x)
        with conv_taps.tap_convs(conv_taps.has_convolutions(model)):
            got = model(x)
    assert len(counted) == 2
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", ["autograd", "bias gradient", "vmap", "jvp", "forward AD"])
def test_recorded_and_transformed_passes_keep_torch(case, counted):
    """A pass that records a graph (through the input, or through a bias only), runs under vmap
    or torch.func.jvp, or holds forward-AD duals keeps torch's convolution, and its result and
    derivatives are torch's."""
    import torch.autograd.forward_ad as fwAD

    model = _conv_model()
    x = torch.randn(3, 8, 9, 9, dtype=F64)
    t = torch.randn_like(x)
    with conv_taps.tap_convs(conv_taps.has_convolutions(model)):
        if case == "autograd":
            got = torch.autograd.grad(model(x.requires_grad_()).sum(), x)[0]
        elif case == "bias gradient":
            model[0].weight.requires_grad_(False)
            model[2].weight.requires_grad_(False)
            got = torch.autograd.grad(model(x).sum(), model[0].bias)[0]
        elif case == "vmap":
            got = torch.vmap(model)(x[None])[0]
        elif case == "jvp":
            got = torch.func.jvp(model, (x,), (t,))[1]
        else:
            with fwAD.dual_level():
                got = fwAD.unpack_dual(model(fwAD.make_dual(x, t))).tangent
    assert counted == []
    x = x.detach()
    want = {"autograd": lambda: torch.autograd.grad(model(x.requires_grad_()).sum(), x)[0],
            "bias gradient": lambda: torch.autograd.grad(model(x).sum(), model[0].bias)[0],
            "vmap": lambda: model(x), "jvp": lambda: torch.func.jvp(model, (x,), (t,))[1],
            "forward AD": lambda: torch.func.jvp(model, (x,), (t,))[1]}[case]()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_model_without_convolutions_runs_without_the_mode():
    model = nn.Sequential(nn.Linear(3, 3)).double()
    with conv_taps.tap_convs(conv_taps.has_convolutions(model)):
        assert torch._C._len_torch_function_stack() == 0
    with conv_taps.tap_convs(conv_taps.has_convolutions(_conv_model())):
        assert torch._C._len_torch_function_stack() == 1
