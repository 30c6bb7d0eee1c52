"""Convolution as one GEMM per kernel tap, for float64 maps on the CPU.

torch has no oneDNN kernel for float64 convolutions on the CPU; its fallback ran the closed
forms' convolutions (large batches of maps: samples × basis directions, small kernels) at
15–35 % of the float64 matmul rate. With zero padding p, stride s and dilation δ,

    y[n, o, u] = Σ_t Σ_c W[o, c, t] · x_pad[n, c, s·u + δ·t]      (t: the kernel's taps),

so for each tap t the whole output is one GEMM (n·|U|, C_in) × (C_in, C_out) of the strided
slice of the channels-last padded input. The samples run in chunks whose padded copy is
cache-sized (``TAP_CHUNK_BYTES``), which is what makes the per-tap slices cheap.

Measured against torch's float64 convolution (3×3, 2 threads, inputs of ~16 MB): 1.2–3.1× as
fast with C_in ≥ 32, 1.5–3.2× with 8–16 input channels and C_out ≤ 2·C_in; slower with
C_in = 4 and with C_out = 8·C_in (0.4–0.7×: each tap's accumulation passes over the output);
and torch's is as fast or faster on inputs of a few MB, which stay in cache. So only ungrouped
float64 convolutions on the CPU, outside autograd, of at least ``TAP_MIN_BYTES`` with
C_in ≥ 8 and C_out ≤ 4·C_in take this path (:func:`convolve` is a drop-in for
``F.conv{1,2,3}d`` without a bias; every other call is torch's). On a ResNet-18-shaped network
(32–256 channels, 32×32 inputs, n = 128, output target) the edges went from 86 to 51 s.

Convolutions of small maps (S ≤ 2T input positions) go further, to one GEMM with the dense
matrix of the convolution (:mod:`~intermod.analysis.core.conv_dense`), with or without a graph.

:func:`tap_convs` applies the same to the model's own convolutions while it runs (a torch
function mode around ``NodeModel``'s calls and sections): the forward passes without autograd
(ablations, top examples, each edge batch's activations) take the taps or the dense GEMM;
passes that record a graph take the dense GEMM where it applies (its input gradient is a GEMM
too) and torch's convolution elsewhere; forward-mode and vmapped passes keep torch's.
"""

from __future__ import annotations

import itertools
import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple
from torch.overrides import TorchFunctionMode

from .conv_dense import by_dense, conv_pads, dense_conv, output_size

TAP_CHUNK_BYTES = 2 << 20   # the padded channels-last copy of one chunk of samples
TAP_MIN_BYTES = 4 << 20     # smaller inputs stay in cache and torch's convolution is as fast
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def convolve(x: Tensor, weight: Tensor, stride: int | tuple[int, ...], padding: int | tuple[int, ...] | str,
             dilation: int | tuple[int, ...], groups: int = 1, *, path: str | None = "auto") -> Tensor:
    """W ⋆ x for x (N, C_in, *S) and ``weight`` (C_out, C_in/groups, *kernel), zero padding,
    no bias: ``F.conv{1,2,3}d(x, weight, None, stride, padding, dilation, groups)``, by the
    dense GEMM of small maps, by taps, or by torch (module docstring). ``path``: "auto" routes
    by :func:`_path`; the function mode passes the route it has already chosen."""
    nd = weight.ndim - 2
    stride, dilation = _ntuple(nd)(stride), _ntuple(nd)(dilation)
    if path == "auto":
        path = _path(x, weight, groups, stride, padding, dilation)
    if path == "dense":
        return dense_conv(x, weight, stride, padding, dilation)
    if path is None:
        return _CONV[nd](x, weight, None, stride, padding, dilation, groups)
    kernel = tuple(weight.shape[2:])
    pads = conv_pads(padding, kernel, dilation)
    spatial = tuple(x.shape[2:])
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads))
    out_sp = output_size(spatial, kernel, stride, dilation, pads)
    N, C, O = x.shape[0], x.shape[1], weight.shape[0]
    out = x.new_empty((N, O) + out_sp)
    if N == 0 or any(n <= 0 for n in out_sp):
        return out.zero_()
    taps = weight.permute(tuple(range(2, 2 + nd)) + (1, 0)).contiguous()        # (*kernel, C_in, C_out)
    step = max(1, TAP_CHUNK_BYTES // (x.element_size() * C * max(1, math.prod(padded))))
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial))
    buffer = x.new_zeros((min(step, N),) + padded + (C,))     # its padding stays zero across chunks
    accumulator = x.new_empty((min(step, N) * math.prod(out_sp), O))
    for start in range(0, N, step):
        part = x[start:start + step]
        n = part.shape[0]
        xp, acc = buffer[:n], accumulator[:n * math.prod(out_sp)]
        xp[(slice(None),) + inner] = part.movedim(1, -1)
        for i, t in enumerate(itertools.product(*(range(k) for k in kernel))):
            window = tuple(slice(d * ti, d * ti + s * (m - 1) + 1, s)
                           for ti, s, d, m in zip(t, stride, dilation, out_sp))
            a = xp[(slice(None),) + window].reshape(-1, C)
            if i == 0:
                torch.mm(a, taps[t], out=acc)
            else:
                acc.addmm_(a, taps[t])
        out[start:start + n] = acc.view((n,) + out_sp + (O,)).movedim(-1, 1)
    return out


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.Conv{1,2,3}d`` (what :func:`tap_convs` is for)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) and not m.transposed for m in model.modules())


def tap_convs(enabled: bool) -> AbstractContextManager:
    """Inside the block, the convolutions a model runs go through :func:`convolve` (a no-op
    unless ``enabled``: pass :func:`has_convolutions` of the model)."""
    return _TapConvs() if enabled else nullcontext()


class _TapConvs(TorchFunctionMode):
    """``torch.conv{1,2,3}d`` (= ``F.conv{1,2,3}d``) calls that :func:`_by_taps` or
    :func:`~intermod.analysis.core.conv_dense.by_dense` accepts, made outside any functorch
    transform or forward-AD level and without a bias gradient to record, become
    :func:`convolve` + bias."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _FUNCS and _no_transform():
            x, weight, bias, stride, padding, dilation, groups = _conv_args(*args, **kwargs)
            path = None
            if isinstance(weight, Tensor):
                stride, dilation = _ntuple(weight.ndim - 2)(stride), _ntuple(weight.ndim - 2)(dilation)
                path = _path(x, weight, groups, stride, padding, dilation, bias)
            if path is not None:                        # routed once: convolve does not decide again
                y = convolve(x, weight, stride, padding, dilation, groups, path=path)
                if bias is None:
                    return y
                b = bias.reshape((1, -1) + (1,) * (y.ndim - 2))
                return y + b if y.requires_grad else y.add_(b)
        return func(*args, **kwargs)


_FUNCS = frozenset(_CONV.values())


def _conv_args(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
               dilation: Any = 1, groups: int = 1) -> tuple:
    """``torch.conv2d``'s signature, positional or by keyword."""
    return input, weight, bias, stride, padding, dilation, groups


def _no_transform() -> bool:
    """No vmap / grad / jvp transform and no forward-AD level is active (their tensors are
    wrappers that the taps' in-place copies do not support)."""
    return torch._C._functorch.peek_interpreter_stack() is None and fwAD._current_level < 0


def _path(x: Tensor, weight: Tensor, groups: int, stride: tuple[int, ...], padding: Any,
          dilation: tuple[int, ...], bias: Tensor | None = None) -> str | None:
    """How :func:`convolve` runs this call: "dense" (small maps, outside any transform, no bias
    gradient to record), "taps" (:func:`_by_taps`) or None (torch's convolution)."""
    bias_grad = bias is not None and torch.is_grad_enabled() and bias.requires_grad
    if not bias_grad and _no_transform() and by_dense(x, weight, groups, stride, padding, dilation):
        return "dense"
    return "taps" if _by_taps(x, weight, groups, bias) else None


def _by_taps(x: Tensor, weight: Tensor, groups: int, bias: Tensor | None = None) -> bool:
    """Ungrouped, float64, on the CPU, no gradient to record (of x, the weight or the bias), and
    where the taps were measured
    faster (module docstring): an input of at least ``TAP_MIN_BYTES``, at least 8 input channels
    (each tap's GEMM has C_in as its inner dimension) and at most 4 outputs per input channel
    (past that, the accumulation's passes over the output cost more than torch's column buffer)."""
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor)):
        return False
    C, O = weight.shape[1], weight.shape[0]
    return (groups == 1 and x.dtype == torch.float64 and weight.dtype == torch.float64 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.ndim == weight.ndim
            and x.numel() * x.element_size() >= TAP_MIN_BYTES and C >= 8 and O <= 4 * C
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))))
