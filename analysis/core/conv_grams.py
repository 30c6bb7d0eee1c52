"""Next-layer Jacobian Grams of one-convolution sections from per-tap σ′ moments.

[activation] [Conv] (no first convolution: the point is the activation's input p, h = d). The
Jacobian of f̂_{t,i} at input position s is a_s ⊙ L_i[δ], δ the tap through which output t reads
s. With m_δ(s) = 1 where tap δ of some output reads s,

  Σ_x Σ_s Σ_{t,i} g gᵀ = Σ_δ (L[δ]ᵀ L[δ]) ⊙ T_δ,   T_δ = Σ_x Σ_s m_δ(s) a_s a_sᵀ   (h, h)

and the slot row, with u = C_dataᵀ b₂ + c_slot driving output t from the slot of s = t (the
convolution keeps the positions) or from the mean slot (ŵ_s = 1/P_in, it does not):
  per position: Σ_δ∈taps(t→t) (L[δ]ᵀ u) ⊙ Σ_x Σ_s a_s,         slot–slot n·P_in·|u|²
  mean slot:    (1/P_in) Σ_δ (L[δ]ᵀ u) ⊙ Σ_x Σ_s m_δ(s) a_s,    slot–slot n·P_out·|u|²/P_in
With a pool between the activation and the convolution ([activation] [pool] [Conv], or
[activation] [pool] alone with L = C_dataᵀ and one tap), the data block is
:meth:`~intermod.analysis.core.pool_grams.PoolMoments.data_gram` (windows that overlap add
cross terms between them) and Σ a is Σ over the windows' weighted derivatives.

[Conv] [activation] (no second convolution: f = σ(z), z = W ⋆ p + b s). The Jacobian of f̂_{t,i}
at s is W[δ]ᵀ v_{t,i}, v_{t,i} = a_t ⊙ C_i, so with m_δ(t) = 1 where tap δ of output t reads
inside the map (not the padding) and K = C_data C_dataᵀ,

  Σ_x Σ_s Σ_{t,i} g gᵀ = Σ_δ W[δ]ᵀ (K ⊙ T_δ) W[δ],   T_δ = Σ_x Σ_t m_δ(t) a_t a_tᵀ

and with β_{t,i} = (C_i ⊙ b)·a_t + c_slot,i the slot derivative (per position or mean, as
above), Σ_i v_{t,i} β_{t,i} = a_t ⊙ (K diag(b) a_t + C c_slot), B = diag(b) C_data:
  per position: Σ_δ∈taps(t→t) W[δ]ᵀ r(all),   mean slot: (1/P_in) Σ_δ W[δ]ᵀ r(δ)
  r(δ) = rowsum(K diag(b) ⊙ T_δ) + (C c_slot) ⊙ Σ_x Σ_t m_δ(t) a_t
  slot–slot: q = tr(BBᵀ S) + 2 (B c_slot)·Σ a + n P_out |c_slot|² (S = Σ_x Σ_t a aᵀ), or q / P_in

Positions with the same column of masks form a class (the interior, each edge, each corner);
the moments are kept per class: n·P·h² multiply-adds, as for a Linear section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .convolution import ConvMap, ConvSection, read_index, tap_masks
from .gram import gram
from .pool_grams import PoolMoments, pool_moments
from .separable_grams import SeparableMoments, SeparableSection, separable_moments, separable_next_layer_gram
from .structured import activation_derivative
from .tap_moments import TapMoments
from .two_conv_grams import PairMoments, pair_moments, two_conv_next_layer_gram


@dataclass
class ConvMoments(TapMoments):
    """Per-class σ′ moments of a one-convolution section (:class:`~.tap_moments.TapMoments`), over
    the positions of the activation: S (n_classes, h, h) = Σ_x Σ_{t∈c} a_t a_tᵀ, sigma
    (n_classes, h) = Σ_x Σ_{t∈c} a_t."""

    def add(self, sec: ConvSection, point: Tensor, w_in: Tensor) -> None:
        """Add a batch of input maps (B, d, *S) with sample weights (B, P_in)."""
        if not self.accepts(point, w_in):
            return
        a = activation_derivative(sec.act, sec.preactivation(point)).flatten(2)   # (B, h, P)
        for c in range(self.S.shape[0]):
            rows = a[:, :, self.classes == c].transpose(1, 2).reshape(-1, a.shape[1])
            self.S[c] += gram(rows).to(torch.float64)
            self.sigma[c] += rows.sum(0).to(torch.float64)
        self.n += float(point.shape[0])

    def per_tap(self) -> Tensor:
        """T_δ = Σ_x Σ_s m_δ(s) a_s a_sᵀ (n_taps, h, h) (module docstring)."""
        return torch.einsum("cd,chg->dhg", self.taps, self.S)

    def data_gram(self, L: Tensor) -> Tensor:
        """Σ_δ (L[δ]ᵀ L[δ]) ⊙ T_δ (h, h) for L (k', h, n_taps) (module docstring)."""
        return torch.einsum("ihd,igd,dhg->hg", L, L, self.per_tap())


def conv_moments(sec: ConvSection | SeparableSection, in_shape: tuple[int, ...], include_bias: bool,
                 device: torch.device) -> ConvMoments | PoolMoments | PairMoments | SeparableMoments | None:
    """Empty moments for section ``sec`` on input maps of ``in_shape`` (channels, *spatial):
    :class:`ConvMoments` with one convolution, :class:`~intermod.analysis.core.pool_grams.PoolMoments`
    with a pool, :class:`~intermod.analysis.core.two_conv_grams.PairMoments` with two
    convolutions, :class:`~intermod.analysis.core.separable_grams.SeparableMoments` for a
    depthwise-separable block; None when its Gram has no closed form (``sec.gram_closed``)."""
    if isinstance(sec, SeparableSection):
        return separable_moments(sec, in_shape, include_bias, device)
    if not sec.gram_closed:
        return None
    if sec.first is not None and sec.second is not None:
        return pair_moments(sec, in_shape, include_bias, device)
    if sec.pool is not None:
        return pool_moments(sec, in_shape, device)
    spatial = tuple(in_shape[1:])
    if sec.first is not None:
        masks, h = _valid_taps(sec.first, spatial), sec.first.weight.shape[0]
    else:
        masks, h = tap_masks(sec.second, spatial), in_shape[0]
    columns, classes = torch.unique(masks.T, dim=0, return_inverse=True)
    z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)   # noqa: E731
    return ConvMoments(spatial, columns.to(device), classes.to(device), z(len(columns), h, h), z(len(columns), h))


def _valid_taps(conv: ConvMap, spatial: tuple[int, ...]) -> Tensor:
    """(n_taps, P_out) m_δ(t) ∈ {0, 1}: whether tap δ of output position t reads inside the map."""
    return (read_index(conv, spatial) >= 0).to(torch.float64)


def _self_taps(conv: ConvMap, spatial: tuple[int, ...]) -> Tensor:
    """(n_taps,) 1 for the taps through which output position t reads input position t."""
    return (read_index(conv, spatial) == torch.arange(math.prod(spatial))[None]).any(1).to(torch.float64)


def conv_next_layer_gram(sec: ConvSection | SeparableSection,
                         mom: ConvMoments | PoolMoments | PairMoments | SeparableMoments, C_next: Tensor,
                         include_bias: bool) -> Tensor | None:
    """Σ_x Σ_s Jᵀ C Cᵀ J of a one-convolution section in point coordinates (d [+1], d [+1]),
    float64 (module docstring; with a pool, ``PoolMoments.data_gram``); None when the moments are
    not exact, the positions are kept in count but not in shape (the slot rules would disagree),
    or kept behind a pool (output t then reads input t through the pool's window, not through
    one tap of the convolution). Two
    convolutions: :func:`~intermod.analysis.core.two_conv_grams.two_conv_next_layer_gram`."""
    if isinstance(mom, PairMoments):
        return two_conv_next_layer_gram(sec, mom, C_next, include_bias)
    if isinstance(mom, SeparableMoments):
        return separable_next_layer_gram(sec, mom, C_next, include_bias)
    if not mom.exact:
        return None
    conv = sec.second if sec.first is None else sec.first
    C = C_next.to(torch.float64)
    d_next = C.shape[0] - int(include_bias)
    h = mom.sigma.shape[1]
    like = C if conv is None else conv.weight
    out_spatial = sec.out_spatial(mom.spatial, h if sec.first is None else sec.first.weight.shape[1], like)
    P_in, P_out = math.prod(mom.spatial), math.prod(out_spatial)
    keeps = out_spatial == mom.spatial
    if include_bias and (keeps != (P_out == P_in) or keeps and sec.pool is not None):
        return None   # the slot rules disagree, or a conv's padding undoes the pool (no self tap)
    tau = mom.taps.T @ mom.sigma                                              # (n_taps, h)
    W = None if conv is None else conv.weight.to(torch.float64)
    b = torch.zeros(d_next if W is None else W.shape[0], dtype=torch.float64, device=C.device)
    if conv is not None and conv.bias is not None:
        b = conv.bias.to(torch.float64)
    c = C[d_next] if include_bias else None
    self_taps = _self_taps(conv, mom.spatial).to(C) if keeps and conv is not None and sec.pool is None else None
    if sec.first is None:
        L = (C[:d_next].T[:, :, None] if W is None
             else torch.einsum("ci,ch...->ih...", C[:d_next], W).flatten(2))  # (k', h, n_taps)
        M = mom.data_gram(L)
        if not include_bias:
            return M
        u = C[:d_next].T @ b + c                                              # (k',)
        Lu = torch.einsum("ihd,i->hd", L, u)                                  # (h, n_taps)
        if keeps:
            cross, slot = (Lu @ self_taps) * mom.sigma.sum(0), mom.n * P_in * (u @ u)
        else:
            cross, slot = (Lu * tau.T).sum(1) / P_in, mom.n * P_out * (u @ u) / P_in
    else:
        Wt = W.flatten(2)                                                     # (h, d, n_taps)
        K, T = C[:d_next] @ C[:d_next].T, mom.per_tap()                       # (h, h), (n_taps, h, h)
        M = torch.einsum("hcD,Dhg,geD->ce", Wt, K[None] * T, Wt)
        if not include_bias:
            return M
        Kb, Cc, B = K * b[None, :], C[:d_next] @ c, b[:, None] * C[:d_next]
        S_all, sigma_all = mom.S.sum(0), mom.sigma.sum(0)
        q = (B.T @ S_all * B.T).sum() + 2 * (B @ c) @ sigma_all + mom.n * P_out * (c @ c)
        if keeps:
            r = (Kb * S_all).sum(1) + Cc * sigma_all                          # (h,)
            cross, slot = torch.einsum("hcD,D,h->c", Wt, self_taps, r), q
        else:
            r = (Kb[None] * T).sum(2) + Cc[None] * tau                        # (n_taps, h)
            cross, slot = torch.einsum("hcD,Dh->c", Wt, r) / P_in, q / P_in
    out = torch.zeros(M.shape[0] + 1, M.shape[0] + 1, dtype=torch.float64, device=M.device)
    out[:-1, :-1] = M
    out[:-1, -1] = out[-1, :-1] = cross
    out[-1, -1] = slot
    return out
