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

DEFAULT_MAX_MEMORY = 1 << 29  # bytes of one chunk of cotangents and their results (512 MiB)
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


def chunk_size(total: int, per_item: int, dtype: torch.dtype, max_memory: int) -> int:
    """How many cotangents fit in ``max_memory`` bytes when each costs ``per_item`` elements."""
    return max(1, min(total, max_memory // max(per_item * dtype.itemsize, 1)))


def _probes(mask: Tensor, k: int, n: int, n_probes: int, generator: torch.Generator | None,
            dtype: torch.dtype) -> Tensor:
    """n random ±1/√n_probes cotangents (n, B, P, k), zero at masked positions."""
    signs = torch.randint(0, 2, (n,) + tuple(mask.shape) + (k,), generator=generator, device="cpu")
    R = (2.0 * signs - 1.0).to(dtype=dtype, device=mask.device) / math.sqrt(n_probes)
    return R * mask.to(dtype)[None, :, :, None]


def joint_cotangents(mask: Tensor, k: int, n_probes: int | None, generator: torch.Generator | None,
                     dtype: torch.dtype, per_item: int, max_memory: int = DEFAULT_MAX_MEMORY
                     ) -> Iterator[Tensor]:
    """Cotangents R (K, B, P, k) with Σ_R Rᵀ-weighted outer products equal to the identity.

    Exact (``n_probes=None``): one unit vector per (position t, coordinate i), masked at padded
    positions. Probes: R random ±1/√R vectors over all (t, i) jointly; E[Σ r rᵀ] = I, so Grams
    built from them are unbiased.
    """
    B, P = mask.shape
    m = mask.to(dtype)
    if n_probes is None:
        total = P * k
        step = chunk_size(total, per_item, dtype, max_memory)
        for start in range(0, total, step):
            idx = torch.arange(start, min(start + step, total), device=mask.device)
            R = torch.zeros(len(idx), B, P, k, dtype=dtype, device=mask.device)
            R[torch.arange(len(idx), device=mask.device), :, idx // k, idx % k] = m[:, idx // k].T
            yield R
    else:
        step = chunk_size(n_probes, per_item, dtype, max_memory)
        for start in range(0, n_probes, step):
            yield _probes(mask, k, min(step, n_probes - start), n_probes, generator, dtype)


def rotated_cotangents(mask: Tensor, C: Tensor, n_probes: int | None, generator: torch.Generator | None,
                       dtype: torch.dtype, per_item: int, include_bias: bool,
                       max_memory: int = DEFAULT_MAX_MEMORY) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Cotangents of y = Cᵀ f_aug (C: (d [+1], k)) pulled onto f: for the cotangents R (K, B, P, k)
    of :func:`joint_cotangents`, (R C_dataᵀ (K, B, P, d), R c_slot (K, B, P) or None).

    Exact: cotangent (t, i) is row i of C_dataᵀ at position t only, written by indexing (no
    product with a one-hot R). Probes: the dense products.
    """
    B, P = mask.shape
    m = mask.to(dtype)
    d = C.shape[0] - int(include_bias)
    Ct = C[:d].T.to(dtype)                                # (k, d)
    c_slot = C[d].to(dtype) if include_bias else None
    k = C.shape[1]
    if n_probes is not None:
        step = chunk_size(n_probes, per_item, dtype, max_memory)
        for start in range(0, n_probes, step):
            R = _probes(mask, k, min(step, n_probes - start), n_probes, generator, dtype)
            yield R @ Ct, (None if c_slot is None else R @ c_slot)
        return
    total = P * k
    step = chunk_size(total, per_item, dtype, max_memory)
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total), device=mask.device)
        t, i = idx // k, idx % k
        mt = m[:, t].T                                    # (K, B): the mask at each cotangent's position
        if P == 1:
            data = (mt[:, :, None] * Ct[i][:, None, :])[:, :, None, :]
            slot = None if c_slot is None else (mt * c_slot[i][:, None])[:, :, None]
        else:
            rows = torch.arange(len(idx), device=mask.device)
            data = torch.zeros(len(idx), B, P, d, dtype=dtype, device=mask.device)
            data[rows, :, t] = mt[:, :, None] * Ct[i][:, None, :]
            slot = None
            if c_slot is not None:
                slot = torch.zeros(len(idx), B, P, dtype=dtype, device=mask.device)
                slot[rows, :, t] = mt * c_slot[i][:, None]
        yield data, slot


def per_direction_cotangents(mask: Tensor, k: int, n_probes: int | None,
                             generator: torch.Generator | None, dtype: torch.dtype, per_item: int,
                             max_memory: int = DEFAULT_MAX_MEMORY) -> Iterator[tuple[Tensor, Tensor]]:
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
    step = chunk_size(total, per_item, dtype, max_memory)
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total), device=mask.device)
        yield patterns[idx // k], idx % k
