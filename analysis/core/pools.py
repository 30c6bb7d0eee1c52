"""Max and average pooling as the linear map it is at a point, for the conv closed forms.

A pool with kernel κ, stride σ and zero/−∞ padding ρ reads, for pooled position q, the window
of input positions R(e, q) = σ q + e − ρ (e ∈ κ; −1 where it falls in the padding,
:func:`window_reads`). At a point x (N, C, *S) it is linear in x, channel by channel:

    y_q = Σ_e ω_{e,q} x_{R(e,q)},   ω_{e,q} = 1[e = argmax_e′ x_{R(e′,q)}]   (max; the element
                                                  autograd routes the gradient to)
                                    ω_{e,q} = 1[R(e,q) ≥ 0] / D_q            (average; D_q = |κ|
                                                  with ``count_include_pad``, else the window's
                                                  positions on the map)

(:meth:`PoolMap.window_weights`), ω kept per window element: windows that overlap (ResNet's
stem, 3 × 3 stride 2 padding 1) read some positions twice. When they tile the map (κ = σ, no
padding) each position lies in at most one window, and ω folds onto the positions
(:meth:`PoolMap.fold`): the pool's linear map is then a window sum (:meth:`PoolMap.window_sum`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv_taps import convolve

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def one_hot_kernels(kernel: Sequence[int]) -> Tensor:
    """(|κ|, 1, *κ) the one-hot kernels e_δ of a kernel's taps, float64 on the CPU."""
    n_taps = math.prod(kernel)
    return torch.eye(n_taps, dtype=torch.float64).reshape((n_taps, 1) + tuple(kernel))


def window_reads(kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int] | str,
                 dilation: Sequence[int], spatial: Sequence[int]) -> Tensor:
    """(|κ|, P_out) int64 on the CPU: the flat index of the input position that each tap of each
    output position reads on maps of ``spatial`` positions, −1 in the padding (the convolution of
    the map of indices + 1 with the one-hot kernels e_δ). Computed once per geometry: the closed
    forms ask for it every batch and quadrature node; callers must not modify it."""
    tup = lambda v: v if isinstance(v, str) else tuple(int(x) for x in v)   # noqa: E731
    return _window_reads(tup(kernel), tup(stride), tup(padding), tup(dilation), tup(spatial))


@functools.lru_cache(maxsize=256)
def _window_reads(kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...] | str,
                  dilation: tuple[int, ...], spatial: tuple[int, ...]) -> Tensor:
    index = torch.arange(1, math.prod(spatial) + 1, dtype=torch.float64).reshape((1, 1) + spatial)
    out = convolve(index, one_hot_kernels(kernel), stride, padding, dilation)
    return out.flatten(2)[0].round().long() - 1


def grid_coords(index: Tensor, shape: Sequence[int]) -> Tensor:
    """(…, nd) coordinates of flat indices on a grid of ``shape`` (row-major)."""
    return torch.stack(torch.unravel_index(index, tuple(shape)), -1)


def grid_index(coords: Tensor, shape: Sequence[int]) -> Tensor:
    """Flat indices of (…, nd) coordinates on a grid of ``shape`` (row-major; the inverse of
    :func:`grid_coords`)."""
    flat = torch.zeros(coords.shape[:-1], dtype=torch.int64)
    for axis, n in enumerate(shape):
        flat = flat * n + coords[..., axis]
    return flat


@dataclass(frozen=True)
class PoolMap:
    """Max or average pooling with ``kernel``, ``stride`` and ``padding`` (dilation 1, floor mode;
    module docstring)."""

    kind: str
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    count_include_pad: bool = True

    @property
    def tiles(self) -> bool:
        """Whether the windows tile the map (kernel = stride, no padding): each input position in
        at most one window."""
        return self.kernel == self.stride and not any(self.padding)

    def fold(self, w: Tensor, spatial: Sequence[int]) -> Tensor:
        """w (N, C, |κ|, P_pooled) moved onto the input's positions (N, C, *spatial), 0 outside
        every window; windows that tile the map, so no position takes two values."""
        R = self.reads(spatial).to(w.device)
        out = w.new_zeros(w.shape[:2] + (math.prod(spatial),))
        out[:, :, R.flatten()] = w.flatten(2)
        return out.view(w.shape[:2] + tuple(spatial))

    def window_sum(self, x: Tensor) -> Tensor:
        """Σ over each window of x (N, C, *S) -> (N, C, *S_pooled); windows that tile the map."""
        return _AVG_POOL[len(self.kernel)](x, self.kernel) * math.prod(self.kernel)

    def out_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The pooled map's positions: ⌊(n + 2ρ − κ)/σ⌋ + 1 per axis."""
        return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(spatial, self.kernel, self.stride, self.padding))

    def reads(self, spatial: Sequence[int]) -> Tensor:
        """R (|κ|, P_pooled): the input position element e of window q reads, −1 in the padding."""
        return window_reads(self.kernel, self.stride, self.padding, (1,) * len(self.kernel), spatial)

    def window_values(self, a: Tensor, y: Tensor) -> Tensor:
        """w_{e,q} = ω_{e,q} ⊙ a_{R(e,q)} (N, C, |κ|, P_pooled): a (N, C, *S) read through the
        pool's linear map at its input y (N, C, *S), element by element of every window (0 in
        the padding)."""
        R = self.reads(y.shape[2:]).to(y.device)
        return self.window_weights(y, R) * a.flatten(2)[:, :, R.clamp_min(0)]

    def window_weights(self, y: Tensor, R: Tensor) -> Tensor:
        """ω (N, C, |κ|, P_pooled) at the pool's input y (N, C, *S), in y's dtype (broadcast over
        N and C for an average pool): ∂(pool(y))_q / ∂y_{R(e,q)}, 0 in the padding; R = ``reads``."""
        if self.kind == "avg":
            inside = (R >= 0).to(y.dtype)
            divisor = math.prod(self.kernel) if self.count_include_pad else inside.sum(0)
            return (inside / divisor)[None, None]
        _, idx = _MAX_POOL[len(self.kernel)](y, self.kernel, self.stride, self.padding, return_indices=True)
        return (R[None, None] == idx.flatten(2)[:, :, None, :]).to(y.dtype)


def pool_map(m: nn.Module) -> PoolMap | None:
    """A :class:`PoolMap` for a max or average pool (dilation 1, floor mode, no divisor override,
    not returning indices), else None."""
    pools = {nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2), nn.MaxPool3d: ("max", 3),
             nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2), nn.AvgPool3d: ("avg", 3)}
    if type(m) not in pools:
        return None
    kind, nd = pools[type(m)]
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd   # noqa: E731
    kernel, stride, padding = tup(m.kernel_size), tup(m.stride or m.kernel_size), tup(m.padding)
    plain = not m.ceil_mode and (tup(m.dilation) == (1,) * nd and not m.return_indices if kind == "max"
                                 else getattr(m, "divisor_override", None) is None)
    if not plain or math.prod(kernel) == 1 and math.prod(stride) == 1:
        return None
    return PoolMap(kind, kernel, stride, padding, getattr(m, "count_include_pad", True))
