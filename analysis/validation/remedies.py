"""Remedies for finite-sample mixing of near-degenerate directions (paper §6.2).

With i.i.d. samples, the sampling covariance between two independent modules is O(1/√n), so
directions i, j of different modules whose Λ_i ≈ Λ_j are rotated into each other by an angle
of order δ/|Λ_i − Λ_j|. The interaction basis is not unique inside a group of (near-)equal
Λ: any rotation Q of the group keeps the Jacobian Gram the identity (Qᵀ I Q = I) and changes
E[f̂ f̂ᵀ] = Λ only by the spread of Λ inside the group. :func:`rerotate_degenerate` uses that
freedom: inside each group it picks the rotation that makes the coordinates *statistically
independent* (symmetric FastICA with an orthogonal unmixing matrix). Directions computed by
different independent modules are independent, mixtures of them are not, so the rotation that
maximises independence undoes the cross-module mixing without any module labels.

:func:`noise_epsilon` attacks the other side of the problem: instead of removing the leaked
edges it chooses ε above them. It bootstraps the whole pipeline (basis and edges on resampled
data), matches every bootstrap direction to a reference direction (Hungarian assignment on
|correlation| of the coordinates), and calls an edge *insignificant* when its strength is
within ``z`` bootstrap deviations of zero, w < z·dev. √ε is set to the largest insignificant
strength, so at that ε no edge that the bootstrap cannot tell from noise carries any ŵ.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..core.activations import node_activations
from ..core.basis import Basis, LayerBasis, compute_basis
from ..core.edges import build_graph
from ..core.graph import InteractionGraph
from ..core.layout import Layout

__all__ = ["NoiseEstimate", "degenerate_groups", "energy_dependence", "layer_samples",
           "match_directions", "noise_epsilon", "orthogonal_ica", "rerotate_degenerate", "rerotate_layer"]


def layer_samples(model: nn.Module, inputs: torch.Tensor, basis: Basis, layers: Sequence[str],
                  batch_size: int = 4096) -> dict[str, np.ndarray]:
    """The activations of ``layers`` as samples in each layer's layout (a conv map: one sample
    per image and position): layer -> float64 array (n·P, d_l)."""
    acts = node_activations(model, inputs, layers, batch_size)
    out = {}
    for name, a in acts.items():
        x = Layout(basis[name].layout).to_samples(a)
        out[name] = x.reshape(-1, x.shape[-1]).numpy()
    return out


def degenerate_groups(Lambda: np.ndarray, rel_gap: float) -> list[np.ndarray]:
    """Groups of near-equal eigenvalues: indices (into ``Lambda``) of runs with
    Λ_{i+1} ≥ (1 − rel_gap) Λ_i along the descending order (single linkage); runs of length
    ≥ 2 only. ``Lambda``: (k,) sorted descending."""
    groups, run = [], [0]
    for i in range(1, len(Lambda)):
        if Lambda[i] >= (1 - rel_gap) * Lambda[i - 1]:
            run.append(i)
        else:
            groups.append(run)
            run = [i]
    groups.append(run)
    return [np.asarray(g) for g in groups if len(g) >= 2]


def _sym_orth(W: np.ndarray) -> np.ndarray:
    """(W Wᵀ)^{-1/2} W: the nearest orthogonal matrix."""
    u, _, vt = np.linalg.svd(W)
    return u @ vt


def orthogonal_ica(Z: np.ndarray, max_iter: int = 500, tol: float = 1e-9) -> np.ndarray:
    """Orthogonal W maximising the independence of the rows of W zᵀ (symmetric FastICA,
    contrast log cosh, started at the identity so already-independent coordinates stay put).

    Z: (n, m), centred and roughly white. Update: W ← E[tanh(W z) zᵀ] − diag(E[1 − tanh²(W z)]) W,
    then W ← (W Wᵀ)^{-1/2} W, until |diag(W_new W_oldᵀ)| − 1 < tol. Returns W (m, m).
    """
    W = np.eye(Z.shape[1])
    for _ in range(max_iter):
        Y = np.tanh(Z @ W.T)                                         # (n, m)
        W_new = _sym_orth(Y.T @ Z / len(Z) - np.diag((1 - Y**2).mean(0)) @ W)
        if np.max(np.abs(np.abs(np.einsum("ij,ij->i", W_new, W)) - 1)) < tol:
            return W_new
        W = W_new
    return W


def energy_dependence(Z: np.ndarray) -> float:
    """Mean |corr(z_i², z_j²)| over pairs i < j of the columns of Z (n, m): zero for
    independent coordinates, positive for mixtures of independent non-Gaussian sources."""
    S = Z**2
    S = S - S.mean(0)
    norms = np.sqrt((S**2).sum(0))
    R = (S.T @ S) / np.outer(norms, norms)
    return float(np.abs(R[np.triu_indices(Z.shape[1], 1)]).mean())


def _match(W: np.ndarray) -> np.ndarray:
    """Permute and sign the rows of W so that component i is the one closest to old
    direction i (max Σ |W_ii| assignment) with W_ii > 0."""
    rows, cols = linear_sum_assignment(-np.abs(W))
    P = np.zeros_like(W)
    P[cols, :] = W[rows, :]
    return P * np.where(np.diag(P) < 0, -1.0, 1.0)[:, None]


def rerotate_layer(lb: LayerBasis, f: np.ndarray, rel_gap: float, min_gain: float = 2.0
                   ) -> tuple[LayerBasis, int]:
    """Re-rotate the near-degenerate groups of one layer; returns (new basis, directions moved).

    f: activations (n, d_l). For a group g with coordinates Z = (f̂_g − mean)/√mean(Λ_g) and ICA
    rotation W (orthogonal): C_g ← C_g Wᵀ, C⁻¹_g ← C⁻¹_g Wᵀ, Λ_g ← diag(W diag(Λ_g) Wᵀ).
    The rotation is kept only if it lowers :func:`energy_dependence` by more than
    ``min_gain``/√n (its sampling noise is ~1/√n): for Gaussian coordinates (e.g. Gaussian
    inputs) every rotation is equally independent and ICA would only add noise. The constant
    direction (index 0 when ``bias_direction``) is never moved.
    """
    first = int(lb.bias_direction)
    C, Cinv, Lam = lb.C.copy(), lb.Cinv.copy(), lb.Lambda.copy()
    fhat = lb.transform(f)
    moved = 0
    for g in degenerate_groups(Lam[first:], rel_gap):
        g = g + first
        Z = fhat[:, g] - fhat[:, g].mean(0)
        Z = Z / np.sqrt(Lam[g].mean())
        W = _match(orthogonal_ica(Z))
        if energy_dependence(Z) - energy_dependence(Z @ W.T) <= min_gain / np.sqrt(len(Z)):
            continue
        C[:, g], Cinv[:, g] = C[:, g] @ W.T, Cinv[:, g] @ W.T
        Lam[g] = (W**2) @ Lam[g]
        moved += len(g)
    return replace(lb, C=C, Cinv=Cinv, Lambda=Lam), moved


def rerotate_degenerate(model: nn.Module, inputs: torch.Tensor, basis: Basis, *,
                        rel_gap: float = 0.1, min_gain: float = 2.0, layers: Sequence[str] | None = None,
                        batch_size: int = 4096) -> Basis:
    """Basis with every group of near-equal Λ (relative gap < ``rel_gap``) re-rotated to
    independent coordinates (see the module docstring). Use it between ``compute_basis``
    and ``build_graph``::

        basis = ia.compute_basis(model, x, layers)
        basis = rerotate_degenerate(model, x, basis, rel_gap=0.1)
        graph = ia.build_graph(model, x, basis)

    inputs: the tensor the basis was computed on (n, …). ``layers``: which node layers to
    re-rotate (default all); ``min_gain``: see :func:`rerotate_layer`. ``basis.options["rerotate"]`` records the settings and how many
    directions were moved per layer.
    """
    names = list(basis.layers if layers is None else layers)
    acts = layer_samples(model, inputs, basis, names, batch_size=batch_size)
    new, moved = {}, {}
    for name in basis.layers:
        if name in acts:
            new[name], moved[name] = rerotate_layer(basis[name], acts[name], rel_gap, min_gain)
        else:
            new[name] = basis[name]
    options = dict(basis.options,
                   rerotate={"rel_gap": rel_gap, "min_gain": min_gain, "moved": moved})
    return Basis(new, options, basis.n_samples, output_fn=basis.output_fn)


def match_directions(ref: LayerBasis, other: LayerBasis, f: np.ndarray) -> np.ndarray:
    """For each direction of ``ref``, the index of the direction of ``other`` whose
    coordinates on the activations f (n, d_l) correlate most in absolute value, by a one-to-one
    (Hungarian) assignment; −1 where ``other`` has fewer directions. The constant directions
    are matched to each other. Returns int array (ref.k,)."""
    a, b = ref.transform(f), other.transform(f)
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    corr = np.abs(a.T @ b) / np.outer(np.where(na > 0, na, 1), np.where(nb > 0, nb, 1))
    if ref.bias_direction and other.bias_direction:
        corr[0, :], corr[:, 0], corr[0, 0] = 0.0, 0.0, 1.0
    rows, cols = linear_sum_assignment(-corr)
    perm = -np.ones(ref.k, dtype=np.int64)
    perm[rows] = cols
    return perm


@dataclass
class NoiseEstimate:
    """Result of :func:`noise_epsilon`.

    epsilon: the chosen ε (√ε = largest insignificant strength); deviation: per adjacent layer
    pair, the RMS bootstrap deviation of w (k_dst, k_src), aligned with ``graph.edge_matrix``;
    n_insignificant / n_edges: edges with 0 < w < z·dev / with w > 0; n_boot, z.
    """

    epsilon: float
    deviation: list[np.ndarray]
    n_insignificant: int
    n_edges: int
    n_boot: int
    z: float


def noise_epsilon(model: nn.Module, inputs: torch.Tensor, basis: Basis, graph: InteractionGraph,
                  *, n_boot: int = 8, z: float = 2.0, seed: int = 0,
                  batch_size: int = 512) -> NoiseEstimate:
    """ε from the bootstrap noise of the edge estimates (see the module docstring).

    ``basis`` and ``graph`` are the reference computed on ``inputs`` (n, …); every bootstrap
    recomputes both on n rows drawn with replacement, with the reference basis's options.
    dev_ij = sqrt(mean_b (w^b_{π(i)π(j)} − w_ij)²) over the bootstraps (π: matched directions).
    Cost: n_boot times ``compute_basis`` + ``build_graph``. The result is capped at ε = 0.5
    (``find_modules`` takes ε in (0, 1)).
    """
    opts = {k: v for k, v in basis.options.items() if k not in ("layers", "dtype")}
    dtype = getattr(torch, basis.options.get("dtype", "float64"))
    layers = basis.layers
    acts = layer_samples(model, inputs, basis, layers)
    rng = np.random.default_rng(seed)
    ref = [graph.edge_matrix(a, b) for a, b in itertools.pairwise(layers)]
    sq = [np.zeros_like(w) for w in ref]
    cnt = [np.zeros_like(w) for w in ref]
    n = inputs.shape[0]
    for _ in range(n_boot):
        idx = torch.from_numpy(rng.integers(0, n, n))
        bb = compute_basis(model, inputs[idx], layers, dtype=dtype, batch_size=batch_size,
                           progress=False, **opts)
        gb = build_graph(model, inputs[idx], bb, batch_size=batch_size, dtype=dtype,
                         progress=False)
        perm = {name: match_directions(basis[name], bb[name], acts[name]) for name in layers}
        for j, (a, b) in enumerate(itertools.pairwise(layers)):
            wb = gb.edge_matrix(a, b)
            pd, ps = perm[b], perm[a]
            ok = np.outer(pd >= 0, ps >= 0)
            aligned = np.zeros_like(ref[j])
            aligned[np.ix_(pd >= 0, ps >= 0)] = wb[np.ix_(pd[pd >= 0], ps[ps >= 0])]
            sq[j] += np.where(ok, (aligned - ref[j]) ** 2, 0.0)
            cnt[j] += ok
    dev = [np.sqrt(s / np.maximum(c, 1)) for s, c in zip(sq, cnt)]
    w, d = np.concatenate([x.ravel() for x in ref]), np.concatenate([x.ravel() for x in dev])
    insig = (w > 0) & (w < z * d)
    sqrt_eps = float(w[insig].max()) if insig.any() else float(w[w > 0].min())
    return NoiseEstimate(min(sqrt_eps**2, 0.5), dev, int(insig.sum()), int((w > 0).sum()),
                         n_boot, z)
