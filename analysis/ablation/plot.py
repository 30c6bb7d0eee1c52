"""Plots of ablation results (matplotlib), each written as PNG and SVG.

``path`` is the file name without (or with any) extension: ``curves`` -> ``curves.png`` and
``curves.svg``. Losses are drawn on a log axis; values at or below 0 (exact reconstruction)
are drawn at the floor ``1e-12 × scale`` and the floor is named on the axis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .curves import AblationCurve
from .edges import EpsilonChoice
from .loss import resolve_tolerance
from .modules import ModuleEffects


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | os.PathLike) -> list[str]:
    base = Path(path)
    base = base.with_suffix("") if base.suffix in {".png", ".svg"} else base
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".svg"):
        target = str(base) + ext
        fig.savefig(target, dpi=120, bbox_inches="tight")
        out.append(target)
    _pyplot().close(fig)
    return out


def _floor(values: np.ndarray, scale: float | None) -> tuple[np.ndarray, float]:
    pos = values[values > 0]
    floor = 1e-12 * scale if scale else (pos.min() / 10 if pos.size else 1e-12)
    return np.maximum(values, floor), floor


def plot_ablation_curves(curves: Mapping[str, AblationCurve] | AblationCurve, path: str | os.PathLike, *,
                         tolerance: float | None = None, title: str | None = None) -> list[str]:
    """Loss against directions kept, one line per basis, log y; the tolerance δ dashed."""
    plt = _pyplot()
    curves = {curves.kind: curves} if isinstance(curves, AblationCurve) else dict(curves)
    fig, ax = plt.subplots(figsize=(6, 4))
    scale = next(iter(curves.values())).scale
    for name, c in curves.items():
        y, floor = _floor(np.asarray(c.loss, dtype=float), c.scale)
        ax.plot(c.n_kept, y, marker="o", ms=3, label=f"{name} (k={c.n_directions})")
    if scale is not None or tolerance is not None:
        delta = resolve_tolerance(tolerance, scale)
        ax.axhline(delta, ls="--", color="grey", lw=1, label=f"δ = {delta:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("directions kept (largest Λ first)")
    first = next(iter(curves.values()))
    ax.set_ylabel(f"{first.loss_name} loss (floor {floor:.1e})")
    ax.set_title(title or f"node ablation at layer {first.layer}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_epsilon_choice(choice: EpsilonChoice, path: str | os.PathLike, *, title: str | None = None) -> list[str]:
    """The bisection's evaluations L(ε) against ε (log-log), δ and the chosen ε marked."""
    plt = _pyplot()
    eps = np.array([c[0] for c in choice.curve])
    loss, floor = _floor(np.array([c[1] for c in choice.curve]), choice.scale)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, loss, marker="o", ms=3, label="L(ε): edges with w ≤ √ε ablated")
    ax.axhline(choice.tolerance, ls="--", color="grey", lw=1, label=f"δ = {choice.tolerance:.3g}")
    ax.axvline(choice.epsilon, ls=":", color="C3", lw=1, label=f"ε = {choice.epsilon:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ε")
    ax.set_ylabel(f"{choice.loss_name} loss (floor {floor:.1e})")
    ax.set_title(title or "ε from ablation")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_module_effects(effects: ModuleEffects, path: str | os.PathLike, *, title: str | None = None) -> list[str]:
    """Heatmap modules × output groups of the loss increase when the module is ablated."""
    plt = _pyplot()
    data = np.asarray(effects.loss_increase, dtype=float)
    n_mod, n_out = data.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * n_out + 2), max(2.5, 0.4 * n_mod + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis")
    ax.set_xticks(range(n_out), effects.output_labels, rotation=90 if n_out > 8 else 0, fontsize=7)
    ax.set_yticks(range(n_mod), [f"module {m}" for m in effects.module_ids], fontsize=7)
    ax.set_xlabel(effects.group)
    fig.colorbar(im, ax=ax, label=f"{effects.loss_name} increase")
    ax.set_title(title or "module ablation: loss increase per output group")
    return _save(fig, path)
