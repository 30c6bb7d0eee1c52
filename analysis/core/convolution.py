"""Closed forms of sections made of convolutions, one elementwise activation and a pool.

A section of an ``nn.Sequential`` between two conv maps whose modules are ``[Conv] [activation]
[pool] [Conv]`` (each optional, at least one convolution or pool; any kernel, stride, padding,
dilation and groups (:func:`~.structured.dense_weight`); zero padding; max and average pools,
:class:`~intermod.analysis.core.pools.PoolMap`; Identity and Dropout skipped) maps the input
map p (d, *S) to

    z = W₁ ⋆ p + b₁ σ₁,   f = W₂ ⋆ pool(σ(z)) + b₂ σ₂      (⋆: the convolution, z (h, *S₁), f (d', *S₂))

with σ₁ (σ₂) the slot of each position where the convolution keeps the input's positions, else
the mean slot s̄ = Σ_s ŵ_s s_s (docs/models.md). The Jacobian is linear in a = σ′(z), so the
attribution of input direction j to output (t, i), A_{t,i,j} = Σ_s Ĵ_{(t,i),(s,j)} f̂_{s,j}, is
the section's linearisation applied to the single-direction map δp⁽ʲ⁾ = Q_j f̂_j (Q = C⁻¹_l, its
slot row moving the slot by δs⁽ʲ⁾ = Q_slot,j f̂_j):

    A_{·,·,j} = L ⋆ Σ_win(ā ⊙ (R_j ⋆ f̂_j + b₁ δσ₁⁽ʲ⁾)) + u₂ δσ₂⁽ʲ⁾ + c_slot δs⁽ʲ⁾_next

    L = C_dataᵀ W₂ (k', h, kernel₂),  R_j = W₁ Q_j (h, kernel₁),  u₂ = C_dataᵀ b₂

(Σ_win: the pool's window sum, ā then carrying the pool's weights, the argmax indicator or
1/|window|, for windows that tile the map; for overlapping ones Σ_e ā_{e,q} ⊙ x_{R(e,q)}, ā per window
element, :mod:`~intermod.analysis.core.pools`; δs_next: the next layer's slot, per position when P_out = P_in, else the mean). ā is σ′(z)
("gradient") or its quadrature average along the path z₀ + α (z − z₀) ("integrated"; z₀ = 0
with the slot, W₁ ⋆ p₀ + b₁ at the baseline map without it). For all j at once the first step
is one grouped convolution of the k-channel map f̂ (groups = k, h outputs per group) and the
second one convolution of the k·N maps of h channels: n·P·k·h·(|kernel₁| + k'·|kernel₂|)
multiply-adds, against P_out·k' cotangents of a backward pass over the whole map each for the
plain VJPs (and n_colours·k' for coloured ones, :mod:`~intermod.analysis.core.colouring`).
Without a first convolution or a pool, in float64 (whose convolutions have no fast CPU kernels), the
same sums run as GEMMs over (map, output position) pairs instead (:func:`_tap_gemm`:
A_{t,·,j} = L_cat X_t, X_t[(h,δ), j] = ā_{u(t,δ),h} Q_{h,j} f̂_{u(t,δ),j}, u(t,δ) the position
tap δ of t reads). E_ij = Σ_x Σ_t w_t A²_{t,i,j}, accumulated in float64.

A residual unit p + [Conv] [activation] [Conv] (ResNet blocks; ``ConvSection.residual``) adds
the identity's T_{·,j} f̂_{t,j}, T = C_dataᵀ Q_data, to A_{t,·,j} at the same position t; with a
projection shortcut or an activation after the sum (torchvision's blocks) the attribution runs
in the output's channels with both derivatives per quadrature node
(:mod:`~intermod.analysis.core.conv_post`).

**Next-layer Gram** of a section with one convolution, [activation] [Conv] or [Conv]
[activation], from per-tap σ′ moments summed in the activation pass (:mod:`~intermod.analysis.core.conv_grams`),
and of [Conv] [activation] [Conv], residual or not, from σ′ moments of pairs of positions
(:mod:`~intermod.analysis.core.two_conv_grams`), else (a pool after a first convolution, an
activation after a residual sum, a mean slot) over receptive fields
(:mod:`~intermod.analysis.core.field_grams`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .conv_post import post_attribution
from .conv_taps import convolve
from .jacobians import VJP_CHUNK_BYTES, chunk_budget
from .nodes import OUTPUT, NodeModel, default_output
from .pools import PoolMap, one_hot_kernels, pool_map, window_reads
from .structured import (
    ELEMENTWISE,
    activation_derivative,
    dense_weight,
    path_derivative,
    residual_unit,
    samples_per_chunk,
    section_body,
    skip_readout,
)


@dataclass(frozen=True)
class ConvMap:
    """x ↦ W ⋆ x (no bias) with ``weight`` (out, in, *kernel) and the module's stride, padding and
    dilation; ``bias`` (out,) or None, kept apart (it is scaled by the slot); ``const`` (out,) or
    None: an offset scaled by neither the slot nor the path (a folded batch norm's −s·μ)."""

    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    const: Tensor | None = None

    def __call__(self, x: Tensor, weight: Tensor | None = None, groups: int = 1) -> Tensor:
        """W ⋆ x for x (N, in·groups, *S); ``weight`` replaces W (same kernel geometry)."""
        w = self.weight if weight is None else weight
        return convolve(x, w, self.stride, self.padding, self.dilation, groups)

    def affine(self, x: Tensor, bias_scale: float = 1.0, weight: Tensor | None = None, groups: int = 1) -> Tensor:
        """W ⋆ x + bias_scale·b + const: the bias scales with the slot along an integrated path,
        the folded batch norm's offset never (``weight``, ``groups``: as for the call)."""
        y = self(x, weight, groups)
        if self.bias is not None:
            y = y + bias_scale * _along_channels(self.bias, y.ndim)
        return y if self.const is None else y + _along_channels(self.const, y.ndim)


@dataclass(frozen=True)
class ConvSection:
    """f = W₂ ⋆ pool(σ(W₁ ⋆ p + b₁)) + b₂ (module docstring): ``first`` / ``second`` ConvMaps or
    None (identity), ``act`` an elementwise module or None (identity), ``pool`` a
    :class:`~intermod.analysis.core.pools.PoolMap` or None. ``residual``: f = p + … (a residual unit, no pool),
    whose identity adds T = C_dataᵀ Q_data to the attribution at each position,
    A_{t,·,j} += T_{·,j} f̂_{t,j}."""

    first: ConvMap | None
    act: nn.Module | None
    second: ConvMap | None
    pool: PoolMap | None = None
    residual: bool = False
    shortcut: ConvMap | None = None   # a projection shortcut (residual; None: the identity)
    post: nn.Module | None = None     # an elementwise activation after the sum (residual)

    def preactivation(self, p: Tensor) -> Tensor:
        """z = W₁ ⋆ p + b₁ for maps p (N, d, *S)."""
        return p if self.first is None else self.first.affine(p)

    def path_start(self, ndim: int) -> Tensor | float:
        """z at the start of the integrated path with the slot (the point and every bias scaled
        to 0): the first map's unscaled offset, else 0."""
        if self.first is None or self.first.const is None:
            return 0.0
        return _along_channels(self.first.const, ndim)

    def path_weights(self, z: Tensor, z0: Tensor | float, alphas: Sequence[float], weights: Sequence[float],
                     heartbeat: Callable[[], None] | None) -> Tensor:
        """ā = Σ_q w_q σ′(z_q), z_q = z₀ + α_q (z − z₀): the derivative the linearised section
        multiplies by, averaged along the path (``path_derivative``), (N, h, *S₁); with a pool,
        Σ_q w_q ω_q ⊙ σ′(z_q) read through each window (``PoolMap.window_values``; max pooling's
        ω moves with the point), (N, h, |κ|, P_pooled)."""
        if self.pool is None:
            return path_derivative(self.act, z, z0, alphas, weights, heartbeat)
        a_bar = 0.0
        for alpha, wq in zip(alphas, weights):
            if heartbeat is not None:
                heartbeat()
            zq = z0 + alpha * (z - z0)
            a_bar = a_bar + wq * self.pool.window_values(activation_derivative(self.act, zq), self.activation(zq))
        return a_bar

    def activation(self, z: Tensor) -> Tensor:
        """σ(z) (z itself without an activation; z is not modified by an in-place one)."""
        if self.act is None:
            return z
        return self.act(z.clone() if getattr(self.act, "inplace", False) else z)

    @property
    def gram_closed(self) -> bool:
        """Whether the next-layer Gram has a closed form: one convolution (and no first
        convolution before a pool; :func:`~intermod.analysis.core.conv_grams.conv_next_layer_gram`)
        or two without a pool, residual or not
        (:func:`~intermod.analysis.core.two_conv_grams.two_conv_next_layer_gram`); not the
        identity, nor a residual unit of one convolution."""
        if self.shortcut is not None or self.post is not None:
            return False
        if self.first is not None and self.second is not None:
            return self.pool is None
        if self.residual:
            return False
        if self.first is not None:
            return self.pool is None
        return self.second is not None or self.pool is not None

    def out_spatial(self, spatial: tuple[int, ...], channels: int, like: Tensor) -> tuple[int, ...]:
        """The positions of f for inputs of ``spatial`` positions and ``channels`` channels."""
        x = torch.zeros((1, channels) + tuple(spatial), dtype=like.dtype, device=like.device)
        x = self.preactivation(x)
        if self.pool is not None:
            x = x.new_zeros(x.shape[:2] + self.pool.out_spatial(x.shape[2:]))
        return tuple((x if self.second is None else self.second(x)).shape[2:])


def _along_channels(v: Tensor, ndim: int) -> Tensor:
    """(C,) -> (1, C, 1, …) for maps of ``ndim`` axes."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.padding_mode == "zeros"


def conv_section(net: NodeModel, j: int) -> ConvSection | None:
    """The closed form of section j of ``net`` when it is [Conv [BN]] [activation] [pool]
    [Conv [BN]] between two conv maps (batch norms in eval mode folded into their convolution;
    with the slot, every bias scaled by a slot hook), or a residual unit p + [Conv [BN]]
    [activation] [Conv [BN]] (its shortcut p or a projection [Conv [BN]], optionally an
    elementwise activation after the sum: then the edges only), else None."""
    modules = conv_modules(net, j)
    if modules is None:
        return None
    mods, residual = section_body(modules)
    shortcut, post, unit = None, None, None if residual else residual_unit(modules)
    if unit is not None:                  # a projection shortcut or an activation after the sum
        mods, short_mods, post = unit
        shortcut, residual = take_conv(short_mods), True
        if short_mods:
            return None
    first, act, second = take_conv(mods), None, None
    if mods and isinstance(mods[0], ELEMENTWISE):
        act = mods.pop(0)
    pool = pool_map(mods[0]) if mods else None
    if pool is not None:
        mods.pop(0)
    second = take_conv(mods)
    if mods or first is None and second is None and pool is None or residual and pool is not None:
        return None
    if act is None and second is None and pool is None:
        first, second = None, first      # a lone convolution: W₂ = W, no σ
    if unit is not None and (first is None or second is None):
        return None
    biased = [m for pair in (first, second, shortcut) if pair is not None for m in pair if m is not None]
    if net.include_bias and any(getattr(m, "bias", None) is not None and not net.slot_hooked(m) for m in biased):
        return None
    return ConvSection(conv_map(net, first), act, conv_map(net, second), pool, residual, conv_map(net, shortcut),
                       post)


def conv_modules(net: NodeModel, j: int) -> list[nn.Module] | None:
    """The modules section j runs when it maps a conv map to a conv map (channels-first layouts
    at both ends, not the output of a custom ``output_fn``), else None."""
    modules = net.section_modules(j)
    src, dst = net.chain[j], net.chain[j + 1]
    if (modules is None or any(net.layouts[n].kind != "channels" for n in (src, dst))
            or dst == OUTPUT and net.output_fn is not default_output):
        return None
    return modules


def take_conv(mods: list[nn.Module]) -> tuple[nn.Module, nn.Module | None] | None:
    """Pop a convolution and the batch norm right after it, if any (None: no convolution)."""
    if not mods or not _is_conv(mods[0]):
        return None
    conv = mods.pop(0)
    bn = mods[0] if mods else None
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
        mods.pop(0)
        return conv, bn
    return conv, None


def conv_map(net: NodeModel, pair: tuple[nn.Module, nn.Module | None] | None) -> ConvMap | None:
    """The :class:`ConvMap` of a convolution, with a batch norm in eval mode after it folded in:
    BN(W ⋆ x + b) = (s W) ⋆ x + (s b + β) − s μ, s = γ/√(var + ε)."""
    if pair is None:
        return None
    conv, bn = pair
    param = lambda m, leaf: None if getattr(m, leaf, None) is None else net.params[net._param_name(m, leaf)]  # noqa: E731
    W, b = dense_weight(param(conv, "weight"), conv.groups), param(conv, "bias")   # groups as zero blocks
    const = None
    if bn is not None:
        mean, var = param(bn, "running_mean"), param(bn, "running_var")
        gamma, beta = param(bn, "weight"), param(bn, "bias")
        scale = (var + bn.eps).rsqrt() * (1.0 if gamma is None else gamma)
        W = W * scale.reshape((-1,) + (1,) * (W.ndim - 1))
        if b is not None or beta is not None:
            b = (0.0 if b is None else scale * b) + (0.0 if beta is None else beta)
        const = -scale * mean
    return ConvMap(W, b, conv.stride, conv.padding, conv.dilation, const)


def conv_edge_sums(sec: ConvSection, point: Tensor, baseline: Tensor | None, f_hat: Tensor, w_in: Tensor,
                   w_out: Tensor, C_next: Tensor, Q: Tensor, alphas: Sequence[float], weights: Sequence[float],
                   include_bias: bool, E: Tensor, max_memory: int,
                   heartbeat: Callable[[], None] | None = None) -> None:
    """Add Σ_x Σ_t w_t A²_{t,i,j} of a batch to E (k', k) (module docstring).

    point: (B, d, *S) the input maps; f_hat: (B, P_in, k) their basis coordinates (zero at masked
    samples); w_in (B, P_in), w_out (B, P_out): sample weights; C_next: (d'+1, k'); Q: (d+1, k)
    (or (d, k) without the slot) in the compute dtype; baseline: (d,) the path's start without the
    slot (None with it); ``heartbeat``: once per quadrature node and per chunk (cancellation)."""
    dtype = f_hat.dtype
    B, d, *S = point.shape
    nd, k = len(S), f_hat.shape[-1]
    z = sec.preactivation(point)                                          # (B, h, *S₁)
    h, S1 = z.shape[1], tuple(z.shape[2:])
    z0 = (sec.path_start(nd + 2) if baseline is None
          else sec.preactivation(_along_channels(baseline, nd + 2).expand(1, d, *S)))
    post = sec.post is not None or sec.shortcut is not None   # conv_post: derivatives per node
    a_bar = None if post else sec.path_weights(z, z0, alphas, weights, heartbeat)
    d_next = C_next.shape[0] - int(include_bias)
    C_data = C_next[:d_next].to(dtype)                                     # (d', k')
    k_next = C_data.shape[1]
    second = sec.second
    L = None if second is None else torch.einsum("ci,ch...->ih...", C_data, second.weight)
    R = None if sec.first is None else torch.einsum("hc...,cj->jh...", sec.first.weight, Q[:d]).flatten(0, 1)[:, None]
    f_map = f_hat.transpose(1, 2).reshape(B, k, *S)                       # f̂_j as channel j
    slot_drive = None
    if include_bias:                                                       # δs⁽ʲ⁾ per position, δs̄⁽ʲ⁾ per sample
        share = w_in / w_in.sum(-1, keepdim=True).clamp_min(1.0)
        per_pos = f_map * _along_channels(Q[d], nd + 2)                    # (B, k, *S)
        mean = torch.einsum("bs,bsj->bj", share, f_hat) * Q[d]             # (B, k)
        slot_drive = (per_pos, mean)
    out_width = 4 * d_next if post else 2 * k_next                         # conv_post: sum, body, σ_post′, its A
    reads = None if sec.pool is None else sec.pool.reads(S1).to(point.device)         # (|κ|, P_pooled)
    pooled = None if sec.pool is None else sec.pool.out_spatial(S1)
    folded = sec.pool.fold(a_bar, S1) if reads is not None and sec.pool.tiles else None   # (no pool with post)
    windows = 0 if reads is None or folded is not None else h * reads.numel()   # x read through every window
    per_sample = dtype.itemsize * k * (2 * h * z[0, 0].numel() + windows + out_width * w_out.shape[1])
    step = max(1, chunk_budget(max_memory, VJP_CHUNK_BYTES, f_map.device) // max(per_sample, 1))
    tap_gemm = (dtype == torch.float64 and sec.first is None and sec.pool is None and second is not None
                and not sec.residual and _slot_rules_agree(second, S, f_hat.shape[1]))
    T = skip_readout(C_next, include_bias).to(dtype) @ Q if sec.residual and not post else None   # the identity's term
    S2 = None if slot_drive is None else sec.out_spatial(tuple(S), d, point)   # where the output's biases sit
    for start in range(0, B, step):
        if heartbeat is not None:
            heartbeat()
        sl = slice(start, start + step)
        N = f_map[sl].shape[0]
        if tap_gemm:
            u = drive = None
            if slot_drive is not None:
                u = C_next[d_next].to(dtype) + (0.0 if second.bias is None else C_data.T @ second.bias)
                drive = (slot_drive[0][sl].flatten(2) if w_out.shape[1] == f_hat.shape[1]
                         else slot_drive[1][sl][..., None])                # per position, or the mean slot
            _tap_gemm(second, L, Q[:d], a_bar[sl], f_map[sl], u, drive, w_out[sl], E, max_memory)
            continue
        if R is not None:                                                  # R_j ⋆ f̂_j: (N, k, h, *S₁)
            zj = sec.first(f_map[sl], R, groups=k).view(N, k, h, *S1)
        else:
            zj = f_map[sl][:, :, None] * Q[:d].T.reshape((1, k, d) + (1,) * nd)
        if slot_drive is not None and sec.first is not None and sec.first.bias is not None:
            zj = zj + sec.first.bias.reshape((1, 1, h) + (1,) * nd) * _drive(slot_drive, sl, S, S1)[:, :, None]
        drive = None if slot_drive is None else _drive(slot_drive, sl, S, S2)
        if post:
            y = post_attribution(sec, point[sl], baseline, z[sl], z0, zj, f_map[sl], Q[:d], drive, C_data, alphas,
                                 weights)
        else:
            if sec.pool is None:
                x = (zj * a_bar[sl][:, None]).reshape(N * k, h, *S1)
            elif folded is not None:                                       # windows that tile the map
                x = sec.pool.window_sum((zj * folded[sl][:, None]).reshape(N * k, h, *S1))
            else:                                                          # Σ_e ā_{e,q} ⊙ x_{R(e,q)}
                x = (zj.reshape(N, k, h, -1)[..., reads] * a_bar[sl][:, None]).sum(3).reshape(N * k, h, *pooled)
            y = torch.einsum("ci,nc...->ni...", C_data, x) if second is None else second(x, L)
            y = y.reshape(N, k, k_next, -1)                                 # (N, k, k', P_out)
            if drive is not None and second is not None and second.bias is not None:
                y = y + (C_data.T @ second.bias)[None, None, :, None] * drive.reshape(N, k, 1, -1)
            if T is not None:                                              # p + …: same positions, P_out = P_in
                y = y + T.T[None, :, :, None] * f_map[sl].reshape(N, k, 1, -1)
        if slot_drive is not None:
            flat = (slot_drive[0][sl].reshape(N, k, -1) if y.shape[-1] == f_hat.shape[1]
                    else slot_drive[1][sl][..., None])                     # the next slot: spread_slot's rule
            y = y + C_next[d_next].to(dtype)[None, None, :, None] * flat[:, :, None, :]
        y = y * w_out[sl][:, None, None, :]
        E += y.square().sum((0, 3)).T.to(torch.float64)


def _slot_rules_agree(conv: ConvMap, S: Sequence[int], P_in: int) -> bool:
    """Whether the convolution keeps the input's positions exactly when it keeps their number
    (its bias then follows the next slot's rule: per position, or the mean slot)."""
    probe = torch.zeros((1, conv.weight.shape[1]) + tuple(S), dtype=conv.weight.dtype, device=conv.weight.device)
    out = tuple(conv(probe).shape[2:])
    return (out == tuple(S)) == (math.prod(out) == P_in)


def _tap_gemm(conv: ConvMap, L: Tensor, Q: Tensor, a_bar: Tensor, f_map: Tensor, u: Tensor | None,
              drive: Tensor | None, w_out: Tensor, E: Tensor, max_memory: int) -> None:
    """E += Σ_(x,t) w_t (L_cat X_t)² for an [activation] [Conv] section, one GEMM per chunk of
    (map, output position) pairs: X[(h,δ), j] = ā_{u(t,δ),h} Q_{h,j} f̂_{u(t,δ),j} (u(t,δ): the
    position tap δ of output t reads) and L_cat = L (k', h·|kernel|), plus the slot row
    [u; δs⁽ʲ⁾ at t] when there is one. a_bar: (N, h, *S); f_map: (N, k, *S); drive: (N, k, P_out)
    or (N, k, 1) (the mean slot); w_out: (N, P_out)."""
    A = _tap_values(conv, a_bar)                                            # (N, h, T, P_out)
    F_ = _tap_values(conv, f_map)                                           # (N, k, T, P_out)
    N, h, T, P2 = A.shape
    k, k_next = f_map.shape[1], L.shape[0]
    A = A.permute(1, 2, 0, 3).reshape(h, T, N * P2)
    F_ = F_.permute(2, 0, 3, 1).reshape(T, N * P2, k)
    Lc = L.reshape(k_next, h * T)
    D = None
    if u is not None:
        Lc = torch.cat([Lc, u[:, None]], 1)
        D = drive.expand(N, k, P2).permute(0, 2, 1).reshape(N * P2, k)
    w = w_out.reshape(-1)
    rows = Lc.shape[1]
    step = samples_per_chunk(f_map.dtype.itemsize * (rows * k + k_next * k), max_memory, f_map.device)
    for start in range(0, N * P2, step):
        c = slice(start, start + step)
        n = w[c].shape[0]
        X = torch.empty(rows, n, k, dtype=f_map.dtype, device=f_map.device)
        main = X[:h * T].view(h, T, n, k)
        torch.mul(A[:, :, c, None], F_[None, :, c, :], out=main)
        main.mul_(Q[:, None, None, :])
        if D is not None:
            X[-1] = D[c]
        Y = (Lc @ X.view(rows, n * k)).view(k_next, n, k)
        Y.mul_(w[c][None, :, None])
        E += Y.square_().sum(1).to(torch.float64)


def _tap_values(conv: ConvMap, x: Tensor) -> Tensor:
    """x (N, C, *S) read through every tap of ``conv``: (N, C, n_taps, P_out), 0 where a tap
    reads the padding (a convolution with the one-hot kernels e_δ)."""
    N, C = x.shape[:2]
    E = tap_kernels(conv).to(x)
    return conv(x.reshape((N * C, 1) + tuple(x.shape[2:])), E).reshape(N, C, E.shape[0], -1)


def _drive(slot_drive: tuple[Tensor, Tensor], sl: slice, S: Sequence[int], S_mod: Sequence[int]) -> Tensor:
    """The slot derivative driving a bias at a module of positions ``S_mod``: per position when
    they are the input's ``S`` ((N, k, *S)), else the mean slot's ((N, k, 1, …))."""
    per_pos, mean = slot_drive
    if tuple(S_mod) == tuple(S):
        return per_pos[sl]
    return mean[sl].reshape(mean[sl].shape + (1,) * len(S_mod))


def read_index(conv: ConvMap, spatial: Sequence[int]) -> Tensor:
    """(n_taps, P_out) int64: the flat index of the input position that each tap of each output
    position reads on maps of ``spatial`` positions, −1 where it reads the padding."""
    return window_reads(conv.weight.shape[2:], conv.stride, conv.padding, conv.dilation, spatial)


def tap_kernels(conv: ConvMap) -> Tensor:
    """(n_taps, 1, *kernel) the one-hot kernels e_δ of ``conv``'s taps, float64 on the CPU."""
    return one_hot_kernels(conv.weight.shape[2:])


def tap_masks(conv: ConvMap, spatial: tuple[int, ...]) -> Tensor:
    """(n_taps, P_in) m_δ(s) ∈ {0, 1}: whether tap δ of some output position reads position s."""
    idx = read_index(conv, spatial)
    hits = torch.zeros(len(idx), math.prod(spatial) + 1, dtype=torch.float64)
    hits.scatter_(1, torch.where(idx >= 0, idx, hits.shape[1] - 1), 1.0)     # the padding: the last column
    return hits[:, :-1]
