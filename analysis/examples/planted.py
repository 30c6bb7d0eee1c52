"""Planted modules: independent sub-MLPs joined into one dense network.

Each sub-network m is a ReLU MLP x_m -> h1_m -> h2_m -> y_m. The joint network stacks them
block-diagonally and hides the blocks behind a random invertible map R_l at every hidden node
layer: the node activation is R_l [h_1; h_2; …] (a bias-free Linear), and the next Linear
undoes it (W R_l⁻¹), so every coordinate of a hidden node layer mixes all modules while the
function is unchanged. With product data (every x_1 paired with every x_2, …) the modules are
exactly independent on the data set.

Ground truth for a basis direction f̂_j = c_jᵀ f_aug: with product data f̂_j(x) is a sum of
one term per module, and its variance splits exactly into per-module parts; the direction's
module is the one its variance comes from (the raw entries of C are not used: a dead neuron
leaves arbitrary entries in C's null space).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from ..core.activations import node_activations
from .base import Example

LAYERS = ["0", "3", "6", "output"]


def _random_invertible(d: int, gen: torch.Generator) -> torch.Tensor:
    """A well-conditioned random dense matrix (orthogonal times a diagonal in [0.5, 2])."""
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    scale = 0.5 + 1.5 * torch.rand(d, generator=gen, dtype=torch.float64)
    Q2, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(scale) @ Q2


def _blockdiag(mats: list[torch.Tensor]) -> torch.Tensor:
    return torch.block_diag(*mats)


def build(n_modules: int = 2, widths: tuple[int, int, int, int] = (5, 8, 8, 3), n_per_module: int = 24,
          iid_samples: int | None = None, seed: int = 0) -> Example:
    """The planted network and its data.

    widths: (input, hidden 1, hidden 2, output) of each sub-network. Data: the product of
    ``n_per_module`` Gaussian inputs per module (n_per_module ** n_modules samples), or
    ``iid_samples`` independent Gaussian samples when given.
    """
    gen = torch.Generator().manual_seed(seed)
    d_in, h1, h2, d_out = widths
    subs = [[torch.randn(h1, d_in, generator=gen, dtype=torch.float64) / d_in ** 0.5,
             torch.randn(h2, h1, generator=gen, dtype=torch.float64) / h1 ** 0.5,
             torch.randn(d_out, h2, generator=gen, dtype=torch.float64) / h2 ** 0.5] for _ in range(n_modules)]
    biases = [[0.3 * torch.randn(h, generator=gen, dtype=torch.float64) for h in (h1, h2, d_out)]
              for _ in range(n_modules)]
    R1 = _random_invertible(n_modules * h1, gen)
    R2 = _random_invertible(n_modules * h2, gen)
    W = [_blockdiag([s[i] for s in subs]) for i in range(3)]
    b = [torch.cat([bb[i] for bb in biases]) for i in range(3)]
    model = nn.Sequential(
        nn.Linear(n_modules * d_in, n_modules * h1), nn.ReLU(),
        nn.Linear(n_modules * h1, n_modules * h1, bias=False),
        nn.Linear(n_modules * h1, n_modules * h2), nn.ReLU(),
        nn.Linear(n_modules * h2, n_modules * h2, bias=False),
        nn.Linear(n_modules * h2, n_modules * d_out)).double()
    weights = {0: (W[0], b[0]), 2: (R1, None), 3: (W[1] @ torch.linalg.inv(R1), b[1]),
               5: (R2, None), 6: (W[2] @ torch.linalg.inv(R2), b[2])}
    with torch.no_grad():
        for i, (weight, bias) in weights.items():
            model[i].weight.copy_(weight)
            if bias is not None:
                model[i].bias.copy_(bias)
    if iid_samples is None:
        per = [torch.randn(n_per_module, d_in, generator=gen, dtype=torch.float64) for _ in range(n_modules)]
        X = torch.stack([torch.cat(combo) for combo in itertools.product(*per)])
    else:
        X = torch.randn(iid_samples, n_modules * d_in, generator=gen, dtype=torch.float64)
    dims = {"0": d_in, "3": h1, "6": h2, "output": d_out}

    def contributions(layer: str) -> list[np.ndarray]:
        """Per module m: the layer's activations with every other module held at its mean."""
        acts = node_activations(model, X, LAYERS)[layer]
        d = dims[layer]
        mixer = {"3": R1, "6": R2}.get(layer)
        raw = acts if mixer is None else acts @ torch.linalg.inv(mixer).T  # un-mix: blocks
        mean = raw.mean(0, keepdim=True)
        out = []
        for m in range(n_modules):
            part = mean.repeat(raw.shape[0], 1)
            part[:, m * d:(m + 1) * d] = raw[:, m * d:(m + 1) * d]
            out.append((part if mixer is None else part @ mixer.T).numpy())
        return out

    def truth(graph) -> np.ndarray:
        labels = -np.ones(graph.n_nodes, dtype=np.int64)
        for layer in graph.layers:
            C, _ = graph.bases[layer]
            start, k = graph.node_offset[layer], graph.layer_sizes[layer]
            var = []
            for part in contributions(layer):
                aug = np.concatenate([part, np.ones((len(part), 1))], 1) if C.shape[0] == part.shape[1] + 1 else part
                var.append((aug @ C).var(0))
            lab = np.argmax(np.stack(var), 0)
            lab[np.max(np.stack(var), 0) <= 1e-12 * max(np.max(var), 1e-300)] = -1
            labels[start:start + k] = lab
        labels[graph.is_bias] = -1
        return labels

    desc = (f"{n_modules} independent ReLU MLPs {widths} joined by random invertible maps at the "
            f"hidden node layers; {'product' if iid_samples is None else 'i.i.d.'} data, n = {len(X)}")
    return Example("planted", model, X, list(LAYERS), desc, truth,
                   extra={"n_modules": n_modules, "widths": widths})
