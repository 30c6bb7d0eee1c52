"""Section "Finite-sample robustness (planted)": the interaction basis of the planted network
on its product data and on i.i.d. samples of growing n, as computed and with the remedies of
:mod:`.remedies` (re-rotation of near-degenerate directions, ε from bootstrap noise)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.basis import compute_basis
from ..core.edges import build_graph
from ..core.graph import InteractionGraph
from ..examples import load
from ..examples.truth import ProductTruth
from .formatting import ari_cells, fmt, table
from .recovery import SweepRow, best_row, cross_share, impurity, plateau, resolution_sweep
from .remedies import noise_epsilon, rerotate_degenerate
from .section import Context, Section
from .settings import EPSILON, N_BOOT, RESOLUTIONS

IID_SIZES = (1_000, 10_000, 100_000)
REL_GAP = 0.1
BOOT_MAX_N = 10_000  # bootstrap ε only up to this n: each bootstrap is a full basis + graph


@dataclass
class RobustRow:
    """One (data, n, variant): impurity of the directions on the product grid, cross-truth ŵ
    share, best-γ and plateau-γ sweep points, directions moved by the remedy, seconds, ε."""

    setting: str
    n: int
    variant: str
    impurity: dict[str, float]
    cross: float
    best: SweepRow | None
    chosen: SweepRow | None
    moved: int
    seconds: float
    epsilon: float = EPSILON


def _robust_row(setting: str, n: int, variant: str, graph: InteractionGraph, truth, grid_truth,
                moved: int, start: float, epsilon: float = EPSILON) -> RobustRow:
    labels = truth(graph)
    rows = resolution_sweep(graph, epsilon, RESOLUTIONS, labels)
    return RobustRow(setting, n, variant, impurity(grid_truth.shares(graph)),
                     cross_share(graph, labels, epsilon), best_row(rows), plateau(rows), moved,
                     time.perf_counter() - start, epsilon)


def robustness(ctx: Context) -> list[RobustRow]:
    """planted (interaction basis, output target): product data vs i.i.d. samples of growing n,
    each without and with :func:`rerotate_degenerate`; at the middle n also the variants (no noise
    gate, a wider gap), and up to ``BOOT_MAX_N`` the bootstrap-noise ε. Draws robustness.png."""
    prod = load("planted")
    K = prod.extra["n_modules"]
    n_per = round(prod.inputs.shape[0] ** (1 / K))
    grid_truth = ProductTruth(prod.model, prod.inputs, prod.layers, (n_per,) * K)
    settings = [("product", prod.inputs)] + [
        ("i.i.d.", load("planted", iid_samples=n).inputs) for n in IID_SIZES]
    out = []
    for setting, X in settings:
        n = X.shape[0]
        with ctx.timer(f"robustness: {setting} n={n}"):
            start = time.perf_counter()
            basis = compute_basis(prod.model, X, prod.layers, progress=False)
            graph = build_graph(prod.model, X, basis, progress=False)
            out.append(_robust_row(setting, n, "as computed", graph, prod.truth, grid_truth, 0,
                                   start))
            if setting == "i.i.d." and n <= BOOT_MAX_N:
                start = time.perf_counter()
                est = noise_epsilon(prod.model, X, basis, graph, n_boot=N_BOOT)
                out.append(_robust_row(setting, n, "ε from bootstrap noise", graph, prod.truth,
                                       grid_truth, 0, start, est.epsilon))
            variants = [("re-rotated", REL_GAP, 2.0)]
            if n == IID_SIZES[len(IID_SIZES) // 2]:
                variants += [("re-rotated, no noise gate", REL_GAP, 0.0),
                             ("re-rotated, gap 0.3", 0.3, 2.0)]
            for name, gap, gain in variants:
                start = time.perf_counter()
                rb = rerotate_degenerate(prod.model, X, basis, rel_gap=gap, min_gain=gain)
                moved = sum(rb.options["rerotate"]["moved"].values())
                gr = build_graph(prod.model, X, rb, progress=False)
                out.append(_robust_row(setting, n, name, gr, prod.truth, grid_truth, moved,
                                       start))
    with ctx.timer("plots"):
        plot_robustness(out, ctx.fig_dir / "robustness.png")
    return out


def plot_robustness(rows: list[RobustRow], path: Path) -> None:
    """Cross-module ŵ share, impurity, best ARI and its coverage against n (i.i.d.), for each
    remedy, with the product-data level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    metrics = [("share of ŵ crossing the true partition", lambda r: r.cross),
               ("mean impurity of directions", lambda r: r.impurity["mean"]),
               ("best ARI over γ", lambda r: r.best.ari if r.best else np.nan),
               ("coverage at the best γ", lambda r: r.best.coverage if r.best else np.nan)]
    for ax, (title, f) in zip(axes, metrics):
        for variant, style in (("as computed", "o-"), ("re-rotated", "s--"),
                               ("ε from bootstrap noise", "^:")):
            sel = [r for r in rows if r.setting == "i.i.d." and r.variant == variant]
            ax.plot([r.n for r in sel], [f(r) for r in sel], style, label=f"i.i.d., {variant}")
        prod = [r for r in rows if r.setting == "product" and r.variant == "as computed"]
        if prod:
            ax.axhline(f(prod[0]), color="k", lw=0.8, ls=":", label="product data")
        ax.set_xscale("log")
        ax.set_xlabel("n (i.i.d. samples)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(rows: list[RobustRow], ctx: Context) -> str:
    return "\n".join([
        "## Finite-sample robustness (planted)\n",
        f"Interaction basis (output target) of the same planted network computed on its "
        f"product data and on i.i.d. samples of n = {', '.join(str(n) for n in IID_SIZES)}; "
        "edges on the same data. Impurity of a direction = 1 − the largest share of its "
        "variance moved by one module's input (exact, on the product grid); *mixed* = share of "
        "directions with impurity > 0.01. Remedies (`intermod.analysis.validation.remedies`): "
        f"*re-rotated* = `rerotate_degenerate` (rel_gap = {REL_GAP}, noise gate 2/√n), new "
        f"edges; *ε from bootstrap noise* = `noise_epsilon` ({N_BOOT} resamples, only up to "
        f"n = {BOOT_MAX_N}: each resample is a full basis + graph), same edges at that ε. "
        "*moved*: directions re-rotated.\n",
        f"![robustness]({ctx.rel}/robustness.png)\n",
        table(["data", "n", "variant", "ε", "moved", "mean impurity", "mixed", "cross ŵ share",
               "best ARI", "mod.", "cov.", "plateau ARI", "mod.", "cov.", "s"],
              [[r.setting, r.n, r.variant, r.epsilon, r.moved, r.impurity["mean"],
                r.impurity["frac_mixed"], r.cross, *ari_cells(r.best), *ari_cells(r.chosen),
                fmt(r.seconds, 1)] for r in rows]) + "\n",
        _summary(rows) + "\n"])


def headlines(rows: list[RobustRow], ctx: Context) -> list[str]:
    rob = [r for r in rows if r.variant == "as computed"]
    fixes = [r for r in rows if r.variant in ("re-rotated", "ε from bootstrap noise")
             and r.setting == "i.i.d."]
    return [
        "- planted, share of ŵ crossing the true partition (interaction basis): "
        + "; ".join(f"{r.setting} n={r.n}: {fmt(r.cross)}" for r in rob) + ".",
        "- with remedies: " + "; ".join(
            f"{r.variant} n={r.n}: {fmt(r.cross)} (best ARI {fmt(r.best.ari if r.best else None)}, "
            f"coverage {fmt(r.best.coverage if r.best else None)})" for r in fixes) + "."]


def _summary(rows: list[RobustRow]) -> str:
    """Sentences comparing each remedy with the basis as computed, generated from the numbers."""
    base = {r.n: r for r in rows if r.variant == "as computed" and r.setting == "i.i.d."}
    fixed = {r.n: r for r in rows if r.variant == "re-rotated" and r.setting == "i.i.d."}
    parts = []
    for n in sorted(base):
        b, f = base[n], fixed.get(n)
        if f is None:
            continue
        parts.append(f"n = {n}: cross share {fmt(b.cross)} → {fmt(f.cross)}, impurity "
                     f"{fmt(b.impurity['mean'])} → {fmt(f.impurity['mean'])}, best ARI "
                     f"{fmt(b.best.ari if b.best else None)} → "
                     f"{fmt(f.best.ari if f.best else None)} ({f.moved} directions moved).")
    others = [r for r in rows if r.variant not in ("as computed", "re-rotated")]
    for r in others:
        b = base.get(r.n)
        parts.append(f"Variant '{r.variant}' at n = {r.n}: cross share "
                     f"{fmt(b.cross if b else None)} → {fmt(r.cross)}, best ARI "
                     f"{fmt(b.best.ari if b and b.best else None)} → "
                     f"{fmt(r.best.ari if r.best else None)}.")
    return "Remedy, as computed → re-rotated: " + " ".join(parts)


SECTION = Section("robustness", robustness, render, headlines)
