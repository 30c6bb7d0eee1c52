"""Batched vector–Jacobian products and the cotangents (exact or random probes) they use.

Per-sample Jacobians are never built one sample at a time: a VJP of the summed batch output
gives every sample's gradient at once (samples do not interact in eval mode), and K cotangents
are pushed through one backward pass with ``is_grads_batched`` (vmap over the backward), in
chunks that bound memory by the batch.

Random probes are drawn independently of batching and padding: the sign for probe r at valid
position t of sample n (its global index in the data) and coordinate i is a hash of
(seed, stream, n, t, r, i), so the same data give the same draws whatever the batch size, the
padded length or the process count.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_MAX_MEMORY = 1 << 29  # bytes of one chunk of cotangents and their results (512 MiB)
VJP_CHUNK_BYTES = 1 << 26     # ... and at most this many (64 MiB): see chunk_size
_BATCHED_OK = {"value": True}


@dataclass(frozen=True)
class ProbeDraw:
    """Where a batch's random probes come from: ``seed``, ``stream`` (one per pass over the data,
    so passes draw independently) and ``first``, the global index of the batch's first sample."""

    seed: int
    stream: int
    first: int


_M32 = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) of int64 tensors holding values in [0, 2³²)."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def probe_signs(draw: ProbeDraw, mask: Tensor, probes: range, k: int | None) -> Tensor:
    """±1 signs (n, B, P, k) (or (n, B, P) with ``k=None``) for probes ``probes``.

    Sample b of the batch is sample ``draw.first + b`` of the data; a position is keyed by its
    rank among the sample's valid positions (mask (B, P)), so padding, on either side, changes
    no draw at a valid position.
    """
    dev = mask.device
    B, P = mask.shape
    h = _mix(torch.tensor([draw.seed & _M32], device=dev)) ^ (draw.stream & _M32)
    h = _mix(h ^ torch.arange(draw.first, draw.first + B, device=dev)[:, None])           # (B, 1)
    h = _mix(h ^ (mask.to(torch.int64).cumsum(1) - 1).clamp_min(0))                          # (B, P)
    h = _mix(h[None] ^ torch.arange(probes.start, probes.stop, device=dev)[:, None, None])  # (n, B, P)
    if k is not None:
        h = _mix(h[..., None] ^ torch.arange(k, device=dev))                                 # (n, B, P, k)
    return (h & 1).to(torch.int8) * 2 - 1


def vjp(output: Tensor, inputs: Sequence[Tensor], cotangents: Tensor) -> list[Tensor]:
    """Gradients of ⟨cotangent_k, output⟩ w.r.t. each input, for K stacked cotangents.

    output: (B, …); cotangents: (K, B, …); returns [(K, *input.shape)] (zeros where unused).
    K > 1 cotangents go through one backward pass batched by ``is_grads_batched`` (vmap), a
    single one through a plain backward pass (vmap's batching costs it up to 2.7×: torch has no
    batching rule for a convolution's or batch norm's backward and runs those as a loop followed
    by a copy). The cotangents are made contiguous first: torch's batched backward returns wrong
    gradients for a one-sample batch through an eval-mode batch norm and an activation when each
    cotangent has channels-last strides (as ``Layout.from_samples`` makes them; torch 2.13,
    ``tests/test_bruteforce.py``).
    """
    cotangents = cotangents.contiguous()
    failure = None
    if cotangents.shape[0] > 1 and _BATCHED_OK["value"]:
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


class SavedNumel:
    """Context manager counting the elements autograd saves for the backward pass of the graph
    built inside it, tensors sharing storage with ``exclude`` (the parameters) left out.

    A batched backward pass of K cotangents meets every saved activation with K gradients of
    its size, so ``numel`` is the per-cotangent size of its temporaries (``per_item`` of
    :func:`chunk_size`): a section's hidden widths (MiniLM's 1536-wide MLP, the attention
    scores) count, not only its input and output."""

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self._skip = {t.data_ptr() for t in exclude}
        self.numel = 0

    def _pack(self, t: Tensor) -> Tensor:
        if t.data_ptr() not in self._skip:
            self.numel += t.numel()
        return t

    def __enter__(self) -> SavedNumel:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def chunk_budget(max_memory: int, cpu_cap: int, device: torch.device) -> int:
    """The bytes one chunk of temporaries may take: ``max_memory``, and on the CPU at most
    ``cpu_cap``. The CPU caps (VJP_CHUNK_BYTES, ``structured.CACHE_CHUNK_BYTES``) keep a chunk
    from streaming through main memory several times, which was measured there; a GPU's memory
    is fast and its kernels want large launches, so ``max_memory`` alone bounds its chunks."""
    return max_memory if device.type != "cpu" else min(max_memory, cpu_cap)


def chunk_size(total: int, per_item: int, dtype: torch.dtype, max_memory: int, device: torch.device,
               cpu_cap: int = VJP_CHUNK_BYTES) -> int:
    """How many cotangents fit in ``max_memory`` bytes, and on the CPU at most ``cpu_cap``
    (:func:`chunk_budget`), when each costs ``per_item`` elements.

    The CPU cap is for speed: a batched backward pass streams its K-fold temporaries through
    memory several times per op (activation backward, LayerNorm backward, head permutes), so
    chunks past a few tens of MiB run slower, not faster. Measured 2026-12-04 (2 cores,
    per_item with :class:`SavedNumel`): MiniLM edges on 416 tokens 56 s at 512 MiB against
    34–43 s at 16–64 MiB-sized chunks, on 128 tokens 14 s against 9–10 s; MLP 784-400-400-10
    edges by VJPs (``structured=False``) 7.2 / 5.0 s (float64 / float32) at 512 MiB against
    4.6 / 3.4 s at 64 MiB."""
    budget = chunk_budget(max_memory, cpu_cap, device)
    return max(1, min(total, budget // max(per_item * dtype.itemsize, 1)))


def _probes(mask: Tensor, k: int, probes: range, n_probes: int, draw: ProbeDraw | None,
            dtype: torch.dtype) -> Tensor:
    """Random ±1/√n_probes cotangents (len(probes), B, P, k) (:func:`probe_signs`), zero at
    masked positions."""
    R = probe_signs(draw, mask, probes, k).to(dtype) / math.sqrt(n_probes)
    return R * mask.to(dtype)[None, :, :, None]


def joint_cotangents(mask: Tensor, k: int, n_probes: int | None, draw: ProbeDraw | None,
                     dtype: torch.dtype, per_item: int, max_memory: int = DEFAULT_MAX_MEMORY
                     ) -> Iterator[Tensor]:
    """Cotangents R (K, B, P, k) with Σ_R Rᵀ-weighted outer products equal to the identity.

    Exact (``n_probes=None``): one unit vector per (position t, coordinate i), masked at padded
    positions. Probes: R random ±1/√R vectors over all (t, i) jointly (:func:`probe_signs`);
    E[Σ r rᵀ] = I, so Grams built from them are unbiased.
    """
    B, P = mask.shape
    m = mask.to(dtype)
    if n_probes is None:
        total = P * k
        step = chunk_size(total, per_item, dtype, max_memory, mask.device)
        for start in range(0, total, step):
            idx = torch.arange(start, min(start + step, total), device=mask.device)
            R = torch.zeros(len(idx), B, P, k, dtype=dtype, device=mask.device)
            R[torch.arange(len(idx), device=mask.device), :, idx // k, idx % k] = m[:, idx // k].T
            yield R
    else:
        step = chunk_size(n_probes, per_item, dtype, max_memory, mask.device)
        for start in range(0, n_probes, step):
            yield _probes(mask, k, range(start, min(start + step, n_probes)), n_probes, draw, dtype)


def rotated_cotangents(mask: Tensor, C: Tensor, n_probes: int | None, draw: ProbeDraw | None,
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
        step = chunk_size(n_probes, per_item, dtype, max_memory, mask.device)
        for start in range(0, n_probes, step):
            R = _probes(mask, k, range(start, min(start + step, n_probes)), n_probes, draw, dtype)
            yield R @ Ct, (None if c_slot is None else R @ c_slot)
        return
    total = P * k
    step = chunk_size(total, per_item, dtype, max_memory, mask.device)
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
                             draw: ProbeDraw | None, dtype: torch.dtype, per_item: int,
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
        signs = probe_signs(draw, mask, range(n_probes), None).to(dtype)
        patterns = signs * m / math.sqrt(n_probes)
    n_pat = patterns.shape[0]
    total = n_pat * k
    step = chunk_size(total, per_item, dtype, max_memory, mask.device)
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total), device=mask.device)
        yield patterns[idx // k], idx % k
