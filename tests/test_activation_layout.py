"""Activation layouts: samples ↔ activations, how a layer's layout is chosen, and the errors
for ambiguous tensors; TransformerLens models; the ``digits_cnn`` example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from intermod import analysis as ia
from intermod.analysis.core.layout import LAYOUTS, Layout, spread_slot
from intermod.analysis.core.nodes import NodeModel
from torch import nn

F64 = torch.float64
QUIET = {"progress": False, "device": "cpu", "dtype": F64}


# --------------------------------------------------------------------------- the maps


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(LAYOUTS), shape=st.lists(st.integers(1, 4), min_size=2, max_size=5),
       lead=st.integers(0, 2))
def test_from_samples_inverts_to_samples(kind, shape, lead):
    if kind == "features":
        shape = shape[:2]
    t = torch.randn([2] * lead + shape, dtype=F64)
    lay = Layout(kind)
    x = lay.to_samples(t, len(shape))
    assert x.shape == tuple([2] * lead) + (shape[0], lay.n_positions(shape), lay.n_features(shape))
    assert torch.equal(lay.from_samples(x, shape), t)
    assert lay.slot_shape(shape)[0] == shape[0]


def test_channels_reads_a_feature_map_as_channels_at_positions():
    t = torch.arange(2 * 3 * 2 * 2, dtype=F64).reshape(2, 3, 2, 2)   # (B, C, H, W)
    x = Layout("channels").to_samples(t)
    assert x.shape == (2, 4, 3)
    assert torch.equal(x[1, 2], t[1, :, 1, 0])                           # sample (b=1, h=1, w=0)
    assert Layout("flatten").to_samples(t).shape == (2, 1, 12)
    assert Layout("tokens").to_samples(t).shape == (2, 6, 2)
    assert Layout("channels").slot_shape(t.shape) == (2, 2, 2)


def test_weights_use_the_mask_only_for_one_position_axis():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    w = Layout("tokens").weights((2, 3, 5), mask, F64, "cpu")
    assert torch.equal(w, mask.to(F64))
    assert torch.equal(Layout("features").weights((2, 5), mask, F64, "cpu"), torch.ones(2, 1, dtype=F64))


def test_spread_slot_keeps_positions_or_spreads_over_valid_ones():
    g = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=F64)                    # (K=1, B=1, P=3)
    assert torch.equal(spread_slot(g, torch.ones(1, 3, dtype=F64)), g)
    out = spread_slot(torch.tensor([[[6.0]]], dtype=F64), torch.tensor([[1.0, 1.0, 0.0]], dtype=F64))
    assert torch.equal(out, torch.tensor([[[3.0, 3.0, 0.0]]], dtype=F64))


def test_bad_layout_names_are_errors():
    with pytest.raises(ValueError, match="layout must be one of"):
        Layout("nchw")
    with pytest.raises(ValueError, match="do not fit"):
        Layout("channels").from_samples(torch.zeros(2, 4, 3), (2, 3, 2, 3))


# --------------------------------------------------------------------------- choosing


class Conv1dNet(nn.Module):
    """(B, C, L) through a Conv1d, then mean over length: the (B, C, L) input of ``act`` is
    read by no layer-type module, so only the rules decide."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(3, 4, 3, padding=1, dtype=F64)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2, dtype=F64)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(-1))


def _seq_data():
    return torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_conv1d_input_is_channels_and_its_output_is_told_by_its_producer():
    model = Conv1dNet()
    basis = ia.compute_basis(model, _seq_data(), ["conv", "act", "head", "output"], **QUIET)
    assert basis.options["layout"] == {"conv": "channels", "act": "channels", "head": "features",
                                       "output": "features"}
    assert basis["conv"].dim == 3 and basis["act"].dim == 4
    assert basis.n_samples == 6 * 5                                       # every (input, position)


def test_ambiguous_3d_activation_is_an_error_that_says_how_to_choose():
    class Opaque(nn.Module):   # a custom module: neither reads nor produces a known layout
        def forward(self, x):
            return x * 2.0

    model = nn.Sequential(nn.Conv1d(3, 3, 1, dtype=F64), Opaque(), Opaque(), nn.Flatten(),
                          nn.Linear(15, 2, dtype=F64))
    x = _seq_data()
    with pytest.raises(ValueError, match=r"layer '2'.*\(batch, channels, length\).*layout=\{'2': 'tokens'\}"):
        ia.compute_basis(model, x, ["2", "output"], **QUIET)
    tokens = ia.compute_basis(model, x, ["2", "output"], layout={"2": "tokens"}, **QUIET)
    channels = ia.compute_basis(model, x, ["2", "output"], layout={"2": "channels"}, **QUIET)
    flat = ia.compute_basis(model, x, ["2", "output"], layout={"2": "flatten"}, **QUIET)
    assert (tokens["2"].dim, channels["2"].dim, flat["2"].dim) == (5, 3, 15)
    assert (tokens.n_samples, channels.n_samples, flat.n_samples) == (6 * 3, 6 * 5, 6)


def test_layout_override_is_kept_and_reused_by_build_graph():
    model = Conv1dNet()
    x = _seq_data()
    basis = ia.compute_basis(model, x, ["act", "head", "output"], layout={"act": "flatten"}, **QUIET)
    assert basis["act"].dim == 20 and basis["act"].layout == "flatten"
    graph = ia.build_graph(model, x, basis, **QUIET)
    assert graph.metadata["layout"]["act"] == "flatten"
    assert graph.edge_matrix("act", "head").shape == (basis["head"].k, basis["act"].k)
    with pytest.raises(ValueError, match="not node layers"):
        ia.compute_basis(model, x, ["act", "output"], layout={"conv": "flatten"}, **QUIET)
    with pytest.raises(ValueError, match="use 'flatten'"):
        ia.compute_basis(model, x, ["act", "output"], layout="features", **QUIET)


def test_flatten_layout_equals_a_model_that_flattens_first():
    """Reading a conv map with ``layout='flatten'`` is the same analysis as cutting a model
    whose node layer is the flattened map: same G, M, Λ."""
    torch.manual_seed(1)
    conv, lin = nn.Conv2d(2, 3, 3, padding=1, dtype=F64), nn.Linear(3 * 9, 4, dtype=F64)
    a = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), lin)
    b = nn.Sequential(conv, nn.Flatten(), nn.Tanh(), lin)
    x = torch.randn(30, 2, 3, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    ba = ia.compute_basis(a, x, ["1", "output"], layout={"1": "flatten"}, **QUIET)
    bb = ia.compute_basis(b, x, ["2", "output"], **QUIET)
    np.testing.assert_allclose(ba["1"].M, bb["2"].M, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ba["1"].Lambda, bb["2"].Lambda, rtol=1e-9)


def test_flatten_layout_into_a_conv_equals_a_model_that_unflattens():
    """A conv map read with ``layout='flatten'`` (one sample per image) that feeds another conv:
    the bias slot is one per image and scales the conv's bias at every position. Same G, M
    (bias row included) and Λ as a model whose node layer is the flat vector, unflattened
    before the conv."""
    torch.manual_seed(3)
    c1, c2 = nn.Conv2d(2, 3, 3, padding=1, dtype=F64), nn.Conv2d(3, 2, 3, padding=1, dtype=F64)
    lin = nn.Linear(2 * 9, 4, dtype=F64)
    a = nn.Sequential(c1, nn.Tanh(), c2, nn.Flatten(), lin)
    b = nn.Sequential(c1, nn.Tanh(), nn.Flatten(), nn.Unflatten(1, (3, 3, 3)), c2, nn.Flatten(), lin)
    x = torch.randn(30, 2, 3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    for target in ("output", "next_layer"):
        ba = ia.compute_basis(a, x, ["2", "4", "output"], layout={"2": "flatten"}, jacobian_target=target, **QUIET)
        bb = ia.compute_basis(b, x, ["3", "6", "output"], jacobian_target=target, **QUIET)
        assert ba["2"].layout == "flatten" and ba["2"].dim == 27
        np.testing.assert_allclose(ba["2"].M, bb["3"].M, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(ba["2"].Lambda, bb["3"].Lambda, rtol=1e-9)


# --------------------------------------------------------------------------- TransformerLens


@pytest.fixture(scope="module")
def hooked():
    tl = pytest.importorskip("transformer_lens")
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=6, d_head=4, n_heads=2, d_mlp=16,
                                     d_vocab=11, act_fn="gelu", normalization_type="LN", seed=0, dtype=torch.float64)
    model = tl.HookedTransformer(cfg)   # cfg.dtype float64: with float32 its attention pattern is cast to float32
    with torch.no_grad():   # TransformerLens initialises biases to 0: make them matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, 11, (6, 6), generator=torch.Generator().manual_seed(0))
    return model, ids


def test_transformer_lens_by_module_path_or_hook_name(hooked):
    """``blocks.0`` and ``blocks.0.hook_resid_pre`` read the same tensor: the same basis; the
    biases (``b_Q``, ``b_in``, ``b_U``, LayerNorm ``b``) are folded into the bias slot."""
    model, ids = hooked
    paths = ["blocks.0", "blocks.1", "output"]
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "output"]
    by_path = ia.compute_basis(model, ids, paths, **QUIET)
    by_hook = ia.compute_basis(model, ids, hooks, **QUIET)
    assert by_path.options["layout"]["blocks.0"] == "tokens" and by_path["blocks.0"].dim == 8
    assert by_path["output"].dim == 11
    for p, h in zip(paths, hooks):
        np.testing.assert_allclose(by_hook[h].M, by_path[p].M, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(by_hook[h].Lambda, by_path[p].Lambda, rtol=1e-10)
    net = NodeModel(model, paths, ids, output_fn=None, include_bias=True, dtype=F64,
                    device=torch.device("cpu"))
    assert {"blocks.0.attn.b_Q", "blocks.0.mlp.b_in", "unembed.b_U"} <= set(net.bias_names)
    graph = ia.build_graph(model, ids, by_hook, **QUIET)
    assert graph.edge_matrix(hooks[0], hooks[1]).shape == (by_hook[hooks[1]].k, by_hook[hooks[0]].k)


@pytest.mark.parametrize("method,n_alpha", [("gradient", 1), ("integrated", 3)])
def test_transformer_lens_edges_by_jvps_equal_the_plain_vjps(hooked, method, n_alpha):
    """TransformerLens's sections (attention; biases that are raw parameters, folded through
    forward-mode tangents β) take one vmapped forward-mode pass per input direction: the same
    edges as one VJP per output position and direction (1e-10 on w²)."""
    model, ids = hooked
    layers = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "output"]
    basis = ia.compute_basis(model, ids, layers, **QUIET)
    fast, plain = (ia.build_graph(model, ids, basis, edge_method=method, n_alpha=n_alpha, structured=s, **QUIET)
                   for s in (True, False))
    for a, b in zip(layers, layers[1:]):
        w2, ref = fast.edge_matrix(a, b) ** 2, plain.edge_matrix(a, b) ** 2
        np.testing.assert_allclose(w2, ref, rtol=1e-10, atol=1e-10 * ref.max())


# --------------------------------------------------------------------------- digits_cnn


def test_digits_cnn_example_trains_to_target_and_cuts_across_pooling():
    from intermod.analysis import examples
    from intermod.analysis.examples import digits_cnn

    ex = examples.load("digits_cnn")
    assert ex.extra["weights"] == "shipped"
    assert ex.extra["test_accuracy"] >= digits_cnn.TARGET_ACCURACY
    x = ex.inputs[:24]
    basis = ia.compute_basis(ex.model, x, ex.layers, **QUIET)
    assert basis.options["layout"] == {"relu1": "channels", "conv2": "channels", "relu2": "channels",
                                       "fc1": "features", "fc2": "features", "output": "features"}
    assert [basis[n].dim for n in ex.layers] == [8, 8, 16, 64, 32, 10]
    graph = ia.build_graph(ex.model, x, basis, **QUIET)
    assert all(graph.edge_matrix(a, b).max() > 0 for a, b in zip(ex.layers, ex.layers[1:]))


def test_biases_of_modules_not_called_as_modules_are_folded():
    """nn.MultiheadAttention reads ``out_proj``'s bias without calling it: the bias still counts.
    With zero query/key biases, ∂y_t/∂s = W_o b_v + b_o at every position t (softmax rows sum to
    1), so the slot entry of M is ‖W_o b_v + b_o‖² exactly."""
    torch.manual_seed(3)
    d = 4

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Identity()
            self.mha = nn.MultiheadAttention(d, 2, batch_first=True, dtype=F64)

        def forward(self, x):
            x = self.pre(x)
            return self.mha(x, x, x, need_weights=False)[0]

    model = Attn().eval()
    with torch.no_grad():
        model.mha.in_proj_bias[:2 * d] = 0.0
        model.mha.in_proj_bias[2 * d:].normal_()
        model.mha.out_proj.bias.normal_()
    x = torch.randn(5, 3, d, generator=torch.Generator().manual_seed(4), dtype=F64)
    basis = ia.compute_basis(model, x, ["pre", "output"], **QUIET)
    W_o, b_o = model.mha.out_proj.weight, model.mha.out_proj.bias
    want = float(((W_o @ model.mha.in_proj_bias[2 * d:] + b_o) ** 2).sum())
    np.testing.assert_allclose(basis["pre"].M[-1, -1], want, rtol=1e-10)


def test_a_transposed_conv_output_is_not_read_as_channels():
    """(B, C, L) from a Conv1d, transposed to (B, L, C) and read by a Linear: the Linear decides
    (tokens: C features at L positions); without a reader the transposed view is no evidence,
    and the 3-d tensor is ambiguous."""
    class ConvThenTokens(nn.Module):
        def __init__(self, head: bool):
            super().__init__()
            self.conv = nn.Conv1d(3, 4, 1, dtype=F64)
            self.mid = nn.Identity()
            self.head = nn.Linear(4, 2, dtype=F64) if head else nn.Identity()

        def forward(self, x):
            return self.head(self.mid(self.conv(x).transpose(1, 2))).sum(1)

    x = _seq_data()
    basis = ia.compute_basis(ConvThenTokens(True), x, ["head", "output"], **QUIET)
    assert basis.options["layout"]["head"] == "tokens" and basis["head"].dim == 4
    with pytest.raises(ValueError, match="cannot tell the layout"):
        ia.compute_basis(ConvThenTokens(False), x, ["mid", "output"], **QUIET)
