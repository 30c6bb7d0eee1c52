"""Edges of depthwise-separable blocks (MobileNetV2's inverted residual) in closed form.

For the block of :mod:`~intermod.analysis.core.separable_grams`, the attribution of input
direction j to output (t, i) at one point of the integration path is

    A_{t,·,j} = Σ_s Ĵ_{t,s} Q_j f̂_{s,j} = L (a₂_t ⊙ (w ⋆ (a₁ ⊙ r_j))_t) + Γ̂_t Q_j f̂_{t,j},
    r_{s,j} = W₁' Q_j f̂_{s,j} = R_j f̂_{s,j},   R = W₁ Q_data + b₁ Q_slot   (h, k)

(w ⋆: the depthwise map without its bias, a grouped convolution of the h channels of each of the
k·N one-direction maps a₁ ⊙ r_j). Ĵ is averaged along the path, and a₁, a₂ vary along it
together, so the first term is summed over the quadrature nodes α_q with weight w_q, each with
its own a₁, a₂; the second needs only ā₂ = Σ_q w_q a₂(α_q): Γ̂_t Q_j f̂_{t,j} =
C_dataᵀ Q_data,j f̂_{t,j} (a residual unit) + (L (ā₂_t ⊙ b₂) + u) Q_slot,j f̂_{t,j},
u = C_dataᵀ b₃ + c; where the depthwise map changes the number of positions, b₂, b₃ and the
next slot follow the mean slot, and f̂_{t,j} in the last term is the map's mean Σ_s ŵ_s f̂_{s,j}. The path: with the slot, α·(point, slot), every bias scaled by α and the
folded batch norms' offsets not; without it, from the baseline map p₀ (f̂ = 0) to the point,
biases whole. E_ij = Σ_x Σ_t w_t A²_{t,i,j}: per node n·P·k·h·(|taps| + 2) multiply-adds and
one product with L, n·P·k·h·k', against one forward-mode pass of the block per direction for
the JVPs it replaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .jacobians import VJP_CHUNK_BYTES, chunk_budget
from .separable_grams import SeparableSection


def separable_edge_sums(sec: SeparableSection, point: Tensor, baseline: Tensor | None, f_hat: Tensor,
                        w_in: Tensor, w_out: Tensor, C_next: Tensor, Q: Tensor, alphas: Sequence[float], weights: Sequence[float],
                        include_bias: bool, E: Tensor, max_memory: int,
                        heartbeat: Callable[[], None] | None = None) -> None:
    """Add Σ_x Σ_t w_t A²_{t,i,j} of a batch to E (k', k) (module docstring).

    point: (B, d, *S) the input maps; f_hat: (B, P_in, k) their basis coordinates (zero at masked
    samples); w_in (B, P_in), w_out (B, P_out): sample weights; C_next: (d'+1, k') (or (d', k')
    without the slot); Q: (d+1, k) (or (d, k)) in the compute dtype; baseline: (d,) the path's
    start without the slot (None with it). With the slot the depthwise map keeps the positions
    (:attr:`SeparableSection.keeps_positions`) or changes their number."""
    dtype = f_hat.dtype
    B, d, *S = point.shape
    k, nd = f_hat.shape[-1], len(S)
    h = sec.first.weight.shape[0]
    L, u = sec.readout(C_next.to(dtype), include_bias)                           # (k', h), (k',)
    R = sec.first.weight.flatten(1) @ Q[:d]                                      # (h, k)
    if include_bias and sec.first.bias is not None:
        R = R + sec.first.bias[:, None] * Q[d]
    grouped = sec.grouped.unsqueeze(1)                                            # (h, 1, *kernel)
    f_map = f_hat.transpose(1, 2).reshape(B, k, *S)
    start = None if baseline is None else baseline.to(dtype).reshape((1, d) + (1,) * nd)
    skip = sec.skip(C_next.to(dtype), include_bias)
    T = None if skip is None else (skip @ Q).T                                   # (k, k'): the identity's term
    b2 = None
    if include_bias:
        b2 = torch.zeros(h, dtype=dtype, device=point.device) if sec.depthwise.bias is None else sec.depthwise.bias
    per_sample = dtype.itemsize * k * (4 * h * f_map[0, 0].numel() + 2 * L.shape[0] * w_out.shape[1])
    step = max(1, chunk_budget(max_memory, VJP_CHUNK_BYTES, point.device) // max(per_sample, 1))
    for lo in range(0, B, step):
        sl = slice(lo, lo + step)
        N = f_map[sl].shape[0]
        drive = R.T.reshape((1, k, h) + (1,) * nd) * f_map[sl][:, :, None]       # r_j (N, k, h, *S)
        V = a2_bar = 0.0
        for alpha, wq in zip(alphas, weights):
            if heartbeat is not None:
                heartbeat()
            p = alpha * point[sl] if start is None else start + alpha * (point[sl] - start)
            a1, a2 = sec.derivatives(p, bias_scale=alpha if include_bias else 1.0)
            m = (a1[:, None] * drive).reshape(N * k, h, *S)
            v = sec.depthwise(m, grouped, groups=h).reshape(N, k, h, *a2.shape[2:]) * a2[:, None]
            V, a2_bar = V + wq * v, a2_bar + wq * a2
        y = torch.einsum("ih,nkhp->nkip", L, V.flatten(3))                        # (N, k, k', P_out)
        f_t = f_map[sl].reshape(N, k, 1, -1)
        if T is not None:                                                         # p + …: positions kept
            y = y + T[None, :, :, None] * f_t
        if include_bias:                                                          # b₂, b₃, the next slot at t
            g = torch.einsum("ih,nhp->nip", L, a2_bar.flatten(2) * b2[:, None]) + u[None, :, None]
            if y.shape[-1] != f_t.shape[-1]:                                      # ... or the mean slot
                share = w_in[sl] / w_in[sl].sum(-1, keepdim=True).clamp_min(1.0)
                f_t = torch.einsum("ns,nks->nk", share, f_t[:, :, 0])[:, :, None, None]
            y = y + g[:, None] * (Q[d][None, :, None, None] * f_t)
        y = y * w_out[sl][:, None, None, :]
        E += y.square().sum((0, 3)).T.to(torch.float64)
