"""Module reports: input attribution against brute force, top examples, two_tasks, HTML."""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis import examples
from intermod.analysis.core.activations import layer_activations
from intermod.analysis.report import decode_image, direction_attribution, top_examples
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")


def smooth_mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


@pytest.fixture(scope="module")
def small():
    torch.set_default_dtype(torch.float64)
    model = smooth_mlp()
    X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)) * 1.5
    layers = ["0", "2", "4", "output"]
    basis = ia.compute_basis(model, X, layers, progress=False)
    graph = ia.build_graph(model, X, basis, progress=False)
    torch.set_default_dtype(torch.float32)
    return model, X, layers, basis, graph


def f_hat(model, basis, layer, x):
    """f̂ of one input x (4,) at ``layer``, by slicing the Sequential (independent of the hooks)."""
    stop = {"0": 0, "2": 2, "4": 4}[layer]
    with torch.no_grad():
        return basis[layer].transform(model[:stop](x[None])[0])


def test_input_attribution_matches_finite_differences(small):
    model, X, _, basis, graph = small
    idx, n_alpha, h = [1, 3], 4, 1e-6
    att = direction_attribution(model, X, graph, {"2": idx}, n_alpha=n_alpha)
    assert not att.exact["2"]
    nodes, weights = np.polynomial.legendre.leggauss(n_alpha)
    alphas, weights = (nodes + 1) / 2, weights / 2
    x_bar = X.mean(0)
    E = np.zeros((len(idx), 4))
    for x in X:
        delta = x - x_bar
        grad = np.zeros((len(idx), 4))
        for alpha, wq in zip(alphas, weights):
            z = x_bar + alpha * delta
            for a in range(4):
                e = torch.zeros(4)
                e[a] = h
                diff = f_hat(model, basis, "2", z + e) - f_hat(model, basis, "2", z - e)
                grad[:, a] += wq * diff[idx] / (2 * h)
        E += (grad * delta.numpy()) ** 2
    E /= len(X)
    np.testing.assert_allclose(att.energy["2"], E, rtol=1e-6, atol=1e-12 * E.max())


def test_exact_map_at_the_input_layer(small):
    """Layer "0" is the model input: A_ia = C_ai (x_a − x̄_a), so E_ia = C_ai² · mean (x_a − x̄_a)²."""
    model, X, _, basis, graph = small
    att = direction_attribution(model, X, graph, {"0": [1, 2, 4]})
    assert att.exact["0"]
    C = basis["0"].C[:4, [1, 2, 4]]
    var = ((X - X.mean(0)) ** 2).mean(0).numpy()
    np.testing.assert_allclose(att.energy["0"], (C.T ** 2) * var, rtol=1e-10)


def test_token_inputs_known_answer():
    """Embedding -> Linear: layer "1" is the embedding e (linear in it), so with the zero
    baseline A_{t,i,(s,a)} = δ_ts C_ai e_{s,a}; check per dimension, position and token."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    ids = torch.randint(0, 7, (30, 5), generator=torch.Generator().manual_seed(1))
    basis = ia.compute_basis(model, ids, ["1", "3", "output"], progress=False)
    graph = ia.build_graph(model, ids, basis, progress=False)
    att = direction_attribution(model, ids, graph, {"1": [1, 2]})
    assert att.kind == "tokens"
    C = basis["1"].C[:3, [1, 2]]                                  # (d, k)
    e = model[0].weight.detach()[ids].numpy()                    # (n, P, d)
    A2 = (C.T[:, None, None, :] ** 2) * (e ** 2)[None]          # (k, n, P, d)
    n = ids.numel()
    np.testing.assert_allclose(att.energy["1"], A2.sum((1, 2)) / n, rtol=1e-10)
    np.testing.assert_allclose(att.by_position["1"], A2.sum((1, 3)) / n, rtol=1e-10)
    per_tok = np.stack([A2.sum(3)[:, ids.numpy() == v].sum(1) for v in att.token_ids], 1) / n
    np.testing.assert_allclose(att.by_token["1"], per_tok, rtol=1e-10)
    # batches of 3 and of 5 positions: each position sums the batches that reach it
    short, long = ids[:12, :3], ids[12:]
    att = direction_attribution(model, [short, long], graph, {"1": [1, 2]})
    parts = [(C.T[:, None, None, :] ** 2) * (model[0].weight.detach()[b].numpy() ** 2)[None] for b in (short, long)]
    n = short.numel() + long.numel()
    np.testing.assert_allclose(att.energy["1"], sum(a.sum((1, 2)) for a in parts) / n, rtol=1e-10)
    by_pos = parts[1].sum((1, 3))
    by_pos[:, :3] += parts[0].sum((1, 3))
    np.testing.assert_allclose(att.by_position["1"], by_pos / n, rtol=1e-10)


@pytest.mark.parametrize("include_bias", [True, False])
def test_top_examples_are_the_largest_module_norms(small, include_bias):
    model, X, layers, basis, graph = small
    if not include_bias:   # centred without a slot: f̂ = Cᵀ (f − μ)
        basis = ia.compute_basis(model, X, layers, include_bias=False, progress=False)
        graph = ia.build_graph(model, X, basis, progress=False)
    p = ia.find_modules(graph, epsilon=1e-3, resolution=0.05)
    top = top_examples(model, X, graph, p.membership, top_k=4)
    acts = layer_activations(model, X, layers)
    fh = {n: basis[n].transform(acts[n]) for n in layers}
    for m in p.modules:
        sq = sum(fh[graph.nodes[i].layer][:, graph.nodes[i].index] ** 2 for i in m.nodes)
        want = np.argsort(-np.sqrt(sq), kind="stable")[:4]
        hits = top.modules[m.id]
        assert [h.sample for h in hits] == want.tolist()
        np.testing.assert_allclose([h.score for h in hits], np.sqrt(sq[want]), rtol=1e-9)
        node = graph.nodes[m.nodes[0]]
        d_hits = top.directions[node.layer][node.index]
        assert [h.sample for h in d_hits] == np.argsort(-np.abs(fh[node.layer][:, node.index]), kind="stable")[:4].tolist()


def ablated_losses(model, basis, layers, X, masks):
    """Per-output MSE with the masked f̂ written back through C⁻¹ at every node layer (hooks)."""
    def project(layer, f):
        b = basis[layer]
        keep = torch.as_tensor(masks[layer], dtype=f.dtype)
        f_aug = torch.cat([f, torch.ones_like(f[..., :1])], -1)
        return ((f_aug @ torch.as_tensor(b.C)) * keep @ torch.as_tensor(b.Cinv).T)[..., :-1]

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: (project(n, a[0]),))
               for n in layers if n != "output"]
    try:
        with torch.no_grad():
            y_abl = project("output", model(X))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        return ((y_abl - model(X)) ** 2).mean(0).numpy()


def stand_in_effects(model, basis, graph, partition, X):
    """A ModuleEffects stand-in computed independently of the ablation package."""
    layers = graph.layers
    ones = {n: np.ones(basis[n].k) for n in layers}
    rec = ablated_losses(model, basis, layers, X, ones)
    rows = []
    for m in partition.modules:
        masks = {n: v.copy() for n, v in ones.items()}
        for i in m.nodes:
            masks[graph.nodes[i].layer][graph.nodes[i].index] = 0.0
        rows.append(ablated_losses(model, basis, layers, X, masks) - rec)
    inc = np.array(rows)
    return SimpleNamespace(module_ids=[m.id for m in partition.modules], loss_increase=inc,
                           output_labels=[f"y{j}" for j in range(inc.shape[1])], group="coordinate",
                           reconstruction_loss=float(rec.mean()), loss=(inc + rec).mean(1))


@pytest.fixture(scope="module")
def two_tasks_report():
    torch.set_default_dtype(torch.float64)
    ex = examples.load("two_tasks", n_grid=20)
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, progress=False)
    graph = ia.build_graph(ex.model, ex.inputs, basis, progress=False)
    part = ia.find_modules(graph, epsilon=ex.extra["train_mse"], resolution=0.1)
    fx = stand_in_effects(ex.model, basis, graph, part, ex.inputs)
    rep = ia.module_report(ex.model, ex.inputs, graph, part, effects=fx, top_k=5)
    torch.set_default_dtype(torch.float32)
    return ex, rep


def test_two_tasks_modules_read_and_move_their_own_task(two_tasks_report):
    ex, rep = two_tasks_report
    for inputs, outputs in zip(ex.extra["input_groups"], ex.extra["output_groups"]):
        # the module of this task: the largest module with most of its input share on the task
        mods = [m for m in rep.modules if sum(m.inputs.get(a, 0) for a in inputs) > 0.5]
        m = max(mods, key=lambda m: m.size)
        assert m.size >= 4
        assert sum(m.inputs.values()) == pytest.approx(1.0)
        assert sum(m.inputs[a] for a in inputs) >= 0.9
        assert sum(m.outputs.values()) == pytest.approx(1.0)
        assert sum(m.outputs[o] for o in outputs) >= 0.9
        assert m.output_names[outputs[0]] == f"y{outputs[0]}" and f"y{outputs[0]}" in m.summary()
        assert len(m.top_examples) == 5 and m.summary().startswith(f"module {m.id}:")


def test_report_text_dict_and_notebook_views(two_tasks_report):
    _, rep = two_tasks_report
    text = str(rep)
    assert repr(rep) == text and len(text.splitlines()) >= len(rep.modules) + 2
    assert "<table>" in rep._repr_html_()
    d = json.loads(json.dumps(rep.to_dict()))
    assert [m["id"] for m in d["modules"]] == [m.id for m in rep.modules]
    assert all(rep.modules[c].id == c for c in range(len(rep.modules)))


def test_report_without_effects_or_model(small):
    model, X, _, _, graph = small
    p = ia.find_modules(graph, epsilon=1e-3, resolution=0.05)
    rep = ia.module_report(None, None, graph, p)
    assert all(m.outputs is None and not m.inputs and not m.top_examples for m in rep.modules)
    assert "no module effects given" in rep.modules[0].summary()
    with pytest.raises(ValueError, match="model and inputs"):
        ia.module_report(model, None, graph, p)
    with pytest.raises(TypeError, match="Partition"):
        ia.module_report(model, X, graph, p.membership)
    with pytest.raises(ValueError, match="top_k"):
        ia.module_report(model, X, graph, p, top_k=0)
    with pytest.raises(TypeError, match="module_ids"):
        ia.module_report(model, X, graph, p, effects=object())
    fx = SimpleNamespace(module_ids=[0], loss_increase=np.array([[0.0, 3.0, 1.0]]),
                         output_labels=["y0", "y1", "y2"])
    with pytest.raises(ValueError, match="output_names"):
        ia.module_report(None, None, graph, p, effects=fx, output_names=["a"])
    named = ia.module_report(None, None, graph, p, effects=fx, output_names=lambda j: f"class {j}")
    assert list(named.modules[0].outputs.items()) == [(1, 0.75), (2, 0.25), (0, 0.0)]   # largest first
    assert "class 1 (75%)" in named.modules[0].summary()


def test_a_partition_without_modules_gives_an_empty_report_that_says_why(small, tmp_path):
    """ε above every interaction: no module, so nothing to attribute (it used to fail inside the
    attribution with "no direction selected")."""
    model, X, _, _, graph = small
    p = ia.find_modules(graph, epsilon=1 - 1e-9)
    assert p.n_modules == 0
    rep = ia.module_report(model, X, graph, p)
    assert rep.modules == [] and any("no modules" in note for note in rep.notes)
    assert "no modules" in open(rep.save_html(tmp_path / "empty.html")).read()


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.panels, self.clickable, self.urls, self.scripts, self.images = set(), set(), [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "panel" in a.get("class", ""):
            self.panels.add(a["data-module"])
        elif "data-module" in a:
            self.clickable.add(a["data-module"])
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        self.scripts += tag == "script" and "src" not in a
        if tag == "img":
            self.images.append(a["src"])


def test_html_is_self_contained_with_a_panel_per_module(two_tasks_report, tmp_path):
    _, rep = two_tasks_report
    path = rep.save_html(tmp_path / "report.html")
    text = open(path, encoding="utf-8").read()
    page = _Page()
    page.feed(text)
    ids = {str(m.id) for m in rep.modules}
    assert page.panels == ids and ids <= page.clickable
    assert page.scripts == 1 and all(u.startswith("data:") for u in page.urls)
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text


def test_html_digit_like_images_and_module_graph(small, tmp_path):
    """Image inputs: a heat map per module (data: URI) and decoded top examples as images; above
    max_nodes only the module graph is drawn."""
    model, X, _, _, graph = small
    p = ia.find_modules(graph, epsilon=1e-3, resolution=0.05)
    rep = ia.module_report(model, X, graph, p, input_shape=(2, 2), decode=decode_image(X, (2, 2)), top_k=2)
    assert rep.modules[0].input_map.shape == (2, 2)
    assert np.isclose(rep.modules[0].input_map.sum(), 1.0) and (0, 1) in rep.modules[0].inputs
    page = _Page()
    page.feed(open(rep.save_html(tmp_path / "r.html", max_nodes=5), encoding="utf-8").read())
    assert len(page.images) >= 2 * len(rep.modules) and all(s.startswith("data:image/png;base64,") for s in page.images)
    assert "node-graph" not in open(tmp_path / "r.html").read()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_html_in_a_headless_browser(two_tasks_report, tmp_path):
    """The page's self-test (loaded with #selftest) clicks every module; no script errors."""
    _, rep = two_tasks_report
    path = rep.save_html(tmp_path / "report.html")
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{path}#selftest"], capture_output=True, text=True, timeout=120)
    assert f'data-selftest="ok {len(rep.modules)}"' in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_module_colours_distinct_for_the_largest_and_grey_for_singletons():
    from intermod.analysis.core.partition import Module, Partition
    from intermod.analysis.report.palette import MAX_COLOURED, OTHER, module_colours

    sizes = [1, 5] + list(range(2, 26))                   # 26 modules, one singleton
    mods = [Module(i, [], s, {}, 0.0, 0.0) for i, s in enumerate(sizes)]
    part = Partition(np.zeros(0, dtype=int), mods, 0.0, 0.0, 0.0, 1e-3, "cpm", 0.1, 0)
    col = module_colours(part)
    ranked = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    coloured = [col[i] for i in ranked[:MAX_COLOURED]]
    assert len(set(coloured)) == MAX_COLOURED and OTHER not in coloured
    assert col[0] == OTHER and all(col[i] == OTHER for i in ranked[MAX_COLOURED:])


def test_plot_graph_node_and_module_views(small, tmp_path):
    from intermod.analysis.report.layout import module_boxes

    _, _, _, _, graph = small
    p = ia.find_modules(graph, epsilon=1e-3, resolution=0.05)
    for kw in ({}, {"max_nodes": 3}):
        path = ia.plot_graph(graph, p, tmp_path / f"g{len(kw)}.png", **kw)
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    boxes = module_boxes(graph, p.membership, [m.id for m in p.modules])
    for a in boxes:   # boxes in one row never overlap
        for b in boxes:
            if a.module != b.module and a.row == b.row:
                assert a.x1 < b.x0 or b.x1 < a.x0


def test_sequence_report_positions_tokens_and_text_decoder(tmp_path):
    """Token inputs: top examples are (sample, position) pairs, the decoder marks the position,
    token and position shares sum to 1 and the HTML highlights the token."""
    from intermod.analysis.report import decode_text

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    ids = torch.randint(0, 7, (30, 5), generator=torch.Generator().manual_seed(1))
    basis = ia.compute_basis(model, ids, ["1", "3", "output"], progress=False)
    graph = ia.build_graph(model, ids, basis, progress=False)
    part = ia.find_modules(graph, epsilon=1e-3, resolution=0.05)
    tok = SimpleNamespace(decode=lambda row: " ".join(f"t{i}" for i in row))
    rep = ia.module_report(model, ids, graph, part, top_k=3, decode=decode_text(tok, ids, window=1),
                           token_labels=lambda i: f"t{i}")
    m = rep.modules[0]
    assert rep.input_kind == "tokens" and all(isinstance(k, tuple) and len(k) == 2 for k in m.top_examples)
    sample, pos = m.top_examples[0]
    assert f"⟦t{int(ids[sample, pos])}⟧" in m.decoded[0]
    assert sum(m.input_tokens.values()) == pytest.approx(1.0) and all(k.startswith("t") for k in m.input_tokens)
    assert sum(m.input_positions.values()) == pytest.approx(1.0) and set(m.input_positions) <= set(range(5))
    assert f"<mark>t{int(ids[sample, pos])}</mark>" in open(rep.save_html(tmp_path / "s.html"), encoding="utf-8").read()


def test_two_tasks_with_the_ablation_packages_module_effects(two_tasks_report):
    """The same claims with the real ia.module_effects (issue 9) instead of the test's stand-in."""
    if not hasattr(ia, "module_effects"):
        pytest.skip("the ablation package (ia.module_effects) is not in this tree")
    ex, rep = two_tasks_report
    torch.set_default_dtype(torch.float64)
    try:
        fx = ia.module_effects(ex.model, ex.inputs, rep.graph, rep.partition, progress=False)
        real = ia.module_report(None, None, rep.graph, rep.partition, effects=fx)
    finally:
        torch.set_default_dtype(torch.float32)
    for outputs in ex.extra["output_groups"]:
        m = max((m for m in real.modules if sum(m.outputs.get(o, 0) for o in outputs) > 0.5), key=lambda m: m.size)
        assert sum(m.outputs[o] for o in outputs) >= 0.9 and m.size >= 4


def _cnn_and_graph(H: int = 4, W: int = 5):
    """A CNN cut at conv maps (channels at positions), and its graph, on H×W maps."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    X = torch.randn(6, 2, H, W, generator=torch.Generator().manual_seed(2))
    layers = ["1", "3", "output"]
    basis = ia.compute_basis(model, X, layers, progress=False)
    return model, X, layers, basis, ia.build_graph(model, X, basis, progress=False)


def _cnn_f_hat(model, basis, layer, x):
    """f̂ (P, k) of one input map x (2, H, W) at a conv-map layer: the Sequential sliced, the map
    read as samples = positions (row-major), features = channels (independent of the hooks)."""
    f = model[:{"1": 1, "3": 3}[layer]](x[None])[0]                   # (C, H, W)
    f = f.reshape(f.shape[0], -1).T                                   # (P, C)
    C = torch.as_tensor(basis[layer].C)
    return torch.cat([f, torch.ones(f.shape[0], 1)], 1) @ C


def _cnn_energy(model, basis, layer, X, idx, n_alpha):
    """E_ia = mean over (x, t) of A_{t,ia}², integrated gradients by autograd Jacobians of the
    sliced model, one output position t at a time."""
    nodes, weights = np.polynomial.legendre.leggauss(n_alpha)
    x_bar = X.mean(0)
    E = torch.zeros(len(idx), *X.shape[1:])
    for x in X:
        delta = x - x_bar
        grad = sum(w / 2 * torch.autograd.functional.jacobian(
            lambda z: _cnn_f_hat(model, basis, layer, z)[:, idx], x_bar + (a + 1) / 2 * delta)
            for a, w in zip(nodes, weights))                          # (P, k_sel, 2, H, W)
        E += ((grad * delta) ** 2).sum(0)
    return (E / (len(X) * X.shape[2] * X.shape[3])).numpy()


def test_cnn_attribution_colours_positions_with_disjoint_receptive_fields(float64_default, monkeypatch):
    """On 7×8 maps the positions of layer "1" (3×3 receptive field) take 9 colours of 56 and
    those of "3" (5×5) 25: one cotangent per colour and direction instead of per position, and
    the energies still equal the per-position brute force (and the uncoloured path)."""
    from intermod.analysis.report import attribution

    model, X, layers, basis, graph = _cnn_and_graph(7, 8)
    idx = {"1": [0, 1, 3], "3": [1, 2]}
    seen: list[int] = []
    real = attribution.vjp
    monkeypatch.setattr(attribution, "vjp", lambda out, ins, cot: seen.append(cot.shape[0]) or real(out, ins, cot))
    att = direction_attribution(model, X, graph, idx, n_alpha=2)
    assert sum(seen) == 2 * (9 * 3 + 25 * 2)                         # per alpha: colours × directions
    for layer, rows in idx.items():
        E = _cnn_energy(model, basis, layer, X, rows, 2)
        np.testing.assert_allclose(att.energy[layer], E, rtol=1e-9, atol=1e-12 * float(E.max()))
    monkeypatch.setattr(attribution, "_input_colouring", lambda *a: None)
    seen.clear()
    plain = direction_attribution(model, X, graph, idx, n_alpha=2)
    assert sum(seen) == 2 * 56 * 5
    for layer in idx:
        np.testing.assert_allclose(plain.energy[layer], att.energy[layer], rtol=1e-10, atol=1e-14)


def test_attribution_cotangent_chunks_count_what_autograd_saves(float64_default, monkeypatch):
    """A chunk of the attribution's cotangents is sized by everything one cotangent's backward
    pass touches, autograd's saved activations included (not only f̂ and the input): with a
    budget of 4.5 saved graphs, each chunk holds at most 4 cotangents, and the energies do not
    depend on the chunking."""
    from intermod.analysis.report import attribution

    model, X, layers, basis, graph = _cnn_and_graph(7, 8)
    idx = {"3": [0, 1, 2]}
    ref = direction_attribution(model, X, graph, idx, n_alpha=2, progress=False)
    saved: list[int] = []
    real_saved = attribution.SavedNumel

    class Counting(real_saved):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            saved.append(self.numel)

    monkeypatch.setattr(attribution, "SavedNumel", Counting)
    seen: list[int] = []
    real = attribution.vjp
    monkeypatch.setattr(attribution, "vjp", lambda out, ins, cot: seen.append(cot.shape[0]) or real(out, ins, cot))
    direction_attribution(model, X, graph, idx, n_alpha=1, progress=False)   # the saved size of one graph
    graph_bytes = saved[0] * 8
    assert graph_bytes > X.numel() * 8 * 4          # the tanh/conv activations dwarf the input
    monkeypatch.setattr(attribution, "DEFAULT_MAX_MEMORY", int(4.5 * graph_bytes))
    seen.clear()
    chunked = direction_attribution(model, X, graph, idx, n_alpha=2, progress=False)
    assert seen and max(seen) <= 4 and sum(seen) == 2 * 25 * 3          # 25 colours × 3 directions per α
    np.testing.assert_allclose(chunked.energy["3"], ref.energy["3"], rtol=1e-12, atol=1e-14)


def test_cnn_attribution_and_top_examples_read_channels_at_positions(float64_default):
    """On conv maps the report reads channels as features and every position as a sample (as the
    basis does): E_ia = mean over (x, t) of A_{t,ia}², by autograd Jacobians of the sliced
    model; top examples are the largest (sample, position) module norms."""
    model, X, layers, basis, graph = _cnn_and_graph()
    idx, n_alpha = [0, 2], 3
    att = direction_attribution(model, X, graph, {"3": idx}, n_alpha=n_alpha)
    E = _cnn_energy(model, basis, "3", X, idx, n_alpha)
    assert att.n_samples == len(X) * 20                               # (sample, position) pairs
    np.testing.assert_allclose(att.energy["3"], E, rtol=1e-9, atol=1e-12 * float(E.max()))

    p = ia.find_modules(graph, epsilon=1e-3, resolution=0.05)
    top = top_examples(model, X, graph, p.membership, top_k=3)
    assert not top.positions            # the output has one position, the maps 20: scores sum over them
    with torch.no_grad():
        fh = {n: torch.stack([_cnn_f_hat(model, basis, n, x) for x in X]).numpy() for n in ("1", "3")}
        fh["output"] = basis["output"].transform(model(X).numpy())[:, None, :]
    assert any(graph.nodes[i].layer != "output" for m in p.modules for i in m.nodes)
    for m in p.modules:
        sq = sum((fh[graph.nodes[i].layer][:, :, graph.nodes[i].index] ** 2).sum(1) for i in m.nodes)
        want = np.argsort(-np.sqrt(sq), kind="stable")[:3]
        hits = top.modules[m.id]
        assert [h.sample for h in hits] == want.tolist()
        np.testing.assert_allclose([h.score for h in hits], np.sqrt(sq[want]), rtol=1e-9)
    report = ia.module_report(model, X, graph, p)
    for info in report.modules:                                       # input shares per (channel, row, col)
        assert info.input_map.shape == tuple(X.shape[1:])
        np.testing.assert_allclose(info.input_map.sum(), 1.0, rtol=1e-9)


def test_float32_attribution_agrees_with_float64(float64_default):
    """``dtype=torch.float32`` runs the model's passes in float32 (f̂, Δ and the energies stay
    float64): on a CNN's conv maps and on its input-adjacent layer the energies agree with
    float64's to 1e-5 of the largest; any other dtype is refused by name."""
    model, X, layers, basis, graph = _cnn_and_graph(6, 7)
    idx = {"1": [0, 1, 2], "3": [0, 2]}
    ref = direction_attribution(model, X, graph, idx, n_alpha=3, progress=False)
    f32 = direction_attribution(model, X, graph, idx, n_alpha=3, progress=False, dtype=torch.float32)
    for layer in idx:
        assert f32.energy[layer].dtype == np.float64
        E = ref.energy[layer]
        np.testing.assert_allclose(f32.energy[layer], E, rtol=0, atol=1e-5 * float(E.max()))
        assert np.abs(f32.energy[layer] - E).max() > 0          # it did run in float32
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        direction_attribution(model, X, graph, idx, progress=False, dtype=torch.float16)
