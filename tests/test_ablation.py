"""Ablations (DESIGN.md §1 "Ablations"): every ablated loss against an independent hook-based
forward pass (tests/ablation_reference.py), known answers on planted modules and two_tasks."""

from __future__ import annotations

import math

import ablation_reference as ref
import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis import examples
from test_transformers import LAYERS as TLAYERS
from test_transformers import TinyTransformer, make_inputs
from torch import nn

Q = {"progress": False, "device": "cpu"}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.fixture(scope="module")
def planted():
    ex = examples.load("planted", n_per_module=12)
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, **Q)
    graph = ia.build_graph(ex.model, ex.inputs, basis, **Q)
    return ex, basis, graph


@pytest.fixture(scope="module")
def mlp():
    """A small random MLP whose last graph layer is a hidden layer (the rest runs naturally)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(40, 4, dtype=torch.float64)
    layers = ["0", "2", "4"]
    basis = ia.compute_basis(model, x, layers, **Q)
    graph = ia.build_graph(model, x, basis, **Q)
    return model, x, basis, graph


@pytest.fixture(scope="module")
def tiny():
    model = TinyTransformer(seed=0)
    inputs = make_inputs(n=12)
    basis = ia.compute_basis(model, inputs, TLAYERS, **Q)
    graph = ia.build_graph(model, inputs, basis, **Q)
    return model, inputs, basis, graph


def _random_membership(graph, n_mod: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, n_mod, graph.n_nodes)
    m[rng.random(graph.n_nodes) < 0.15] = -1
    m[graph.is_bias] = -1
    return m


# ------------------------------------------------------------------ planted: known answers

def test_planted_true_cut_is_exact_and_random_cuts_are_not(planted):
    ex, _, graph = planted
    cut = ia.module_cut(ex.model, ex.inputs, graph, ex.truth(graph), **Q)
    assert cut.relative < 1e-9
    assert cut.reconstruction_loss / cut.scale < 1e-9
    assert len(cut.baseline_losses) == 8
    assert min(cut.baseline_losses) > 1e-2 * cut.scale       # every random cut moves the output
    assert cut.baseline > 1e6 * max(cut.loss, 1e-300 * cut.scale)


def test_planted_truth_free_pipeline_finds_the_planted_modules(planted):
    ex, _, graph = planted
    auto = ia.modules_from_ablation(ex.model, ex.inputs, graph, **Q)
    assert auto.within_tolerance and auto.choice.exceeds_at_double
    assert ia.compare_partitions(auto.partition, ex.truth(graph)).ari > 0.99


def test_full_curve_point_is_reconstruction_loss(planted):
    ex, basis, _ = planted
    curve = ia.ablation_curve(ex.model, ex.inputs, basis, "3", schedule="all", **Q)
    assert curve.n_kept[-1] == basis["3"].k - 1
    assert curve.reconstruction_loss == curve.loss[-1]
    assert curve.reconstruction_loss < 1e-9 * curve.scale     # nothing the output sees was truncated
    assert curve.loss[0] > 0.1 * curve.scale                  # keeping nothing is far off
    assert curve.needed() == curve.n_kept[np.flatnonzero(curve.loss > 0.01 * curve.scale)[-1] + 1]


def test_truncation_has_a_reconstruction_loss_that_the_reference_reproduces(planted):
    ex, _, _ = planted
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, tol_M=0.05, **Q)
    graph = ia.build_graph(ex.model, ex.inputs, basis, **Q)
    curve = ia.ablation_curve(ex.model, ex.inputs, graph, "6", schedule=[0, 1], **Q)
    want = [ref.mse(ref.node_ablated_output(ex.model, ex.inputs, graph, {"6": m}), ex.model(ex.inputs).detach().numpy())
            for m in (_top(graph, "6", 0), _top(graph, "6", 1), np.ones(graph.layer_sizes["6"]))]
    np.testing.assert_allclose(curve.loss, want, rtol=1e-9, atol=1e-15)
    assert curve.reconstruction_loss > 1e-6 * curve.scale


def _top(graph, layer, m):
    s = graph.node_offset[layer]
    lam = graph.Lambda[s:s + graph.layer_sizes[layer]].copy()
    bias = graph.is_bias[s:s + graph.layer_sizes[layer]]
    lam[bias] = -np.inf
    mask = bias.astype(float)
    mask[np.argsort(-lam, kind="stable")[:m]] = 1.0
    return mask


# ---------------------------------------------------- every loss against the hook reference

@pytest.mark.parametrize("which", ["mlp", "tiny"])
def test_edge_and_cut_losses_match_reference(which, mlp, tiny):
    model, inputs, _, graph = mlp if which == "mlp" else tiny
    y = ref.call(model, inputs).detach().numpy()
    ea = ia.edge_ablation(model, inputs, graph, keep=7, **Q)
    keep = [k.astype(float) for k in ia.ablation.edges.keep_matrices(graph, keep=7)]
    assert ea.n_kept == sum(int(k.sum()) for k in keep)
    assert _rel(ea.loss, ref.mse(ref.edge_ablated_output(model, inputs, graph, keep), y)) < 1e-8
    mem = _random_membership(graph, 3, seed=1)
    cut = ia.module_cut(model, inputs, graph, mem, n_baseline=2, **Q)
    want = ref.mse(ref.edge_ablated_output(model, inputs, graph, ref.cut_keep(graph, mem), nodes=mem >= 0), y)
    assert _rel(cut.loss, want) < 1e-8
    inactive = ref.mse(ref.edge_ablated_output(model, inputs, graph, [np.ones_like(k) for k in keep], nodes=mem >= 0), y)
    assert _rel(cut.inactive_loss, inactive) < 1e-8


@pytest.mark.parametrize("which", ["mlp", "tiny"])
def test_node_and_module_losses_match_reference(which, mlp, tiny):
    model, inputs, basis, graph = mlp if which == "mlp" else tiny
    layer = graph.layers[1]
    y = ref.call(model, inputs).detach().numpy()
    curve = ia.ablation_curve(model, inputs, basis, layer, schedule=[1, 2], **Q)
    want = [ref.mse(ref.node_ablated_output(model, inputs, graph, {layer: _top(graph, layer, m)}), y) for m in (1, 2)]
    np.testing.assert_allclose(curve.loss[:2], want, rtol=1e-8)
    mem = _random_membership(graph, 2, seed=2)
    fx = ia.module_effects(model, inputs, graph, mem, **Q)
    group = "position" if which == "tiny" else "coordinate"
    assert fx.group == group and fx.module_ids == [0, 1]
    for row, c in enumerate(fx.module_ids):
        masks = {n: (mem[graph.node_offset[n]:graph.node_offset[n] + graph.layer_sizes[n]] != c).astype(float)
                 for n in graph.layers}
        ya = ref.node_ablated_output(model, inputs, graph, masks)
        assert _rel(fx.loss[row], ref.mse(ya, y)) < 1e-8
        sq = (ya - y) ** 2
        per_group = sq.mean(axis=(0, 2)) if which == "tiny" else sq.mean(0)
        np.testing.assert_allclose(fx.loss_increase[row] + fx.reconstruction_by_group, per_group, rtol=1e-8, atol=1e-14)
    assert fx.loss_increase.shape == (2, len(fx.output_labels))


def test_kl_and_callable_losses_match_reference(tiny):
    model, inputs, _, graph = tiny
    y = ref.call(model, inputs).detach().numpy()
    mem = _random_membership(graph, 2, seed=4)
    ya = ref.edge_ablated_output(model, inputs, graph, ref.cut_keep(graph, mem), nodes=mem >= 0)
    cut = ia.module_cut(model, inputs, graph, mem, loss="kl", n_baseline=0, **Q)
    assert _rel(cut.loss, ref.kl(ya, y)) < 1e-8

    def abs_err(y_abl, y_clean, batch):   # per (sample, position): L1 of the logits
        assert set(batch) == {"inputs_embeds", "attention_mask"}
        return (y_abl - y_clean).abs().sum(-1)

    cut = ia.module_cut(model, inputs, graph, mem, loss=abs_err, n_baseline=0, **Q)
    assert _rel(cut.loss, float(np.abs(ya - y).sum(-1).mean())) < 1e-8
    fx = ia.module_effects(model, inputs, graph, mem, loss="kl", **Q)
    assert fx.group == "position" and fx.loss_increase.shape == (2, 2)


def test_kl_classes_and_default_tolerance(mlp):
    model, x, _, graph = mlp
    mem = _random_membership(graph, 2, seed=5)
    fx = ia.module_effects(model, x, graph, mem, loss="kl", **Q)
    assert fx.group == "class" and fx.output_labels == ["class 0", "class 1", "class 2"]
    with torch.no_grad():
        y = model(x)
    p = torch.softmax(y, -1)
    pbar = p.mean(0)
    scale = float((p * (p.log() - pbar.log())).sum(-1).mean())   # E KL(p ‖ p̄)
    assert _rel(fx.scale, scale) < 1e-10
    counts = np.bincount(y.argmax(-1).numpy(), minlength=3)
    np.testing.assert_array_equal(fx.counts, counts)
    curve = ia.ablation_curve(model, x, graph, "2", **Q)
    assert _rel(curve.scale, float(y.var(0, unbiased=False).mean())) < 1e-10


# ------------------------------------------------------------------- edges and the bisection

def test_edge_ablation_at_tiny_epsilon_is_the_reconstruction(planted):
    ex, _, graph = planted
    ea = ia.edge_ablation(ex.model, ex.inputs, graph, epsilon=1e-300, **Q)
    assert ea.n_kept == ea.n_total == graph.n_edges
    assert abs(ea.loss - ea.reconstruction_loss) < 1e-12 * ea.scale


def test_epsilon_bisection_brackets_the_tolerance(planted):
    ex, _, graph = planted
    choice = ia.epsilon_from_ablation(ex.model, ex.inputs, graph, **Q)
    assert choice.feasible and not choice.capped
    assert choice.tolerance == pytest.approx(0.01 * choice.scale)
    assert choice.loss <= choice.tolerance
    assert choice.exceeds_at_double and choice.loss_at_double > choice.tolerance
    direct = ia.edge_ablation(ex.model, ex.inputs, graph, epsilon=choice.epsilon, **Q)
    assert _rel(direct.loss, choice.loss) < 1e-10
    eps = [c[0] for c in choice.curve]
    assert eps == sorted(eps) and choice.epsilon in eps
    big = ia.epsilon_from_ablation(ex.model, ex.inputs, graph, tolerance=10 * choice.scale, **Q)
    assert big.capped and big.epsilon == ia.ablation.edges.EPSILON_CAP


# ------------------------------------------------------------------- the truth-free pipeline

def test_two_tasks_modules_from_ablation():
    ex = examples.load("two_tasks")
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers, **Q)
    graph = ia.build_graph(ex.model, ex.inputs, basis, **Q)
    auto = ia.modules_from_ablation(ex.model, ex.inputs, graph, **Q)
    truth = ex.truth(graph)
    assert auto.within_tolerance and auto.cut_loss <= auto.tolerance
    assert ia.compare_partitions(auto.partition, truth).ari >= 0.9
    assert any(r["n_modules"] > auto.partition.n_modules and not r["within"] for r in auto.sweep)
    fx = ia.module_effects(ex.model, ex.inputs, graph, auto.partition, **Q)
    tasks = ex.extra["output_groups"]
    own = []
    for row in fx.loss_increase:      # every module moves one task's outputs, not the other's
        per_task = np.array([row[g].sum() for g in tasks])
        own.append(int(per_task.argmax()))
        assert per_task.max() > 10 * max(per_task.min(), 0)
    assert set(own) == {0, 1}


# ------------------------------------------------------------------------- files and errors

def test_graph_files_keep_the_inverse_map(tmp_path, mlp):
    _, _, basis, graph = mlp
    graph.to_json(tmp_path / "g.json")
    graph.save_safetensors(tmp_path / "g.safetensors")
    for back in (ia.InteractionGraph.from_json(tmp_path / "g.json"),
                 ia.InteractionGraph.load_safetensors(tmp_path / "g.safetensors")):
        for n in graph.layers:
            np.testing.assert_array_equal(back.inverses[n], basis[n].Cinv)
            np.testing.assert_array_equal(back.means[n], basis[n].mean)
    old = graph.to_dict()
    del old["inverses"], old["means"]
    with pytest.raises(ValueError, match="C⁻¹"):
        ia.module_cut(None, None, ia.InteractionGraph.from_dict(old), np.zeros(graph.n_nodes, int))


def test_bad_arguments_are_named(mlp):
    model, x, basis, graph = mlp
    with pytest.raises(ValueError, match="loss"):
        ia.ablation_curve(model, x, basis, "2", loss="hinge", **Q)
    with pytest.raises(ValueError, match="schedule"):
        ia.ablation_curve(model, x, basis, "2", schedule=[0, 99], **Q)
    with pytest.raises(ValueError, match="exactly one"):
        ia.edge_ablation(model, x, graph, epsilon=1e-3, keep=3, **Q)
    with pytest.raises(ValueError, match="one label per graph node"):
        ia.module_cut(model, x, graph, [0, 1], **Q)
    with pytest.raises(ValueError, match="coordinate"):
        ia.module_effects(model, x, graph, np.zeros(graph.n_nodes, int), loss="kl", group="coordinate", **Q)
    with pytest.raises(ValueError, match="tolerance"):
        ia.epsilon_from_ablation(model, x, graph, loss=lambda a, b, batch: (a - b).abs().sum(-1), **Q)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ia.module_cut(model, x, graph, np.zeros(graph.n_nodes, int), n_probes=3)


def test_an_output_that_ignores_the_inputs_is_named():
    """A network whose hidden ReLUs are dead on the data gives the same output for every input:
    cutting every interaction keeps the loss at 0, ε reaches its cap, and modules_from_ablation
    says so instead of failing to find a partition."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)                                    # every ReLU dead on the data
    x = torch.randn(40, 4, dtype=torch.float64)
    graph = ia.build_graph(model, x, ia.compute_basis(model, x, ["0", "2", "output"], **Q), **Q)
    with pytest.raises(ValueError, match="no dependence of the output"):
        ia.modules_from_ablation(model, x, graph, **Q)


def test_plots_write_png_and_svg(tmp_path, mlp):
    model, x, basis, graph = mlp
    curves = ia.ablation_curves(model, x, {"interaction": basis, "graph": graph}, "2", **Q)
    choice = ia.epsilon_from_ablation(model, x, graph, **Q)
    fx = ia.module_effects(model, x, graph, _random_membership(graph, 2, seed=0), **Q)
    written = (ia.plot_ablation_curves(curves, tmp_path / "curves")
               + ia.plot_epsilon_choice(choice, tmp_path / "eps.png")
               + ia.plot_module_effects(fx, tmp_path / "fx"))
    assert sorted(p.rsplit("/", 1)[1] for p in written) == sorted(
        f"{n}.{e}" for n in ("curves", "eps", "fx") for e in ("png", "svg"))
    assert all((tmp_path / p.rsplit("/", 1)[1]).stat().st_size > 1000 for p in written)


def test_disagreement_loss_counts_changed_predictions(mlp):
    model, x, _, graph = mlp
    mem = _random_membership(graph, 2, seed=6)
    y = ref.call(model, x).detach().numpy()
    ya = ref.edge_ablated_output(model, x, graph, ref.cut_keep(graph, mem), nodes=mem >= 0)
    cut = ia.module_cut(model, x, graph, mem, loss="disagreement", n_baseline=0, **Q)
    assert cut.loss == pytest.approx(float((ya.argmax(-1) != y.argmax(-1)).mean()), abs=1e-12)
    assert cut.scale == pytest.approx(1 - np.bincount(y.argmax(-1)).max() / len(y))
    fx = ia.module_effects(model, x, graph, mem, loss="disagreement", **Q)
    assert fx.group == "class"


def test_conv_maps_are_ablated_as_channels_at_positions():
    """A conv map is C features at H·W positions (its layout): the ablation must rotate the
    channel vector at every position, as the hook reference does with the channels moved last,
    both from a Basis and from the graph (which keeps the layout in its metadata)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(5 * 5 * 5, 2)).double()
    X = torch.randn(30, 1, 5, 5, dtype=torch.float64)
    basis = ia.compute_basis(model, X, ["1", "2", "output"], progress=False)
    assert basis["2"].layout == "channels" and basis["2"].C.shape[0] == 4 + 1
    graph = ia.build_graph(model, X, basis, progress=False)
    y = ref.call(model, X).detach().numpy()
    for source in (basis, graph):
        curve = ia.ablation_curve(model, X, source, "2", schedule=[1, 2, 3], **Q)
        for m, got in zip((1, 2, 3), curve.loss):
            mask = _top(graph, "2", m)

            def write(x, mask=mask):
                return np.moveaxis(ref.masked(graph, "2", np.moveaxis(x, 1, -1), mask), -1, 1)
            want = ref.mse(ref.run(model, X, {"2": write}), y)
            assert _rel(got, want) < 1e-8, (m, got, want)
    assert curve.loss[-1] < 1e-20 * float((y ** 2).mean())       # all kept: the reconstruction


def _resnet():
    """torchvision-style residual blocks (a traced chain of modules), cut at the blocks, the
    average pool, the Linear head's input (a head the ablation folds) and the output."""
    from nets import TorchvisionResNet
    model = TorchvisionResNet().double().eval()
    X = torch.randn(24, 2, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    layers = ["layer1.0", "layer1.1", "avgpool", "fc", "output"]
    basis = ia.compute_basis(model, X, layers, **Q)
    return model, X, basis, ia.build_graph(model, X, basis, **Q)


def _force(monkeypatch, way: str) -> None:
    """Run every plan ``way``: "chain" (module by module, where the model allows), or with
    hooks on the whole model, "stacked" (the K copies) or "classes" (each class of equal
    copies once, checked against the stacked copies on the first sample)."""
    from intermod.analysis.ablation import copies, forward
    if way == "chain":
        return
    monkeypatch.setattr(forward.Ablator, "_runner", lambda self, plan: copies.Copies(
        plan, self.s.net, self.torch_maps, self.batch_size, np.ones(len(self.s.net.chain) + 1)))
    monkeypatch.setattr(copies, "MIN_ROW_SAVING", 0.0 if way == "classes" else math.inf)
    monkeypatch.setattr(copies, "MIN_CLASSES_ONE_SAMPLE", 0)


@pytest.mark.parametrize("which", ["mlp", "resnet", "tiny"])
def test_each_way_of_running_the_copies_gives_the_same_losses(which, mlp, tiny, monkeypatch):
    """The masked pass runs each copy that holds the same activation by construction once:
    module by module for a model that runs its modules in sequence (the first module sees one
    copy of each batch, not K), and with hooks on the whole model otherwise (the rows change at
    each rewritten layer; a transformer's attention mask broadcasts over them one sample at a
    time). Every ablation (edges, a module cut with its baselines, module effects, a node curve)
    equals the pass over all K stacked copies to 1e-10."""
    from intermod.analysis.ablation import copies
    model, X, basis, graph = {"mlp": mlp, "tiny": tiny}.get(which) or _resnet()
    mem = _random_membership(graph, 3, seed=5)
    first = next(m for m in model.modules() if not list(m.children()))    # the first leaf module
    rows: list[int] = []
    handle = first.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    checks: list[bool] = []                 # did the classes pass their check (and run)?
    check = copies.Copies._check

    def spy(self, batch, readout):
        out = check(self, batch, readout)
        checks.append(self.classes is not None)
        return out

    def run(way: str) -> tuple[list[np.ndarray], set[int]]:
        rows.clear()
        with monkeypatch.context() as mp:
            _force(mp, way)
            mp.setattr(copies.Copies, "_check", spy)
            ea = ia.edge_ablation(model, X, graph, keep=9, **Q)
            cut = ia.module_cut(model, X, graph, mem, n_baseline=2, **Q)
            fx = ia.module_effects(model, X, graph, mem, **Q)
            curve = ia.ablation_curve(model, X, basis, graph.layers[1], schedule=[1, 3], **Q)
        return [np.atleast_1d(ea.loss), np.atleast_1d(cut.loss), cut.baseline_losses, fx.loss, curve.loss], set(rows)

    try:
        ways = {w: run(w) for w in (["chain"] if which != "tiny" else []) + ["classes", "stacked"]}
    finally:
        handle.remove()
    n = len(X) if isinstance(X, torch.Tensor) else len(X["inputs_embeds"])
    stacked, stacked_rows = ways.pop("stacked")
    assert max(stacked_rows) > n                            # the K copies stacked
    if "chain" in ways:
        assert ways["chain"][1] == {n}                      # every pass: one copy of the batch
    assert checks and all(checks)                           # the classes passed their check: they ran
    for losses, _ in ways.values():
        for a, b in zip(losses, stacked):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


class _Bypass(nn.Module):
    """a = l2(tanh l1 x), out = l4(tanh l3(tanh a)) + a[:, :2]: ``a`` bypasses the node layers
    l3 and l4 (not a chain of modules)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.l1, self.l2, self.l3, self.l4 = (nn.Linear(a, b, dtype=torch.float64)
                                              for a, b in [(3, 4), (4, 4), (4, 4), (4, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.l2(torch.tanh(self.l1(x)))
        return self.l4(torch.tanh(self.l3(torch.tanh(a)))) + a[:, :2]


def test_copies_whose_rows_a_bypass_mixes_fall_back_to_the_stacked_copies(monkeypatch):
    """Two copies: copy 1 ablates a direction at l2, at l3 each copy reads the other's f̂. The
    classes of equal copies come out in another order after l3 than after l2, so ``a`` (rows in
    l2's order) would be added to the wrong copy; the check on the first sample sees it and the
    stacked copies run. Both copies' losses equal an independent hook-based pass."""
    from intermod.analysis.ablation import copies, forward, plans
    model = _Bypass()
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layers = ["l2", "l3", "l4"]
    graph = ia.build_graph(model, X, ia.compute_basis(model, X, layers, **Q), **Q)
    k = {n: graph.layer_sizes[n] for n in layers}
    m2 = np.ones((2, k["l2"]))
    m2[1, 1] = 0.0
    plan = plans.Plan(2, {"l2": plans.LayerPlan(m2),
                            "l3": plans.LayerPlan(np.ones((2, k["l3"])), np.array([[1] * k["l3"], [0] * k["l3"]])),
                            "l4": plans.LayerPlan(np.ones((2, k["l4"])))}, [0, 1])
    ones = {n: np.ones(k[n]) for n in layers}
    y = ref.call(model, X).detach().numpy()
    l3_of = [ref.run(model, X, {"l2": lambda f, m=m: ref.masked(graph, "l2", f, m)}, stop_at="l3") for m in m2]
    want = [ref.mse(ref.run(model, X, {"l2": lambda f, m=m2[c]: ref.masked(graph, "l2", f, m),
                                       "l3": ref.masked(graph, "l3", l3_of[1 - c], ones["l3"]),
                                       "l4": lambda f: ref.masked(graph, "l4", f, ones["l4"])}), y) for c in (0, 1)]
    maps = {n: forward.LayerMap.from_graph(graph, n) for n in layers}
    ab = forward.Ablator(model, X, maps, progress=False)
    assert ab.s.net.sequence is None
    monkeypatch.setattr(copies, "MIN_ROW_SAVING", 0.0)
    monkeypatch.setattr(copies, "MIN_CLASSES_ONE_SAMPLE", 0)
    np.testing.assert_allclose(ab.evaluate(plan).loss, want, rtol=1e-10)
    monkeypatch.setattr(copies, "_agree", lambda a, b: True)         # unchecked: the rows mix
    assert not np.allclose(ab.evaluate(plan).loss, want, rtol=1e-3)


def test_position_groups_over_batches_of_different_lengths(tiny):
    """Sequences of different lengths in different batches: each position's mean loss is over
    the batches that reach it (the hook reference, batch by batch)."""
    model, _, _, graph = tiny
    gen = torch.Generator().manual_seed(5)
    long = {"inputs_embeds": torch.randn(6, 4, 4, generator=gen, dtype=torch.float64),
            "attention_mask": torch.ones(6, 4, dtype=torch.long)}
    long["attention_mask"][::2, 3] = 0                     # padded: not counted at position 3
    batches = [make_inputs(n=4, seed=6), long]             # 2 positions, then 4
    mem = _random_membership(graph, 2, seed=7)
    fx = ia.module_effects(model, batches, graph, mem, **Q)
    assert fx.group == "position" and fx.loss_increase.shape == (2, long["attention_mask"].shape[1])
    for row, c in enumerate(fx.module_ids):
        masks = {n: (mem[graph.node_offset[n]:graph.node_offset[n] + graph.layer_sizes[n]] != c).astype(float)
                 for n in graph.layers}
        sums, counts = np.zeros(fx.loss_increase.shape[1]), np.zeros(fx.loss_increase.shape[1])
        for b in batches:
            per = ((ref.node_ablated_output(model, b, graph, masks) - ref.call(model, b).detach().numpy()) ** 2).mean(-1)
            w = b["attention_mask"].numpy()
            sums[:per.shape[1]] += (per * w).sum(0)
            counts[:per.shape[1]] += w.sum(0)
        np.testing.assert_allclose(fx.loss_increase[row] + fx.reconstruction_by_group, sums / counts, rtol=1e-8, atol=1e-14)


def test_section_costs_count_multiply_adds_per_section(tiny):
    """The work estimate that picks how copies run: per section of the node-layer chain, each
    leaf module's output numel times its weight's fan-in (1 without a matrix weight). Known
    answer on the tiny transformer: nothing before ``blocks.0``, two equal blocks, the head's
    B·P·D_OUT·D, nothing after the output."""
    from intermod.analysis.ablation import copies
    from intermod.analysis.ablation.forward import Ablator
    from intermod.analysis.ablation.maps import LayerMap
    from test_transformers import D_MLP, D_OUT, D, P
    model, inputs, _, graph = tiny
    ab = Ablator(model, inputs, {n: LayerMap.from_graph(graph, n) for n in graph.layers}, progress=False)
    rows = len(inputs["inputs_embeds"]) * P
    block = rows * (D + D + 4 * D * D + D + D_MLP * D + D * D_MLP + D)   # pre, ln1, q k v o, ln2, fc1, fc2, post
    np.testing.assert_array_equal(ab._costs.cost, [0, block, block, rows * D_OUT * D, 0])
    plan = ia.ablation.plans.node_plan("head", np.ones((1, graph.layer_sizes["head"])))
    assert isinstance(ab._runner(plan), copies.Copies)           # a mapping batch: hooks


def test_the_copies_check_is_relative_to_the_finite_outputs():
    """The check of the classes against the stacked copies: √eps relative to the largest finite
    output, so an infinite logit neither hides a difference elsewhere nor counts as one."""
    from intermod.analysis.ablation.copies import _agree
    a = torch.tensor([[-math.inf, 1.0, 2.0]], dtype=torch.float64)
    assert _agree(a, a.clone()) and _agree(a + torch.tensor([0.0, 1e-12, 0.0]), a)
    assert not _agree(a + torch.tensor([0.0, 1e-6, 0.0]), a)
    assert not _agree(a[:, 1:], a[:, 1:].expand(2, 2))


@pytest.mark.parametrize("center,include_bias,warns", [(True, True, False), (False, True, True),
                                                       (False, False, False), (True, False, False)])
def test_ablations_warn_when_the_basis_has_a_slot_but_no_constant_direction(mlp, center, include_bias, warns):
    """A basis with the bias slot built without ``center`` has no constant direction: ablating a
    direction moves the slot row, which is not written back (docs/ablation.md, Limits). Every
    ablation built on such a graph names the layers it maps; the other three bases say nothing."""
    import warnings

    model, x, _, _ = mlp
    layers = ["0", "2", "4"]
    graph = ia.build_graph(model, x, ia.compute_basis(model, x, layers, center=center, include_bias=include_bias, **Q),
                           **Q)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ia.ablation_curve(model, x, graph, "2", schedule=[1], **Q)
    hits = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning) and "no constant direction" in str(w.message)]
    assert bool(hits) == warns, hits
    if warns:
        assert "layers ['2']" in hits[0] and "center=True" in hits[0]   # the curve maps layer 2 only
