"""Edge sums of sections made of linear maps and one elementwise activation
(:mod:`~intermod.analysis.core.structured`: f = W₂ σ(W₁ p + b₁ s) + b₂ s, L = C_dataᵀ W₂,
u = C_dataᵀ b₂ + c_slot).

**Edges.** With Q = P_l C⁻¹_l (d_p+1, k) (P_l: the Linear-head pull-back), R = W₁' Q (h, k)
and v = e_sᵀ Q (k,) (the slot row of Q), the Jacobian in basis coordinates is

    Ĵ(x) = ∂f̂^{l+1}/∂f̂^l = L diag(ā(x)) R + u vᵀ (+ T)   (k', k)

(T = C_dataᵀ Q_data for a residual unit f = p + W₂ σ(W₁ p + b₁ s) + b₂ s, whose identity
part is constant along any path), with ā = σ′(z) ("gradient") or its quadrature average Σ_q w_q σ′(z_q) along the path
z_q = z₀ + α_q (z − z₀) ("integrated": Ĵ is affine in a and Σ_q w_q = 1; z₀ = 0 with the
slot, which scales p and every bias by α; z₀ = W₁ p₀ + b₁ at the baseline point p₀ without
it). Then A_ij(x) = Ĵ_ij(x) f̂_j(x) and

    E_ij += Σ_x w_x (Ĵ_ij(x) f̂_j(x))² ,   Ĵ(x) = [L, u] · [ā(x) ⊙ R; vᵀ]

is one GEMM of [L, u] (k', h+1) against the stacked (h+1, N·k) matrices of a chunk of N
samples, or, when k' < k, of the stacked ā(x) ⊙ [L, u] (N·k', h+1) against [R; vᵀ] (the
per-sample scaling on the narrower side): n·k'·h·k multiply-adds, the floor for exact per-sample edges with a dense ā, at
matmul speed. Where one sample's GEMM is large (:func:`per_sample_pays`) it runs per sample
on the rows with ā_r(x) ≠ 0 only, Ĵ(x) = [L, u]_S diag(ā_S) [R; vᵀ]_S: exact, and for ReLU,
whose σ′ is 0 on about half the units, about half the multiply-adds.
Samples with positions are independent here (every module acts position-wise), so every
(input, position) pair is one sample. Products run in the compute dtype; sums over samples
are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .structured import AffineSection, Workspace, path_derivative, samples_per_chunk


def edge_sums(sec: AffineSection, point: Tensor, baseline: Tensor | None, f_hat: Tensor, w_out: Tensor,
              C_next: Tensor, Q: Tensor, alphas: Sequence[float], weights: Sequence[float],
              include_bias: bool, E: Tensor, max_memory: int, workspace: Workspace | None = None,
              heartbeat: Callable[[], None] | None = None) -> None:
    """Add Σ_x w (Ĵ(x) f̂(x))² of a batch to E (k', k) (module docstring).

    point: (…, d_p) natural points; f_hat: (…, k) basis coordinates (zero at masked samples);
    w_out: (…) output weights; C_next: (d+1, k'); Q: (d_p+1, k) in the compute dtype;
    baseline: (d_p,) the path's start without the slot (None with it); ``heartbeat`` is called
    once per quadrature node and once per chunk or FLUSH_SAMPLES samples (cancellation).
    """
    dtype = f_hat.dtype
    p = point.reshape(-1, point.shape[-1]).to(dtype)
    fh = f_hat.reshape(-1, f_hat.shape[-1])
    wo = w_out.reshape(-1).to(dtype)
    C64 = C_next.to(torch.float64)
    L64, u64 = sec.readout(C64, include_bias)
    L = L64.to(dtype)
    R = sec.first_times(Q, include_bias)                  # W₁' Q (h, k)
    v = Q[-1] if include_bias else None
    u = None if u64 is None else u64.to(dtype)
    z = sec.preactivation(p)
    z0 = 0.0 if baseline is None else sec.preactivation(baseline.to(dtype))
    a_bar = path_derivative(sec.act, z, z0, alphas, weights, heartbeat)
    if u is not None:   # the slot term u vᵀ: one more column of L, row of R and entry of ā (= 1)
        L, R = torch.cat([L, u[:, None]], 1), torch.cat([R, v[None]], 0)
        a_bar = torch.cat([a_bar, torch.ones_like(a_bar[:, :1])], 1)
    f_w = fh * wo[:, None]                                            # (n, k), 0 at masked samples
    Gamma = sec.skip(C64, include_bias)
    T = None if Gamma is None else Gamma.to(dtype) @ Q              # f = p + …: Ĵ gains Γ Q = C_dataᵀ Q_data
    k_next, rows = L.shape
    if per_sample_pays(k_next, rows, R.shape[1], p.device):
        _sample_by_sample(L, R, a_bar, f_w, E, heartbeat, T)
    else:
        _chunk_by_chunk(L, R, a_bar, f_w, E, max_memory, workspace or Workspace(), heartbeat, T)


PER_SAMPLE_MIN_MACS = 1 << 22   # k'·(h+1)·k from which one GEMM per sample beats chunked GEMMs on CPU
FLUSH_SAMPLES = 16              # per-sample sums below float64 are added to E this often


def per_sample_pays(k_next: int, rows: int, k: int, device: torch.device) -> bool:
    """Whether a section's edges run one GEMM per sample (dropping the rows where ā = 0) rather
    than chunked GEMMs over samples: on CPU, when one sample's GEMM is large enough that the
    per-call overhead is small (measured in docs/performance.md; on GPU the chunked GEMMs
    always win, and the per-sample gathers would synchronise the device)."""
    return device.type == "cpu" and k_next * rows * k >= PER_SAMPLE_MIN_MACS


def _chunk_by_chunk(L: Tensor, R: Tensor, a: Tensor, f_w: Tensor, E: Tensor, max_memory: int,
                    ws: Workspace, heartbeat: Callable[[], None] | None, T: Tensor | None = None) -> None:
    """E += Σ_x ((L diag(a(x)) R + T) ⊙ f_w(x))² (T: a residual unit's constant, else 0) by one
    GEMM per chunk of N samples, the per-sample
    scaling applied on the narrower side: with k' < k, the stacked a(x) ⊙ L (N·k', r) times
    R (r, k); else L (k', r) times the stacked a(x) ⊙ R (r, N·k). Either way k'·r·k
    multiply-adds per sample, but the scaled operand that each chunk writes has r·min(k', k)
    entries per sample, not r·k: for a section into a narrow layer (k' = 11, r = k = 401) the
    elementwise pass over (r, N, k) cost twice its GEMM (MLP 784-400-400-10, n = 2000, 2 cores:
    edges 2.10–2.43 → 1.94–1.97 s; w 800: 15.0 → 14.1 s). At k' = k, R stays the scaled side
    (measured faster at w 100). a: (n, r), R: (r, k), f_w: (n, k)."""
    dtype, device = f_w.dtype, f_w.device
    rows, k = R.shape
    k_next = L.shape[0]
    scale_L = k_next < k
    step = samples_per_chunk(dtype.itemsize * (rows * min(k_next, k) + k_next * k), max_memory, device)
    a_t = None if scale_L else a.T.contiguous()                     # (r, n)
    for start in range(0, f_w.shape[0], step):
        if heartbeat is not None:
            heartbeat()
        sl = slice(start, start + step)
        N = f_w[sl].shape[0]
        A = ws.get("A", (N, k_next, k) if scale_L else (k_next, N, k), dtype, device)   # Ĵ(x)
        if scale_L:
            X = ws.get("X", (N, k_next, rows), dtype, device)
            torch.mul(a[sl, None, :], L[None], out=X)
            torch.matmul(X.view(N * k_next, rows), R, out=A.view(N * k_next, k))
        else:
            X = ws.get("X", (rows, N, k), dtype, device)
            torch.mul(a_t[:, sl, None], R[:, None, :], out=X)
            torch.matmul(L, X.view(rows, N * k), out=A.view(k_next, N * k))
        samples = 0 if scale_L else 1                                # A's sample axis
        if T is not None:
            A += T.unsqueeze(samples)
        A.mul_(f_w[sl].unsqueeze(1 - samples))                       # A_ij = Ĵ_ij f̂_j
        E += A.square_().sum(samples).to(torch.float64)


def _sample_by_sample(L: Tensor, R: Tensor, a: Tensor, f_w: Tensor, E: Tensor,
                      heartbeat: Callable[[], None] | None, T: Tensor | None = None) -> None:
    """E += Σ_x ((L_S diag(a_S) R_S + T) diag(f_w(x)))² with S = {r : a_r(x) ≠ 0} (T: a residual
    unit's constant, else 0): one GEMM per sample
    over the rows where the derivative is non-zero (about half of them for ReLU, all of them for
    smooth activations), skipping masked samples. Sums run in the compute dtype and are added
    to the float64 E every FLUSH_SAMPLES samples."""
    dtype = f_w.dtype
    LT = L.T.contiguous()                                            # (r, k')
    nz = a != 0
    rows_of = nz.nonzero()[:, 1].split(nz.sum(1).tolist())          # S per sample
    scaled = not bool((a[nz] == 1).all())                            # ReLU: a ∈ {0, 1}
    live = (f_w != 0).any(1).tolist()
    acc = E if dtype == torch.float64 else torch.zeros(E.shape, dtype=dtype, device=E.device)
    A = torch.empty(E.shape, dtype=dtype, device=E.device)
    R_buf, L_buf = torch.empty_like(R), torch.empty_like(LT)          # the gathered rows, reused
    pending = 0
    for x, S in enumerate(rows_of):
        if not live[x]:
            continue
        if heartbeat is not None and x % FLUSH_SAMPLES == 0:
            heartbeat()
        R_S = torch.index_select(R, 0, S, out=R_buf[:len(S)])        # (|S|, k)
        if scaled:
            R_S.mul_(a[x, S][:, None])
        R_S.mul_(f_w[x])
        L_S = torch.index_select(LT, 0, S, out=L_buf[:len(S)])       # (|S|, k')
        torch.matmul(L_S.T, R_S, out=A)                              # A_ij = Ĵ_ij(x) f̂_j(x)
        if T is not None:
            A.addcmul_(T, f_w[x])
        acc.addcmul_(A, A)
        pending += 1
        if acc is not E and pending == FLUSH_SAMPLES:
            E += acc.to(torch.float64)
            acc.zero_()
            pending = 0
    if acc is not E and pending:
        E += acc.to(torch.float64)
