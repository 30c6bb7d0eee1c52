"""Convolutions of small maps as one dense GEMM, for float64 on the CPU.

A convolution without bias is linear in its input: y_flat = x_flat D, with D the
(C_in·S, C_out·U) matrix (S input and U output positions) whose entry ((c, s), (o, u)) is
W[o, c, t] where s = stride·u + dilation·t − padding for the tap t that links them (zero where
none does). One GEMM with D does S/T times the convolution's multiply-adds (T: the kernel's
taps), so on maps of a few positions it does about as many or fewer, at the float64 matmul's
rate instead of that of torch's float64 CPU convolution, which has no oneDNN kernel (8 GFLOP/s
on 2×2 maps of 128 channels). Measured against torch (2 cores, 3×3 kernels, 64–512 maps,
2026-12-07): 2×2 maps 10–14× as fast (forward) and 16–20× (input gradient), 4×4 maps 1.5–3.2×
and 2.0–4.4×, 8×8 maps 0.3–0.9× (slower). So ungrouped float64 CPU convolutions whose input has
S ≤ 2T positions and whose D fits in ``DENSE_MAX_BYTES`` take it (:func:`by_dense`), in ResNets
the last stages' 2×2 and 4×4 maps. The input gradient is gy_flat Dᵀ: an autograd Function, so
passes that record a graph take it too, batched backward passes (``is_grads_batched``) included.

D holds exactly the kernel's weights (placed by index, never computed), built once per weight,
map size and geometry and kept while the weight lives (:func:`dense_matrix`).
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.utils import _ntuple

DENSE_MAX_BYTES = 32 << 20      # one D; past this the GEMM streams D through memory
_CACHE_BYTES = 256 << 20        # all cached D together
_cache: dict[tuple, tuple[weakref.ref, Tensor, tuple[int, ...]]] = {}
_lock = threading.Lock()


def conv_pads(padding: int | tuple[int, ...] | str, kernel: tuple[int, ...], dilation: tuple[int, ...]
              ) -> list[tuple[int, int]]:
    """(before, after) per spatial axis: ints pad both sides; "valid" none; "same" pads
    δ·(k − 1) in all, the odd one after (as torch does)."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    return [(p, p) for p in _ntuple(len(kernel))(padding)]


def output_size(spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
                dilation: tuple[int, ...], pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """The output map's size of a convolution with these zero pads (before, after) per axis."""
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1
                 for n, k, s, d, (lo, hi) in zip(spatial, kernel, stride, dilation, pads))


def by_dense(x: Tensor, weight: Tensor, groups: int, stride: tuple[int, ...], padding: Any,
             dilation: tuple[int, ...]) -> bool:
    """Ungrouped, float64, on the CPU, no gradient of the weight, S ≤ 2T input positions and D
    of at most ``DENSE_MAX_BYTES`` (module docstring)."""
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor) and groups == 1 and x.ndim == weight.ndim > 2
            and x.dtype == weight.dtype == torch.float64 and x.device.type == weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and weight.requires_grad)):
        return False
    kernel, spatial = tuple(weight.shape[2:]), tuple(x.shape[2:])
    out = output_size(spatial, kernel, stride, dilation, conv_pads(padding, kernel, dilation))
    S, T, U = math.prod(spatial), math.prod(kernel), math.prod(out)
    return (U > 0 and S <= 2 * T
            and weight.shape[1] * S * weight.shape[0] * U * weight.element_size() <= DENSE_MAX_BYTES)


def dense_conv(x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: Any,
               dilation: tuple[int, ...]) -> Tensor:
    """``F.conv{1,2,3}d(x, weight, None, stride, padding, dilation)`` by one GEMM with D
    (differentiable in x)."""
    D, out = dense_matrix(weight, tuple(x.shape[2:]), stride, padding, dilation)
    shape = (x.shape[0], weight.shape[0]) + out
    if torch.is_grad_enabled() and x.requires_grad:
        return _DenseConv.apply(x, D, shape)
    return (x.reshape(x.shape[0], -1) @ D).reshape(shape)


def dense_matrix(weight: Tensor, spatial: tuple[int, ...], stride: tuple[int, ...], padding: Any,
                 dilation: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """D (C_in·S, C_out·U) and the output size U of ``weight`` on ``spatial`` maps, cached while
    the weight lives (keyed by the tensor itself, its version and the geometry)."""
    pads = conv_pads(padding, tuple(weight.shape[2:]), dilation)
    key = (id(weight), weight._version, spatial, stride, tuple(pads), dilation)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is weight:
            return hit[1], hit[2]
    D, out = _build(weight, spatial, stride, dilation, pads)
    with _lock:
        while _cache and sum(v[1].numel() for v in _cache.values()) * 8 + D.numel() * 8 > _CACHE_BYTES:
            del _cache[next(iter(_cache))]
        _cache[key] = (weakref.ref(weight, lambda _, key=key: _forget(key)), D, out)
    return D, out


def _forget(key: tuple) -> None:
    """Drop a cached D once its weight is freed."""
    with _lock:
        _cache.pop(key, None)


def _build(weight: Tensor, spatial: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
           pads: list[tuple[int, int]]) -> tuple[Tensor, tuple[int, ...]]:
    """D by placing W[:, :, t] at every (input position, output position) pair that tap t links."""
    O, C, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    out = output_size(spatial, kernel, stride, dilation, pads)
    u = torch.cartesian_prod(*(torch.arange(m) for m in out)).reshape(-1, len(out))        # (U, nd)
    t = torch.cartesian_prod(*(torch.arange(k) for k in kernel)).reshape(-1, len(kernel))  # (T, nd)
    lo = torch.tensor([p for p, _ in pads])
    pos = (u[:, None, :] * torch.tensor(stride) + t[None, :, :] * torch.tensor(dilation) - lo)   # (U, T, nd)
    inside = ((pos >= 0) & (pos < torch.tensor(spatial))).all(-1)
    ui, ti = inside.nonzero(as_tuple=True)
    si = torch.zeros(len(ui), dtype=torch.long)
    for axis, n in enumerate(spatial):                                     # row-major input position
        si = si * n + pos[ui, ti, axis]
    taps = weight.detach().permute(tuple(range(2, weight.ndim)) + (1, 0)).reshape(-1, C, O)   # (T, C, O)
    D = weight.new_zeros((math.prod(spatial), math.prod(out), C, O))
    D[si, ui] = taps[ti]
    return D.permute(2, 0, 3, 1).reshape(C * math.prod(spatial), O * math.prod(out)), out


class _DenseConv(torch.autograd.Function):
    """y = x_flat D; the input gradient gy_flat Dᵀ (matmuls, so a batched backward maps them)."""

    @staticmethod
    def forward(x: Tensor, D: Tensor, shape: tuple[int, ...]) -> Tensor:
        return (x.reshape(x.shape[0], -1) @ D).reshape(shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])
        ctx.in_shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor, None, None]:
        (D,) = ctx.saved_tensors
        return (gy.reshape(gy.shape[0], -1) @ D.T).reshape(ctx.in_shape), None, None
