"""Where to draw things: node positions of the layered graph and boxes of the module graph.

Shared by the static plot (:mod:`.plot`) and the HTML report (:mod:`.html`); coordinates are
in [0, 1] (y = 1 at the top), x = the node layer's position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.graph import InteractionGraph

__all__ = ["ModuleBox", "module_boxes", "node_layout"]


def node_layout(graph: InteractionGraph, membership: np.ndarray, top_n: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(pos (n_nodes, 2), shown (n_nodes,) bool, hidden per layer): each layer's ``top_n``
    largest-Λ directions (all without ``top_n``) in a column, grouped by module (unpartitioned
    last), then by Λ descending."""
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
    return pos, shown, hidden


@dataclass(frozen=True)
class ModuleBox:
    """A module drawn as a box from its first to its last node layer (x0 … x1), in row ``row``."""

    module: int
    x0: int
    x1: int
    row: int


def module_boxes(graph: InteractionGraph, membership: np.ndarray, modules: list[int]) -> list[ModuleBox]:
    """Boxes for ``modules`` (in that order), packed greedily into rows without overlaps."""
    layer_of = graph.layer_index
    boxes, row_end = [], []   # row_end[r]: last layer taken in row r
    for c in modules:
        layers = layer_of[membership == c]
        if not layers.size:
            continue
        x0, x1 = int(layers.min()), int(layers.max())
        row = next((r for r, end in enumerate(row_end) if end < x0), len(row_end))
        if row == len(row_end):
            row_end.append(x1)
        row_end[row] = x1
        boxes.append(ModuleBox(c, x0, x1, row))
    return boxes
