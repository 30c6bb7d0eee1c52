"""Measures of how well a basis exposes known modules, used by the validation report.

All functions take an :class:`~intermod.analysis.InteractionGraph` and return plain numbers or
dicts. Notation: ε the noise scale, ŵ_e = max(0, ln(w_e/√ε)) the cutoff-normalised strength,
labels an int array over ``graph.nodes`` (−1 = no label). Edges touching the constant (bias)
direction are left out everywhere, as in the default module search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.graph import InteractionGraph
from ..core.partition import compare_partitions, cutoff_strength, find_modules

__all__ = [
    "SweepRow", "best_row", "cross_share", "deep_linear_check", "edge_sparsity", "impurity",
    "plateau", "resolution_sweep", "transformed_sequential",
]


def _data_edges(graph: InteractionGraph) -> np.ndarray:
    bias = graph.is_bias
    return ~bias[graph.src] & ~bias[graph.dst]


def edge_sparsity(graph: InteractionGraph, epsilon: float) -> dict[str, float]:
    """Sparsity of the interactions at noise scale ε.

    Over all P = Σ_l k_l k_{l+1} pairs of data directions in adjacent layers: ``n_pairs`` = P,
    ``n_above`` = #{w > √ε}, ``top1``/``top10`` = share of Σ ŵ carried by the ⌈P/100⌉ /
    ⌈P/10⌉ largest ŵ, ``total`` = Σ ŵ (nats).
    """
    n_data = {layer: sum(1 for n in graph.nodes if n.layer == layer and not n.is_bias)
              for layer in graph.layers}
    P = sum(n_data[a] * n_data[b] for a, b in zip(graph.layers[:-1], graph.layers[1:]))
    w_hat = np.sort(cutoff_strength(graph.w[_data_edges(graph)], epsilon))[::-1]
    total = float(w_hat.sum())

    def top(frac: float) -> float:
        return float(w_hat[: math.ceil(frac * P)].sum() / total) if total > 0 else float("nan")

    return {"n_pairs": P, "n_above": int((w_hat > 0).sum()), "top1": top(0.01),
            "top10": top(0.1), "total": total}


def cross_share(graph: InteractionGraph, labels: np.ndarray, epsilon: float) -> float:
    """Share of Σ ŵ (over edges between labelled nodes) on edges joining different labels."""
    w_hat = cutoff_strength(graph.w, epsilon)
    a, b = labels[graph.src], labels[graph.dst]
    both = (a >= 0) & (b >= 0) & _data_edges(graph)
    total = w_hat[both].sum()
    return float(w_hat[both & (a != b)].sum() / total) if total > 0 else float("nan")


def impurity(shares: np.ndarray) -> dict[str, float]:
    """Mixing of directions across modules from per-node variance shares (n_nodes, K).

    Rows of zeros (unlabelled nodes) are skipped. ``mean`` = mean of 1 − max_g share_g;
    ``frac_mixed`` = fraction of directions with 1 − max share > 0.01.
    """
    s = shares[shares.sum(1) > 0]
    imp = 1 - s.max(1)
    return {"mean": float(imp.mean()), "frac_mixed": float((imp > 0.01).mean())}


@dataclass
class SweepRow:
    """One resolution of a CPM sweep: γ, modules found, cost (units cut), recovery."""

    resolution: float
    n_modules: int
    n_active: int
    cost_units: float
    ari: float = float("nan")
    nmi: float = float("nan")
    coverage: float = float("nan")   # share of labelled nodes that are in the partition


def resolution_sweep(graph: InteractionGraph, epsilon: float, resolutions: Sequence[float],
                     labels: np.ndarray | None = None, seed: int = 0) -> list[SweepRow]:
    """CPM module search (``find_modules``) at every resolution; recovery against ``labels``
    when given.

    ARI/NMI are computed by ``compare_partitions`` over nodes that are labelled *and* active
    (inactive nodes, with no edge above √ε, are outside the partition); ``coverage`` says how
    many labelled nodes that is.
    """
    rows = []
    for gamma in resolutions:
        p = find_modules(graph, epsilon=epsilon, resolution=float(gamma), seed=seed)
        n_active = int((p.membership >= 0).sum())
        row = SweepRow(float(gamma), p.n_modules, n_active, p.cost_units)
        if labels is not None and (labels >= 0).any():
            both = (p.membership >= 0) & (labels >= 0)
            row.coverage = float(both.sum() / (labels >= 0).sum())
            if both.sum() >= 2 and len(np.unique(labels[both])) + p.n_modules > 2:
                cmp = compare_partitions(p.membership, labels)
                row.ari, row.nmi = cmp["ari"], cmp["nmi"]
            elif both.sum() >= 2:
                row.ari, row.nmi = 1.0, 1.0   # one module and one true label: identical
        rows.append(row)
    return rows


def plateau(rows: Sequence[SweepRow]) -> SweepRow | None:
    """The resolution chosen without ground truth: the middle of the longest run of
    consecutive sweep points (log-spaced γ) with the same number of modules, among runs with
    2 ≤ n_modules ≤ n_active/3 (one module is always stable at small γ, and near-singletons
    at large γ); ties go to fewer modules. None when no run qualifies."""
    runs: list[list[SweepRow]] = []
    for row in rows:
        if runs and runs[-1][-1].n_modules == row.n_modules:
            runs[-1].append(row)
        else:
            runs.append([row])
    ok = [r for r in runs if 2 <= r[0].n_modules <= max(r[0].n_active, 1) / 3]
    if not ok:
        return None
    best = max(ok, key=lambda r: (len(r), -r[0].n_modules))
    return best[len(best) // 2]


def best_row(rows: Sequence[SweepRow]) -> SweepRow | None:
    """The sweep point with the highest ARI (first one on ties), None without ground truth."""
    scored = [r for r in rows if not math.isnan(r.ari)]
    return max(scored, key=lambda r: r.ari) if scored else None


def deep_linear_check(graph: InteractionGraph) -> dict[str, float]:
    """Paper App. A on a deep linear network (``next_layer``, no centring, no bias slot).

    E = w² per adjacent pair. ``offdiag`` = max over pairs of Σ_{i≠j} E_ij / Σ E_ij;
    ``diag_vs_lambda`` = max |E_ii − Λ_i| / max Λ (Λ of the source layer);
    ``lambda_spread`` = max over layers of |Λ^l − Λ^0| / max Λ^0; ``k`` = sizes per layer.
    """
    off, diag = 0.0, 0.0
    lam = {layer: np.array([n.Lambda for n in graph.nodes if n.layer == layer])
           for layer in graph.layers}
    for a, b in zip(graph.layers[:-1], graph.layers[1:]):
        E = graph.edge_matrix(a, b) ** 2
        off = max(off, float((E.sum() - np.trace(E)) / E.sum()))
        m = min(E.shape)
        diag = max(diag, float(np.abs(np.diag(E)[:m] - lam[a][:m]).max() / lam[a].max()))
    first = lam[graph.layers[0]]
    spread = max(float(np.abs(v[: len(first)] - first[: len(v)]).max() / first.max())
                 for v in lam.values())
    return {"offdiag": off, "diag_vs_lambda": diag, "lambda_spread": spread,
            "k": [len(v) for v in lam.values()]}


def transformed_sequential(model: nn.Sequential, cut: str, R: torch.Tensor
                           ) -> tuple[nn.Sequential, dict[str, str]]:
    """The §6.2 reparametrisation at node layer ``cut`` (the input of ``model[cut]``, a Linear):
    f ↦ R f via a new bias-free Linear(R) in front, and ``model[cut]``'s weight W ↦ W R⁻¹.
    The function is unchanged. Returns (new model, map old layer name -> new layer name).
    """
    children = list(model.named_children())
    pos = [name for name, _ in children].index(cut)
    lin = model[pos]
    if not isinstance(lin, nn.Linear):
        raise TypeError(f"model[{cut}] must be nn.Linear, got {type(lin).__name__}")
    d = lin.in_features
    rmap = nn.Linear(d, d, bias=False, dtype=lin.weight.dtype)
    new_lin = nn.Linear(d, lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype)
    with torch.no_grad():
        rmap.weight.copy_(R)
        new_lin.weight.copy_(lin.weight @ torch.linalg.inv(R))
        if lin.bias is not None:
            new_lin.bias.copy_(lin.bias)
    mods = [m for _, m in children]
    new = nn.Sequential(*mods[:pos], rmap, new_lin, *mods[pos + 1:]).eval()
    names = {name: str(i if i < pos else i + 1) for i, (name, _) in enumerate(children)}
    names["output"] = "output"
    return new, names
