"""Behavioural gradients and the rank of the behavioural-loss Hessian (seed 002; paper §3.1).

Behavioural loss (our normalisation). With N samples (every (input, position) pair is a
sample: the model's output is reshaped to rows y(x) ∈ R^{d_out}) and θ* the trained parameters,

    L(θ) = (1/N) Σ_x ‖y(x; θ) − y(x; θ*)‖²        (sum over output coordinates, mean over samples).

L(θ*) = 0 and ∇L(θ*) = 0, so the residual terms of the Hessian vanish and

    H = ∇²L(θ*) = (2/N) 𝒢 𝒢ᵀ,   𝒢 = [∂y_k(x)/∂θ]  (P × N·d_out: one column per sample and output),

the Gram matrix of the behavioural gradients. rank H = rank 𝒢: the effective parameter count in
the quadratic approximation. We never form H: we accumulate the smaller of 𝒢𝒢ᵀ (P × P) and
𝒢ᵀ𝒢 (N·d_out square) from per-sample Jacobians computed with ``torch.func.vmap(jacrev)`` in
batches, and take eigenvalues of

    B = (1/N) 𝒢𝒢ᵀ = H / 2     (non-zero spectrum shared with (1/N) 𝒢ᵀ𝒢).

An eigenvalue λ of B is the increase of L for a unit-norm parameter step along its eigenvector,
so it is compared with the noise scale ε directly: rank_ε = #{λ_i > max(ε, rtol·λ_max)}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

#: Relative floor under which eigenvalues are numerical zeros (float64 accumulation).
RTOL = 1e-10


def rank_eps(eigenvalues: np.ndarray, epsilon: float, scale: float = 1.0,
             rtol: float = RTOL) -> int:
    """#{i : λ_i·scale > max(ε, rtol·max_j λ_j·scale)}.

    ``scale`` converts the eigenvalues to behavioural-loss units (see the diagnostics module);
    ``rtol`` is the numerical floor, so ε = 0 gives the numerical rank.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64) * float(scale)
    if lam.size == 0:
        return 0
    top = float(lam.max())
    if top <= 0:
        return 0
    return int((lam > max(float(epsilon), rtol * top)).sum())


@dataclass
class BehaviouralResult:
    """``spectrum``: eigenvalues of B = H/2 = (1/N)𝒢𝒢ᵀ, descending, length min(P, N·d_out);
    ``rank``: rank_ε; ``rank_numerical``: rank at ε = 0; ``n_params`` P; ``n_samples`` N;
    ``d_out``."""

    spectrum: np.ndarray
    rank: int
    rank_numerical: int
    n_params: int
    n_samples: int
    d_out: int


def _output_rows(out: Tensor) -> Tensor:
    """One sample's output (…, d_out) -> rows (R, d_out); a scalar output is one row of 1."""
    if out.ndim == 0:
        return out.reshape(1, 1)
    return out.reshape(-1, out.shape[-1])


def per_sample_jacobian(model: nn.Module, batch: Tensor | Mapping[str, Any],
                        params: dict[str, Tensor], buffers: dict[str, Tensor],
                        output_fn: Callable[[Any], Tensor]) -> Tensor:
    """Jacobians of every output row w.r.t. all parameters: (B·R, d_out, P), one vmap call.

    ``params`` maps parameter names to (detached) tensors; the column order of P is the order
    of ``params`` with each tensor flattened.
    """
    names = list(params)

    def f(p: dict[str, Tensor], x: Any) -> Tensor:
        if isinstance(x, Mapping):
            x1 = {k: v.unsqueeze(0) for k, v in x.items()}
            out = functional_call(model, (p, buffers), args=(), kwargs=x1)
        else:
            out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return _output_rows(output_fn(out).squeeze(0))

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, batch)   # name -> (B, R, d_out, *shape)
    first = jac[names[0]]
    B, R, d_out = first.shape[:3]
    flat = [jac[k].reshape(B * R, d_out, -1) for k in names]
    return torch.cat(flat, dim=-1)


def behavioural_gradients(model: nn.Module, batches: Iterable[Any], *,
                          output_fn: Callable[[Any], Tensor], dtype: torch.dtype = torch.float64,
                          device: torch.device | str = "cpu") -> Tensor:
    """The matrix 𝒢 (P × N·d_out) of per-sample output gradients, columns ordered (sample,
    output). For small models and tests only (memory P·N·d_out): :func:`behavioural_gram`
    never stores it."""
    device = torch.device(device)
    p = {k: v.detach().to(device=device, dtype=dtype) for k, v in model.named_parameters()
         if v.requires_grad}
    buffers = {k: (b.detach().to(device=device, dtype=dtype) if b.is_floating_point()
                   else b.detach().to(device)) for k, b in model.named_buffers()}
    cols = [per_sample_jacobian(model, _to(b, device, dtype), p, buffers, output_fn)
            for b in batches]
    J = torch.cat(cols)                                   # (N, d_out, P)
    return J.reshape(-1, J.shape[-1]).T


def _to(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(batch, Mapping):
        return {k: _to(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, Tensor):
        return batch.to(device=device, dtype=dtype) if batch.is_floating_point() \
            else batch.to(device)
    return batch


def behavioural_gram(model: nn.Module, batches: Iterable[Any], *,
                     output_fn: Callable[[Any], Tensor], dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu",
                     params: Iterable[str] | None = None) -> tuple[Tensor, int, int, str]:
    """Accumulate the Gram of behavioural gradients without forming the Hessian.

    Returns (K, N, d_out, side): side ``"params"`` means K = Σ g gᵀ (P × P) summed over sample
    columns g; side ``"samples"`` means K = 𝒢ᵀ𝒢 (N·d_out square). The cheaper side is chosen
    after the first batch from P and an upper bound of N·d_out is not known in advance, so we
    keep the stacked Jacobian rows while N·d_out ≤ P and switch to the P × P sum beyond.
    Parameters are cast to ``dtype``; ``params`` restricts to named parameters (default all
    trainable ones).
    """
    device = torch.device(device)
    named = dict(model.named_parameters())
    keep = list(params) if params is not None else [k for k, v in named.items() if v.requires_grad]
    p = {k: named[k].detach().to(device=device, dtype=dtype) for k in keep}
    buffers = {k: (b.detach().to(device=device, dtype=dtype) if b.is_floating_point()
                   else b.detach().to(device)) for k, b in model.named_buffers()}
    P = sum(v.numel() for v in p.values())
    rows: list[Tensor] = []
    n_rows = 0
    gram: Tensor | None = None
    N = 0
    d_out = 0
    for batch in batches:
        batch = _to(batch, device, dtype)
        J = per_sample_jacobian(model, batch, p, buffers, output_fn)  # (S, d_out, P)
        N += J.shape[0]
        d_out = J.shape[1]
        J = J.reshape(-1, P)
        if gram is None:
            rows.append(J)
            n_rows += J.shape[0]
            if n_rows > P:
                stacked = torch.cat(rows)
                gram = stacked.T @ stacked
                rows = []
        else:
            gram += J.T @ J
    if gram is not None:
        return gram, N, d_out, "params"
    stacked = torch.cat(rows) if rows else torch.zeros(0, P, dtype=dtype, device=device)
    return stacked @ stacked.T, N, d_out, "samples"


def behavioural_rank(model: nn.Module, batches: Iterable[Any], epsilon: float, *,
                     output_fn: Callable[[Any], Tensor], dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu", rtol: float = RTOL) -> BehaviouralResult:
    """Spectrum and rank_ε of B = H/2 = (1/N) 𝒢𝒢ᵀ (see the module docstring)."""
    K, N, d_out, _ = behavioural_gram(model, batches, output_fn=output_fn, dtype=dtype,
                                      device=device)
    P = sum(v.numel() for v in model.parameters() if v.requires_grad)
    K = (K + K.T) / 2 / max(N, 1)
    lam = torch.linalg.eigvalsh(K.to(torch.float64)).flip(0).clamp_min(0.0).cpu().numpy()
    return BehaviouralResult(spectrum=lam, rank=rank_eps(lam, epsilon, 1.0, rtol),
                             rank_numerical=rank_eps(lam, 0.0, 1.0, rtol), n_params=P, n_samples=N,
                             d_out=d_out)
