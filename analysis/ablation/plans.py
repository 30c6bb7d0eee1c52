"""Plans: what the masked forward pass (:mod:`.forward`) runs, and the plans of the
ablations of DESIGN.md §1, built from masks.

Layer sizes and the constant direction come from the graph; a membership is one label per
graph node (−1: outside every module, i.e. inactive). The constant direction is never masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.graph import InteractionGraph


@dataclass
class LayerPlan:
    """mask: (K, k) in {0, 1}; src: (K, k) copy indices, or None (every copy reads itself)."""

    mask: np.ndarray
    src: np.ndarray | None = None


@dataclass
class Plan:
    """K copies; ``layers`` maps node layers to their rewrite, ``readout`` the result copies."""

    n_copies: int
    layers: dict[str, LayerPlan]
    readout: list[int]

    def __post_init__(self) -> None:
        for name, lp in self.layers.items():
            if lp.mask.shape[0] != self.n_copies or (lp.src is not None and lp.src.shape != lp.mask.shape):
                raise ValueError(f"plan for layer {name!r}: masks {lp.mask.shape} do not fit "
                                 f"{self.n_copies} copies")


def concat(plans: Sequence[Plan]) -> Plan:
    """One plan running ``plans`` side by side (layers missing from a plan: nothing ablated)."""
    names = list(dict.fromkeys(n for p in plans for n in p.layers))
    layers, readout, offset = {}, [], 0
    sizes = {n: next(p.layers[n].mask.shape[1] for p in plans if n in p.layers) for n in names}
    for p in plans:
        readout += [offset + r for r in p.readout]
        offset += p.n_copies
    for n in names:
        masks, srcs, off = [], [], 0
        for p in plans:
            lp = p.layers.get(n, LayerPlan(np.ones((p.n_copies, sizes[n]))))
            masks.append(lp.mask)
            own = np.repeat(np.arange(p.n_copies)[:, None], sizes[n], 1)
            srcs.append(off + (own if lp.src is None else lp.src))
            off += p.n_copies
        layers[n] = LayerPlan(np.concatenate(masks).astype(np.float64), np.concatenate(srcs))
    return Plan(offset, layers, readout)



def node_plan(layer: str, masks: np.ndarray) -> Plan:
    """One copy per row of ``masks`` (K, k): copy c keeps the directions masks[c] at ``layer``."""
    masks = np.asarray(masks, dtype=np.float64)
    return Plan(masks.shape[0], {layer: LayerPlan(masks)}, list(range(masks.shape[0])))


def layer_slices(graph: InteractionGraph) -> list[slice]:
    return [slice(graph.node_offset[n], graph.node_offset[n] + graph.layer_sizes[n]) for n in graph.layers]


def edge_plan(graph: InteractionGraph, keep: Sequence[np.ndarray], nodes: np.ndarray | None = None) -> Plan:
    """Keep the edges ``keep[j]`` (k_{j+1}, k_j) bool of every section j (the rest ablated) and
    the nodes ``nodes`` (n_nodes,) bool (the rest set to 0, i.e. to their mean).

    Copies are the distinct rows m_i of each section's keep matrix (rows of ablated or constant
    output directions do not count); output direction i of section j is read from the copy
    that ran its row, and the last layer passes the combined f̂ on unchanged.
    """
    L = len(graph.layers)
    if len(keep) != L - 1:
        raise ValueError(f"need {L - 1} keep matrices (one per section), got {len(keep)}")
    bias = graph.is_bias
    node_mask = np.ones(graph.n_nodes, dtype=bool) if nodes is None else np.asarray(nodes, dtype=bool) | bias
    sl = layer_slices(graph)
    rows, inverse = [], []
    for j, m in enumerate(keep):
        m = np.asarray(m, dtype=bool).copy()
        want = (graph.layer_sizes[graph.layers[j + 1]], graph.layer_sizes[graph.layers[j]])
        if m.shape != want:
            raise ValueError(f"keep matrix of section {j} has shape {m.shape}, expected {want}")
        m[:, bias[sl[j]]] = True                            # the constant direction is always seen
        m &= node_mask[sl[j]][None, :]                      # ablated inputs are seen by nobody
        live = node_mask[sl[j + 1]] & ~bias[sl[j + 1]]
        if not live.any():
            live = np.zeros_like(live)
            live[0] = True
        uniq, inv = np.unique(m[live], axis=0, return_inverse=True)
        full = np.zeros(m.shape[0], dtype=np.int64)          # "don't care" rows read copy 0
        full[live] = inv.reshape(-1)
        rows.append(uniq)
        inverse.append(full)
    K = max(r.shape[0] for r in rows)
    layers = {}
    for j, name in enumerate(graph.layers):
        own = node_mask[sl[j]].astype(np.float64)
        if j < L - 1:
            u = rows[j]
            u = np.concatenate([u, np.repeat(u[-1:], K - u.shape[0], 0)])   # pad: repeat the last
            mask = u * own[None, :]
        else:
            mask = np.repeat(own[None, :], K, 0)
        src = None if j == 0 else np.repeat(inverse[j - 1][None, :], K, 0)
        layers[name] = LayerPlan(mask.astype(np.float64), src)
    return Plan(K, layers, [0])


def cut_plan(graph: InteractionGraph, membership: np.ndarray) -> Plan:
    """Module cut: direction i of module c at layer l+1 sees only module c (and the constant
    direction) at layer l; directions outside every module (−1) are ablated."""
    mem = np.asarray(membership)
    sl = layer_slices(graph)
    keep = [mem[sl[j + 1]][:, None] == mem[sl[j]][None, :] for j in range(len(sl) - 1)]
    keep = [k & (mem[sl[j + 1]][:, None] >= 0) for j, k in enumerate(keep)]
    return edge_plan(graph, keep, nodes=mem >= 0)


def module_ablation_plan(graph: InteractionGraph, membership: np.ndarray, module_ids: Sequence[int]) -> Plan:
    """Copy 0: nothing ablated (the reconstruction); copy 1 + c: module ``module_ids[c]``
    ablated at every layer (all its directions set to 0)."""
    mem = np.asarray(membership)
    bias = graph.is_bias
    masks = [np.ones(graph.n_nodes)] + [((mem != c) | bias).astype(np.float64) for c in module_ids]
    masks = np.stack(masks)
    layers = {name: LayerPlan(masks[:, s]) for name, s in zip(graph.layers, layer_slices(graph))}
    return Plan(masks.shape[0], layers, list(range(masks.shape[0])))


def random_partition(graph: InteractionGraph, membership: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The labels of every layer shuffled among its labelled directions: a random partition
    with the same module sizes per layer (and the same inactive directions)."""
    out = np.asarray(membership).copy()
    for s in layer_slices(graph):
        idx = np.flatnonzero((out[s] >= 0) & ~graph.is_bias[s]) + s.start
        out[idx] = rng.permutation(out[idx])
    return out
