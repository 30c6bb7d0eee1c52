"""Sections on the noise scale ε: "ε chosen without the ground truth" (bootstrap noise of the
edges, training MSE) and "Dependence on ε" (modules, cost and ARI over ``EPS_GRID``). Both use
the graphs of the "examples" section."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .bases import Examples
from .formatting import fmt, sweep_cells, table
from .recovery import best_row, plateau, resolution_sweep
from .remedies import noise_epsilon
from .section import Context, Section
from .settings import EPS_GRID, N_BOOT, RESOLUTIONS


def noise_eps_check(ctx: Context) -> list[list[Any]]:
    """Truth-free ε on the interaction basis (output target) of every example, then the plateau
    γ at that ε: :func:`noise_epsilon` (bootstrap over the analysis data), and for networks
    trained with a squared error the training MSE (interactions weaker than the network's
    own error are below its behavioural resolution). One table row per (example, ε)."""
    rows = []
    for name, (ex, res) in ctx.results["examples"].items():
        r = res[2]
        with ctx.timer(f"{name}: bootstrap ε"):
            est = noise_epsilon(ex.model, ex.inputs, r.basis, r.graph, n_boot=N_BOOT)
            labels = ex.truth(r.graph) if ex.truth is not None else None
            sweep = resolution_sweep(r.graph, est.epsilon, RESOLUTIONS, labels)
        chosen, best = plateau(sweep), best_row(sweep)
        rows.append([name, "bootstrap noise", est.epsilon,
                     f"{est.n_insignificant}/{est.n_edges}", *sweep_cells(chosen),
                     best.ari if best else None])
        if "train_mse" in ex.extra:
            eps = float(ex.extra["train_mse"])
            sweep = resolution_sweep(r.graph, eps, RESOLUTIONS, labels)
            chosen, best = plateau(sweep), best_row(sweep)
            rows.append([name, "training MSE", eps, "–", *sweep_cells(chosen),
                         best.ari if best else None])
    return rows


def render_noise_eps(rows: list[list[Any]], ctx: Context) -> str:
    return "\n".join([
        "## ε chosen without the ground truth\n",
        f"`intermod.analysis.validation.remedies.noise_epsilon` ({N_BOOT} bootstrap resamples of "
        "the analysis data, basis and edges recomputed on each, directions matched by "
        "|correlation|): √ε = the largest edge strength within 2 bootstrap deviations of 0. "
        "Interaction basis (output target); the plateau γ at that ε. "
        "ε = 0.5 is the cap (the library takes ε < 1): the largest insignificant edge was "
        "stronger than √0.5. On exact product data (planted, deep_linear) the insignificant "
        "edges are the exact zeros of the construction, at round-off level, so ε lands at "
        "round-off level too: the bootstrap finds every real edge significant.\n",
        "For `two_tasks`, trained with a squared error, ε = its training MSE is a second "
        "truth-free choice.\n",
        table(["example", "ε from", "ε", "insignificant edges", "plateau ARI", "NMI", "mod.",
               "γ", "cov.", "best ARI at this ε"], rows) + "\n"])


def noise_eps_headlines(rows: list[list[Any]], ctx: Context) -> list[str]:
    return [f"- **{row[0]}** at ε = training MSE ({fmt(row[2])}), interaction "
            f"basis: plateau ARI {fmt(row[4])} with {row[6]} modules "
            f"(coverage {fmt(row[8])})." for row in rows if row[1] == "training MSE"]


def plot_eps(results: Examples, path: Path) -> None:
    """Modules found, cost (units cut) and ARI at the truth-free resolution, against ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(13, 3.1 * len(results)), squeeze=False)
    for i, (name, (_, res)) in enumerate(results.items()):
        for r in res:
            eps = [e for e, _, _ in r.eps_curve]
            get = [lambda c: c.n_modules, lambda c: c.cost_units, lambda c: c.ari]
            for j, f in enumerate(get):
                axes[i, j].plot(eps, [f(c) if c is not None else np.nan for _, c, _ in r.eps_curve],
                                marker="o", ms=3, label=r.label)
        for j, what in enumerate(["modules (plateau γ)", "cost, units cut", "ARI (plateau γ)"]):
            axes[i, j].set_xscale("log")
            axes[i, j].set_title(f"{name}: {what}", fontsize=9)
            axes[i, j].set_xlabel("ε")
        axes[i, 1].set_yscale("symlog")
        if all(c is None or math.isnan(c.ari) for r in res for _, c, _ in r.eps_curve):
            axes[i, 2].cla()
            axes[i, 2].text(0.5, 0.5, "no ground truth", ha="center", va="center")
            axes[i, 2].set_axis_off()
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eps_dependence(ctx: Context) -> list[list[str]]:
    """Draws ``eps_sweep.png``; one row per (example, basis): modules and ARI at the plateau γ
    for each ε of ``EPS_GRID``."""
    results: Examples = ctx.results["examples"]
    with ctx.timer("plots"):
        plot_eps(results, ctx.fig_dir / "eps_sweep.png")
    rows = []
    for name, (_, res) in results.items():
        for r in res:
            ns = [c.n_modules if c else None for _, c, _ in r.eps_curve]
            ar = [c.ari if c else None for _, c, _ in r.eps_curve]
            rows.append([name, r.label, " ".join(fmt(x) for x in ns),
                         " ".join(fmt(x, 2) for x in ar)])
    return rows


def render_eps_dependence(rows: list[list[str]], ctx: Context) -> str:
    return "\n".join([
        "## Dependence on ε\n",
        f"![modules and cost against ε]({ctx.rel}/eps_sweep.png)\n",
        f"Modules at the plateau γ and their ARI, for ε = "
        f"{', '.join(fmt(e, 1) for e in EPS_GRID)}:\n",
        table(["example", "basis", "modules", "ARI"], rows) + "\n"])


NOISE_SECTION = Section("noise_eps", noise_eps_check, render_noise_eps, noise_eps_headlines,
                        needs=("examples",))
DEPENDENCE_SECTION = Section("eps_dependence", eps_dependence, render_eps_dependence,
                             needs=("examples",))
