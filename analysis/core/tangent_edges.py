"""Edges of a traced chain's sections by forward-mode JVPs, one per input direction.

The attribution of input direction j to output (t, i) sums over the input positions s first,

    A_{t,i,j} = Σ_s Ĵ_{(t,i),(s,j)} f̂_{s,j} = C_iᵀ [J (Q_j f̂_j) + ∂_s f · δs⁽ʲ⁾]_t + c_i δs⁽ʲ⁾_next(t),

so for every (t, i) at once it is one Jacobian–vector product of the section along the map
δp⁽ʲ⁾ = Q_data,j f̂_j, with the slot leaf moving by δs⁽ʲ⁾ = Q_slot,j f̂_j at each position (the
biases it drives, per position or through the mean slot, see docs/models.md) and the next layer's
slot, and the biases no slot hook places (β, ``NodeModel.bias_tangent``), by δs⁽ʲ⁾ at t where the
positions are kept, else by the mean Σ_s ŵ_s δs⁽ʲ⁾_s. With the
integrated method A is the quadrature sum of the JVPs at the path's nodes (biases scaled by α).
E_ij = Σ_x Σ_t w_t A²_{t,i,j}, exactly, with k JVPs per node (k input directions, the tangents of
a chunk of directions at once: :meth:`NodeModel.section_jvp`), against one VJP per output
position and direction (P_out·k', or n_colours·k' coloured; :mod:`~intermod.analysis.core.colouring`)
for the backward path. It serves every section with positions that no closed form covers where
k JVPs are fewer passes than those VJPs: sections of a traced chain of modules between conv maps
(two or more ResNet blocks in one section, overlapping pools, GroupNorm, Upsample) and the
sections of any other model with positions, transformers above all (attention mixes every
position, so the exact VJPs would take P_out·k' passes; padded positions carry zero tangents).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .inputs import Batch
from .jacobians import VJP_CHUNK_BYTES, SavedNumel, chunk_size
from .layout import path_point
from .nodes import NodeModel

JVP_CHUNK_BYTES = 1 << 28    # 256 MiB per vmapped forward-mode pass: see jvp_chunk


def tangent_edge_sums(net: NodeModel, batch: Batch, j: int, point: Tensor, baseline: Tensor | None, f_hat: Tensor,
                      w_in: Tensor, w_out: Tensor, C_next: Tensor, Q: Tensor, alphas: Sequence[float],
                      weights: Sequence[float], E: Tensor, width: float, max_memory: int,
                      heartbeat: Callable[[], None] | None = None) -> None:
    """Add Σ_x Σ_t w_t A²_{t,i,j} of a batch to E (k', k) (module docstring). point: the maps
    (B, d, *S) of node layer j; baseline (d,): the path's start without the slot (None with it);
    f_hat (B, P_in, k), zero where w_in (B, P_in) is 0 (padding); w_out (B, P_out); C_next (d' [+1], k');
    Q (d [+1], k); width: :func:`activation_width`, which sizes the chunks of directions."""
    src, dst = net.layouts[net.chain[j]], net.layouts[net.chain[j + 1]]
    aug = net.include_bias
    dt = point.dtype
    B, k = point.shape[0], f_hat.shape[-1]
    d, d_next = Q.shape[0] - int(aug), C_next.shape[0] - int(aug)
    C_data, Q_data = C_next[:d_next].to(dt), Q[:d].to(dt)
    share = w_in / w_in.sum(-1, keepdim=True).clamp_min(1.0)
    P_out = w_out.shape[1]
    starts = [path_point(src, point, baseline, alpha) for alpha in alphas]
    drive = C_next[d_next].to(dt) if aug else None                                 # c_i, + Σ_q w_q C_iᵀ β_q,t
    if aug and net.needs_tangent:
        drive = drive + sum(wq * dst.to_samples(net.bias_tangent(batch, j, point=start, alpha=alpha)) @ C_data
                            for alpha, wq, start in zip(alphas, weights, starts))
    step = jvp_chunk(k, width, point, net.section_modules(j) is not None, max_memory)
    for lo in range(0, k, step):
        js = torch.arange(lo, min(lo + step, k), device=point.device)
        K = len(js)
        f_j = f_hat[..., js].permute(2, 0, 1)                                      # (K, B, P_in)
        d_point = src.from_samples((f_j[..., None] * Q_data[:, js].T[:, None, None, :]).flatten(0, 1),
                                   (K * B,) + tuple(point.shape[1:])).view((K,) + tuple(point.shape))
        d_slot = f_j * Q[-1, js].to(dt)[:, None, None] if aug else None              # (K, B, P_in)
        A = torch.zeros(K, B, P_out, C_data.shape[1], dtype=dt, device=point.device)
        for alpha, wq, start in zip(alphas, weights, starts):
            if heartbeat is not None:
                heartbeat()
            tangent = net.section_jvp(batch, j, start, alpha, d_point, d_slot)     # (K, B, …)
            A += wq * (dst.to_samples(tangent.flatten(0, 1)) @ C_data).view(A.shape)
        if aug:                  # the next slot and the biases no hook places (β) move with s at t or s̄
            moved = d_slot
            moved = moved if moved.shape[-1] == P_out else (moved * share).sum(-1, keepdim=True)
            A += moved[..., None] * drive
        E[:, js] += (A.square() * w_out[None, :, :, None]).sum((1, 2)).T.to(torch.float64)


def jvp_chunk(k: int, width: float, point: Tensor, replicated: bool, max_memory: int) -> int:
    """How many directions one forward-mode pass takes: each costs the tangents of the section's
    activations, (2 + width)·|point| elements, and as much again for the primal where it is
    replicated per direction (a traced chain), within ``max_memory`` and on the CPU at most
    VJP_CHUNK_BYTES replicated, JVP_CHUNK_BYTES mapped by ``vmap``. The caps are for speed, as for
    the VJPs (:func:`~intermod.analysis.core.jacobians.chunk_size`), measured on 2 cores on 2026-12-07:
    MiniLM, 2 sections, one batch of 544 tokens, float32: 50.6 s at 64 MiB (3 directions per
    pass), 29.5 / 29.3 / 25.9 / 44.1 s at 8 / 16 / 32 / 64; the overlapping-pool CNN (64 maps of
    32×32, float64) 0.82–1.09 s of edges at 64 MiB against 0.97–1.44 s at 256 MiB."""
    per = int((2 + width) * point.numel() * (2 if replicated else 1))
    return chunk_size(k, per, point.dtype, max_memory, point.device, VJP_CHUNK_BYTES if replicated else JVP_CHUNK_BYTES)


def activation_width(net: NodeModel, batch: Batch, j: int, point: Tensor) -> float:
    """The elements of section j's activations (what a VJP would save) per element of its input
    ``point``: one pass of the section with autograd, made once per section."""
    with SavedNumel(net.params.values()) as saved:
        net.section(batch, j, point=point)
    return saved.numel / point.numel()


def forward_mode_works(net: NodeModel, batch: Batch, j: int, point: Tensor) -> bool:
    """Whether section j runs in forward mode (:meth:`NodeModel.section_jvp`, one tangent, the
    slot's too): some ops have no forward-mode derivative or no ``vmap`` rule. If not, a warning
    names the reason and the section keeps its VJPs."""
    d_slot = (torch.ones((1,) + tuple(net.layouts[net.chain[j]].slot_shape(point.shape)), dtype=point.dtype,
                         device=point.device) if net.include_bias else None)
    try:
        net.section_jvp(batch, j, point, 1.0, torch.zeros_like(point)[None], d_slot)
    except (RuntimeError, NotImplementedError) as err:
        warnings.warn(f"section {net.chain[j]} -> {net.chain[j + 1]}: no forward-mode pass ({err}); its edges take "
                      "one VJP per output position and direction instead", RuntimeWarning, stacklevel=3)
        return False
    return True
