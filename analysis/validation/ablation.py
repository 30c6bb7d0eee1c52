"""Sections "Ablations" and "Finite-sample study, truth-free": the causal tests of
:mod:`intermod.analysis.ablation` on every built-in example, and the planted finite-sample study
re-run with the truth-free pipeline (ε and modules from ablation, no ground truth used).

Per example (interaction basis, output target, from the "examples" section): the truth-free
pipeline's partition (ARI against the truth where there is one, coverage), its module cut
against 8 random partitions of equal module sizes per layer, node ablation curves of the
neuron, PCA and interaction bases at one hidden layer (plotted), and the module-effect table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..ablation import (
    AblationCurve,
    AutoModules,
    ModuleCut,
    ModuleEffects,
    ablation_curve,
    module_cut,
    module_effects,
    modules_from_ablation,
    plot_ablation_curves,
    plot_module_effects,
)
from ..core.basis import compute_basis
from ..core.edges import build_graph
from ..core.partition import compare_partitions
from ..examples import load
from .formatting import fmt, table
from .remedies import rerotate_degenerate
from .section import Context, Section

Q = {"progress": False}
IID_SIZES = (1_000, 10_000, 100_000)
INTERACTION = 2          # index of the interaction (output target) basis in the examples' results


@dataclass
class AblationRow:
    """One example: the truth-free pipeline, its cut, the three bases' curves, the effects."""

    name: str
    layer: str
    auto: AutoModules
    ari: float | None
    cut: ModuleCut
    curves: dict[str, AblationCurve]
    effects: ModuleEffects
    seconds: float


def _ari(partition: Any, truth: np.ndarray | None) -> float | None:
    if truth is None or ((partition.membership >= 0) & (truth >= 0)).sum() < 2:
        return None
    return compare_partitions(partition, truth).ari


def ablate_examples(ctx: Context) -> list[AblationRow]:
    """The ablations of every example of the "examples" section (see the module docstring)."""
    out = []
    for name, (ex, results) in ctx.results["examples"].items():
        start = time.perf_counter()
        inter = results[INTERACTION]
        graph = inter.graph
        layer = ex.layers[len(ex.layers) // 2]
        with ctx.timer(f"ablation {name}: truth-free pipeline"):
            auto = modules_from_ablation(ex.model, ex.inputs, graph, **Q)
        truth = ex.truth(graph) if ex.truth is not None and name != "deep_linear" else None
        with ctx.timer(f"ablation {name}: cut, curves, effects"):
            cut = module_cut(ex.model, ex.inputs, graph, auto.partition, **Q)
            curves = {r.label: ablation_curve(ex.model, ex.inputs, r.basis, layer, **Q)
                      for r in results[:INTERACTION + 1]}
            fx = module_effects(ex.model, ex.inputs, graph, auto.partition, **Q)
            plot_ablation_curves(curves, ctx.fig_dir / f"ablation_curves_{name}",
                                 title=f"{name}: node ablation at layer {layer}")
            if fx.module_ids:
                plot_module_effects(fx, ctx.fig_dir / f"ablation_effects_{name}", title=f"{name}: module effects")
        out.append(AblationRow(name, layer, auto, _ari(auto.partition, truth), cut, curves, fx,
                               time.perf_counter() - start))
    return out


def _effects_table(fx: ModuleEffects, limit: int = 10) -> str:
    cols = list(range(min(limit, len(fx.output_labels))))
    rows = [[str(m), total, *[fx.loss_increase[i, c] for c in cols]]
            for i, (m, total) in enumerate(zip(fx.module_ids, fx.loss))]
    return table(["module", "loss", *[fx.output_labels[c] for c in cols]], rows)


def render_examples(rows: list[AblationRow], ctx: Context) -> str:
    L = ["## Ablations\n",
         "Interaction basis (output target) of every example, `loss=\"mse\"`, default tolerance "
         "δ = 1 % of the output's variance (docs/ablation.md). *Truth-free pipeline*: "
         "`modules_from_ablation` (ε by bisection on log ε, then the partition of a resolution "
         "sweep with the most modules whose cut stays within δ). *Cut*: `module_cut` of that "
         "partition, relative MSE (loss / output variance), against 8 random partitions with the "
         "same module sizes per layer (mean ± standard deviation); *inactive only*: just the "
         "inactive directions ablated. ARI against the ground truth is computed afterwards, the "
         "pipeline never sees it (deep_linear's truth is per direction, digits has none).\n"]
    trows = []
    for r in rows:
        a, c = r.auto, r.cut
        s = c.scale or float("nan")
        trows.append([r.name, a.epsilon, a.choice.loss / s, a.partition.n_modules, a.coverage,
                      r.ari, "yes" if a.within_tolerance else "no", c.loss / s,
                      f"{fmt(c.baseline / s)} ± {fmt(c.baseline_spread / s)}", c.inactive_loss / s,
                      fmt(r.seconds, 1)])
    L.append(table(["example", "ε", "L(ε) rel.", "modules", "coverage", "ARI", "cut ≤ δ",
                    "cut rel.", "random cut rel.", "inactive only rel.", "s"], trows) + "\n")
    L.append("### Node ablation curves (neuron, PCA, interaction basis)\n")
    L.append("Directions of one layer kept in order of Λ (largest first), the rest ablated; the table "
             "gives the directions needed to stay within δ (of k) and the loss keeping 1 and all.\n")
    crow = []
    for r in rows:
        for label, c in r.curves.items():
            crow.append([r.name, r.layer, label, f"{c.needed()} / {c.n_directions}",
                         c.loss[list(c.n_kept).index(1)] / c.scale if 1 in c.n_kept and c.scale else None,
                         c.reconstruction_loss / c.scale if c.scale else None])
    L.append(table(["example", "layer", "basis", "needed(δ)", "L(1) rel.", "L(k) rel."], crow) + "\n")
    L += [f"![curves {r.name}]({ctx.rel}/ablation_curves_{r.name}.png)" for r in rows]
    L.append("\n### Module effects (loss increase per output coordinate with one module ablated)\n")
    for r in rows:
        if r.effects.module_ids:
            L.append(f"**{r.name}** (reconstruction loss {fmt(r.effects.reconstruction_loss)}):\n")
            L.append(_effects_table(r.effects) + "\n")
    return "\n".join(L) + "\n"


def headlines_examples(rows: list[AblationRow], ctx: Context) -> list[str]:
    return ["- truth-free pipeline (ε and modules from ablation): " + "; ".join(
        f"{r.name}: {r.auto.partition.n_modules} modules, ARI {fmt(r.ari)}, coverage "
        f"{fmt(r.auto.coverage)}, cut {fmt(r.cut.relative)} vs random "
        f"{fmt(r.cut.baseline / r.cut.scale if r.cut.scale else None)} (relative MSE)" for r in rows) + "."]


@dataclass
class FiniteRow:
    network: str
    setting: str
    n: int
    epsilon: float
    n_modules: int
    ari: float | None
    coverage: float
    cut_rel: float
    within: bool
    truth_cut_rel: float
    seconds: float


#: two_tasks on i.i.d. draws from its training distribution (uniform on [−1, 1]⁶), n = the
#: grid's 1600 and larger; each with and without re-rotating near-degenerate groups.
TWO_TASKS_IID = (1_600, 6_400, 25_600)


def _uniform(n: int, d: int, seed: int = 5) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _truth_free(ctx: Context, network: str, setting: str, model: Any, inputs: torch.Tensor,
                layers: list[str], truth: Any, rerotate: bool = False) -> FiniteRow:
    """compute_basis → (re-rotation) → build_graph → modules_from_ablation, all defaults; the
    ARI and the cut of the true partition computed afterwards."""
    with ctx.timer(f"finite-sample truth-free: {network} {setting} n={len(inputs)}"):
        start = time.perf_counter()
        basis = compute_basis(model, inputs, layers, **Q)
        if rerotate:
            basis = rerotate_degenerate(model, inputs, basis)
        graph = build_graph(model, inputs, basis, **Q)
        auto = modules_from_ablation(model, inputs, graph, **Q)
        labels = truth(graph)
        scale = auto.choice.scale or float("nan")
        true_cut = module_cut(model, inputs, graph, labels, n_baseline=0, **Q)
        return FiniteRow(network, setting, len(inputs), auto.epsilon, auto.partition.n_modules,
                         _ari(auto.partition, labels), auto.coverage, auto.cut_loss / scale,
                         auto.within_tolerance, true_cut.loss / scale, time.perf_counter() - start)


def finite_sample(ctx: Context) -> list[FiniteRow]:
    """planted (product data, i.i.d. samples of growing n) and two_tasks (its grid, i.i.d.
    samples with and without re-rotation) through the truth-free pipeline."""
    prod = load("planted")
    out = [_truth_free(ctx, "planted", "product", prod.model, prod.inputs, prod.layers, prod.truth)]
    for n in IID_SIZES:
        ex = load("planted", iid_samples=n)
        out.append(_truth_free(ctx, "planted", "i.i.d.", ex.model, ex.inputs, ex.layers, ex.truth))
    tt = load("two_tasks")
    out.append(_truth_free(ctx, "two_tasks", "grid", tt.model, tt.inputs, tt.layers, tt.truth))
    for n in TWO_TASKS_IID:
        X = _uniform(n, tt.inputs.shape[1])
        for rerotate in (False, True):
            out.append(_truth_free(ctx, "two_tasks", "i.i.d., re-rotated" if rerotate else "i.i.d.",
                                   tt.model, X, tt.layers, tt.truth, rerotate))
    return out


def render_finite(rows: list[FiniteRow], ctx: Context) -> str:
    return "\n".join([
        "## Finite-sample study, truth-free\n",
        "The planted network (2 modules) on its product data and on i.i.d. Gaussian samples, and "
        "the trained `two_tasks` network on its 40 × 40 product grid and on i.i.d. draws from its "
        "training distribution, each through `compute_basis`, `build_graph` and "
        "`modules_from_ablation` with the defaults: no ε, resolution or truth supplied "
        "(*re-rotated*: `remedies.rerotate_degenerate` with its defaults between the basis and "
        "the edges). Afterwards: the ARI against the true modules and the cut of the *true* "
        "partition (relative to the output variance; δ = 1 %). Where the true cut exceeds δ "
        "the pipeline cannot return the true modules: the finite-sample basis mixes them.\n",
        table(["network", "data", "n", "ε", "modules", "ARI", "coverage", "cut rel.", "cut ≤ δ",
               "true cut rel.", "s"],
              [[r.network, r.setting, r.n, r.epsilon, r.n_modules, r.ari, r.coverage, r.cut_rel,
                "yes" if r.within else "no", r.truth_cut_rel, fmt(r.seconds, 1)] for r in rows]) + "\n"])


def headlines_finite(rows: list[FiniteRow], ctx: Context) -> list[str]:
    return ["- truth-free pipeline by data: " + "; ".join(
        f"{r.network} {r.setting} n={r.n}: {r.n_modules} modules, ARI {fmt(r.ari)}" for r in rows) + "."]


SECTION = Section("ablation", ablate_examples, render_examples, headlines_examples, needs=("examples",))
FINITE_SECTION = Section("finite_truth_free", finite_sample, render_finite, headlines_finite)
