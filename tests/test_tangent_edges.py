"""core/tangent_edges.py: edges of a traced chain's sections by forward-mode JVPs, one per input
direction, equal the plain VJPs' (one per output position and direction; 1e-10 on w²) for
sections no closed form covers: two ResNet blocks in one section (identity and projection
shortcut, per-position and mean slot), ResNet-50's Bottleneck blocks, a dilated max pool, modules that are not local
(GroupNorm, Upsample, a transposed convolution); gradient and integrated, slot and centring on
and off; the directions split over chunks anywhere; a section whose VJPs need one pass per
output direction keeps them."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import edges
from nets import BasicBlock, Bottleneck, TorchvisionResNet, batch_norm_statistics
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")
F64 = torch.float64
CASES = [(True, True), (False, True), (False, False)]   # (include_bias, center)


class Stages(nn.Module):
    """torchvision's ResNet in small, cut at its stages: two blocks per section."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.bn1, self.relu = nn.Conv2d(2, 3, 3, 1, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(3, 3), BasicBlock(3, 3))
        self.layer2 = nn.Sequential(BasicBlock(3, 4, 2), BasicBlock(4, 4))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)
        batch_norm_statistics(self)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _sequential(middle: list[nn.Module]) -> nn.Sequential:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), *middle, nn.Tanh(), nn.Conv2d(3, 2, 3), nn.Flatten())
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):   # a bias no slot hook places (β): not zero
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.normal_(0, 0.5)
    return model


MODELS = {   # model, layers, input shape, the sections the JVPs take
    "two blocks per section": (Stages, ["layer1", "layer2", "avgpool", "output"], (2, 8, 8), [0, 1]),
    "bottleneck blocks": (lambda: TorchvisionResNet(lambda: [Bottleneck(4, 2), Bottleneck(4, 2, 2)], 4, 4),
                          ["layer1.0", "layer1.1", "avgpool", "output"], (2, 8, 8), [0, 1]),
    "dilated max pool": (lambda: _sequential([nn.ReLU(), nn.MaxPool2d(3, 2, 1, dilation=2),
                                              nn.Conv2d(3, 3, 3, padding=1)]), ["1", "4", "output"], (2, 8, 7), [0]),
    "group norm": (lambda: _sequential([nn.GroupNorm(1, 3), nn.Conv2d(3, 3, 3, padding=1)]), ["1", "3", "output"],
                   (2, 6, 6), [0]),
    "upsample": (lambda: _sequential([nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3, padding=1)]),
                 ["1", "4", "output"], (2, 5, 4), [0]),
    "transposed conv": (lambda: _sequential([nn.ReLU(), nn.ConvTranspose2d(3, 3, 3, stride=2)]), ["1", "3", "output"],
                        (2, 4, 4), [0]),
}


def _calls(monkeypatch) -> list[int]:
    calls = []
    real = edges.tangent_edge_sums
    monkeypatch.setattr(edges, "tangent_edge_sums", lambda net, batch, j, *a, **k: calls.append(j) or real(
        net, batch, j, *a, **k))
    return calls


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("include_bias,center", CASES)
def test_tangent_edges_equal_the_plain_vjps(name, include_bias, center, monkeypatch):
    make, layers, shape, sections = MODELS[name]
    model = make().double().eval()
    X = torch.randn((7,) + shape, dtype=F64)
    basis = ia.compute_basis(model, X, layers, include_bias=include_bias, center=center, batch_size=4,
                             progress=False, structured=False)
    calls = _calls(monkeypatch)
    for method, n_alpha in (("gradient", 1), ("integrated", 3)):
        calls.clear()
        fast = ia.build_graph(model, X, basis, edge_method=method, n_alpha=n_alpha, batch_size=4, progress=False)
        assert sorted(set(calls)) == sections and len(calls) == 2 * len(sections)   # every batch (4 and 3 maps)
        plain = ia.build_graph(model, X, basis, edge_method=method, n_alpha=n_alpha, batch_size=4, progress=False,
                               structured=False)
        np.testing.assert_allclose(fast.w ** 2, plain.w ** 2, rtol=1e-10, atol=1e-12 * (plain.w ** 2).max())


def test_directions_split_over_chunks_anywhere():
    """A tiny max_memory: one input direction per chunk, the same edges."""
    make, layers, shape, _ = MODELS["two blocks per section"]
    model = make().double().eval()
    X = torch.randn((5,) + shape, dtype=F64)
    basis = ia.compute_basis(model, X, layers, progress=False)
    big, small = (ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=2, progress=False, max_memory=m)
                  for m in (1 << 29, 1 << 10))
    np.testing.assert_allclose(small.w, big.w, rtol=1e-12, atol=1e-14 * big.w.max())


def test_sections_with_one_pass_per_direction_keep_the_vjps(monkeypatch):
    """Two 1×1 convolutions with two activations read one position (one colour, no closed form):
    their VJPs need k' passes, no more than the JVPs' k, so the edges keep them;
    ``structured=False`` keeps them everywhere."""
    model = _sequential([nn.ReLU(), nn.Conv2d(3, 3, 1), nn.Softplus(), nn.Conv2d(3, 3, 1)]).double().eval()
    X = torch.randn(4, 2, 5, 5, dtype=F64)
    basis = ia.compute_basis(model, X, ["1", "5", "output"], progress=False)
    calls = _calls(monkeypatch)
    ia.build_graph(model, X, basis, progress=False)
    assert calls == []
    make, layers, shape, _ = MODELS["two blocks per section"]
    model = make().double().eval()
    X = torch.randn((3,) + shape, dtype=F64)
    ia.build_graph(model, X, ia.compute_basis(model, X, layers, progress=False), progress=False, structured=False)
    assert calls == []


class MeanHead(nn.Module):
    """A conv net whose forward ends in ``x.mean((2, 3))``: not a chain of modules, so its
    sections run by hooks, and the forward-mode pass maps over the slot's tangents too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.stem, self.mid, self.head = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.mid(torch.relu(self.stem(x))))).mean((2, 3))


@pytest.mark.parametrize("method", ["gradient", "integrated"])
def test_tangent_edges_of_a_model_run_by_hooks_equal_the_vjps(method, monkeypatch):
    """The slot's tangents come flattened over positions; the hooked path reshapes them to the
    slot's positions as the chain path does (it raised a size mismatch before)."""
    model = MeanHead().double().eval()
    X = torch.randn(5, 2, 7, 6, dtype=torch.float64)
    layers = ["mid", "head", "output"]
    basis = ia.compute_basis(model, X, layers, progress=False)
    used = []
    real = edges.tangent_edge_sums
    monkeypatch.setattr(edges, "tangent_edge_sums", lambda *a, **k: used.append(1) or real(*a, **k))
    fast = ia.build_graph(model, X, basis, edge_method=method, n_alpha=3, progress=False)
    plain = ia.build_graph(model, X, basis, edge_method=method, n_alpha=3, progress=False, structured=False)
    assert used
    for a, b in zip(layers[:-1], layers[1:]):
        want = plain.edge_matrix(a, b) ** 2
        np.testing.assert_allclose(fast.edge_matrix(a, b) ** 2, want, rtol=1e-10, atol=1e-12 * want.max())
