"""A deep linear network (paper Appendix A).

With ``jacobian_target="next_layer"``, no centring and no bias slot, every layer's Λ equals
the eigenvalues of the output covariance restricted to the rank of the weight product, the
edge matrices are diagonal with E_ii = Λ_i, and each singular direction forms its own chain.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Example


def build(width: int = 8, depth: int = 3, rank: int | None = 5, n_samples: int = 256,
          seed: int = 0) -> Example:
    """``depth`` bias-free Linear(width, width) layers; one middle weight has rank ``rank``."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)]).double()
    with torch.no_grad():
        for i, lin in enumerate(model):
            W = torch.randn(width, width, generator=gen, dtype=torch.float64) / width ** 0.5
            if rank is not None and i == depth // 2:
                U, S, Vh = torch.linalg.svd(W)
                S[rank:] = 0
                W = U @ torch.diag(S) @ Vh
            lin.weight.copy_(W)
    X = torch.randn(n_samples, width, generator=gen, dtype=torch.float64)
    layers = [str(i) for i in range(depth)] + ["output"]

    def truth(graph) -> np.ndarray:
        """Chain i = direction i of every layer."""
        return np.array([n.index for n in graph.nodes], dtype=np.int64)

    return Example("deep_linear", model, X, layers,
                   f"{depth} bias-free linear layers of width {width}, product rank {rank}",
                   truth, extra={"rank": rank})
