"""Layered drawing of an interaction graph (matplotlib)."""

from __future__ import annotations

import os

import numpy as np

from ..core.graph import InteractionGraph
from ..core.partition import Partition, cutoff_strength


def plot_graph(graph: InteractionGraph, partition: Partition | None = None,
               path: str | os.PathLike = "graph.png", *, epsilon: float | None = None,
               top_n: int = 60, title: str | None = None) -> str:
    """Draw the graph layer by layer and save it (format from the extension: .png, .svg, .pdf).

    x = node layer, y = direction (grouped by module, then by Λ); node area ∝ log Λ; edge
    width ∝ ŵ = max(0, ln(w/√ε)) (edges with ŵ = 0 are not drawn); colours = modules (grey:
    inactive, black: the constant direction). Layers with more than ``top_n`` directions show
    their ``top_n`` largest-Λ ones. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    eps = epsilon if epsilon is not None else (partition.epsilon if partition else 1e-4)
    membership = partition.membership if partition is not None else -np.ones(graph.n_nodes, dtype=int)
    lam = graph.Lambda
    shown = np.zeros(graph.n_nodes, dtype=bool)
    pos = np.zeros((graph.n_nodes, 2))
    hidden = {}
    for x, layer in enumerate(graph.layers):
        start, size = graph.node_offset[layer], graph.layer_sizes[layer]
        ids = np.arange(start, start + size)
        ids = ids[np.argsort(-lam[ids], kind="stable")][:top_n]
        hidden[layer] = size - len(ids)
        mods = membership[ids]
        ids = ids[np.lexsort((-lam[ids], np.where(mods < 0, np.iinfo(np.int64).max, mods)))]
        shown[ids] = True
        pos[ids, 0] = x
        pos[ids, 1] = np.linspace(1, 0, len(ids)) if len(ids) > 1 else 0.5
    w_hat = cutoff_strength(graph.w, eps)
    sel = shown[graph.src] & shown[graph.dst] & (w_hat > 0)
    height = max(4.0, min(14.0, 0.12 * min(top_n, max(graph.layer_sizes.values(), default=1))))
    fig, ax = plt.subplots(figsize=(2.2 * len(graph.layers) + 2, height))
    cmap = plt.get_cmap("tab20")
    if sel.any():
        seg = np.stack([pos[graph.src[sel]], pos[graph.dst[sel]]], 1)
        wn = w_hat[sel] / w_hat[sel].max()
        a, b = membership[graph.src[sel]], membership[graph.dst[sel]]
        # inside a module: its colour; cut between modules: red; touching unpartitioned: grey
        base = np.array([cmap(m % 20) if m == n and m >= 0 else (0.85, 0.1, 0.1, 1.0) if m >= 0 and n >= 0
                         else (0.5, 0.5, 0.5, 1.0) for m, n in zip(a, b)])
        base[:, 3] = 0.15 + 0.6 * wn
        order = np.argsort(wn)
        ax.add_collection(LineCollection(seg[order], linewidths=0.2 + 3.0 * wn[order], colors=base[order]))
    colours = np.array([(0.0, 0.0, 0.0, 1.0) if graph.nodes[i].is_bias else
                        (0.75, 0.75, 0.75, 1.0) if membership[i] < 0 else cmap(membership[i] % 20)
                        for i in range(graph.n_nodes)])
    loglam = np.log10(np.maximum(lam, 1e-300))
    finite = loglam[shown] if shown.any() else np.zeros(1)
    size = 10 + 90 * (loglam - finite.min()) / max(np.ptp(finite), 1e-12)
    ax.scatter(pos[shown, 0], pos[shown, 1], s=size[shown], c=colours[shown], zorder=3,
               edgecolors="white", linewidths=0.3)
    ax.set_xticks(range(len(graph.layers)))
    ax.set_xticklabels([f"{n}\n(k={graph.layer_sizes[n]}" + (f", top {top_n})" if hidden[n] else ")")
                        for n in graph.layers])
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(graph.layers) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if title is None:
        title = f"interaction graph, ε = {eps:g}"
        if partition is not None:
            title += (f": {partition.n_modules} modules, cost {partition.cost:.3g} nats "
                      f"({partition.cost_units:.3g} unit interactions cut)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
