"""The interaction-basis formula (docs/design.md §1): from Grams G and M to C, C⁻¹ and Λ.

With f_aug = (f, 1) (``include_bias``) and Y the centring map (Y f_aug = (f − μ, 1); Y = I
without ``center``):

    G = E[(Y f)(Y f)ᵀ] = U D Uᵀ,   keep D_i > max(tol_G · max(D), δ)
    M̃ = D^{1/2} Uᵀ Y⁻ᵀ M Y⁻¹ U D^{1/2} = V Λ Vᵀ,   keep Λ_i > tol_M · max(Λ)
    C = Yᵀ U D^{-1/2} V Λ^{1/2}       (f̂ = Cᵀ f_aug; ``scaling="inverse"``: Λ^{-1/2})
    C⁻¹ = Y⁻¹ U D^{1/2} V Λ^{-1/2}    (f_aug = C⁻¹ f̂, the inverse map; not a pseudo-inverse)

With ``center`` and ``include_bias`` the constant direction is built explicitly: U's first
column is the bias slot (D = 1), the covariance block is eigendecomposed on its own, and
V = diag(1, V′) keeps the constant direction out of M̃'s eigendecomposition (its Λ is M̃₀₀).
Thresholds are relative to the largest *data* eigenvalue, so they are scale invariant, with
one absolute floor: δ = (ROUNDING_ULPS · ε · max_j |μ_j|)² (ε: the unit roundoff of the dtype the
activations were computed in, :func:`rounding_floor`). Centring removes the mean, so the
relative cut alone would keep the rounding noise of a layer that is constant on the data (its
covariance is then nothing but that noise, and its own largest eigenvalue); no variance that
small can be told from rounding the activations themselves.

U D^{1/2} enters only as a square root S of G (G = S Sᵀ): C = Yᵀ S⁺ᵀ V Λ^{1/2} and
C⁻¹ = Y⁻¹ S V Λ^{-1/2} with V from M̃ = Sᵀ Y⁻ᵀ M Y⁻¹ S are the same for every square root.
When nothing would be dropped at tol_G, S is G's Cholesky factor (:func:`whitening`): no
eigendecomposition of G at all, which is most of the basis stage's fixed cost for a wide
input layer (784 × 784: 3 ms against 120 ms here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .lapack import Call, Steps, run_steps, serial_lapack


@dataclass
class Rotation:
    C: Tensor          # (d_aug, k)
    Cinv: Tensor       # (d_aug, k)
    Lambda: Tensor     # (k,)
    bias_direction: bool


@serial_lapack
def eigh_desc(A: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric matrix."""
    vals, vecs = torch.linalg.eigh((A + A.T) / 2)
    return vals.flip(0), vecs.flip(1)


WIDE_SVD = 1.5   # _svd_eig: reduce F (r, k) by QR first when k >= WIDE_SVD * r


@serial_lapack
def _thin_svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U, s, Vᴴ of the thin SVD of A (on one CPU thread: :func:`serial_lapack`)."""
    return torch.linalg.svd(A, full_matrices=False)


def _svd_eig_steps(F: Tensor) -> Steps[tuple[Tensor, Tensor]]:
    """Eigenvalues (descending) and eigenvectors of Fᵀ F from the SVD of F (r, k).

    A wide F (k ≥ WIDE_SVD·r, e.g. an input layer whose M has the rank of a narrower next layer)
    is first reduced by the QR factorisation Fᵀ = Q R (Q (k, r) orthonormal, R (r, r)): with
    R = U s V_Rᵀ, F = V_R s (Q U)ᵀ, so the eigenvectors are Q U and the SVD runs on the square R.
    The QR keeps every thread; only the SVD runs on one. Measured (2 cores, best of 25 / 7):
    54 → 44 ms at 401 × 784, 406 → 314 ms at 801 × 1584; below k ≈ 1.5 r the plain SVD is as
    fast. Q stays in its Householder form (geqrf) and is applied to [U; 0] (ormqr): forming Q
    costs more than applying it (785 × 401: 17.6 → 14.1 ms for the QR and Q U)."""
    r, k = F.shape
    if k == 0:
        return F.new_zeros(0), F.new_zeros(0, 0)
    if r and k >= WIDE_SVD * r:
        householder, tau = torch.geqrf(F.T)                      # Fᵀ = Q R, Q (k, k) in reflectors
        (U, sv, _), = yield (Call(_thin_svd, householder[:r].triu()),)
        return sv ** 2, torch.ormqr(householder, tau, torch.cat([U, U.new_zeros(k - r, U.shape[1])]))
    (_, sv, Vh), = yield (Call(_thin_svd, F),)
    return sv ** 2, Vh.T


def _keep(vals: Tensor, tol: float, floor: float = 0.0) -> Tensor:
    """vals_i > max(tol·max vals, floor), and nothing when max vals ≤ 0."""
    top = vals.max() if vals.numel() else torch.tensor(0.0)
    return vals > max(tol * top, floor) if top > 0 else torch.zeros_like(vals, dtype=torch.bool)


ROUNDING_ULPS = 4.0   # rounding_floor: a direction whose deviations stay within this many ulps of the mean


def rounding_floor(mean: Tensor, eps: float) -> float:
    """δ = (ROUNDING_ULPS · ε · max_j |μ_j|)²: the variance below which a direction of centred
    activations is rounding noise. Activations computed in a dtype of unit roundoff ε carry
    relative errors of order ε, so a coordinate of mean μ_j that is constant on the data still
    varies by ~ε|μ_j| (one ulp); the covariance of such a layer is that noise alone. ε = 0
    (the default of the rotation functions) gives δ = 0."""
    if eps <= 0 or mean.numel() == 0:
        return 0.0
    return float(ROUNDING_ULPS * eps * mean.abs().max()) ** 2


def _times_Yinv(mean: Tensor, X: Tensor, centred: bool) -> Tensor:
    """Y⁻¹ X (X: (d+1, m)) for the centring map Y on augmented coordinates, f_aug ↦ (f − μ s, s)
    (the identity unless ``centred``, i.e. ``center`` and ``include_bias``), without forming
    it: Y⁻¹ = I + (μ, 0) e_dᵀ adds μ times X's slot row to its data rows (O(d·m), not O(d²·m))."""
    if not centred:
        return X
    out = X.clone()
    out[:-1] += torch.outer(mean, X[-1])
    return out


def _right_times_Yinv(mean: Tensor, X: Tensor, centred: bool) -> Tensor:
    """X Y⁻¹ (X: (m, d+1)) without forming Y⁻¹ = I + (μ, 0) e_dᵀ: adds X_data μ to X's slot column."""
    if not centred:
        return X
    out = X.clone()
    out[:, -1] += X[:, :-1] @ mean
    return out


def _times_YT(mean: Tensor, X: Tensor, centred: bool) -> Tensor:
    """Yᵀ X (X: (d+1, m)) without forming Y: Yᵀ = I − e_d (μ, 0)ᵀ takes μᵀ X_data from the slot row."""
    if not centred:
        return X
    out = X.clone()
    out[-1] -= mean @ X[:-1]
    return out


def _fix_signs(C: Tensor, Cinv: Tensor, n_data: int) -> tuple[Tensor, Tensor]:
    """Make each column's largest-magnitude data entry of C positive (deterministic signs)."""
    rows = C[:n_data] if n_data else C
    pick = rows.abs().argmax(0)
    sign = torch.sign(rows[pick, torch.arange(C.shape[1], device=C.device)])
    sign = torch.where((rows.abs().max(0).values > 0) & (sign != 0), sign, torch.ones_like(sign))
    return C * sign, Cinv * sign


def data_block(G: Tensor, center: bool, include_bias: bool) -> Tensor:
    """The part of G the rotation decomposes: its covariance block when centred with the slot
    (the slot is then its own direction, D = 1), else all of G."""
    return G[:-1, :-1] if center and include_bias else G


def _kept_eig(block: Tensor, tol_G: float, rows: Tensor | None = None, floor: float = 0.0
              ) -> Steps[tuple[Tensor, Tensor]]:
    """(U, D): the eigenvectors and eigenvalues (descending) of ``block`` with
    D_i > max(tol_G·max D, floor) (``floor``: :func:`rounding_floor`).
    ``rows``: R (n, d) with RᵀR = block and n < d (:func:`~intermod.analysis.core.gram.augmented_rows`),
    whose SVD R = P s Uᵀ gives D = s² in O(n²d) instead of eigh's O(d³), and D to high relative
    accuracy (no squared matrix is decomposed)."""
    if rows is not None:
        D, U = yield from _svd_eig_steps(rows)
    else:
        (D, U), = yield (Call(eigh_desc, block),)
    keep = _keep(D, tol_G, floor)
    return U[:, keep], D[keep]


def _activation_eig(G: Tensor, center: bool, include_bias: bool, tol_G: float, rows: Tensor | None = None,
                    floor: float = 0.0) -> Steps[tuple[Tensor, Tensor, bool]]:
    """(U, D, bias_direction): kept eigenvectors and eigenvalues of G, slot first when centred
    (``rows``, ``floor``: see :func:`_kept_eig`)."""
    U, D = yield from _kept_eig(data_block(G, center, include_bias), tol_G, rows, floor)
    if not (center and include_bias):
        return U, D, False
    d = G.shape[0] - 1
    Ufull = torch.zeros(d + 1, U.shape[1] + 1, dtype=G.dtype, device=G.device)
    Ufull[d, 0] = 1.0
    Ufull[:d, 1:] = U
    return Ufull, torch.cat([torch.ones(1, dtype=G.dtype, device=G.device), D]), True


def kept_eigenvalues(G: Tensor, center: bool, include_bias: bool, tol_G: float, floor: float = 0.0) -> Tensor:
    """The eigenvalues of G that the rotation keeps (descending), of its covariance block when
    centred with the slot (the slot's own D = 1 is not among them)."""
    D = eigvalsh_desc(data_block(G, center, include_bias))
    return D[_keep(D, tol_G, floor)]


@serial_lapack
def eigvalsh_desc(A: Tensor) -> Tensor:
    """Eigenvalues (descending) of a symmetric matrix."""
    return torch.linalg.eigvalsh((A + A.T) / 2).flip(0)


TRI_BLOCK = 256   # lower_times / times_lower: blocks of at most this many rows use one GEMM


def lower_times(L: Tensor, X: Tensor) -> Tensor:
    """L X for a lower-triangular L (n, n) (its upper triangle is never read), by halves:
    [[L₁₁, 0], [L₂₁, L₂₂]] X = [L₁₁ X₁; L₂₁ X₁ + L₂₂ X₂], recursively down to TRI_BLOCK rows.
    torch has no TRMM; this skips the zero block at each level (5/8 of the products at two
    levels). Measured (2 cores, float64): 784 × 784 by 784 × 401 in 4.2 against 5.9 ms."""
    n = L.shape[0]
    if n <= TRI_BLOCK:
        return L.tril() @ X
    h = n // 2
    return torch.cat([lower_times(L[:h, :h], X[:h]),
                      torch.addmm(lower_times(L[h:, h:], X[h:]), L[h:, :h], X[:h])])


def times_lower(X: Tensor, L: Tensor) -> Tensor:
    """X L for a lower-triangular L (n, n): [X₁, X₂] L = [X₁ L₁₁ + X₂ L₂₁, X₂ L₂₂], by halves as
    in :func:`lower_times`. Measured: 401 × 784 by 784 × 784 in 3.6 against 10.0 ms."""
    n = L.shape[0]
    if n <= TRI_BLOCK:
        return X @ L.tril()
    h = n // 2
    return torch.cat([torch.addmm(times_lower(X[:, :h], L[:h, :h]), X[:, h:], L[h:, :h]),
                      times_lower(X[:, h:], L[h:, h:])], 1)


@dataclass
class Whitening:
    """A square root S of G on its kept range (G = S Sᵀ restricted to the kept directions), with
    f_aug = Y⁻¹ S f̃, so that C = Yᵀ S⁺ᵀ V Λ^{1/2} and C⁻¹ = Y⁻¹ S V Λ^{-1/2}: any square root
    gives the same C (S = S₀ O for an orthogonal O moves the right singular vectors of
    F Y⁻¹ S to Oᵀ V). Kept as its data block R (d, k′): S = R, or with ``slot_first``
    (centred, with the slot) S = [[0, R], [1, 0]], column 0 the slot with D = 1, so that no
    (d+1)² matrix is formed. ``lower``: R is G's (block's) lower-triangular Cholesky factor,
    whose products skip its zero half; else R = U D^{1/2} with orthonormal U."""

    R: Tensor
    slot_first: bool
    lower: bool

    def _pinv_T_R(self, V: Tensor) -> Tensor:
        """R⁺ᵀ V: R⁻ᵀ V by a triangular solve, or U D^{-1/2} V = R D⁻¹ V (D = R's squared column
        norms)."""
        if self.lower:
            return torch.linalg.solve_triangular(self.R.T, V, upper=True)
        return (self.R / self.R.square().sum(0)) @ V

    def _right_R(self, X: Tensor) -> Tensor:
        return times_lower(X, self.R) if self.lower else X @ self.R

    def _left_R(self, V: Tensor) -> Tensor:
        return lower_times(self.R, V) if self.lower else self.R @ V

    def right(self, X: Tensor) -> Tensor:
        """X S for X (m, d_aug)."""
        if not self.slot_first:
            return self._right_R(X)
        return torch.cat([X[:, -1:], self._right_R(X[:, :-1])], 1)

    def left(self, V: Tensor) -> Tensor:
        """S V for V (k_G, m)."""
        if not self.slot_first:
            return self._left_R(V)
        return torch.cat([self._left_R(V[1:]), V[:1]], 0)

    def unwhiten_T(self, V: Tensor) -> Tensor:
        """S⁺ᵀ V for V (k_G, m)."""
        if not self.slot_first:
            return self._pinv_T_R(V)
        return torch.cat([self._pinv_T_R(V[1:]), V[:1]], 0)


@serial_lapack
def _cholesky(A: Tensor) -> tuple[Tensor, Tensor]:
    """(L, info) of torch.linalg.cholesky_ex, on one CPU thread."""
    return torch.linalg.cholesky_ex(A)


def _cholesky_if_well_conditioned(block: Tensor, tol_G: float, floor: float = 0.0) -> Steps[Tensor | None]:
    """The Cholesky factor of ``block`` when every eigenvalue exceeds max(tol_G·λ_max, floor),
    else None.

    Sufficient and cheap (no eigendecomposition): block − τI is positive definite with
    τ = max(tol_G·‖block‖_F, floor) ≥ max(tol_G·λ_max, floor). Where it fails the caller
    truncates with eigh. The test's factorisation and block's own are independent, so they are
    asked for together."""
    tau = (tol_G * torch.linalg.matrix_norm(block)).clamp_min(floor)
    if tau <= 0:
        return None
    shifted = block.clone()
    shifted.diagonal().sub_(tau)
    (_, info_shifted), (L, info) = yield (Call(_cholesky, shifted), Call(_cholesky, block))
    return L if int(info_shifted) == 0 and int(info) == 0 else None


def whitening(G: Tensor, center: bool, include_bias: bool, tol_G: float,
              rows: Tensor | None = None, floor: float = 0.0) -> Steps[Whitening]:
    """S with G = S Sᵀ on the directions kept at tol_G and ``floor`` (:func:`rounding_floor`): a
    Cholesky factor when G (its covariance block when centred with the slot) is well conditioned
    at them, so that nothing is dropped (O(d³/3), no eigendecomposition), else U D^{1/2} from
    eigh with D_i ≤ max(tol_G·max D, floor) dropped. With ``rows`` (fewer samples than
    dimensions, so G is singular): U D^{1/2} from their SVD (:func:`_kept_eig`), and no Cholesky
    is tried."""
    slot_first = center and include_bias
    block = data_block(G, center, include_bias)
    Lc = None if rows is not None else (yield from _cholesky_if_well_conditioned(block, tol_G, floor))
    if Lc is not None:
        return Whitening(Lc, slot_first, True)
    U, D = yield from _kept_eig(block, tol_G, rows, floor)
    return Whitening(U * D.sqrt(), slot_first, False)


@serial_lapack
def _psd_factor(M: Tensor) -> Tensor:
    """F with M = Fᵀ F (see :func:`gram_factor`), on one CPU thread."""
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) == 0:
        return L.T
    vals, vecs = torch.linalg.eigh(M)
    keep = vals > 0
    return vals[keep].sqrt()[:, None] * vecs[:, keep].T


def gram_factor(M: Tensor, P: Tensor | None = None) -> Tensor:
    """F with Pᵀ M P = Fᵀ F for the PSD matrix M (r, r); P: (r, d). F = Lᵀ P from the Cholesky
    factor M = L Lᵀ when M is positive definite, else from the eigendecomposition of M (its
    positive part; F has one row per positive eigenvalue). The product with P keeps every thread."""
    F = _psd_factor((M + M.T) / 2)
    return F if P is None else F @ P


def rotation_steps(G: Tensor, F: Tensor | None, mean: Tensor, *, center: bool, include_bias: bool,
                   tol_G: float, tol_M: float, scaling: str = "sqrt", kind: str = "interaction",
                   floor: float = 0.0, white: Whitening | None = None, rows: Tensor | None = None
                   ) -> Steps[Rotation]:
    """Rotation of one node layer. G: (d_aug, d_aug) float64; mean: (d,); F: (r, d_aug), a
    factor of the Jacobian Gram M = Fᵀ F (from :func:`gram_factor`); floor: G's absolute floor
    (:func:`rounding_floor`).

    M̃ = (F C⁻¹_W)ᵀ (F C⁻¹_W) is diagonalised by the SVD of F C⁻¹_W (r × k_G), which is cheaper
    than an eigendecomposition when the Jacobians have low rank (a Linear head makes r = d_out+1)
    and avoids squaring the condition number.

    kind="interaction": the interaction basis above. kind="pca": C = Yᵀ U, Λ = D (activation
    PCA, no Jacobians). kind="neuron": C = Yᵀ (the neurons, centred when ``center``), Λ = diag G.
    ``white``: G's :func:`whitening`, when it was made beforehand; ``rows``: R with RᵀR = G's
    decomposed block when there are fewer samples than dimensions (:func:`_kept_eig`).
    """
    n_data = mean.shape[0]
    slot_first = center and include_bias
    if kind == "neuron":
        eye = torch.eye(G.shape[0], dtype=torch.float64, device=mean.device)
        order = ([n_data] + list(range(n_data))) if slot_first else list(range(G.shape[0]))
        C, Cinv = _times_YT(mean, eye, slot_first)[:, order], _times_Yinv(mean, eye, slot_first)[:, order]
        return Rotation(C, Cinv, torch.diagonal(G)[order].clone(), slot_first)
    if kind == "pca":
        U, D, bias_dir = yield from _activation_eig(G, center, include_bias, tol_G, rows, floor)
        C, Cinv = _fix_signs(_times_YT(mean, U, slot_first), _times_Yinv(mean, U, slot_first), n_data)
        return Rotation(C, Cinv, D, bias_dir)
    if kind != "interaction":
        raise ValueError(f"kind must be 'interaction', 'pca' or 'neuron', got {kind!r}")
    if white is None:
        white = yield from whitening(G, center, include_bias, tol_G, rows, floor)
    bias_dir = white.slot_first
    Ft = white.right(_right_times_Yinv(mean, F, slot_first))   # F Y⁻¹ S: M̃ = Ftᵀ Ft
    if bias_dir:
        lam, V = yield from _svd_eig_steps(Ft[:, 1:])
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
        lam, V = yield from _svd_eig_steps(Ft)
        keep = _keep(lam, tol_M)
        lam, V = lam[keep], V[:, keep]
    if scaling not in ("sqrt", "inverse"):
        raise ValueError(f"scaling must be 'sqrt' or 'inverse', got {scaling!r}")
    s = lam.sqrt() if scaling == "sqrt" else 1.0 / lam.sqrt()
    C = _times_YT(mean, white.unwhiten_T(V), slot_first) * s   # Wᵀ V, f̃ = W f_aug, W = S⁺ Y
    Cinv = _times_Yinv(mean, white.left(V), slot_first) / s
    C, Cinv = _fix_signs(C, Cinv, n_data)
    return Rotation(C, Cinv, lam, bias_dir)


def rotate_all(layers: Sequence[tuple[Tensor, Tensor | None, Tensor, Tensor | None]],
               floors: Sequence[float] | None = None, **options: Any) -> list[Rotation]:
    """:func:`rotation_steps` of independent layers, (G, F, mean, rows) each, with the same
    keyword ``options``: their decompositions run side by side
    (:func:`~intermod.analysis.core.lapack.run_steps`)."""
    floors = [0.0] * len(layers) if floors is None else floors
    return run_steps([rotation_steps(G, F, mean, rows=rows, floor=floor, **options)
                      for (G, F, mean, rows), floor in zip(layers, floors)])
