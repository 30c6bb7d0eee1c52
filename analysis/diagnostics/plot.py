"""Spectra of a :class:`~.results.DegeneracyReport`, one panel per node layer."""

from __future__ import annotations

import math

import numpy as np

from .results import DegeneracyReport


def plot_spectra(report: DegeneracyReport, path: str, *, loss_units: bool = True) -> str:
    """Plot each node layer's spectra of G, M and J (and the behavioural spectrum) on a log
    axis with the noise scale ε as a horizontal line. ``loss_units``: multiply each spectrum by
    its ``scale_*`` (so ε is the rank cut-off for all of them); False plots raw eigenvalues.
    The format follows the suffix of ``path`` (.png or .svg). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(report.layers.values())
    has_beh = report.behavioural_spectrum is not None
    n = len(panels) + (1 if has_beh else 0)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    def scaled(spec, scale):
        return None if spec is None else np.asarray(spec) * (scale if loss_units else 1.0)

    def draw(ax, spec, scale, label, style, floor):
        y = scaled(spec, scale)
        if y is None or len(y) == 0:
            return
        # exact zeros (and float noise far below ε) are drawn on the axis floor
        ax.semilogy(np.arange(1, len(y) + 1), np.maximum(y, floor), style, label=label, ms=3)

    def floor_of(*specs):
        tops = [float(np.max(s)) for s in specs if s is not None and len(s) and np.max(s) > 0]
        top = max(tops, default=1.0)
        low = min(top * 1e-20, report.epsilon * 1e-3) if report.epsilon > 0 else top * 1e-20
        return max(low, 1e-300)

    for ax, ld in zip(axes.flat, panels):
        fl = floor_of(scaled(ld.spectrum_G, ld.scale_G), scaled(ld.spectrum_M, ld.scale_M),
                      scaled(ld.spectrum_J, ld.scale_J))
        draw(ax, ld.spectrum_G, ld.scale_G, f"G (rank {ld.rank_G})", "o-", fl)
        draw(ax, ld.spectrum_M, ld.scale_M, f"M (rank {ld.rank_M})", "s-", fl)
        draw(ax, ld.spectrum_J, ld.scale_J, f"J (rank {ld.rank_J})", "^-", fl)
        ax.set_ylim(bottom=fl / 3)
        if loss_units and report.epsilon > 0:
            ax.axhline(report.epsilon, color="k", ls="--", lw=0.8, label=f"ε = {report.epsilon:g}")
        ax.set_title(f"{ld.name} (d={ld.dim}, n_free={ld.n_free})", fontsize=9)
        ax.set_xlabel("index")
        ax.legend(fontsize=7)
    if has_beh:
        ax = axes.flat[len(panels)]
        fl = floor_of(report.behavioural_spectrum)
        draw(ax, report.behavioural_spectrum, 1.0, f"H/2 (rank {report.behavioural_rank})", ".-", fl)
        ax.set_ylim(bottom=fl / 3)
        if report.epsilon > 0:
            ax.axhline(report.epsilon, color="k", ls="--", lw=0.8)
        ax.set_title(f"behavioural Hessian (P={report.n_params})", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("eigenvalues in loss units" if loss_units else "raw eigenvalues", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
