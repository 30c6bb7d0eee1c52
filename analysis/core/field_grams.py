"""Next-layer Jacobian Grams of conv sections over their receptive fields.

A section [Conv [BN]] [activation] [pool] [Conv [BN]] (a first convolution, then a max or
average pool, its windows tiling the map or overlapping, or a second convolution or both), alone or, without the pool, in a
residual unit with the identity or a projection shortcut and optionally an activation after the
sum (torchvision's ResNet blocks, :mod:`~intermod.analysis.core.conv_post`), maps the input map
p (d, positions s) to

    f = σ_post(W₂ ⋆ pool(σ(z)) + b₂ s + S(p)),   z = W₁ ⋆ p + b₁ s,   S(p) = 0, p or W_p ⋆ p + b_p s

(σ_post the identity without an activation after the sum). With σ_post its Gram has no closed
form (the σ′ moments it needs are of fourth order), nor with a mean slot
(:mod:`~intermod.analysis.core.two_conv_grams`) or a pool after the first convolution. The pool
and the second convolution act as one map with taps τ = (δ₂, window element) and weights
W₂[δ₂] (the identity without a second convolution); at a point the pool is linear, and tap τ
reads w_{e,q} = ω_{e,q} ⊙ a_{R(e,q)}, a = σ′(z), with ω the argmax indicator or the average's
weight of element e of window q (``PoolMap.window_values``, :func:`second_taps`).

Output position t reads the input only on its receptive field, the positions o(t) + r for a
fixed set of offsets r (o(t) = stride·t: a translation; checked on the read indices, else the
coloured VJPs take the section). So the gradient of f̂_{t,i} = C_iᵀ f_t + c_i s'_t at the field's
positions is a chain of small products per sample and output position, with
e = a_post,t ⊙ C_i (d'), a_post = σ_post′ at t:

    m_τ = a_{u(t,τ)} ⊙ W₂[τ]ᵀ e                        (h; 0 where tap τ of t reads the padding)
    ĝ(o(t) + r) = Σ_{(τ,δ₁) → r} W₁[δ₁]ᵀ m_τ + Σ_{δ_p → r} W_p[δ_p]ᵀ e        (data, d)

and M = Σ_x Σ_{t,i} Σ_r ĝ ĝᵀ over the offsets whose position lies on the map.

The slot coordinate (docs/models.md, "The bias slot when positions change"): a bias on a map that
keeps the input's positions is driven by the slot of its own position, so ĝ's slot entry gets
m_τ·b₁ at s = u(t, τ) (middle map kept) and eᵀ(b₂ + b_p) + c_i at s = t (output kept). The
others, and the next slot where the output moves the positions, are driven by the mean slot
s̄ = Σ_s ŵ_s s_s (ŵ = 1/P_in): their γ reaches every input position as ŵ γ, on the field's rows
and, for the P_in − |field(t)| positions outside it, as the slot–slot term ŵ² γ² (P_in − |field(t)|).

All of it is linear in v = (m_τ for every τ, e, c_i): ĝ(o(t) + r) = vᵀ K_r. So the maps and
output positions are summed first, V_c = Σ v vᵀ over the outputs of each class c (the same offsets
on the map: the interior, the bands along the edges), and M = Σ_c Σ_{r on the map} K_rᵀ V_c K_r:
n·P_out·k'·(d'·n_τ·h + (n_τ·h + d' + 1)²) multiply-adds, against n_colours·k' backward passes over
the whole map for the coloured VJPs (:mod:`~intermod.analysis.core.colouring`). Every sample
weight must be 1 (a masked batch takes the coloured VJPs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .convolution import ConvSection, read_index
from .gram import gram
from .jacobians import chunk_size
from .pools import grid_coords
from .structured import activation_derivative
from .two_conv_grams import spatial_after


def field_section(sec: ConvSection | None) -> bool:
    """Whether this module sums ``sec``: a first convolution, then a second one or a pool or both."""
    return sec is not None and sec.first is not None and (sec.second is not None or sec.pool is not None)


def second_taps(sec: ConvSection, mid: tuple[int, ...]) -> tuple[Tensor, Tensor, tuple[int, ...], tuple[int, ...]]:
    """The map from the activation (positions ``mid``) to the output as taps τ = (δ₂, window
    element): (the middle position each tap of each output reads (n_τ, P_out), −1 in the
    padding; the row of its value in the tap table of :func:`field_gram` (the activation's
    positions, or a pool's window elements e·P_pooled + q); the output's positions; the stride of
    the output over the middle map)."""
    idx, rows, out, stride = None, None, mid, (1,) * len(mid)
    if sec.pool is not None:
        idx = sec.pool.reads(mid)                                                    # (|κ|, P_pooled)
        rows = torch.arange(idx.numel()).view(idx.shape)
        out, stride = sec.pool.out_spatial(mid), sec.pool.stride
    if sec.second is not None:
        idx2 = read_index(sec.second, out)
        if idx is not None:                                          # δ₂ major, then the window
            on = idx2[:, None] >= 0
            idx = torch.where(on, idx[:, idx2.clamp_min(0)].transpose(0, 1), -1).flatten(0, 1)
            rows = torch.where(on, rows[:, idx2.clamp_min(0)].transpose(0, 1), -1).flatten(0, 1)
        else:
            idx = rows = idx2
        stride = tuple(a * b for a, b in zip(stride, sec.second.stride))
        out = spatial_after(sec.second, (sec.first.weight.shape[0],) + out)
    return idx, rows, out, stride


def second_weight(sec: ConvSection, n_taps: int) -> Tensor:
    """W₂' (d', h, n_τ): the second convolution's taps, each repeated over the pool's window (the
    identity without a second convolution)."""
    h = sec.first.weight.shape[0]
    if sec.second is None:
        return torch.eye(h, dtype=sec.first.weight.dtype, device=sec.first.weight.device)[:, :, None].expand(
            h, h, n_taps)
    W2 = sec.second.weight.flatten(2)
    return W2.repeat_interleave(n_taps // W2.shape[2], dim=2)


@dataclass(frozen=True)
class Fields:
    """The receptive fields of a section's output positions on input maps of ``spatial``
    positions: R offsets r (slot R collects taps that never land on the map)."""

    spatial: tuple[int, ...]
    mid_kept: bool        # with the slot, the middle map keeps the input's positions: b₁ driven per position
    out_kept: bool        # with the slot, the output keeps them: b₂, b_p and the next slot per position
    mid: Tensor           # (n_τ, P_out) the row of the tap table tap τ of t reads (second_taps; clamped)
    mid_ok: Tensor        # (n_τ, P_out) that position is on the middle map
    first: Tensor         # (n_τ, n₁) the offset of each pair of taps (τ, δ₁)
    virtual: Tensor       # (n_τ,) the offset of u(t, τ) itself (b₁'s slot tap; mid_kept), else empty
    short: Tensor         # (n_p,) the offset of each shortcut tap (identity: one), empty without one
    own: int              # the offset of s = t (out_kept), else R
    patterns: Tensor      # (n_classes, R) the offsets whose position o(t) + r lies on the map, per class
    members: list[Tensor]  # the output positions t of each class

    @property
    def R(self) -> int:
        return int(self.patterns.shape[1])


def _offsets(reads: Tensor, base: Tensor, spatial: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
    """(offsets (n, ndim), used (n,)) of read indices (n, P_out) (−1: the padding) relative to
    base (P_out, ndim), or None when an offset varies with t."""
    ok = reads >= 0
    delta = grid_coords(reads.clamp_min(0), spatial) - base
    ref = delta[torch.arange(len(reads)), ok.to(torch.int8).argmax(1)]
    if bool((ok[..., None] & (delta != ref[:, None])).any()):
        return None
    return ref, ok.any(1)


def receptive_fields(sec: ConvSection, in_shape: tuple[int, ...], include_bias: bool) -> Fields | None:
    """The :class:`Fields` of a two-convolution section (:func:`field_section`) on input maps of
    ``in_shape`` (channels, *spatial), or None where this module does not apply (an offset that
    is not a translation, a shortcut that reads elsewhere)."""
    spatial = tuple(in_shape[1:])
    mid_sp = spatial_after(sec.first, in_shape)
    idx2, rows2, out_sp, stride2 = second_taps(sec, mid_sp)                         # (n_τ, P_out)
    idx1 = read_index(sec.first, spatial)                                          # (n₁, P₁)
    n1, n2, P_out = len(idx1), len(idx2), idx2.shape[1]
    stride = torch.tensor([a * b for a, b in zip(sec.first.stride, stride2)])
    base = grid_coords(torch.arange(P_out), out_sp) * stride
    reads = torch.where(idx2[None] >= 0, idx1[:, idx2.clamp_min(0)], -1).transpose(0, 1).flatten(0, 1)
    groups = [reads]
    if sec.residual and sec.shortcut is None:
        if out_sp != spatial:
            return None
        groups.append(torch.arange(P_out)[None])
    elif sec.shortcut is not None:
        short = read_index(sec.shortcut, spatial)
        if short.shape[1] != P_out:
            return None
        groups.append(short)
    mid_kept, out_kept = include_bias and mid_sp == spatial, include_bias and out_sp == spatial
    if mid_kept:
        groups.append(idx2)                                         # b₁'s slot tap
    if out_kept:
        groups.append(torch.arange(P_out)[None])                   # s = t
    found = [_offsets(g, base, spatial) for g in groups]
    if any(f is None for f in found):
        return None
    offs = torch.cat([f[0] for f in found])
    used = torch.cat([f[1] for f in found])
    table, inverse = torch.unique(offs[used], dim=0, return_inverse=True)
    R = len(table)
    slot = torch.full((len(offs),), R, dtype=torch.int64)
    slot[used] = inverse
    sizes = torch.tensor(spatial)
    pos = base[:, None] + table[None]                               # (P_out, R, ndim)
    on_map = ((pos >= 0) & (pos < sizes)).all(-1)
    parts = list(slot.split([len(g) for g in groups]))
    first = parts.pop(0).view(n2, n1)
    short = parts.pop(0) if sec.residual else torch.zeros(0, dtype=torch.int64)
    virtual = parts.pop(0) if mid_kept else torch.zeros(0, dtype=torch.int64)
    own = int(parts.pop(0)) if out_kept else R
    patterns, classes = torch.unique(on_map, dim=0, return_inverse=True)
    members = [(classes == c).nonzero().view(-1) for c in range(len(patterns))]
    return Fields(spatial, mid_kept, out_kept, rows2.clamp_min(0), idx2 >= 0, first, virtual, short, own, patterns,
                  members)


def field_map(sec: ConvSection, fields: Fields, include_bias: bool, dtype: torch.dtype) -> Tensor:
    """K (n_τ·h + d' [+1], R, d [+1]) with ĝ(o(t) + r) = vᵀ K[:, r] for v = (m_τ for every τ,
    e [, c_i]) (module docstring): the W₁[δ₁] blocks at the offset of each pair of taps (τ, δ₁), the
    shortcut's at its taps', and the slot column: b₁ at u(t, τ) where the middle map keeps the
    positions, b₂ + b_p and c_i at s = t where the output does, and the mean slot's share
    ŵ vᵀ k_γ at every offset (:func:`slot_drive`)."""
    W1, dev = sec.first.weight.to(dtype).flatten(2), sec.first.weight.device                     # (h, d, n₁)
    h, d, n1 = W1.shape
    d_out, n2, R = _width(sec), fields.first.shape[0], fields.R
    aug = int(include_bias)
    K = torch.zeros(n2 * h + d_out + aug, R + 1, d + aug, dtype=dtype, device=dev)
    for d2 in range(n2):
        K[d2 * h:(d2 + 1) * h, :, :d].index_add_(1, fields.first[d2].to(dev), W1.permute(0, 2, 1))
    e = slice(n2 * h, n2 * h + d_out)
    if sec.residual:
        Wp = (torch.eye(d, dtype=dtype, device=dev)[:, :, None] if sec.shortcut is None
              else sec.shortcut.weight.to(dtype).flatten(2))                                      # (d', d, n_p)
        K[e, :, :d].index_add_(1, fields.short.to(dev), Wp.permute(0, 2, 1))
    if include_bias:
        if fields.out_kept:
            K[e, fields.own, d] = _output_bias(sec, dtype)
            K[-1, fields.own, d] = 1.0
        if fields.mid_kept and sec.first.bias is not None:
            K[:n2 * h, :, d].view(n2, h, R + 1)[torch.arange(n2, device=dev), :, fields.virtual.to(dev)] = \
                sec.first.bias.to(dtype)
        K[:, :, d] += slot_drive(sec, fields, dtype)[:, None] / math.prod(fields.spatial)
    return K[:, :R]


def _width(sec: ConvSection) -> int:
    """d': the output's channels."""
    return (sec.first if sec.second is None else sec.second).weight.shape[0]


def _output_bias(sec: ConvSection, dtype: torch.dtype) -> Tensor:
    """b₂ + b_p (d'): the biases added at the output's positions."""
    b = torch.zeros(_width(sec), dtype=dtype, device=sec.first.weight.device)
    for conv in (sec.second, sec.shortcut):
        if conv is not None and conv.bias is not None:
            b = b + conv.bias.to(dtype)
    return b


def slot_drive(sec: ConvSection, fields: Fields, dtype: torch.dtype) -> Tensor:
    """k_γ (n₂·h + d' + 1) with γ = vᵀ k_γ the derivative by the mean slot: b₁ at every tap of the
    second convolution where the middle map moves the positions, b₂ + b_p and 1 (the next slot's
    c_i) where the output does; 0 where they are driven per position."""
    dev = sec.first.weight.device
    h, n2 = sec.first.weight.shape[0], fields.first.shape[0]
    b1 = sec.first.bias
    b1 = torch.zeros(h, dtype=dtype, device=dev) if b1 is None or fields.mid_kept else b1.to(dtype)
    out = torch.cat([_output_bias(sec, dtype), torch.ones(1, dtype=dtype, device=dev)])
    return torch.cat([b1.repeat(n2), out * (not fields.out_kept)])


@dataclass
class FieldSums:
    """V_c = Σ v vᵀ (n_classes, D, D) float64 of a section on maps of one size, summed over the
    batches, with what every batch's v needs: C_next in the compute dtype, W₂' (d', n_τ·h), the
    middle position of each tap and whether it is on the map (P_out, n_τ), on the device."""

    fields: Fields
    include_bias: bool
    C: Tensor
    W2: Tensor
    mid: Tensor
    mid_ok: Tensor
    V: Tensor


def field_sums(sec: ConvSection, fields: Fields, C_next: Tensor, include_bias: bool, dtype: torch.dtype
               ) -> FieldSums:
    """Empty :class:`FieldSums` of ``sec`` on maps whose fields are ``fields``."""
    dev = sec.first.weight.device
    h, d_out, n2 = sec.first.weight.shape[0], _width(sec), fields.first.shape[0]
    D = n2 * h + d_out + int(include_bias)
    W2 = second_weight(sec, n2).to(dtype).permute(0, 2, 1).reshape(d_out, n2 * h)
    return FieldSums(fields, include_bias, C_next.to(device=dev, dtype=dtype), W2, fields.mid.T.to(dev),
                     fields.mid_ok.T.to(device=dev, dtype=dtype),
                     torch.zeros(len(fields.patterns), D, D, dtype=torch.float64, device=dev))


def field_gram(sec: ConvSection, sums: FieldSums, point: Tensor, max_memory: int) -> None:
    """Add a batch of input maps point (B, d, *S), every sample weight 1, to V_c = Σ v vᵀ over
    the maps and the output positions of each class c (those whose field has the same offsets on
    the map, ``Fields.members``; module docstring); :func:`field_total` makes the Gram."""
    dt, dev, fields = point.dtype, point.device, sums.fields
    B = point.shape[0]
    z = sec.preactivation(point)
    a = activation_derivative(sec.act, z)
    if sec.pool is not None:                                         # a read through the pool's windows
        a = sec.pool.window_values(a, sec.activation(z))
    a = a.flatten(2).transpose(1, 2)                                                   # (B, P₁ or |κ|·P_pooled, h)
    h, (d_out, n2h) = a.shape[2], sums.W2.shape
    if sec.post is None:
        a_post = torch.ones(B, len(sums.mid), d_out, dtype=dt, device=dev)
    else:
        y = sec.second.affine(sec.activation(z)) + (point if sec.shortcut is None else sec.shortcut.affine(point))
        a_post = activation_derivative(sec.post, y).flatten(2).transpose(1, 2)        # (B, P_out, d')
    C_data, k, D = sums.C[:d_out], sums.C.shape[1], sums.V.shape[1]
    step = chunk_size(B * len(sums.mid), k * 2 * D, dt, max_memory, dev)
    for c, ts in enumerate(fields.members):
        ts = ts.to(dev)
        for lo in range(0, B * len(ts), step):
            items = torch.arange(lo, min(lo + step, B * len(ts)), device=dev)
            b, t = items // len(ts), ts[items % len(ts)]
            v = torch.empty(len(items), k, D, dtype=dt, device=dev)
            e = torch.mul(a_post[b, t][:, None, :], C_data.T[None], out=v[..., n2h:n2h + d_out])
            m = torch.matmul(e, sums.W2).view(len(items), k, -1, h)
            torch.mul(m, (a[b[:, None], sums.mid[t]] * sums.mid_ok[t][..., None])[:, None],
                      out=v[..., :n2h].view(m.shape))
            if sums.include_bias:
                v[..., -1] = sums.C[d_out]
            sums.V[c] += gram(v.view(-1, D).to(torch.float64))


def field_total(sec: ConvSection, sums: FieldSums) -> Tensor:
    """Σ_x Σ_{t,i} Σ_s ĝ ĝᵀ (d [+1], d [+1]) float64 from the summed V_c (module docstring):
    M = Σ_c Σ_{r on the map} K_rᵀ V_c K_r (+ ŵ² (P_in − |field|) k_γᵀ V_c k_γ with a mean slot)."""
    fields, V = sums.fields, sums.V
    K = field_map(sec, fields, sums.include_bias, torch.float64)                      # (D, R, d [+1])
    patterns = fields.patterns.to(device=V.device, dtype=torch.float64)
    M = torch.einsum("cr,arx,cary->xy", patterns, K, torch.einsum("cab,brx->carx", V, K))
    if sums.include_bias and not (fields.mid_kept and fields.out_kept):
        d, P_in = M.shape[0] - 1, math.prod(fields.spatial)
        k_gamma = slot_drive(sec, fields, torch.float64)
        M[d, d] += (P_in - patterns.sum(1)) @ torch.einsum("a,cab,b->c", k_gamma, V, k_gamma) / P_in ** 2
    return M
