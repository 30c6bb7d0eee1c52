"""Batched vector–Jacobian products and the cotangents (exact or random probes) they use.

Per-sample Jacobians are never built one sample at a time: a VJP of the summed batch output
gives every sample's gradient at once (samples do not interact in eval mode), and K cotangents
are pushed through one backward pass with ``is_grads_batched`` (vmap over the backward), in
chunks that bound memory by the batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

MAX_ELEMENTS = 1 << 25  # elements of one cotangent chunk and its results (256 MiB in float64)
_BATCHED_OK = {"value": True}


def vjp(output: Tensor, inputs: Sequence[Tensor], cotangents: Tensor) -> list[Tensor]:
    """Gradients of ⟨cotangent_k, output⟩ w.r.t. each input, for K stacked cotangents.

    output: (B, …); cotangents: (K, B, …); returns [(K, *input.shape)] (zeros where unused).
    """
    failure = None
    if _BATCHED_OK["value"]:
        try:
            grads = torch.autograd.grad(output, inputs, cotangents, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
            return [torch.zeros((cotangents.shape[0],) + x.shape, dtype=x.dtype, device=x.device)
                    if g is None else g for g, x in zip(grads, inputs)]
        except RuntimeError as err:  # an op without a batching rule: fall back to a loop
            failure = err
    rows = []
    for c in cotangents:
        g = torch.autograd.grad(output, inputs, c, retain_graph=True, allow_unused=True)
        rows.append([torch.zeros_like(x) if gi is None else gi for gi, x in zip(g, inputs)])
    if failure is not None:  # the loop works where vmap does not: stop trying vmap
        _BATCHED_OK["value"] = False
        warnings.warn(f"batched backward unavailable ({failure}); looping over cotangents",
                      RuntimeWarning, stacklevel=2)
    return [torch.stack(col) for col in zip(*rows)]


def chunk_size(total: int, per_item: int) -> int:
    """How many cotangents fit in one chunk when each costs ``per_item`` elements."""
    return max(1, min(total, MAX_ELEMENTS // max(per_item, 1)))


def joint_cotangents(mask: Tensor, k: int, n_probes: int | None, generator: torch.Generator | None,
                     dtype: torch.dtype, per_item: int) -> Iterator[Tensor]:
    """Cotangents R (K, B, P, k) with Σ_R Rᵀ-weighted outer products equal to the identity.

    Exact (``n_probes=None``): one unit vector per (position t, coordinate i), masked at padded
    positions. Probes: R random ±1/√R vectors over all (t, i) jointly; E[Σ r rᵀ] = I, so Grams
    built from them are unbiased.
    """
    B, P = mask.shape
    m = mask.to(dtype)
    if n_probes is None:
        total = P * k
        step = chunk_size(total, per_item)
        for start in range(0, total, step):
            idx = torch.arange(start, min(start + step, total), device=mask.device)
            R = torch.zeros(len(idx), B, P, k, dtype=dtype, device=mask.device)
            R[torch.arange(len(idx), device=mask.device), :, idx // k, idx % k] = m[:, idx // k].T
            yield R
    else:
        step = chunk_size(n_probes, per_item)
        for start in range(0, n_probes, step):
            n = min(step, n_probes - start)
            signs = torch.randint(0, 2, (n, B, P, k), generator=generator, device="cpu")
            R = (2.0 * signs - 1.0).to(dtype=dtype, device=mask.device) / math.sqrt(n_probes)
            yield R * m[None, :, :, None]


def per_direction_cotangents(mask: Tensor, k: int, n_probes: int | None,
                             generator: torch.Generator | None, dtype: torch.dtype, per_item: int
                             ) -> Iterator[tuple[Tensor, Tensor]]:
    """Cotangents that keep the output direction i apart, as (pattern (K, B, P), which_i (K,)):
    cotangent K is e_{which_i} ⊗ pattern.

    A pattern is the unit pattern of one output position t (exact) or a random ±1/√R pattern
    over positions (probes), masked; summing squared attributions over the patterns of one i
    gives Σ_t (…)² exactly or in expectation.
    """
    B, P = mask.shape
    m = mask.to(dtype)
    if n_probes is None:
        patterns = torch.diag_embed(m).permute(1, 0, 2)  # (P, B, P): pattern t = the mask at t only
        patterns = patterns if P > 1 else m[None]
    else:
        signs = torch.randint(0, 2, (n_probes, B, P), generator=generator, device="cpu")
        patterns = (2.0 * signs - 1.0).to(dtype=dtype, device=mask.device) * m / math.sqrt(n_probes)
    n_pat = patterns.shape[0]
    total = n_pat * k
    step = chunk_size(total, per_item)
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total), device=mask.device)
        yield patterns[idx // k], idx % k
