"""The closed forms of core/structured.py equal the batched-VJP path (float64, 1e-10).

Every case computes the basis and the edges twice on the same nn.Sequential: once with the
closed form (``structured=True``, the default) and once with batched VJPs (``structured=False``),
for both Jacobian targets, with and without the bias slot and centring, gradient and integrated
edges. The VJP path is itself pinned to a per-sample loop in test_bruteforce.py.
"""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core.heads import head_pays
from intermod.analysis.core.jacobian_grams import affine_chain, output_closed_forms
from intermod.analysis.core.setup import prepare
from intermod.analysis.core.structured import affine_section, dense_weight
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")

CASES = [(True, True), (False, True), (False, False), (True, False)]


def model_and_layers(kind: str):
    torch.manual_seed(3)
    if kind == "relu-heads":      # "0" and "4" are Linear heads (6 -> 4, 5 -> 3)
        m = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
        return m, ["0", "2", "4", "output"]
    if kind == "gelu-widening":   # "0" widens 4 -> 9: no head there, W₁ is part of the section
        m = nn.Sequential(nn.Linear(4, 9), nn.GELU(), nn.Dropout(0.5), nn.Linear(9, 6), nn.Sigmoid(), nn.Linear(6, 3))
        return m, ["0", "3", "5", "output"]
    if kind == "two-linears":     # section "0" -> "3" is Linear, SiLU, Linear; no bias in the first
        m = nn.Sequential(nn.Linear(5, 6, bias=False), nn.SiLU(), nn.Linear(6, 5), nn.LeakyReLU(0.1), nn.Linear(5, 2))
        return m, ["0", "3", "output"]
    raise KeyError(kind)


def both(model, X, layers, target, center, include_bias, **kw):
    opts = dict(jacobian_target=target, center=center, include_bias=include_bias, batch_size=16,
                progress=False)
    return [ia.compute_basis(model.double(), X, layers, structured=s, **opts, **kw) for s in (True, False)]


def assert_same_basis(a, b):
    for n in a.layers:
        np.testing.assert_allclose(a[n].G, b[n].G, rtol=1e-10, atol=1e-13)
        if b[n].M is not None:
            scale = np.abs(b[n].M).max()
            np.testing.assert_allclose(a[n].M, b[n].M, rtol=1e-10, atol=1e-12 * scale)
        np.testing.assert_allclose(a[n].Lambda, b[n].Lambda, rtol=1e-10, atol=1e-13 * b[n].Lambda.max())
        np.testing.assert_allclose(a[n].C, b[n].C, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(a[n].Cinv, b[n].Cinv, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kind", ["relu-heads", "gelu-widening", "two-linears"])
@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center,include_bias", CASES)
def test_closed_form_equals_batched_vjps(kind, target, center, include_bias):
    model, layers = model_and_layers(kind)
    X = 1.5 * torch.randn(37, model[0].in_features)
    a, b = both(model, X, layers, target, center, include_bias)
    assert_same_basis(a, b)
    for method, n_alpha in (("gradient", 1), ("integrated", 4)):
        ga, gb = (ia.build_graph(model, X, a, edge_method=method, n_alpha=n_alpha, batch_size=16,
                                 progress=False, structured=s) for s in (True, False))
        for src, dst in zip(layers[:-1], layers[1:]):
            Ea, Eb = ga.edge_matrix(src, dst) ** 2, gb.edge_matrix(src, dst) ** 2
            np.testing.assert_allclose(Ea, Eb, rtol=1e-10, atol=1e-12 * Eb.max())


@pytest.mark.parametrize("kind", ["relu-heads", "gelu-widening"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_sample_and_chunked_edges_agree(kind, dtype, monkeypatch):
    """The per-sample path (GEMMs over the rows where ā ≠ 0, float32 sums flushed to float64)
    equals the chunked GEMMs and the batched VJPs (ReLU: a ∈ {0, 1}; GELU: a dense)."""
    from intermod.analysis.core import affine_edges

    model, layers = model_and_layers(kind)
    X = torch.randn(41, 2, model[0].in_features)
    basis = ia.compute_basis(model.double(), X, layers, jacobian_target="next_layer", progress=False)
    graphs = {}
    for name, threshold, closed in (("chunks", 1 << 62, True), ("samples", 0, True), ("vjp", 0, False)):
        monkeypatch.setattr(affine_edges, "PER_SAMPLE_MIN_MACS", threshold)
        graphs[name] = ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=3, batch_size=16,
                                      dtype=dtype, progress=False, structured=closed)
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-7)
    for src, dst in zip(layers[:-1], layers[1:]):
        E = graphs["vjp"].edge_matrix(src, dst) ** 2
        for name in ("samples", "chunks"):
            np.testing.assert_allclose(graphs[name].edge_matrix(src, dst) ** 2, E, rtol=tol["rtol"],
                                       atol=tol["atol"] * E.max(), err_msg=f"{name} {src}->{dst}")


@pytest.mark.parametrize("k_next, k", [(3, 7), (7, 7), (9, 4)])
@pytest.mark.parametrize("relu", [True, False])
def test_edge_sums_by_chunks_and_by_samples_equal_a_loop(k_next, k, relu):
    """E = Σ_x (L diag(a(x)) R ⊙ f_w(x))² by a plain loop over samples, against the chunked
    GEMMs (scaling L when k' < k, R otherwise; chunks of 1 sample and of all) and the per-sample
    GEMMs over the rows with a ≠ 0."""
    from intermod.analysis.core import affine_edges, structured

    gen = torch.Generator().manual_seed(k_next * 10 + k)
    rows, n = 6, 13
    L = torch.randn(k_next, rows, dtype=torch.float64, generator=gen)
    R = torch.randn(rows, k, dtype=torch.float64, generator=gen)
    a = torch.rand(n, rows, dtype=torch.float64, generator=gen)
    a = (a > 0.5).double() if relu else a
    f_w = torch.randn(n, k, dtype=torch.float64, generator=gen)
    f_w[4] = 0.0                                                   # a masked sample
    ref = sum((L @ torch.diag(a[x]) @ R * f_w[x]) ** 2 for x in range(n))
    per_sample = 8 * (rows * min(k_next, k) + k_next * k)
    for budget in (per_sample, 1 << 30):                          # one sample per chunk, one chunk
        E = torch.zeros(k_next, k, dtype=torch.float64)
        affine_edges._chunk_by_chunk(L, R, a, f_w, E, budget, structured.Workspace(), None)
        torch.testing.assert_close(E, ref, rtol=1e-12, atol=1e-12)
    E = torch.zeros(k_next, k, dtype=torch.float64)
    affine_edges._sample_by_sample(L, R, a, f_w, E, None)
    torch.testing.assert_close(E, ref, rtol=1e-12, atol=1e-12)


def test_per_sample_gemms_are_chosen_by_cost():
    from intermod.analysis.core.affine_edges import per_sample_pays

    cpu = torch.device("cpu")
    assert per_sample_pays(401, 401, 401, cpu) and per_sample_pays(801, 801, 801, cpu)
    assert not per_sample_pays(101, 101, 101, cpu) and not per_sample_pays(11, 401, 401, cpu)
    assert not per_sample_pays(801, 801, 801, torch.device("meta"))


def test_linear_heads_are_chosen_by_cost():
    assert head_pays(nn.Linear(784, 800)) and head_pays(nn.Linear(10, 13))   # widening, still cheaper at z
    assert not head_pays(nn.Linear(4, 9)) and not head_pays(nn.Linear(100, 400))


def test_every_section_of_these_models_has_a_closed_form():
    for kind in ("relu-heads", "gelu-widening", "two-linears"):
        model, layers = model_and_layers(kind)
        s = prepare(model.double(), torch.randn(4, model[0].in_features), layers, output_fn=None,
                    include_bias=True, dtype=torch.float64, batch_size=4, device="cpu", seed=0,
                    progress=False, callback=None)
        assert all(affine_section(s.net, j) is not None for j in range(len(layers) - 1)), kind


def _sections(model, X, layers):
    s = prepare(model, X, layers, output_fn=None, include_bias=True, dtype=torch.float64, batch_size=4,
                device="cpu", seed=0, progress=False, callback=None)
    return [affine_section(s.net, j) for j in range(len(layers) - 1)]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("center,include_bias", CASES)
def test_one_by_one_convolutions_have_the_closed_form(target, center, include_bias, groups):
    """A 1×1 convolution is a Linear on the channels at every position: on channels-first maps
    the closed form (C features per position, positions as samples) equals the batched VJPs
    (basis within 1e-10, gradient and integrated edges); grouped ones (two groups, then a
    depthwise one) too, as block-diagonal Linear maps."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1, groups=groups), nn.GELU(), nn.Dropout(0.2),
                          nn.Conv2d(4, 4, 1, groups=1 if groups == 1 else 4, bias=False)).double()
    layers = ["0", "2", "5", "output"]
    X = torch.randn(9, 3, 3, 2, dtype=torch.float64)
    assert all(sec is not None for sec in _sections(model, X, layers))
    a, b = both(model, X, layers, target, center, include_bias)
    assert_same_basis(a, b)
    for method, n_alpha in (("gradient", 1), ("integrated", 3)):
        ga, gb = (ia.build_graph(model, X, a, edge_method=method, n_alpha=n_alpha, batch_size=4,
                                 progress=False, structured=s) for s in (True, False))
        np.testing.assert_allclose(ga.w, gb.w, rtol=1e-9, atol=1e-12 * gb.w.max())


@pytest.mark.parametrize("shape,groups", [((6, 2, 3, 3), 3), ((6, 1, 3, 3), 6), ((4, 3, 5), 2), ((4, 2, 1, 2, 2), 2)])
def test_a_grouped_convolution_is_the_ungrouped_one_with_zero_blocks(shape, groups):
    """dense_weight(W, g) convolves like W with ``groups=g``: two and three groups, depthwise,
    1-d and 3-d (float64, 1e-13), and its off-group blocks are exactly zero."""
    torch.manual_seed(0)
    W = torch.randn(shape, dtype=torch.float64)
    conv = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}[len(shape)]
    x = torch.randn((2, shape[1] * groups) + (7,) * (len(shape) - 2), dtype=torch.float64)
    D = dense_weight(W, groups)
    assert D.shape == (shape[0], shape[1] * groups) + shape[2:]
    torch.testing.assert_close(conv(x, D), conv(x, W, groups=groups), rtol=1e-13, atol=1e-13)
    per_out = shape[0] // groups
    for o in range(shape[0]):
        g = o // per_out
        assert (D[o, :g * shape[1]] == 0).all() and (D[o, (g + 1) * shape[1]:] == 0).all()
        assert torch.equal(D[o, g * shape[1]:(g + 1) * shape[1]], W[o])


def test_maps_that_are_not_per_sample_linear_have_no_linear_closed_form():
    """No Linear closed form where the section's linear maps do not act on the layout's features:
    a 3×3 or strided convolution (it mixes positions: the conv forms of test_colouring.py take
    it), a Linear on a channels-first map (it acts on the last spatial axis) and two node layers
    with different layouts; the structured basis still equals the VJPs'."""
    torch.manual_seed(5)
    X = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    cases = [
        (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)), ["0", "output"]),
        (nn.Sequential(nn.Conv2d(3, 4, 1, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 1)), ["0", "output"]),
        (nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Linear(4, 4), nn.Conv2d(4, 2, 1)), ["1", "3", "output"]),
    ]
    for model, layers in cases:
        model = model.double()
        secs = _sections(model, X, layers)
        assert secs[0] is None, model
        a, b = both(model, X, layers, "next_layer", True, True)
        assert_same_basis(a, b)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).double()
    s = prepare(model, X, ["1", "2", "output"], output_fn=None, include_bias=True, dtype=torch.float64,
                batch_size=4, device="cpu", seed=0, progress=False, callback=None,
                layout={"1": "flatten", "2": "channels", "output": "channels"})
    assert affine_section(s.net, 0) is None and affine_section(s.net, 1) is not None


def test_output_target_closed_forms_cover_the_last_two_sections():
    """Output target: the last section's Gram, and the one before when the last section is the
    identity past a Linear head (y = P_{T-1} f_aug), come from next_layer_gram; the first
    section's Gram needs the batched VJPs (y is not affine in its next layer). The values are
    pinned against the VJPs in test_closed_form_equals_batched_vjps."""
    expected = {"relu-heads": {1, 2}, "gelu-widening": {1, 2}, "two-linears": {1}}
    for kind, js in expected.items():
        model, layers = model_and_layers(kind)
        s = prepare(model.double(), torch.randn(4, model[0].in_features), layers, output_fn=None,
                    include_bias=True, dtype=torch.float64, batch_size=4, device="cpu", seed=0,
                    progress=False, callback=None)
        forms = output_closed_forms(s, None)
        assert set(forms) == js, kind
        assert output_closed_forms(s, 4) == {}      # random probes: no exact closed form
        last = len(layers) - 2
        if last - 1 in forms:                          # R = P_{T-1}[:d_y]ᵀ: y = Rᵀ f_aug
            f = torch.randn(5, s.net.dims[layers[last]], dtype=torch.float64)
            head = model[int(layers[last])]
            np.testing.assert_allclose(torch.cat([f, torch.ones(5, 1)], 1) @ forms[last - 1][2],
                                       head(f).detach(), rtol=1e-12, atol=1e-12)


def _deep_model():
    torch.manual_seed(5)   # heads at "0" (6 -> 5) and "6" (6 -> 2); "2" and "4" widen
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 8), nn.GELU(),
                      nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    return m.double(), ["0", "2", "4", "6", "output"]


def _linear_model():
    torch.manual_seed(6)   # no activation anywhere: the cotangents stay one (K, d) matrix for all samples
    m = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 7, bias=False), nn.Linear(7, 4), nn.Linear(4, 3))
    return m.double(), ["0", "1", "2", "3", "output"]


@pytest.mark.parametrize("kind", ["relu-heads", "gelu-widening", "two-linears", "deep", "linear"])
@pytest.mark.parametrize("center,include_bias", CASES)
def test_output_target_pulls_cotangents_back_without_a_backward_pass(kind, center, include_bias, monkeypatch):
    """Chains of affine sections: the output target's Jacobian Grams come from pull_back
    (no VJP is called) and equal the batched VJPs, exact cotangents one output coordinate per
    chunk (max_memory=1) and random probes (the same draws) included; a chain without an
    activation (its cotangents the same for every sample) included."""
    from intermod.analysis.core import jacobian_grams

    model, layers = {"deep": _deep_model, "linear": _linear_model}.get(kind, lambda: model_and_layers(kind))()
    X = 1.5 * torch.randn(29, model[0].in_features)
    opts = dict(jacobian_target="output", center=center, include_bias=include_bias, batch_size=16,
                progress=False)
    plain = {n: ia.compute_basis(model.double(), X, layers, structured=False, n_probes=n, **opts) for n in (None, 2)}
    real = jacobian_grams.vjp
    monkeypatch.setattr(jacobian_grams, "vjp", lambda *a: pytest.fail("a VJP ran"))
    for budget in (1 << 29, 1):
        assert_same_basis(ia.compute_basis(model.double(), X, layers, max_memory=budget, **opts), plain[None])
    assert_same_basis(ia.compute_basis(model.double(), X, layers, n_probes=2, **opts), plain[2])
    monkeypatch.setattr(jacobian_grams, "vjp", real)
    s = prepare(model.double(), X, layers, output_fn=None, include_bias=include_bias, dtype=torch.float64,
                batch_size=16, device="cpu", seed=0, progress=False, callback=None)
    chain = jacobian_grams.affine_chain(s, {0: None})
    assert chain is not None and set(chain.sections) == set(range(len(layers) - 1))
    heads = {j for j, (_, head) in chain.sections.items() if head is not None}
    assert heads == {j for j, n in enumerate(layers[:-1]) if n in s.net.heads}


def test_sections_without_a_closed_form_fall_back():
    """Two activations in one section, a LayerNorm, or a custom output_fn: batched VJPs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.Tanh(), nn.LayerNorm(5), nn.Linear(5, 2)).double()
    layers = ["0", "2", "5", "output"]
    X = torch.randn(20, 4)
    s = prepare(model, X, layers, output_fn=None, include_bias=True, dtype=torch.float64, batch_size=8,
                device="cpu", seed=0, progress=False, callback=None)
    assert affine_section(s.net, 0) is not None
    assert affine_section(s.net, 1) is None          # Linear, Tanh, LayerNorm
    s2 = prepare(model, X, layers, output_fn=lambda y: 2 * y, include_bias=True, dtype=torch.float64,
                 batch_size=8, device="cpu", seed=0, progress=False, callback=None)
    assert affine_section(s2.net, 2) is None         # the output goes through output_fn
    assert affine_chain(s, {0: None}) is None and affine_chain(s2, {0: None}) is None   # output target: VJPs
    a, b = both(model, X, layers, "next_layer", True, True)
    assert_same_basis(a, b)


def test_positions_are_independent_samples():
    """A Sequential on (B, P, d) inputs acts position-wise: the closed form over (x, t) samples
    equals the VJP path's sums over output positions."""
    model, layers = model_and_layers("relu-heads")
    X = torch.randn(9, 3, 6)
    for target in ("output", "next_layer"):
        a, b = both(model, X, layers, target, True, True)
        assert_same_basis(a, b)
        ga, gb = (ia.build_graph(model, X, a, batch_size=16, progress=False, structured=s) for s in (True, False))
        np.testing.assert_allclose(ga.w, gb.w, rtol=1e-9, atol=1e-12 * gb.w.max())


def test_chunking_by_memory_budget_does_not_change_the_result():
    model, layers = model_and_layers("gelu-widening")
    X = torch.randn(30, 4)
    basis = ia.compute_basis(model.double(), X, layers, jacobian_target="next_layer", progress=False)
    g1 = ia.build_graph(model, X, basis, progress=False)
    g2 = ia.build_graph(model, X, basis, progress=False, max_memory=1)   # one sample per chunk
    g3 = ia.build_graph(model, X, basis, progress=False, structured=False, max_memory=1)
    np.testing.assert_allclose(g2.w, g1.w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g3.w, g1.w, rtol=1e-10, atol=1e-13)
    # integrated: with max_memory=1 the VJP path rebuilds each α's graph per chunk, by default
    # it keeps all α's graphs for all chunks; both equal the closed form
    i1 = ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=3, progress=False)
    for budget in (1, 1 << 29):
        i2 = ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=3, progress=False,
                            structured=False, max_memory=budget)
        np.testing.assert_allclose(i2.w, i1.w, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="max_memory"):
        ia.build_graph(model, X, basis, progress=False, max_memory=0)


def test_vjp_chunks_count_the_hidden_width_against_the_budget(monkeypatch):
    """The batched VJPs (structured=False, both targets and the edges) size their chunks of K
    cotangents by what autograd saves, not only by the section's input and output: a
    5 → 1024 → 5 section keeps B·1024 elements per cotangent, so K·B·1024·8 bytes ≤ max_memory,
    while the budget still allows K ≥ 2 (and a plain chunk cap of VJP_CHUNK_BYTES applies)."""
    from intermod.analysis.core import edges as edges_mod
    from intermod.analysis.core import jacobian_grams as basis_mod
    from intermod.analysis.core.jacobians import VJP_CHUNK_BYTES, chunk_size
    from intermod.analysis.core.structured import CACHE_CHUNK_BYTES, samples_per_chunk

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1024), nn.Tanh(), nn.Linear(1024, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(40, 5, dtype=torch.float64)
    layers, budget = ["0", "3", "output"], 700 << 10
    seen: list[int] = []
    for mod in (basis_mod, edges_mod):
        real = mod.vjp
        monkeypatch.setattr(mod, "vjp", lambda out, ins, cot, real=real: seen.append(tuple(cot.shape)) or real(out, ins, cot))

    def check(wide_out: int) -> None:   # the VJPs whose graph holds the 1024-wide layer
        K = [shape[0] for shape in seen if shape[-1] == wide_out]
        assert K and max(K) * 40 * 1024 * 8 <= budget and max(K) >= 2, seen
        seen.clear()

    for target, wide_out in (("output", 3), ("next_layer", 5)):   # y; f̂ of layer "3"
        basis = ia.compute_basis(model, X, layers, jacobian_target=target, structured=False,
                                 max_memory=budget, progress=False)
        check(wide_out)
    ref = ia.build_graph(model, X, basis, structured=False, progress=False)
    seen.clear()
    g = ia.build_graph(model, X, basis, structured=False, max_memory=budget, progress=False)
    check(5)
    np.testing.assert_allclose(g.w, ref.w, rtol=1e-10, atol=1e-13 * ref.w.max())
    cpu, gpu = torch.device("cpu"), torch.device("cuda")     # a device object needs no GPU
    assert chunk_size(10 ** 9, 1, torch.float64, 1 << 40, cpu) == VJP_CHUNK_BYTES // 8
    assert chunk_size(10 ** 9, 1, torch.float64, 800, cpu) == 100
    assert chunk_size(10 ** 12, 1, torch.float64, 1 << 40, gpu) == (1 << 40) // 8   # no CPU cap on a GPU
    assert samples_per_chunk(1, 1 << 40, cpu) == CACHE_CHUNK_BYTES
    assert samples_per_chunk(1, 1 << 40, gpu) == 1 << 40


@pytest.mark.parametrize("target", ["next_layer", "output"])
def test_float32_compute_is_close_to_float64(target):
    """float32 products, float64 sums: Λ and the edges that matter agree to ~1e-5 relative
    (the output target's cotangents pulled back in float32 too)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5)).double()
    layers = ["0", "2", "4", "output"]
    X = torch.randn(300, 20, dtype=torch.float64)
    out = {}
    for dt in (torch.float64, torch.float32):
        b = ia.compute_basis(model, X, layers, jacobian_target=target, dtype=dt, progress=False)
        out[dt] = (b, ia.build_graph(model, X, b, dtype=dt, progress=False))
    (b64, g64), (b32, g32) = out[torch.float64], out[torch.float32]
    for n in layers:
        lam = b64[n].Lambda
        big = lam > 1e-3 * lam.max()
        assert b32[n].k == b64[n].k
        np.testing.assert_allclose(b32[n].Lambda[big], lam[big], rtol=2e-5)
    E32, E64 = ([g.edge_matrix(a, b) ** 2 for a, b in zip(layers[:-1], layers[1:])] for g in (g32, g64))
    top = max(e.max() for e in E64)
    for e32, e64 in zip(E32, E64):
        big = e64 > 1e-6 * top                 # w > 1e-3·max(w)
        rel = np.abs(e32[big] - e64[big]) / e64[big]
        assert rel.max() < 1e-4, rel.max()


@pytest.mark.parametrize("binary", [True, False])
def test_sigma_moments_equal_the_float64_sums(binary):
    """S = Σ w a aᵀ and σ̄ = Σ w a. With a ∈ {0, 1} (ReLU) S is summed in float32, where its
    integer entries (≤ N) are exact in any summation order, so it equals the float64 sum
    exactly; any other a (here a multiple of 0.3) must keep float64 sums (1e-13)."""
    from intermod.analysis.core.structured import ActivationMoments

    g = torch.Generator().manual_seed(3)
    a = (torch.rand(700, 150, generator=g, dtype=torch.float64) > 0.5).double()
    if not binary:
        a = a * 0.3 + (1 / 3)
    w = (torch.rand(700, generator=g) > 0.2).double()
    mom = ActivationMoments(150, torch.device("cpu"))
    mom.add(a[:400], w[:400])
    mom.add(a[400:], w[400:])
    aw = (a * w[:, None]).numpy()
    want = aw.T @ aw
    if binary:
        np.testing.assert_array_equal(mom.S.numpy(), want)
    else:
        np.testing.assert_allclose(mom.S.numpy(), want, rtol=1e-13, atol=1e-13 * want.max())
    np.testing.assert_allclose(mom.sigma.numpy(), aw.sum(0), rtol=1e-13)
    assert mom.n == float(w.sum()) and mom.S.dtype == torch.float64


@pytest.mark.parametrize("has_W1", [True, False])
@pytest.mark.parametrize("has_b1", [True, False])
@pytest.mark.parametrize("include_bias", [True, False])
def test_products_with_the_first_map_equal_the_explicit_matrix(has_W1, has_b1, include_bias):
    """first_times / times_first = W₁' X and Y W₁' with W₁' = [W₁, b₁] (or W₁) written out, the
    identity for a missing W₁ (a section after a Linear head) included, which they never form."""
    from intermod.analysis.core.structured import AffineSection

    g = torch.Generator().manual_seed(2)
    d_p = 6
    W1 = torch.randn(9, d_p, dtype=torch.float64, generator=g) if has_W1 else None
    h = 9 if has_W1 else d_p
    b1 = torch.randn(h, dtype=torch.float64, generator=g) if has_b1 else None
    sec = AffineSection(W1, b1, nn.ReLU(), None, None)
    W = torch.eye(d_p, dtype=torch.float64) if W1 is None else W1
    if include_bias:
        W = torch.cat([W, (torch.zeros(h, dtype=torch.float64) if b1 is None else b1)[:, None]], 1)
    X = torch.randn(W.shape[1], 4, dtype=torch.float64, generator=g)
    Y = torch.randn(3, h, dtype=torch.float64, generator=g)
    torch.testing.assert_close(sec.first_times(X, include_bias), W @ X, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sec.times_first(Y, include_bias), Y @ W, rtol=1e-13, atol=1e-13)
