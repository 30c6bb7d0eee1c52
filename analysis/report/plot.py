"""Static drawings of an interaction graph (matplotlib): :func:`plot_graph`."""

from __future__ import annotations

import os

import numpy as np

from ..core.graph import InteractionGraph
from ..core.partition import Partition, cutoff_strength
from .layout import module_boxes, node_layout
from .palette import BIAS, INACTIVE, MAX_COLOURED, OTHER, module_colours

CUT = "#d62728"          # edges between two modules
LABEL_LIMIT = 60         # label the nodes when at most this many are drawn


def plot_graph(graph: InteractionGraph, partition: Partition | None = None,
               path: str | os.PathLike = "graph.png", *, epsilon: float | None = None,
               top_n: int = 60, max_nodes: int = 600, title: str | None = None) -> str:
    """Draw the graph and save it (format from the extension: .png, .svg, .pdf); returns the path.

    Node view: x = node layer, y = direction (grouped by module, then by Λ); node area ∝ log Λ;
    edge width ∝ ŵ = max(0, ln(w/√ε)) (edges with ŵ = 0 are not drawn); edge colour: the
    module's inside a module, red between modules, grey when an end is unpartitioned. Colours:
    the 18 largest modules (size ≥ 2) get distinct colours, the others grey; black: the constant
    direction; light grey: inactive. Layers with more than ``top_n`` directions show their
    ``top_n`` largest-Λ ones; nodes are labelled with their index when at most 60 are drawn.
    With a partition and more than ``max_nodes`` nodes, the module view is drawn instead:
    modules as boxes spanning their node layers, lines = Σ ŵ between two modules.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = epsilon if epsilon is not None else (partition.epsilon if partition else 1e-4)
    if title is None:
        title = f"interaction graph, ε = {eps:g}"
        if partition is not None:
            title += (f": {partition.n_modules} modules, cost {partition.cost:.3g} nats "
                      f"({partition.cost_units:.3g} unit interactions cut)")
    if partition is not None and graph.n_nodes > max_nodes:
        fig = _module_view(graph, partition, eps, plt)
    else:
        fig = _node_view(graph, partition, eps, top_n, plt)
    fig.axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _layer_axis(ax, graph: InteractionGraph, hidden: dict[str, int] | None = None) -> None:
    ax.set_xticks(range(len(graph.layers)))
    ax.set_xticklabels([f"{n}\n(k={graph.layer_sizes[n]}" + (", top shown)" if hidden and hidden[n] else ")")
                        for n in graph.layers])
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(graph.layers) - 0.4)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _node_view(graph: InteractionGraph, partition: Partition | None, eps: float, top_n: int, plt):
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    membership = partition.membership if partition is not None else -np.ones(graph.n_nodes, dtype=int)
    colours = module_colours(partition)
    pos, shown, hidden = node_layout(graph, membership, top_n)
    w_hat = cutoff_strength(graph.w, eps)
    sel = shown[graph.src] & shown[graph.dst] & (w_hat > 0)
    height = max(4.0, min(14.0, 0.12 * min(top_n, max(graph.layer_sizes.values(), default=1))))
    fig, ax = plt.subplots(figsize=(2.2 * len(graph.layers) + 4.5, height))
    if sel.any():
        seg = np.stack([pos[graph.src[sel]], pos[graph.dst[sel]]], 1)
        wn = w_hat[sel] / w_hat[sel].max()
        a, b = membership[graph.src[sel]], membership[graph.dst[sel]]
        base = np.array([to_rgba(colours[m]) if m == n and m >= 0 else to_rgba(CUT) if m >= 0 and n >= 0
                         else to_rgba(OTHER) for m, n in zip(a, b)])
        base[:, 3] = 0.15 + 0.6 * wn
        order = np.argsort(wn)
        ax.add_collection(LineCollection(seg[order], linewidths=0.2 + 3.0 * wn[order], colors=base[order]))
    node_col = [to_rgba(BIAS if graph.nodes[i].is_bias else INACTIVE if membership[i] < 0
                        else colours[int(membership[i])]) for i in range(graph.n_nodes)]
    lam = graph.Lambda
    loglam = np.log10(np.maximum(lam, 1e-300))
    finite = loglam[shown] if shown.any() else np.zeros(1)
    lo, span = finite.min(), max(np.ptp(finite), 1e-12)
    size = 10 + 90 * (loglam - lo) / span
    ax.scatter(pos[shown, 0], pos[shown, 1], s=size[shown], c=np.array(node_col)[shown], zorder=3,
               edgecolors="white", linewidths=0.3)
    if shown.sum() <= LABEL_LIMIT:
        for i in np.flatnonzero(shown):
            ax.annotate(str(graph.nodes[i].index), pos[i], xytext=(4, 2), textcoords="offset points", fontsize=6)
    _layer_axis(ax, graph, hidden)
    ax.set_ylim(-0.05, 1.05)
    handles = _module_handles(partition, colours)
    dot = dict(marker="o", linestyle="", markeredgecolor="white")
    handles += [Line2D([], [], color=BIAS, label="constant direction", **dot),
                Line2D([], [], color=INACTIVE, label="inactive (no edge > √ε)", **dot)]
    for q in (0.0, 1.0):   # node sizes for the smallest and largest Λ drawn
        handles.append(Line2D([], [], color="#666", markersize=np.sqrt(10 + 90 * q), label=f"Λ = {10 ** (lo + q * span):.2g}", **dot))
    handles += [Line2D([], [], color="#666", linewidth=3.2, label="edge width ∝ ŵ = ln(w/√ε)"),
                Line2D([], [], color=CUT, linewidth=1.5, label="edge between modules"),
                Line2D([], [], color=OTHER, linewidth=1.5, label="edge to an unpartitioned node")]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig


def _module_handles(partition: Partition | None, colours: dict[int, str]) -> list:
    from matplotlib.patches import Patch

    if partition is None:
        return []
    coloured = [m for m in partition.modules if colours[m.id] != OTHER]
    coloured.sort(key=lambda m: (-m.size, m.id))
    handles = [Patch(color=colours[m.id], label=f"module {m.id} ({m.size})") for m in coloured[:MAX_COLOURED]]
    rest = partition.n_modules - len(handles)
    if rest:
        handles.append(Patch(color=OTHER, label=f"{rest} other modules (singletons, smaller)"))
    return handles


def _module_view(graph: InteractionGraph, partition: Partition, eps: float, plt, max_boxes: int = 40):
    from matplotlib.patches import FancyBboxPatch

    from .modules import module_graph

    colours = module_colours(partition)
    mem = np.asarray(partition.membership)
    order = sorted(partition.modules, key=lambda m: (-m.size, m.id))[:max_boxes]
    boxes = module_boxes(graph, mem, [m.id for m in order])
    n_rows = max((b.row for b in boxes), default=0) + 1
    fig, ax = plt.subplots(figsize=(2.2 * len(graph.layers) + 4.5, max(3.0, min(14.0, 0.35 * n_rows + 1))))
    centre = {b.module: ((b.x0 + b.x1) / 2, -b.row) for b in boxes}
    mg = module_graph(graph, mem, eps)
    pairs = [(a, b) for a in centre for b in centre if a < b and mg[a, b] > 0]
    top = max((mg[a, b] for a, b in pairs), default=1.0)
    for a, b in pairs:
        (x1, y1), (x2, y2) = centre[a], centre[b]
        ax.plot([x1, x2], [y1, y2], color=CUT, alpha=0.5, linewidth=0.3 + 4 * mg[a, b] / top, zorder=1)
    size = {m.id: m.size for m in partition.modules}
    for b in boxes:
        ax.add_patch(FancyBboxPatch((b.x0 - 0.3, -b.row - 0.3), b.x1 - b.x0 + 0.6, 0.6, boxstyle="round,pad=0.02",
                                    facecolor=colours[b.module], alpha=0.8, zorder=2, edgecolor="none"))
        ax.text((b.x0 + b.x1) / 2, -b.row, f"module {b.module} ({size[b.module]})", ha="center",
                va="center", fontsize=7, zorder=3)
    _layer_axis(ax, graph)
    ax.set_ylim(-n_rows + 0.4, 0.6)
    ax.text(1.0, 0.5, f"module view: {graph.n_nodes} directions\n(the {len(boxes)} largest of "
            f"{partition.n_modules} modules)\nbox: a module's node layers\nline width ∝ Σ ŵ between modules",
            transform=ax.transAxes, fontsize=7, va="center")
    return fig
