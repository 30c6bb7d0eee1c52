"""Next-layer Jacobian Grams of depthwise-separable blocks (MobileNetV2's inverted residual) from σ′ moments.

A section [Conv 1×1 [BN]] [activation] [depthwise Conv [BN]] [activation] [Conv 1×1 [BN]], alone
or in a residual unit p + …, maps the input map p (d channels, positions s) to

    z₁ = W₁ p + b₁ σ,   z₂ = w ⋆ σ₁(z₁) + b₂ σ,   f = W₃ σ₂(z₂) + b₃ σ  (+ p)

(W₁ (h, d) and W₃ (d', h) act on each position; w: the depthwise kernel, a weight vector w_δ ∈ Rʰ
per tap δ; σ: the slot of each position, the maps keeping the positions). Output t reads
s = u(t, δ) through tap δ, and the depthwise map is diagonal, so with a₁ = σ₁′(z₁), a₂ = σ₂′(z₂)
the Jacobian of f̂_t = C_dataᵀ f_t + c σ_t at input position s (its slot coordinate last) is

    Ĵ_{t,s} = L diag(e_{t,δ}) W₁' + [s = t] Γ̂_t,    e_{t,δ} = w_δ ⊙ a₂_t ⊙ a₁_{u(t,δ)}  (s = u(t, δ))

with L = C_dataᵀ W₃ (k', h), W₁' = [W₁, b₁] (the slot at s drives b₁ there like a coordinate) and
Γ̂_t = [A, L (a₂_t ⊙ b₂) + u], A = C_dataᵀ for a residual unit (else 0), u = C_dataᵀ b₃ + c:
b₂, b₃ and the next slot are driven by the slot of t. Distinct taps read distinct positions, so
summed over maps x, inputs s and outputs t, with K = LᵀL, P positions per map and n maps:

    M = W₁'ᵀ (K ⊙ E) W₁' + W₁'ᵀ X + Xᵀ W₁' + Σ_{x,t} Γ̂_tᵀ Γ̂_t
    E = Σ_{x,t,δ} e_{t,δ} e_{t,δ}ᵀ         (one Gram of n·P·|taps| rows of width h, padding excluded)
    X = [diag(σ₀) Lᵀ A,  (K ⊙ Q) b₂ + σ₀ ⊙ Lᵀ u],   σ₀ = Σ_{x,t} e_{t,0},  Q = Σ_{x,t} e_{t,0} a₂_tᵀ
    Σ Γ̂ᵀΓ̂ = [[nP AᵀA, Aᵀ g], [gᵀ A, b₂ᵀ (K ⊙ S₂) b₂ + 2 uᵀ L (σ₂ ⊙ b₂) + nP |u|²]],  g = L (σ₂ ⊙ b₂) + nP u

where e_{t,0} is e through the tap by which t reads itself (0 if none), σ₂ = Σ_{x,t} a₂_t and
S₂ = Σ_{x,t} a₂_t a₂_tᵀ. That is n·P·|taps|·h² multiply-adds per pass, against |taps|·k'
backward passes of the whole section over the whole map for the coloured VJPs (one colour per
tap of the depthwise map: 3×3 → 9 colours). Without the slot the terms in
b₂, u and c vanish, and without a residual A = 0. Where the depthwise map changes the number of
positions (a stride, no residual), b₂, b₃ and the next slot follow the mean slot
σ̄ = Σ_s σ_s / P_in: then [s = t] Γ̂_t becomes [0, g_t]/P_in at every s, with g_t = L (a₂_t ⊙ b₂) + u,
so σ₀ and Q sum e over every tap (not only t's own), X's slot column and the corner are divided
by P_in, and the corner's u·u term counts the n·P_out outputs. A map that changes the positions
but not their number (the slot rules would disagree) takes the coloured VJPs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .convolution import ConvMap, conv_map, conv_modules, read_index, take_conv
from .gram import gram
from .nodes import NodeModel
from .structured import ELEMENTWISE, activation_derivative, linear_readout, section_body, skip_readout
from .tap_moments import still_exact


@dataclass(frozen=True)
class SeparableSection:
    """f = W₃ σ₂(w ⋆ σ₁(W₁ p + b₁) + b₂) + b₃ (+ p with ``residual``), module docstring:
    ``first`` and ``last`` 1×1 ConvMaps, ``depthwise`` a ConvMap with one input channel per group
    (dense, with zero off-diagonal blocks), ``act1``/``act2`` elementwise modules."""

    first: ConvMap
    act1: nn.Module
    depthwise: ConvMap
    act2: nn.Module
    last: ConvMap
    residual: bool

    gram_closed = True   # as ConvSection.gram_closed: the next-layer Gram has a closed form

    def derivatives(self, point: Tensor, bias_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """a₁ = σ₁′(z₁) (B, h, *S) and a₂ = σ₂′(z₂) (B, h, *S_out) at input maps ``point`` (B, d, *S),
        every bias scaled by ``bias_scale`` (the slot along an integrated path)."""
        z1 = self.first.affine(point, bias_scale)
        a1 = activation_derivative(self.act1, z1)
        y1 = self.act1(z1.clone() if getattr(self.act1, "inplace", False) else z1)
        z2 = self.depthwise.affine(y1, bias_scale, weight=self.grouped.unsqueeze(1), groups=y1.shape[1])
        return a1, activation_derivative(self.act2, z2)

    def readout(self, C_next: Tensor, include_bias: bool) -> tuple[Tensor, Tensor | None]:
        """(L = C_dataᵀ W₃ (k', h), u = C_dataᵀ b₃ + c (k',) or None without the slot), in C_next's dtype."""
        return linear_readout(C_next, self.last.weight.flatten(1), self.last.bias, include_bias)

    def skip(self, C_next: Tensor, include_bias: bool) -> Tensor | None:
        """Γ = [C_dataᵀ, 0] (:func:`~.structured.skip_readout`) of a residual unit, else None."""
        return skip_readout(C_next, include_bias) if self.residual else None

    def reads_slot(self, include_bias: bool) -> bool:
        """Whether the closed forms follow this block's slot rules: without the slot always; with
        it when the depthwise map keeps the positions (every bias per position) or strides (the
        biases after it and the next slot follow the mean slot)."""
        return not include_bias or self.keeps_positions or any(s > 1 for s in self.depthwise.stride)

    @property
    def keeps_positions(self) -> bool:
        """Whether the depthwise map keeps every map's positions (stride 1, padding that restores
        the size), as the slot rules of the closed forms need."""
        dw = self.depthwise
        if isinstance(dw.padding, str):
            return dw.padding == "same"
        kernel = dw.weight.shape[2:]
        return all(s == 1 and 2 * p == dil * (kk - 1)
                   for s, p, dil, kk in zip(dw.stride, dw.padding, dw.dilation, kernel))

    @functools.cached_property
    def grouped(self) -> Tensor:
        """(h, *kernel): the depthwise kernel of each channel (the dense weight's diagonal blocks)."""
        W = self.depthwise.weight
        h = W.shape[0]
        return W[torch.arange(h), torch.arange(h)]

    def taps(self) -> Tensor:
        """w (n_taps, h): the depthwise kernel's weight of each channel at each tap."""
        return self.grouped.flatten(1).T


def _one_by_one(conv: nn.Module) -> bool:
    """A 1×1 convolution of stride 1 without padding: a map of the channels at each position."""
    no_padding = conv.padding == "valid" if isinstance(conv.padding, str) else all(p == 0 for p in conv.padding)
    return all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride) and no_padding


def _depthwise(conv: nn.Module) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def separable_section(net: NodeModel, j: int) -> SeparableSection | None:
    """Section j as a :class:`SeparableSection` when its modules are [Conv 1×1 [BN]] [activation]
    [depthwise Conv [BN]] [activation] [Conv 1×1 [BN]], alone or as the body of a residual unit
    with the identity shortcut, between two conv maps (batch norms in eval mode folded in; with
    the slot, every bias scaled by a slot hook); else None."""
    modules = conv_modules(net, j)
    if modules is None:
        return None
    mods, residual = section_body(modules)
    first = take_conv(mods)
    act1 = mods.pop(0) if mods and isinstance(mods[0], ELEMENTWISE) else None
    dw = take_conv(mods)
    act2 = mods.pop(0) if mods and isinstance(mods[0], ELEMENTWISE) else None
    last = take_conv(mods)
    if mods or None in (first, act1, dw, act2, last):
        return None
    if not (_one_by_one(first[0]) and _one_by_one(last[0]) and _depthwise(dw[0])):
        return None
    if net.include_bias and any(getattr(m, "bias", None) is not None and not net.slot_hooked(m)
                                for pair in (first, dw, last) for m in pair if m is not None):
        return None
    return SeparableSection(conv_map(net, first), act1, conv_map(net, dw), act2, conv_map(net, last), residual)


@dataclass
class SeparableMoments:
    """The σ′ moments of a :class:`SeparableSection` on input maps of ``spatial`` positions
    (module docstring), float64: E, Q, S2 (h, h); sigma0, sigma2 (h,); ``index`` (n_taps, P_out)
    the input position each tap of each output reads (−1: the padding), ``self_tap`` (n_taps,
    P_out) whether that is the output's own position, or with ``mean_slot`` (the depthwise map
    changes the positions: b₂, b₃ and the next slot follow the mean slot) whether it reads
    inside the map, so that sigma0 and Q sum e over every tap; ``n`` maps; ``exact`` False once a batch
    cannot be summed this way (other positions, a mask) or from the start when the slot rules
    or a residual need kept positions and the depthwise map does not keep them."""

    spatial: tuple[int, ...]
    index: Tensor
    self_tap: Tensor
    E: Tensor
    Q: Tensor
    S2: Tensor
    sigma0: Tensor
    sigma2: Tensor
    mean_slot: bool = False
    n: float = 0.0
    exact: bool = True

    def add(self, sec: SeparableSection, point: Tensor, w_in: Tensor) -> None:
        """Add a batch of input maps (B, d, *S) with sample weights (B, P_in)."""
        if not still_exact(self, point, w_in):
            return
        a1, a2 = (a.flatten(2).transpose(1, 2) for a in sec.derivatives(point))   # (B, P_in, h), (B, P_out, h)
        a1 = torch.cat([a1, a1.new_zeros(a1.shape[0], 1, a1.shape[2])], 1)        # the padding reads zeros
        w = sec.taps().to(a2.dtype)
        e0 = torch.zeros_like(a2)
        for tap, (idx, own) in enumerate(zip(self.index, self.self_tap)):
            e = a1[:, idx] * a2 * w[tap]                                          # e_{t,δ} (B, P_out, h)
            self.E += gram(e.reshape(-1, e.shape[-1])).to(torch.float64)
            e0 += e * own[:, None]
        e0, a2 = e0.reshape(-1, e0.shape[-1]), a2.reshape(-1, a2.shape[-1])
        self.Q += (e0.T @ a2).to(torch.float64)
        self.S2 += gram(a2).to(torch.float64)
        self.sigma0 += e0.sum(0).to(torch.float64)
        self.sigma2 += a2.sum(0).to(torch.float64)
        self.n += float(point.shape[0])


def separable_moments(sec: SeparableSection, in_shape: tuple[int, ...], include_bias: bool,
                      device: torch.device) -> SeparableMoments:
    """Empty :class:`SeparableMoments` of ``sec`` on input maps of ``in_shape`` (channels, *spatial)."""
    spatial = tuple(in_shape[1:])
    h = sec.depthwise.weight.shape[0]
    idx = read_index(sec.depthwise, spatial)                                  # (n_taps, P_out)
    P_in, P_out = math.prod(spatial), idx.shape[1]
    kept = sec.keeps_positions
    mean_slot = include_bias and not kept
    own = (idx == torch.arange(P_out)) if kept else (idx >= 0) if mean_slot else torch.zeros_like(idx, dtype=torch.bool)
    z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)   # noqa: E731
    return SeparableMoments(spatial, torch.where(idx >= 0, idx, P_in).to(device), own.to(device),
                            z(h, h), z(h, h), z(h, h), z(h), z(h), mean_slot=mean_slot,
                            exact=sec.reads_slot(include_bias) and not (mean_slot and P_out == P_in > 1))


def separable_next_layer_gram(sec: SeparableSection, mom: SeparableMoments, C_next: Tensor,
                              include_bias: bool) -> Tensor | None:
    """Σ_x Σ_s Jᵀ C Cᵀ J of a depthwise-separable section in point coordinates (d [+1], d [+1]),
    float64 (module docstring); None when the moments are not exact."""
    if not mom.exact:
        return None
    C = C_next.to(torch.float64)
    W1 = sec.first.weight.to(torch.float64).flatten(1)                          # (h, d)
    h, d = W1.shape

    def bias(conv: ConvMap) -> Tensor:   # (h,): W₁ and the depthwise map have h outputs
        return torch.zeros(h, dtype=C.dtype, device=C.device) if conv.bias is None else conv.bias.to(C.dtype)

    W1a = torch.cat([W1, bias(sec.first)[:, None]], 1) if include_bias else W1   # W₁'
    L, u = sec.readout(C, include_bias)                                          # (k', h), (k',)
    K = L.T @ L
    M = W1a.T @ (K * mom.E) @ W1a
    nP, nP_out = mom.n * math.prod(mom.spatial), mom.n * mom.index.shape[1]
    share = 1.0 / math.prod(mom.spatial) if mom.mean_slot else 1.0                # ŵ_s of the mean slot
    skip = sec.skip(C, include_bias)
    A = torch.zeros(C.shape[1], d, dtype=C.dtype, device=C.device) if skip is None else skip[:, :d]   # (k', d)
    X = mom.sigma0[:, None] * (L.T @ A)                                          # (h, d)
    G = nP * (A.T @ A)
    if include_bias:
        b2 = bias(sec.depthwise)
        X = torch.cat([X, share * ((K * mom.Q) @ b2 + mom.sigma0 * (L.T @ u))[:, None]], 1)
        Ag = share * (A.T @ (L @ (mom.sigma2 * b2) + nP_out * u))                  # Σ Aᵀ g_t
        corner = share * (b2 @ (K * mom.S2) @ b2 + 2 * u @ (L @ (mom.sigma2 * b2)) + nP_out * (u @ u))
        G = torch.cat([torch.cat([G, Ag[:, None]], 1), torch.cat([Ag, corner.reshape(1)])[None]], 0)
    cross = W1a.T @ X
    return M + cross + cross.T + G
