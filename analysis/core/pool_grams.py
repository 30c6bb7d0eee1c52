"""Next-layer Jacobian Grams of [activation] [pool] [Conv] sections, windows tiling or overlapping.

The section (no first convolution: the point p is the activation's input, h = d) maps p to
f = W₂ ⋆ y + b₂ s̄ with y = pool(σ(p)) (or f = y without a convolution: L = C_dataᵀ, one tap).
At a point the pool is linear, y_q = Σ_e ω_{e,q} σ(p)_{R(e,q)} channel by channel
(:mod:`~intermod.analysis.core.pools`), so the gradient of f̂ at input position s gathers every
window q that reads s (s = R(e, q)):

    ∂f̂/∂p_s = Σ_{q ∋ s} (∂f̂/∂y_q) diag(w_{e,q}),   w_{e,q} = ω_{e,q} ⊙ a_{R(e,q)},  a = σ′(p)

With L = C_dataᵀ W₂ (k', h, taps δ) and m_δ(q) = 1 where tap δ of some output t reads q,
∂f̂_{t,i}/∂y_q = L_i[δ]. Two windows q, q' = q + Δ are read by the same output t through taps
δ, δ' with Δ = dil ⊙ (δ' − δ), so

    Σ_x Σ_s (∂f̂/∂p_s)ᵀ(∂f̂/∂p_s) = Σ_c Σ_Δ H_{c,Δ} ⊙ T_{c,Δ}        (h, h)

    H_{c,Δ} = Σ_{δ: m_δ(c)} L[δ]ᵀ L[δ + Δ/dil],   T_{c,Δ} = Σ_x Σ_{q∈c} Σ_e w_{e,q} w_{e−σΔ, q+Δ}ᵀ

(σ the pool's stride: element e − σΔ of window q + Δ reads the same position as element e of
q; c a class of pooled positions with the same taps m_δ, the interior and the bands along the
edges). Windows that tile the map share no position, so Δ = 0 only, and T_{c,0} is the σ′
moment of the positions of class c's windows. With the slot, the pool moves the positions, so
b₂ and the next slot are driven by the mean slot (ŵ = 1/P_in), exactly as without a pool
(:func:`~intermod.analysis.core.conv_grams.conv_next_layer_gram`), with Σ_x Σ_{q∈c} Σ_e w_{e,q}
for Σ a. n · Σ_Δ |pairs(Δ)| · P_pooled · h² multiply-adds: 25 P_pooled h² for 3 × 3 windows of
stride 2 (ResNet's stem), against n_colours · k' backward passes over the whole map for the
coloured VJPs (:mod:`~intermod.analysis.core.colouring`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .convolution import ConvSection, tap_masks
from .gram import gram
from .pools import grid_coords, grid_index
from .structured import activation_derivative
from .tap_moments import TapMoments


@dataclass(kw_only=True)
class PoolMoments(TapMoments):
    """Per-class window moments (:class:`~.tap_moments.TapMoments`, classes of pooled positions):
    T_{c,Δ} (``S``: n_classes, n_shifts, h, h) and σ_c = Σ_x Σ_{q∈c} Σ_e w_{e,q} (``sigma``:
    n_classes, h) (module docstring)."""

    gaps: Tensor           # (n_taps, n_taps, nd) dil ⊙ (δ' − δ) of every pair of the convolution's taps
    shifts: Tensor         # (n_shifts, nd) the offsets Δ between windows that share a position
    rows: list[list[tuple[Tensor, Tensor]]]  # [shift][class]: where w_{e,q} and w_{e−σΔ,q+Δ} sit in the table

    def add(self, sec: ConvSection, point: Tensor, w_in: Tensor) -> None:
        """Add a batch of input maps (B, h, *S) with sample weights (B, P_in)."""
        if not self.accepts(point, w_in):
            return
        B, h = point.shape[:2]
        w = sec.pool.window_values(activation_derivative(sec.act, point), sec.activation(point))  # (B, h, |κ|, P)
        self.sigma.index_add_(0, self.classes, w.sum((0, 2)).T.to(torch.float64))
        table = torch.cat([w.permute(0, 2, 3, 1).reshape(B, -1, h), w.new_zeros(B, 1, h)], 1)   # + a zero row
        for j, per_class in enumerate(self.rows):
            for c, (ix, iy) in enumerate(per_class):
                X = table[:, ix].reshape(-1, h)
                T = gram(X) if j == 0 else X.T @ table[:, iy].reshape(-1, h)   # shift 0 (the first): X = Y
                self.S[c, j] += T.to(torch.float64)
        self.n += float(B)

    def data_gram(self, L: Tensor) -> Tensor:
        """M = Σ_c Σ_Δ H_{c,Δ} ⊙ T_{c,Δ} (h, h) float64 for L (k', h, n_taps) (module docstring)."""
        LL = torch.einsum("ihd,ige->dehg", L, L)                                    # (δ, δ', h, h)
        taps = self.taps.to(L)
        M = torch.zeros(L.shape[1], L.shape[1], dtype=torch.float64, device=L.device)
        for j, shift in enumerate(self.shifts):
            d, e = (self.gaps == shift).all(-1).nonzero(as_tuple=True)                # δ' = δ + Δ/dil
            T = torch.einsum("cp,chg->phg", taps[:, d], self.S[:, j])                 # (pairs, h, h)
            M += (LL[d, e] * T).sum(0)
        return M


def pool_moments(sec: ConvSection, in_shape: tuple[int, ...], device: torch.device) -> PoolMoments:
    """Empty :class:`PoolMoments` of the section ``sec`` ([activation] [pool] [Conv] or
    [activation] [pool]) on input maps of ``in_shape`` (channels, *spatial)."""
    h, spatial = in_shape[0], tuple(in_shape[1:])
    pool, conv = sec.pool, sec.second
    pooled = pool.out_spatial(spatial)
    P, nd = math.prod(pooled), len(pooled)
    n_elements = math.prod(pool.kernel)
    masks = torch.ones(1, P, dtype=torch.float64) if conv is None else tap_masks(conv, pooled)
    columns, classes = torch.unique(masks.T, dim=0, return_inverse=True)
    if conv is None:
        gaps = torch.zeros(1, 1, nd, dtype=torch.int64)
    else:
        coords = grid_coords(torch.arange(math.prod(conv.weight.shape[2:])), conv.weight.shape[2:])
        gaps = (coords[None] - coords[:, None]) * torch.tensor(conv.dilation)
    reach = [torch.arange(-((k - 1) // s), (k - 1) // s + 1) for k, s in zip(pool.kernel, pool.stride)]
    overlaps = torch.cartesian_prod(*reach).reshape(-1, nd)
    shifts = [g for g in overlaps if bool((gaps == g).all(-1).any())]
    shifts.sort(key=lambda g: bool(g.any()))                                         # Δ = 0 first
    kernel, stride = torch.tensor(pool.kernel), torch.tensor(pool.stride)
    e_at, q_at = grid_coords(torch.arange(n_elements), pool.kernel), grid_coords(torch.arange(P), pooled)
    rows = []
    for shift in shifts:
        e2 = e_at - stride * shift                                                   # the same position in q + Δ
        keep = ((e2 >= 0) & (e2 < kernel)).all(-1).nonzero().view(-1)
        e2_flat = grid_index(e2[keep], pool.kernel)
        q2 = q_at + shift
        on_map = ((q2 >= 0) & (q2 < torch.tensor(pooled))).all(-1)
        q2_flat = torch.where(on_map, grid_index(q2.clamp_min(0), pooled), -1)
        per_class = []
        for c in range(len(columns)):
            qs = (classes == c).nonzero().view(-1)
            ix = keep[:, None] * P + qs[None]
            iy = torch.where(q2_flat[qs][None] >= 0, e2_flat[:, None] * P + q2_flat[qs][None], n_elements * P)
            per_class.append((ix.reshape(-1).to(device), iy.reshape(-1).to(device)))
        rows.append(per_class)
    z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)   # noqa: E731
    return PoolMoments(spatial, columns.to(device), classes.to(device), z(len(columns), len(shifts), h, h), z(len(columns), h), gaps=gaps,
                       shifts=torch.stack(shifts), rows=rows)

