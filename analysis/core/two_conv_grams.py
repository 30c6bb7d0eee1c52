"""Next-layer Jacobian Grams of two-convolution sections from paired σ′ moments.

[Conv [BN]] [activation] [Conv [BN]], alone or in a residual unit p + … (ResNet blocks): z =
W₁ ⋆ p + b₁ s (h channels at positions u), f = W₂ ⋆ σ(z) + b₂ s (+ p), f̂_t = C_dataᵀ f_t + c s_t.
With a_u = σ′(z_u), L = C_dataᵀ W₂ (k', h, taps₂) and K₂[δ, δ'] = L[δ]ᵀ L[δ'] (h, h), the
gradient of f̂_{t,i} at input position s (with its slot coordinate) is

    ĝ_{t,i}(s) = Σ_{u, δ₁, δ₂: u reads s by δ₁, t reads u by δ₂} W₁'[δ₁]ᵀ (a_u ⊙ L_i[δ₂]) + [t = s] Γ'_i

with W₁'[δ₁] = [W₁[δ₁], 0] (h, d+1) and, with the slot, one virtual tap that reads s = u with
W₁' = [0, b₁] (b₁ at u is driven by the slot of position u), and Γ' = [C_dataᵀ for a residual
unit else 0, C_dataᵀ b₂ + c] (k', d+1): the identity's term, and the bias and slot driven at t.
So, summed over the maps x, input positions s and outputs (t, i),

    M = Σ_κ W₁'[δ₁]ᵀ (K₂[δ₂, δ₂'] ⊙ T_κ) W₁'[δ₁']
        + Σ_{δ₁,δ₂} (W₁'[δ₁]ᵀ diag(σ_{δ₁δ₂}) L[δ₂]ᵀ Γ' + its transpose) + n P Γ'ᵀ Γ'

over the combinations κ = (δ₁, δ₁', δ₂, δ₂') through which one output t reads u = u(t, δ₂) and
u' = u(t, δ₂') and these read one s, T_κ = Σ_x Σ_u m_κ(u) a_u a_{u+Δ_κ}ᵀ (Δ_κ = u' − u, the
same for every t: a translation) and σ_{δ₁δ₂} = Σ_x Σ_u m_{δ₁δ₂}(u) a_u (t = s reads u by δ₂,
u reads s by δ₁). At each offset, the positions u with the same masks form a class (the
interior, the bands along the edges): the moments are summed per class, #offsets·n·P·h² multiply-adds,
against n_colours·k' backward passes over the whole map for the coloured VJPs. With the slot,
both convolutions must keep the input's positions (every bias is then driven per position);
otherwise the coloured VJPs take the section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .convolution import ConvMap, ConvSection, read_index
from .structured import activation_derivative, skip_readout
from .tap_moments import still_exact

COMBO_CHUNK_BYTES = 1 << 26   # the (combinations, h, h) temporaries of the contraction, per chunk
PAIR_CHUNK_BYTES = 1 << 26    # the (positions, h, h) per-position moments of one offset, per chunk


@dataclass
class PairMoments:
    """σ′ moments of a two-convolution section on input maps of ``spatial`` positions: for each
    offset Δ and class c of the positions with the same masks m_κ at that offset (those with
    some m_κ > 0), T (n_pairs, h, h) = Σ_x Σ_{u∈c} a_u a_{u+Δ}ᵀ, and per class of the masks
    m_{δ₁δ₂}, sigma (n_classes, h) = Σ_x Σ_{u∈c} a_u; ``exact`` turns False
    when a batch cannot be summed this way (other positions, a mask), or is False from the start
    when the slot's rules or the geometry do not allow it."""

    spatial: tuple[int, ...]
    n_taps1: int                   # W₁'s taps, the virtual slot tap included
    combos: Tensor                 # (n_κ, 4) δ₁, δ₁', δ₂, δ₂' of each combination
    weights: Tensor                # (n_κ, n_pairs) m_κ of each (Δ, c) pair
    firsts: Tensor                 # (n_taps1, n_taps₂, n_classes) m_{δ₁δ₂} of each class of ``classes``
    pairs: list[tuple[Tensor, Tensor, Tensor]]   # per offset Δ: positions u, u + Δ and their (Δ, c) pair
    classes: Tensor                # (P₁,) each position's class for sigma (same masks m_{δ₁δ₂})
    T: Tensor
    sigma: Tensor
    n: float = 0.0
    exact: bool = True

    def add(self, sec: ConvSection, point: Tensor, w_in: Tensor) -> None:
        """Add a batch of input maps (B, d, *S) with sample weights (B, P_in)."""
        if not still_exact(self, point, w_in):
            return
        a = activation_derivative(sec.act, sec.preactivation(point)).flatten(2).permute(2, 0, 1)   # (P₁, B, h)
        B, h = a.shape[1:]
        step = max(1, PAIR_CHUNK_BYTES // (a.element_size() * h * max(h, B)))
        for u, v, q in self.pairs:                                 # Σ_x a_u a_{u+Δ}ᵀ per position, summed per pair
            for lo in range(0, len(u), step):
                part = torch.bmm(a[u[lo:lo + step]].transpose(1, 2), a[v[lo:lo + step]])
                self.T.index_add_(0, q[lo:lo + step], part.to(torch.float64))
        self.sigma.index_add_(0, self.classes, a.sum(1).to(torch.float64))
        self.n += float(point.shape[0])


def _virtual_tap(sec: ConvSection, include_bias: bool) -> bool:
    return include_bias and sec.first.bias is not None


def _masks(idx1: Tensor, idx2: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The combinations κ (n_κ, 4), their offsets Δ_κ (n_κ,) and masks m_κ (n_κ, P₁) from the
    read indices of the two convolutions (:func:`~intermod.analysis.core.convolution.read_index`);
    None when an offset varies with t (not a translation)."""
    n1, P1 = idx1.shape
    n2 = len(idx2)
    combos, offsets, masks = [], [], []
    for d2 in range(n2):
        u, v = idx2[d2], idx2                                                    # (P₂,), (n₂, P₂)
        both = (u >= 0) & (v >= 0)
        big = idx1.shape[1] + idx2.shape[1]
        delta = torch.where(both, v - u, -big).amax(1)                           # (n₂,) Δ of each δ₂'
        if bool((both & (v - u != delta[:, None])).any()):
            return None
        s = idx1[:, u.clamp_min(0)]                                              # (n₁, P₂)
        sb = idx1[:, v.clamp_min(0)]                                             # (n₁, n₂, P₂)
        hit = both & (s[:, None, None] >= 0) & (s[:, None, None] == sb[None])    # (n₁, n₁', n₂', P₂)
        m = torch.zeros(n1, n1, n2, P1, dtype=torch.float64).index_add_(3, u.clamp_min(0), hit.to(torch.float64))
        k = m.flatten(0, 2).any(1).nonzero().view(-1)
        d1, d1b, d2b = k // (n1 * n2), k // n2 % n1, k % n2
        combos.append(torch.stack([d1, d1b, torch.full_like(d1, d2), d2b], 1))
        offsets.append(delta[d2b])
        masks.append(m.flatten(0, 2)[k])
    return torch.cat(combos), torch.cat(offsets), torch.cat(masks)


def _first_masks(idx1: Tensor, idx2: Tensor) -> Tensor:
    """m_{δ₁δ₂} (n₁·n₂, P₁), δ₁ major: output t = s reads u by δ₂ and u reads s by δ₁."""
    n1, P1 = idx1.shape
    t = torch.arange(idx2.shape[1])
    out = torch.zeros(n1, len(idx2), P1, dtype=torch.float64)
    for d2, u in enumerate(idx2):
        hit = (u >= 0) & (idx1[:, u.clamp_min(0)] == t)                          # (n₁, P₂)
        out[:, d2].index_add_(1, u.clamp_min(0), hit.to(torch.float64))
    return out.flatten(0, 1)


def pair_moments(sec: ConvSection, in_shape: tuple[int, ...], include_bias: bool,
                 device: torch.device) -> PairMoments:
    """Empty :class:`PairMoments` of the two-convolution section ``sec`` on input maps of
    ``in_shape`` (channels, *spatial)."""
    spatial = tuple(in_shape[1:])
    mid = spatial_after(sec.first, in_shape)
    out = spatial_after(sec.second, (sec.first.weight.shape[0],) + mid)
    same = mid == spatial and out == spatial
    idx1 = read_index(sec.first, spatial)                                    # (n_taps₁, P₁)
    if _virtual_tap(sec, include_bias):
        idx1 = torch.cat([idx1, torch.arange(idx1.shape[1])[None]])
    idx2 = read_index(sec.second, mid)                                       # (n_taps₂, P₂)
    found = _masks(idx1, idx2) if same or not (include_bias or sec.residual) else None
    if found is None or not len(found[0]):
        return _inexact(spatial, device)
    combos, offsets, masks = found
    pairs, rows, cols, vals, n_pairs = [], [], [], [], 0
    for o in offsets.unique().tolist():                # classes per offset: positions with the same masks there
        ks = (offsets == o).nonzero().view(-1)
        columns, cls = torch.unique(masks[ks].T, dim=0, return_inverse=True)   # (n_c, n_κ at o)
        used = columns.any(1)
        pair_of = torch.full((len(columns),), -1, dtype=torch.int64)
        pair_of[used] = torch.arange(n_pairs, n_pairs + int(used.sum()))
        q = pair_of[cls]
        u = (q >= 0).nonzero().view(-1)
        pairs.append((u.to(device), (u + o).to(device), q[u].to(device)))
        c, k = columns.nonzero().unbind(1)
        rows.append(ks[k]), cols.append(pair_of[c]), vals.append(columns[c, k])
        n_pairs += int(used.sum())
    weights = torch.zeros(len(masks), n_pairs, dtype=torch.float64)
    weights[torch.cat(rows), torch.cat(cols)] = torch.cat(vals)
    n1, n2, P1 = len(idx1), len(idx2), idx1.shape[1]
    if include_bias or sec.residual:                   # σ per class of the masks m_{δ₁δ₂}
        columns, classes = torch.unique(_first_masks(idx1, idx2).T, dim=0, return_inverse=True)
        firsts = columns.T.reshape(n1, n2, len(columns))
    else:
        classes, firsts = torch.zeros(P1, dtype=torch.int64), torch.zeros(n1, 0, 1, dtype=torch.float64)
    h = sec.first.weight.shape[0]
    z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)   # noqa: E731
    return PairMoments(spatial, n1, combos.to(device), weights.to(device), firsts.to(device), pairs,
                       classes.to(device), z(n_pairs, h, h), z(firsts.shape[2], h))


def _inexact(spatial: tuple[int, ...], device: torch.device) -> PairMoments:
    e = torch.zeros(0, device=device)
    return PairMoments(spatial, 0, e.long(), e, e, [], e.long(), e, e, exact=False)


def spatial_after(conv: ConvMap, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The positions of conv's output on inputs of ``in_shape`` (channels, *spatial)."""
    x = torch.zeros((1,) + tuple(in_shape), dtype=conv.weight.dtype, device=conv.weight.device)
    return tuple(conv(x).shape[2:])


def two_conv_next_layer_gram(sec: ConvSection, mom: PairMoments, C_next: Tensor, include_bias: bool
                             ) -> Tensor | None:
    """Σ_x Σ_s Jᵀ C Cᵀ J of a two-convolution section in point coordinates (d [+1], d [+1]),
    float64 (module docstring); None when the moments are not exact."""
    if not mom.exact:
        return None
    C = C_next.to(torch.float64)
    f64 = dict(dtype=torch.float64, device=C.device)
    d_next = C.shape[0] - int(include_bias)
    W1 = sec.first.weight.to(torch.float64).flatten(2)                            # (h, d, n_taps₁)
    h, d, taps1 = W1.shape
    W1a = torch.zeros(mom.n_taps1, h, d + int(include_bias), **f64)               # W₁'[δ₁]
    W1a[:taps1, :, :d] = W1.permute(2, 0, 1)
    if _virtual_tap(sec, include_bias):
        W1a[taps1, :, d] = sec.first.bias.to(torch.float64)
    L = torch.einsum("ci,ch...->ih...", C[:d_next], sec.second.weight.to(torch.float64)).flatten(2)   # (k', h, n₂)
    n1 = mom.n_taps1
    X = torch.zeros(n1 * n1, h, h, **f64)                                       # Σ_κ∋(δ₁,δ₁') K₂ ⊙ T_κ
    step = max(1, COMBO_CHUNK_BYTES // (8 * 2 * h * h))
    for start in range(0, len(mom.combos), step):
        d1, d1b, d2, d2b = mom.combos[start:start + step].T
        T_k = (mom.weights[start:start + step] @ mom.T.flatten(1)).view(-1, h, h)
        K2 = torch.einsum("ihk,igk->khg", L[:, :, d2], L[:, :, d2b])
        X.index_add_(0, d1 * n1 + d1b, K2.mul_(T_k))
    M = torch.einsum("ahc,abhg,bge->ce", W1a, X.view(n1, n1, h, h), W1a)
    Gamma = skip_readout(C, include_bias) if sec.residual else None
    if include_bias:
        b2 = torch.zeros(d_next, **f64) if sec.second.bias is None else sec.second.bias.to(torch.float64)
        Gamma = torch.zeros(C.shape[1], d + 1, **f64) if Gamma is None else Gamma
        Gamma[:, d] = C[:d_next].T @ b2 + C[d_next]
    if Gamma is not None:
        sig = torch.einsum("abc,ch->abh", mom.firsts, mom.sigma)                   # σ_{δ₁δ₂} (n₁, n₂, h)
        LG = torch.einsum("ihk,ie->khe", L, Gamma)                                  # L[δ₂]ᵀ Γ' (n₂, h, d+1)
        cross = torch.einsum("ahc,abh,bhe->ce", W1a, sig, LG)
        M = M + cross + cross.T + mom.n * math.prod(mom.spatial) * (Gamma.T @ Gamma)
    return M
