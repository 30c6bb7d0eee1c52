"""The interaction-basis formula (docs/design.md §1): from Grams G and M to C, C⁻¹ and Λ.

With f_aug = (f, 1) (``include_bias``) and Y the centring map (Y f_aug = (f − μ, 1); Y = I
without ``center``):

    G = E[(Y f)(Y f)ᵀ] = U D Uᵀ,   keep D_i > tol_G · max(D)
    M̃ = D^{1/2} Uᵀ Y⁻ᵀ M Y⁻¹ U D^{1/2} = V Λ Vᵀ,   keep Λ_i > tol_M · max(Λ)
    C = Yᵀ U D^{-1/2} V Λ^{1/2}       (f̂ = Cᵀ f_aug; ``scaling="inverse"``: Λ^{-1/2})
    C⁻¹ = Y⁻¹ U D^{1/2} V Λ^{-1/2}    (f_aug = C⁻¹ f̂, the inverse map; not a pseudo-inverse)

With ``center`` and ``include_bias`` the constant direction is built explicitly: U's first
column is the bias slot (D = 1), the covariance block is eigendecomposed on its own, and
V = diag(1, V′) keeps the constant direction out of M̃'s eigendecomposition (its Λ is M̃₀₀).
Thresholds are relative to the largest *data* eigenvalue, so they are scale invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rotation:
    C: Tensor          # (d_aug, k)
    Cinv: Tensor       # (d_aug, k)
    Lambda: Tensor     # (k,)
    D: Tensor          # kept eigenvalues of G (data block)
    bias_direction: bool


def eigh_desc(A: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric matrix."""
    vals, vecs = torch.linalg.eigh((A + A.T) / 2)
    return vals.flip(0), vecs.flip(1)


def _svd_eig(F: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of Fᵀ F from the SVD of F (r, k)."""
    if F.shape[1] == 0:
        return F.new_zeros(0), F.new_zeros(0, 0)
    _, sv, Vh = torch.linalg.svd(F, full_matrices=False)
    return sv ** 2, Vh.T


def _keep(vals: Tensor, tol: float) -> Tensor:
    top = vals.max() if vals.numel() else torch.tensor(0.0)
    return vals > tol * top if top > 0 else torch.zeros_like(vals, dtype=torch.bool)


def centring_maps(mean: Tensor, center: bool, include_bias: bool) -> tuple[Tensor, Tensor]:
    """Y and Y⁻¹ on augmented coordinates (identity unless both ``center`` and ``include_bias``)."""
    d = mean.shape[0] + int(include_bias)
    Y = torch.eye(d, dtype=torch.float64, device=mean.device)
    Yinv = Y.clone()
    if center and include_bias:
        Y[:-1, -1] = -mean
        Yinv[:-1, -1] = mean
    return Y, Yinv


def _fix_signs(C: Tensor, Cinv: Tensor, n_data: int) -> tuple[Tensor, Tensor]:
    """Make each column's largest-magnitude data entry of C positive (deterministic signs)."""
    rows = C[:n_data] if n_data else C
    pick = rows.abs().argmax(0)
    sign = torch.sign(rows[pick, torch.arange(C.shape[1], device=C.device)])
    sign = torch.where((rows.abs().max(0).values > 0) & (sign != 0), sign, torch.ones_like(sign))
    return C * sign, Cinv * sign


def _activation_eig(G: Tensor, center: bool, include_bias: bool, tol_G: float
                    ) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(U, D_all, D_data, bias_direction): kept eigenvectors of G, slot first when centred."""
    if center and include_bias:
        d = G.shape[0] - 1
        D, U = eigh_desc(G[:d, :d])
        keep = _keep(D, tol_G)
        D, U = D[keep], U[:, keep]
        Ufull = torch.zeros(d + 1, U.shape[1] + 1, dtype=G.dtype, device=G.device)
        Ufull[d, 0] = 1.0
        Ufull[:d, 1:] = U
        return Ufull, torch.cat([torch.ones(1, dtype=G.dtype, device=G.device), D]), D, True
    D, U = eigh_desc(G)
    keep = _keep(D, tol_G)
    return U[:, keep], D[keep], D[keep], False


def gram_factor(M: Tensor, P: Tensor | None = None) -> Tensor:
    """F with Pᵀ M P = Fᵀ F, from the eigendecomposition of the PSD matrix M (r, r); P: (r, d)."""
    vals, vecs = torch.linalg.eigh((M + M.T) / 2)
    keep = vals > 0
    F = vals[keep].sqrt()[:, None] * vecs[:, keep].T
    return F if P is None else F @ P


def rotate(G: Tensor, F: Tensor | None, mean: Tensor, *, center: bool, include_bias: bool,
           tol_G: float, tol_M: float, scaling: str = "sqrt", kind: str = "interaction") -> Rotation:
    """Rotation of one node layer. G: (d_aug, d_aug) float64; mean: (d,); F: (r, d_aug), a
    factor of the Jacobian Gram M = Fᵀ F (from :func:`gram_factor`).

    M̃ = (F C⁻¹_W)ᵀ (F C⁻¹_W) is diagonalised by the SVD of F C⁻¹_W (r × k_G), which is cheaper
    than an eigendecomposition when the Jacobians have low rank (a Linear head makes r = d_out+1)
    and avoids squaring the condition number.

    kind="interaction": the interaction basis above. kind="pca": C = Yᵀ U, Λ = D (activation
    PCA, no Jacobians). kind="neuron": C = Yᵀ (the neurons, centred when ``center``), Λ = diag G.
    """
    n_data = mean.shape[0]
    Y, Yinv = centring_maps(mean, center, include_bias)
    slot_first = center and include_bias
    if kind == "neuron":
        order = ([n_data] + list(range(n_data))) if slot_first else list(range(G.shape[0]))
        C, Cinv = Y.T[:, order], Yinv[:, order]
        return Rotation(C, Cinv, torch.diagonal(G)[order].clone(), torch.diagonal(G)[:n_data], slot_first)
    U, D, D_data, bias_dir = _activation_eig(G, center, include_bias, tol_G)
    if kind == "pca":
        C, Cinv = _fix_signs(Y.T @ U, Yinv @ U, n_data)
        return Rotation(C, Cinv, D, D_data, bias_dir)
    if kind != "interaction":
        raise ValueError(f"kind must be 'interaction', 'pca' or 'neuron', got {kind!r}")
    W_inv = Yinv @ U * D.sqrt()                       # (d_aug, k_G): f_aug = W_inv f̃
    W = (U / D.sqrt()).T @ Y                          # (k_G, d_aug): f̃ = W f_aug
    Ft = F @ W_inv                                    # M̃ = Ftᵀ Ft
    if bias_dir:
        lam, V = _svd_eig(Ft[:, 1:])
        keep = _keep(lam, tol_M)
        lam, V = lam[keep], V[:, keep]
        lam0 = (Ft[:, 0] ** 2).sum()
        top = lam.max() if lam.numel() else lam0
        bias_dir = bool(lam0 > tol_M * top) and bool(lam0 > 0)
        Vfull = torch.zeros(Ft.shape[1], V.shape[1] + int(bias_dir), dtype=G.dtype, device=G.device)
        if bias_dir:
            Vfull[0, 0] = 1.0
        Vfull[1:, int(bias_dir):] = V
        lam = torch.cat([lam0.reshape(1), lam]) if bias_dir else lam
        V = Vfull
    else:
        lam, V = _svd_eig(Ft)
        keep = _keep(lam, tol_M)
        lam, V = lam[keep], V[:, keep]
    if scaling not in ("sqrt", "inverse"):
        raise ValueError(f"scaling must be 'sqrt' or 'inverse', got {scaling!r}")
    s = lam.sqrt() if scaling == "sqrt" else 1.0 / lam.sqrt()
    C = W.T @ V * s
    Cinv = W_inv @ V / s
    C, Cinv = _fix_signs(C, Cinv, n_data)
    return Rotation(C, Cinv, lam, D_data, bias_dir)
