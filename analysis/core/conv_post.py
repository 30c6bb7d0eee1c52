"""Edges of residual conv units with a projection shortcut or an activation after the sum.

torchvision's ResNet blocks are f = σ_post(W₂ ⋆ σ(W₁ ⋆ p + b₁ s) + b₂ s + S(p)) with the
shortcut S(p) = p or a projection W_p ⋆ p + b_p s (a strided 1×1 convolution and its batch norm,
folded). The Jacobian is no longer linear in a = σ′(z) alone: it is a_post ⊙ (W₂ ⋆ (a ⊙ W₁ ⋆ ·)
+ S), so the attribution of input direction j (:mod:`~intermod.analysis.core.convolution`) is
summed over the quadrature nodes q of the path, with both derivatives taken at the node:

    A_{·,·,j} = C_dataᵀ Σ_q w_q a_post,q ⊙ (W₂ ⋆ (a_q ⊙ (R_j ⋆ f̂_j + b₁ δσ₁)) + b₂ δσ₂ + S(Q_j f̂_j))
                (+ c_slot δs_next, added by the caller)

with S(Q_j f̂_j) = Q_j f̂_j for the identity and W_p ⋆ (Q_j f̂_j) + b_p δσ_p for a projection, and
a_post,q = σ_post′ of the sum at the node's point (p and every bias scaled by α with the slot,
p₀ + α (p − p₀) without; the folded batch norms' −s μ by neither). The convolutions run in the
output's d' channels, not the k' of C_dataᵀ W₂: n·P·k·(h·|kernel₁| + d'·h·|kernel₂|) per node.
The Gram of such a section has no closed form (its σ′ moments would be of fourth order); it is
summed over each output's receptive field (:mod:`~intermod.analysis.core.field_grams`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .structured import activation_derivative

if TYPE_CHECKING:
    from .convolution import ConvSection


def post_attribution(sec: ConvSection, point: Tensor, baseline: Tensor | None, z: Tensor, z0: Tensor | float,
                     zj: Tensor, f_map: Tensor, Q_data: Tensor, drive: Tensor | None, C_data: Tensor,
                     alphas: Sequence[float], weights: Sequence[float]) -> Tensor:
    """The attributions A (N, k, k', P_out) of a chunk (module docstring). point: (N, d, *S);
    baseline: (d,) the path's start without the slot (None with it); z: (N, h, *S₁) the
    preactivation at the point, z0 at the path's start; zj: (N, k, h, *S₁) = R_j ⋆ f̂_j + b₁ δσ₁;
    f_map: (N, k, *S); drive: (N, k, *S_out) the slot derivative that drives the biases at the
    output's positions (None without the slot); C_data: (d', k')."""
    N, k, h = zj.shape[:3]
    second, short = sec.second, sec.shortcut
    if short is None:                                                       # the identity: Q_j f̂_j
        sj = f_map[:, :, None] * Q_data.T.reshape((1, k, -1) + (1,) * (f_map.ndim - 2))
    else:
        Rp = torch.einsum("oc...,cj->jo...", short.weight, Q_data).flatten(0, 1)[:, None]
        sj = short(f_map, Rp, groups=k)
        sj = sj.view((N, k, -1) + tuple(sj.shape[2:]))
        if drive is not None and short.bias is not None:
            sj = sj + short.bias.reshape((1, 1, -1) + (1,) * (sj.ndim - 3)) * drive[:, :, None]
    if drive is not None and second.bias is not None:
        sj = sj + second.bias.reshape((1, 1, -1) + (1,) * (sj.ndim - 3)) * drive[:, :, None]
    slot = baseline is None
    base = None if slot else baseline.to(point.dtype).reshape((1, -1) + (1,) * (point.ndim - 2))
    total = torch.zeros_like(sj)
    for alpha, wq in zip(alphas, weights):
        zq = z0 + alpha * (z - z0)
        body = second((zj * activation_derivative(sec.act, zq)[:, None]).flatten(0, 1))
        pq = alpha * point if slot else base + alpha * (point - base)
        scale = alpha if slot else 1.0                                      # the biases along the path
        pre = second.affine(sec.activation(zq), scale) + (pq if short is None else short.affine(pq, scale))
        total += wq * activation_derivative(sec.post, pre)[:, None] * (body.view(sj.shape) + sj)
    return torch.einsum("ci,nkc...->nki...", C_data, total).reshape(N, k, C_data.shape[1], -1)
