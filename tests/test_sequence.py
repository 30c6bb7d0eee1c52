"""core/sequence.py: models written as classes whose forward is a chain of modules and
elementwise functions get the closed forms of the same nn.Sequential (float64, 1e-10 against
the Sequential and against batched VJPs); anything else keeps the generic path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from intermod import analysis as ia
from intermod.analysis.core import jacobian_grams, sequence
from intermod.analysis.core.sequence import ModuleSequence, module_sequence
from intermod.analysis.core.setup import prepare
from intermod.analysis.core.structured import affine_section
from nets import TorchvisionResNet, batch_norm_statistics
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")


class FunctionalMLP(nn.Module):
    """fc1 → torch.relu → fc2 → F.gelu(tanh) → dropout → fc3 → x.tanh() → fc4."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(6, 9), nn.Linear(9, 7), nn.Linear(7, 5), nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = F.dropout(F.gelu(self.fc2(x), approximate="tanh"), 0.2, self.training)
        return self.fc4(self.fc3(x).tanh())

    def as_sequential(self) -> nn.Sequential:
        return nn.Sequential(self.fc1, nn.ReLU(), self.fc2, nn.GELU("tanh"), nn.Dropout(0.2), self.fc3, nn.Tanh(),
                             self.fc4)


class Block(nn.Module):
    def __init__(self, a: int, b: int, act: bool):
        super().__init__()
        self.linear = nn.Linear(a, b)
        self.activation = nn.ReLU() if act else None

    def forward(self, x):
        x = self.linear(x)
        return x if self.activation is None else self.activation(x)


class BlockMLP(nn.Module):
    """Blocks of Linear and ReLU in a ModuleList, cut at the blocks ("layers.1")."""

    def __init__(self, sizes=(6, 8, 8, 3)):
        super().__init__()
        torch.manual_seed(1)
        self.layers = nn.ModuleList([Block(a, b, i < len(sizes) - 2) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _net(model, layers, X):
    return prepare(model, X, layers, output_fn=None, include_bias=True, dtype=torch.float64, batch_size=16,
                   device="cpu", seed=0, progress=False, callback=None).net


def _same(a, b, ga, gb):
    """Two bases of one network (layers in order, whatever their names) and their graphs."""
    for n, m in zip(a.layers, b.layers, strict=True):
        np.testing.assert_allclose(a[n].Lambda, b[m].Lambda, rtol=1e-10, atol=1e-13 * b[m].Lambda.max())
        np.testing.assert_allclose(a[n].C, b[m].C, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(ga.w, gb.w, rtol=1e-9, atol=1e-12 * gb.w.max())


def _same_as_generic(model, X, layers):
    """Basis and edges with the sequence's fast paths = with batched VJPs, both targets."""
    for target in ("output", "next_layer"):
        fast, plain = (ia.compute_basis(model, X, layers, jacobian_target=target, structured=s, progress=False)
                       for s in (True, False))
        _same(fast, plain, ia.build_graph(model, X, fast, progress=False),
              ia.build_graph(model, X, plain, progress=False, structured=False))


@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center,include_bias", [(True, True), (False, False)])
def test_a_functional_mlp_is_read_as_its_sequential(target, center, include_bias):
    model = FunctionalMLP().double()
    X = torch.randn(40, 6, dtype=torch.float64)
    net = _net(model, ["fc1", "fc2", "fc3", "fc4", "output"], X)
    assert set(net.heads) == {"fc2", "fc3", "fc4"}          # fc1 widens: no head, its W₁ is in section 0
    kinds = [[type(m) for m in net.section_modules(j)] for j in range(4)]   # stand-ins for the functions
    assert kinds == [[nn.Linear, nn.ReLU], [nn.GELU, nn.Identity], [nn.Tanh], []], kinds
    assert net.section_modules(1)[0].approximate == "tanh"
    assert all(affine_section(net, j) is not None for j in range(4))
    opts = dict(jacobian_target=target, center=center, include_bias=include_bias, batch_size=16, progress=False)
    seq = model.as_sequential()
    runs = [(model, ["fc1", "fc2", "fc3", "fc4", "output"], True), (seq, ["0", "2", "5", "7", "output"], True),
            (model, ["fc1", "fc2", "fc3", "fc4", "output"], False)]
    results = []
    for m, layers, structured in runs:
        b = ia.compute_basis(m, X, layers, structured=structured, **opts)
        results.append((b, ia.build_graph(m, X, b, batch_size=16, progress=False, structured=structured)))
    (a, ga), (s, gs), (v, gv) = results
    _same(a, s, ga, gs)
    _same(a, v, ga, gv)


def test_blocks_cut_at_their_paths_take_the_closed_forms(monkeypatch):
    """Layers named by blocks whose forward is itself a chain ("layers.0" = Linear, ReLU): the
    blocks' Linears are the layers' heads, the output target pulls its cotangents back in closed
    form (no VJP runs), and basis and edges equal the generic path's and those of the same
    nn.Sequential cut at its Linears."""
    model = BlockMLP(sizes=(6, 8, 8, 3)).double()
    X = torch.randn(30, 6, dtype=torch.float64)
    layers = ["layers.0", "layers.1", "layers.2", "output"]
    net = _net(model, layers, X)
    assert net.heads == {f"layers.{i}": model.layers[i].linear for i in range(3)}
    assert [[type(m) for m in net.section_modules(j)] for j in range(3)] == [[nn.ReLU], [nn.ReLU], []]
    assert net.modules_before("layers.2") == [model.layers[0].linear, model.layers[0].activation,
                                              model.layers[1].linear, model.layers[1].activation]
    seq = nn.Sequential(*(m for block in model.layers for m in (block.linear, block.activation) if m is not None))
    for target in ("output", "next_layer"):
        opts = dict(jacobian_target=target, progress=False)
        plain = ia.compute_basis(model, X, layers, structured=False, **opts)
        as_seq = ia.compute_basis(seq, X, ["0", "2", "4", "output"], **opts)
        monkeypatch.setattr(jacobian_grams, "vjp", lambda *a: pytest.fail("a VJP ran"))
        fast = ia.compute_basis(model, X, layers, **opts)
        monkeypatch.undo()
        g_fast = ia.build_graph(model, X, fast, progress=False)
        _same(fast, plain, g_fast, ia.build_graph(model, X, plain, progress=False, structured=False))
        _same(fast, as_seq, g_fast, ia.build_graph(seq, X, as_seq, progress=False))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h if bool(h.sum() > 0) else -h)   # on data: not traceable


class RawWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.W = nn.Linear(4, 4), nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return torch.relu(self.a(x)) @ self.W


class Reshaping(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.a(x).view(-1, x.size(1) * 4))   # reads the size of the input, not the chain's


@pytest.mark.parametrize("model,X,cut", [(Residual(), torch.randn(5, 4), "a"), (Twice(), torch.randn(5, 4), "b"),
                                         (Branching(), torch.randn(5, 4), "a"), (RawWeight(), torch.randn(5, 4), "a"),
                                         (Reshaping(), torch.randn(5, 2, 4), "a")])
def test_models_that_are_not_chains_keep_the_generic_path(model, X, cut):
    """A residual sum, a module called twice (weights shared along the chain), a branch on data,
    a parameter used outside a module, a reshape that reads a size other than the batch's."""
    model = model.double()
    X = X.double()
    net = _net(model, [cut, "output"], X)
    assert net.section_modules(0) is None and net.modules_before(cut) is None
    basis = ia.compute_basis(model, X, [cut, "output"], progress=False)     # and still runs
    assert basis[cut].k > 0


class LinearBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.fc(x))


def test_a_sequential_of_blocks_is_traced_through_them():
    """An nn.Sequential of torch's modules is its children; with a block of another class, the
    chain runs through the block's modules (past the Linear head, its section is the torch.tanh
    call, read as nn.Tanh: a closed form); a block that branches on data keeps the children, and
    the generic path for it."""
    X = torch.randn(6, 4, dtype=torch.float64)
    plain = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    assert _net(plain, ["0", "2", "output"], X).section_modules(0) == [plain[1]]
    torch.manual_seed(0)
    blocks = nn.Sequential(nn.Linear(4, 4), LinearBlock(), nn.Linear(4, 2)).double()
    net = _net(blocks, ["1", "2", "output"], X)
    assert [type(m) for m in net.section_modules(0)] == [nn.Tanh]
    assert affine_section(net, 0) is not None
    fast = ia.compute_basis(blocks, X, ["1", "2", "output"], jacobian_target="next_layer", progress=False)
    slow = ia.compute_basis(blocks, X, ["1", "2", "output"], jacobian_target="next_layer", structured=False,
                            progress=False)
    np.testing.assert_allclose(fast["1"].M, slow["1"].M, rtol=1e-10, atol=1e-13)
    branching = nn.Sequential(nn.Linear(4, 4), Branching(), nn.Linear(4, 2)).double()
    net = _net(branching, ["1", "2", "output"], X)
    assert net.section_modules(0) == [branching[1]] and affine_section(net, 0) is None


def test_a_trace_that_does_not_reproduce_the_model_is_not_used(monkeypatch):
    """The traced chain is checked against the model's own output: a chain missing a function
    (here the ReLU) is rejected; so is one checked against a model in training mode (dropout)."""
    model = FunctionalMLP().double().eval()
    X = torch.randn(8, 6, dtype=torch.float64)
    params = dict(model.named_parameters())
    right = sequence._traced(model)
    found = module_sequence(model, ["fc1", "fc3"], X, params, model(X))
    assert right is not None and found is not None and found.paths == right.paths
    wrong = ModuleSequence(*(field[:1] + field[2:] for field in (right.modules, right.paths, right.scopes, right.names)))
    assert module_sequence(model.train(), ["fc1", "fc3"], X, params, model(X)) is None
    monkeypatch.setattr(sequence, "_traced", lambda m: wrong)
    assert module_sequence(model.eval(), ["fc1", "fc3"], X, params, model(X)) is None


class PoolingCNN(nn.Module):
    def __init__(self, flatten: str):
        super().__init__()
        torch.manual_seed(2)
        self.c1, self.c2, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(16, 3)
        self.flatten = flatten

    def forward(self, x):
        x = F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2)))
        if self.flatten == "torch.flatten":
            x = torch.flatten(x, 1)
        elif self.flatten == "view":
            x = x.view(x.size(0), -1)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.fc(x)


@pytest.mark.parametrize("flatten", ["torch.flatten", "view", "reshape"])
def test_a_cnn_class_with_pooling_and_flatten_functions_equals_the_generic_path(flatten):
    model = PoolingCNN(flatten).double()
    X = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    layers = ["c1", "c2", "fc", "output"]
    net = _net(model, layers, X)
    assert [type(m) for m in net.section_modules(0)] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    flat = net.section_modules(1)[-1]
    assert isinstance(flat, nn.Flatten) and flat.start_dim == 1 and flat.end_dim == -1
    _same_as_generic(model, X, layers)


class Tied(nn.Module):
    """fc2 shares fc1's weight: the model lists it once, as "fc1.weight"."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2, self.out = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_a_weight_shared_by_two_modules_is_read_under_the_models_name():
    """A float32 model analysed in float64: each module of the chain takes the float64 copy of
    its tensors, the shared one too (under the name the model lists it by)."""
    model = Tied().float()
    X = torch.randn(30, 5, dtype=torch.float32)
    layers = ["fc1", "fc2", "out", "output"]
    net = _net(model, layers, X)
    assert net.section_modules(0) is not None and "fc2.weight" not in net.params
    _same_as_generic(model, X, layers)


class ResBlock(nn.Module):
    def __init__(self, d: int, h: int, act: nn.Module, norm: bool = False, post: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(d) if norm else nn.Identity()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), act, nn.Linear(h, d)
        self.post = post

    def forward(self, x):
        y = x + self.fc2(self.act(self.fc1(self.norm(x))))
        return torch.relu(y) if self.post else y


class ResMLP(nn.Module):
    """Linear in, residual blocks x + W₂σ(W₁x) cut at the blocks, Linear out."""

    def __init__(self, blocks):
        super().__init__()
        torch.manual_seed(4)
        self.inp, self.out = nn.Linear(5, 6), nn.Linear(6, 3)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        x = torch.tanh(self.inp(x))
        for block in self.blocks:
            x = block(x)
        return self.out(x)


RES_LAYERS = ["blocks.0", "blocks.1", "out", "output"]


@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center,include_bias", [(True, True), (False, True), (False, False)])
def test_residual_blocks_take_their_closed_form(target, center, include_bias, monkeypatch):
    """J = I + W₂ diag(σ′) W₁: the Grams (next-layer and output target, no VJP runs) and the
    edges (gradient and integrated; chunked GEMMs and per-sample GEMMs) equal the generic path
    within 1e-10."""
    from intermod.analysis.core import affine_edges

    model = ResMLP([ResBlock(6, 9, nn.ReLU()), ResBlock(6, 4, nn.GELU())]).double()
    X = torch.randn(45, 5, dtype=torch.float64)
    net = _net(model, RES_LAYERS, X)
    sections = [affine_section(net, j) for j in range(2)]
    assert all(sec is not None and sec.residual for sec in sections)
    opts = dict(jacobian_target=target, center=center, include_bias=include_bias, batch_size=16, progress=False)
    plain = ia.compute_basis(model, X, RES_LAYERS, structured=False, **opts)
    monkeypatch.setattr(jacobian_grams, "vjp", lambda *a: pytest.fail("a VJP ran"))
    fast = ia.compute_basis(model, X, RES_LAYERS, **opts)
    monkeypatch.undo()
    for method in ("gradient", "integrated"):
        g_plain = ia.build_graph(model, X, plain, edge_method=method, n_alpha=3, batch_size=16, progress=False,
                                 structured=False)
        for threshold in (1 << 62, 0):                     # chunked GEMMs, then one GEMM per sample
            monkeypatch.setattr(affine_edges, "PER_SAMPLE_MIN_MACS", threshold)
            g_fast = ia.build_graph(model, X, fast, edge_method=method, n_alpha=3, batch_size=16, progress=False)
            _same(fast, plain, g_fast, g_plain)


def test_residual_blocks_without_the_form_keep_batched_vjps():
    """A LayerNorm before the block's Linear, or a ReLU after the sum: the model is still a
    chain of residual units (its sections run alone), the sections have no closed form, and the
    result equals the generic path."""
    model = ResMLP([ResBlock(6, 9, nn.ReLU(), norm=True), ResBlock(6, 4, nn.GELU(), post=True)]).double()
    X = torch.randn(30, 5, dtype=torch.float64)
    net = _net(model, RES_LAYERS, X)
    assert net.section_modules(0) is not None
    assert affine_section(net, 0) is None and affine_section(net, 1) is None
    _same_as_generic(model, X, RES_LAYERS)


class ConvBlock(nn.Module):
    """x + c2(relu(c1(x))), with batch norms after the convolutions (``bn``), or x + c1(x)
    (``single``)."""

    def __init__(self, c: int, bn: bool = False, single: bool = False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.n1, self.n2 = (nn.BatchNorm2d(c), nn.BatchNorm2d(c)) if bn else (nn.Identity(), nn.Identity())
        self.single = single

    def forward(self, x):
        if self.single:
            return x + self.c1(x)
        return x + self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))


class ResCNN(nn.Module):
    """A ResNet-like stack: stem, two residual blocks x + conv(relu(conv(x))), 1×1 head, pool."""

    def __init__(self, bn: bool = False, single: bool = False):
        super().__init__()
        torch.manual_seed(5)
        self.stem, self.head = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.b1, self.b2 = ConvBlock(3, bn), ConvBlock(3, bn, single)
        batch_norm_statistics(self)

    def forward(self, x):
        x = self.b2(self.b1(torch.relu(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1)


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("block", ["plain", "batch norm", "single conv"])
def test_residual_conv_blocks_take_the_conv_edges_and_grams(include_bias, block, monkeypatch):
    """A residual unit of local convolutions is local (its map: the body's and the identity's):
    its edges take the conv closed form with the identity's term T = C_dataᵀ Q_data at each
    position (no VJP), and a body of two convolutions its next-layer Gram from paired σ′ moments
    (core/two_conv_grams.py; a single convolution x + conv(x), coloured cotangents); basis and
    edges, gradient and integrated, equal the plain VJPs (1e-9). Batch norms fold into their
    convolutions; a block x + conv(x) has no activation."""
    from intermod.analysis.core import conv_grams, convolution, edges
    from intermod.analysis.core.colouring import section_colouring

    model = ResCNN(bn=block == "batch norm", single=block == "single conv").double().eval()
    X = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    layers = ["b1", "b2", "head", "output"]
    net = prepare(model, X, layers, output_fn=None, include_bias=include_bias, dtype=torch.float64,
                  batch_size=16, device="cpu", seed=0, progress=False, callback=None).net
    col = section_colouring(net, 0, (5, 3, 8, 8), torch.device("cpu"))
    assert col is not None and int(col.colour.max()) + 1 < 64          # fewer colours than positions
    secs = [convolution.conv_section(net, j) for j in range(2)]        # the sections b1 -> b2 -> head
    assert all(sec is not None and sec.residual for sec in secs)
    assert [sec.gram_closed for sec in secs] == [True, block != "single conv"]
    assert (secs[1].act is None) == (block == "single conv")
    calls, grams = [], []
    monkeypatch.setattr(edges, "conv_edge_sums", lambda sec, *a, **k: calls.append(sec.residual)
                        or convolution.conv_edge_sums(sec, *a, **k))
    two_conv = conv_grams.two_conv_next_layer_gram
    monkeypatch.setattr(conv_grams, "two_conv_next_layer_gram",
                        lambda *a, **k: grams.append(out := two_conv(*a, **k)) or out)
    for target in ("output", "next_layer"):
        opts = dict(jacobian_target=target, include_bias=include_bias, center=include_bias, progress=False)
        grams.clear()
        fast = ia.compute_basis(model, X, layers, **opts)
        assert [g is not None for g in grams] == ([True] * (1 + (block != "single conv"))
                                                  if target == "next_layer" else [])
        plain = ia.compute_basis(model, X, layers, structured=False, **opts)
        for method in ("gradient", "integrated"):
            calls.clear()
            _same(fast, plain, ia.build_graph(model, X, fast, edge_method=method, n_alpha=3, progress=False),
                  ia.build_graph(model, X, plain, edge_method=method, n_alpha=3, progress=False, structured=False))
            assert calls == [True, True]                               # the two blocks' sections


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_torchvision_resnet_blocks_are_read_as_residual_units(include_bias, activation, monkeypatch):
    """A block whose ReLU module runs twice and whose shortcut is x or a projection is one
    :class:`Residual` unit (body, shortcut) of the chain; its sections are local (fewer colours
    than positions), their next-layer Grams are summed over receptive fields (core/field_grams.py)
    instead of one VJP per position, and their edges take the conv closed form with the activation
    after the sum (core/conv_post.py); basis
    and edges (both targets, gradient and integrated) equal the generic path's, which runs the
    model itself by hooks (the traced chain switched off), within 1e-10. A cut at the ReLU that
    runs twice is refused by name."""
    from intermod.analysis.core import convolution, edges, field_grams, jacobian_grams, nodes
    from intermod.analysis.core.colouring import section_colouring

    model = TorchvisionResNet().double().eval()
    if activation == "softplus":   # a smooth σ and σ_post: the integrated path differs from the gradient
        for block in model.layer1:
            block.relu = nn.Softplus()
    X = torch.randn(3, 2, 12, 12, dtype=torch.float64)
    layers = ["layer1.0", "layer1.1", "avgpool", "output"]
    net = prepare(model, X, layers, output_fn=None, include_bias=include_bias, dtype=torch.float64, batch_size=4,
                  device="cpu", seed=0, progress=False, callback=None).net
    units = [m for m in net.section_modules(0) + net.section_modules(1) if isinstance(m, sequence.Residual)]
    assert [len(u.shortcut) for u in units] == [0, 2]                   # x itself, then conv + batch norm
    acts = net.forward(X)
    cols = [section_colouring(net, j, tuple(acts[net.chain[j]].shape), torch.device("cpu")) for j in range(2)]
    assert all(c is not None and c.n_colours < c.n_out for c in cols)
    with pytest.raises(ValueError, match="runs more than once"):
        _net(model, ["layer1.0.relu", "output"], X)
    secs = [convolution.conv_section(net, j) for j in range(2)]
    assert [(s.shortcut is not None, s.post is not None, s.gram_closed) for s in secs] == [(False, True, False),
                                                                                          (True, True, False)]
    calls, fields = [], []
    monkeypatch.setattr(edges, "conv_edge_sums", lambda sec, *a, **k: calls.append(sec.post is not None)
                        or convolution.conv_edge_sums(sec, *a, **k))
    monkeypatch.setattr(jacobian_grams, "field_gram", lambda sec, *a, **k: fields.append(sec.post is not None)
                        or field_grams.field_gram(sec, *a, **k))
    for target in ("next_layer", "output"):
        opts = dict(jacobian_target=target, include_bias=include_bias, center=include_bias, progress=False)
        fast = ia.compute_basis(model, X, layers, **opts)
        assert fields == ([True, True] if target == "next_layer" else [])   # both blocks, one batch
        fields.clear()
        graphs = [ia.build_graph(model, X, fast, edge_method=m, n_alpha=3, progress=False)
                  for m in ("gradient", "integrated")]
        small = ia.build_graph(model, X, fast, max_memory=1 << 14, progress=False)   # one map per chunk
        np.testing.assert_allclose(small.w, graphs[0].w, rtol=1e-12, atol=1e-14 * graphs[0].w.max())
        assert calls == [True, True] * 3
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(nodes, "module_sequence", lambda *a, **k: None)
            generic = ia.compute_basis(model, X, layers, structured=False, **opts)
            assert _net(model, layers, X).section_modules(0) is None
            plain = [ia.build_graph(model, X, generic, edge_method=m, n_alpha=3, progress=False, structured=False)
                     for m in ("gradient", "integrated")]
        for g, p in zip(graphs, plain):
            _same(fast, generic, g, p)
