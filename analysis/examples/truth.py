"""Ground truth by variance on product data.

On product data the inputs form a grid: x = (x_1[i_1], …, x_K[i_K]) for every index tuple,
flattened in C order, so a grid of shape (n_1, …, n_K) holds N = Π n_g samples and the K
input groups are exactly independent. For a basis direction with coordinate
h(i_1, …, i_K) = f̂_j(x) the variance that group g alone moves is

    S_g = mean over the other indices of Var_{i_g} h,

i.e. vary group g's input while holding all other groups fixed. A direction belongs to the
group with the largest S_g; its purity is max_g S_g / Σ_g S_g (1 for a direction that only one
group moves, 1/K for an even mix). Directions with no variance (the bias direction) get -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..core.activations import layer_activations

if TYPE_CHECKING:
    from intermod.analysis import InteractionGraph

__all__ = ["ProductTruth", "basis_coordinates", "group_shares"]


def basis_coordinates(graph: InteractionGraph, acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """f̂ = Cᵀ f_aug for every layer of ``graph``: layer -> (n, k_l).

    ``f_aug`` appends the constant 1 when C has the bias-slot row (C: (d_l [+1], k_l)).
    """
    coords = {}
    for layer in graph.layers:
        C, _ = graph.bases[layer]
        f = acts[layer]
        if C.shape[0] == f.shape[1] + 1:
            f = np.concatenate([f, np.ones((f.shape[0], 1))], axis=1)
        coords[layer] = f @ np.asarray(C, dtype=np.float64)
    return coords


def group_shares(h: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Variance moved by each input group alone: (N, k) coordinates -> S, shape (K, k).

    ``h`` holds the coordinates on the flattened grid ``grid_shape`` (C order);
    S[g, j] = mean over the other grid axes of the variance of h[..., j] along axis g.
    """
    grid = h.reshape(*grid_shape, h.shape[-1])
    return np.stack([grid.var(axis=g).mean(axis=tuple(range(len(grid_shape) - 1)))
                     for g in range(len(grid_shape))])


class ProductTruth:
    """Ground truth by variance for a model on product data (see the module docstring).

    ``inputs`` must be the product grid ``grid_shape`` flattened in C order. Calling the object
    on a graph gives labels (argmax_g S_g per node); ``shares(graph)`` gives S_g / Σ_g S_g,
    shape (n_nodes, K). The bias direction, and directions whose total variance is below
    ``rel_tol`` times the largest in their layer, get label -1 and a row of zeros.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        layers: Sequence[str],
        grid_shape: Sequence[int],
        rel_tol: float = 1e-10,
    ) -> None:
        if int(np.prod(grid_shape)) != inputs.shape[0]:
            raise ValueError(f"grid {tuple(grid_shape)} does not match {inputs.shape[0]} inputs")
        self.grid_shape = tuple(grid_shape)
        self.rel_tol = rel_tol
        self._acts = layer_activations(model, inputs, layers)

    def shares(self, graph: InteractionGraph) -> np.ndarray:
        """Share of each direction's variance moved by each input group, (n_nodes, K)."""
        coords = basis_coordinates(graph, self._acts)
        per_layer = {layer: group_shares(h, self.grid_shape) for layer, h in coords.items()}
        out = np.zeros((graph.n_nodes, len(self.grid_shape)))
        for i, node in enumerate(graph.nodes):
            S = per_layer[node.layer]
            s = S[:, node.index]
            if node.is_bias or s.sum() <= self.rel_tol * S.sum(axis=0).max():
                continue
            out[i] = s / s.sum()
        return out

    def __call__(self, graph: InteractionGraph) -> np.ndarray:
        sh = self.shares(graph)
        labels = sh.argmax(axis=1).astype(np.int64)
        labels[sh.sum(axis=1) == 0] = -1
        return labels
