"""Free-direction counts and ε-ranks of one node layer (paper §3; docs/design.md §1).

Bias slot and d. With a bias, W_aug = [W | b] acts on f_aug = (f, 1): the slot is one more
input coordinate, d_in_aug = d_in + 1. The uncentred Gram E[f_aug f_augᵀ] and the centred
Gram with the slot as its own direction, [[Cov, 0], [0, 1]], are congruent (Y is invertible),
so they have the same rank; we use the latter (docs/design.md: the constant direction never mixes with
data directions), so ``spectrum_G`` is eig(Cov) plus the slot's eigenvalue 1. Without a bias
the relevant Gram is the uncentred E[f fᵀ] (a constant direction c·f = const ≠ 0 is *not* free
without a bias to absorb it) and d_in_aug = d_in.

Counting rules (per consuming ``nn.Linear``, exact for exact ranks):
- activation: every missing direction c of G (c·f_aug(x) = 0 on all data) makes W_aug → W_aug + u cᵀ
  free for all u ∈ R^{d_out}: ``n_free_activation = d_out · (d_in_aug − rank_G)`` (paper §3.1.1);
- Jacobian: with J = ∂y/∂p^{l+1} (the Jacobian Gram at the *output* of W^l, i.e. M at the ReLU's
  input, not at the next node layer, which sits after the ReLU), every missing direction v
  (J(x) v = 0) makes W_aug → W_aug + v wᵀ Hessian-free for all w ∈ R^{d_in_aug}:
  ``n_free_jacobian = d_in_aug · (d_out − rank_J)`` (paper §3.1.2; a Hessian zero, not
  always an exact free direction);
- the two families intersect in the (d_in_aug − rank_G)(d_out − rank_J) directions v cᵀ, counted
  once: ``n_free_overlap`` is subtracted. Together they are exactly the null space of the
  per-sample gradients of W_aug, range(J)ᵀ ⊗ range(G) having dimension rank_J · rank_G;
- ReLU-like layers (paper §3.2; attached to the node layer f^{l+1} = ReLU(p^{l+1}), counted when
  f^{l+1} is consumed by an ``nn.Linear`` W^{l+1}): a block S_a of synchronised neurons allows
  W^l → C W^l, W^{l+1} → W^{l+1} C⁻¹ with C block-diagonal and non-negative on the block: |S_a|²
  directions, |S_a| of which are the per-neuron rescalings every ReLU neuron has. docs/design.md's count
  of the synchronisation proper is Σ_a |S_a|² − d (all blocks, singletons included), reported as
  ``n_free_sync_naive`` = Σ_{|S_a|≥2} |S_a|(|S_a| − 1). It double-counts whatever the activation
  and Jacobian rules already counted: duplicated neurons (their preactivations are dependent),
  dead neurons (they share the "off" pattern, and both their rows and columns are free already),
  neurons ignored downstream. Controlling for both sides (paper eq. 21 does it for the
  preactivations), the directions E ∈ R^{S_a×S_a} that are new modulo the counted ones are those
  with Π_Q E Π_P ≠ 0, where P = span of the block's preactivations over the data and Q = the
  Jacobian directions the block adds to the rest of the layer, so a block contributes

      N_a = s_a · k_a,   s_a = rank_ε E[p_S p_Sᵀ] (eq. 21),
      k_a = |S_a| − rank(rows S of a basis of null_ε J),

  generically (the exact number is the rank of the per-sample products J_S(x)ᵀ p_S(x)ᵀ, which
  s_a·k_a bounds above and equals unless J and p conspire over the data). Singletons give the
  rescalings, n_i = s_i·k_i ∈ {0, 1}: ``n_free_rescaling = Σ_i n_i`` (every neuron that is
  alive and used), and ``n_free_sync = Σ_{|S_a|≥2} (N_a − Σ_{i∈S_a} n_i)`` is what
  synchronisation adds; for independent, alive, used neurons it is docs/design.md's |S_a|² − |S_a|.
- dead neurons (output 0 on every sample, :mod:`.synchrony`) are reported as such
  (``dead_neurons``, ``n_dead``) and belong to no block: they share the "off" pattern, but their
  rows and columns are already counted by the activation and Jacobian rules (k_a = 0 for them),
  so they add nothing to ``n_free_sync`` and are left out of ``n_free_sync_naive`` too.

``n_free = n_free_activation + n_free_jacobian − n_free_overlap + n_free_rescaling + n_free_sync``
per node layer, and ``n_free_lower_bound`` is their sum: a lower bound on the dimension of the
Hessian's null space, n_params − rank H (rigorous for the activation/Jacobian rules, generic for
the ReLU term as said above; only the analysed ``nn.Linear`` s count; other free
directions, e.g. a bias shift through an always-on ReLU layer, are not found). On every
network of ``tests/test_diagnostics.py`` it equals n_params − rank H exactly.

rank_ε (noise scale ε, a behavioural-loss value)
-------------------------------------------------
The behavioural loss is L(θ) = (1/N) Σ_x ‖y(x; θ) − y(x; θ*)‖² (see
:mod:`intermod.analysis.diagnostics.behavioural`). An eigenvalue is compared with ε after converting it to
loss units by the top eigenvalue of its partner Gram:

    rank_ε(G) = #{D_i · λ_max(J) > max(ε, rtol · D_max · λ_max(J))},
    rank_ε(J) = #{κ_i · λ_max(G) > max(ε, …)},   rank_ε(M) = #{μ_i · λ_max(G) > …},

D_i · λ_max(J) is (to the extent f and J are independent over the data) the largest increase
of L from a unit-norm change of W along activation direction i; likewise for the Jacobian
directions. Layers without a partner Gram (the output, unknown consumers) use scale 1 (the
output Gram is already in loss units). The relative floor (1e-10 in float64, 1e-6 in float32:
the core's ``default_tol``) makes ε = 0 the numerical
rank (reported as ``*_numerical``). The behavioural spectrum is the eigenvalues of H/2 =
(1/N)𝒢𝒢ᵀ, already in loss units, compared with ε directly. Approximate synchronisation uses
the paper's eq. 20 measure (activation units²) against ``sync_tol`` (default: ε).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.nodes import OUTPUT
from .behavioural import RTOL, rank_eps
from .results import LayerDiagnostics
from .structure import _Link
from .synchrony import SyncResult


def _eig_desc(A: np.ndarray) -> np.ndarray:
    if A.size == 0:
        return np.zeros(0)
    A = (A + A.T) / 2
    return np.clip(np.linalg.eigvalsh(A)[::-1], 0.0, None).copy()


def _np(t: Any) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().to(torch.float64).cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def _second_moments(lb: Any, center: bool, include_bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """(Cov, E[f fᵀ]) on the d features from a LayerBasis's raw G and mean."""
    G = _np(lb.G)
    mu = _np(lb.mean).reshape(-1)
    d = mu.shape[0]
    S = G[:d, :d]
    if center:
        cov = S
        second = S + np.outer(mu, mu)
    else:
        second = S
        cov = S - np.outer(mu, mu)
    return (cov + cov.T) / 2, (second + second.T) / 2


def _features_M(lb: Any) -> np.ndarray:
    M = _np(lb.M)
    d = _np(lb.mean).reshape(-1).shape[0]
    return M[:d, :d]


def _count_gram(lb: Any, has_bias: bool, center: bool, include_bias: bool) -> np.ndarray:
    """Spectrum of the Gram that decides free activation directions (module docstring)."""
    cov, second = _second_moments(lb, center, include_bias)
    if has_bias:
        return np.sort(np.concatenate([_eig_desc(cov), [1.0]]))[::-1].copy()
    return _eig_desc(second)


def _top(spec: np.ndarray | None) -> float:
    return float(spec.max()) if spec is not None and spec.size else 0.0

def _relu_block_ranks(P2: np.ndarray, J: np.ndarray, blocks: list[list[int]], epsilon: float,
                      rtol: float = RTOL) -> tuple[list[int], list[int], np.ndarray]:
    """(s_a, k_a) for each block and the per-neuron singleton count n_i = s_i·k_i.

    s_a = rank_ε of the block's uncentred preactivation Gram E[p_S p_Sᵀ] (paper eq. 21),
    scaled by λ_max(J); k_a = |S| − rank of the rows S of a basis of null_ε(J) (the Jacobian
    directions the block adds to the rest of the layer), scaled by λ_max(E[p pᵀ]).
    """
    d = J.shape[0]
    sP = _top(_eig_desc(J))
    spec_P = _eig_desc(P2)
    thr_P = max(epsilon, rtol * _top(spec_P) * sP)
    lamJ, vecJ = np.linalg.eigh((J + J.T) / 2)
    sJ = _top(spec_P)
    thr_J = max(epsilon, rtol * max(float(lamJ.max(initial=0.0)), 0.0) * sJ)
    null = vecJ[:, lamJ * sJ <= thr_J] if sJ > 0 and lamJ.max(initial=0.0) > 0 else np.eye(d)

    def s_rank(idx):
        if sP <= 0 or _top(spec_P) <= 0:
            return 0
        return int((_eig_desc(P2[np.ix_(idx, idx)]) * sP > thr_P).sum())

    def k_rank(idx):
        rows = null[idx, :]
        if rows.size == 0:
            return len(idx)
        sv = np.linalg.svd(rows, compute_uv=False)
        return len(idx) - int((sv > 1e-8).sum())

    s_blk = [s_rank(np.asarray(b)) for b in blocks]
    k_blk = [k_rank(np.asarray(b)) for b in blocks]
    n_single = np.array([s_rank(np.asarray([i])) * k_rank(np.asarray([i])) for i in range(d)],
                        dtype=np.int64)
    return s_blk, k_blk, n_single


def layer_diagnostics(name: str, link: _Link, lb: Any, basis: Any, module: nn.Module | None, *,
                      epsilon: float, rtol: float, center: bool, include_bias: bool
                      ) -> LayerDiagnostics:
    """Spectra, ε-ranks and the activation/Jacobian counts of node layer ``name``.

    ``lb``: its LayerBasis in the user's basis (``spectrum_M``); ``basis``: the basis with
    Jacobians of the output at every cut (J at ``link.act``/``link.next``); ``module``: the
    module at the cut (None for the output). The synchronisation counts are added by
    :func:`add_sync_counts`; ``n_free`` is set there too (call it for every layer).
    """
    notes: list[str] = []
    spec_M = _eig_desc(_features_M(lb))
    has_bias = link.linear.bias is not None if link.linear is not None else None
    # G spectrum: for counting when a Linear consumes the layer, else the core's G as is.
    spec_G = (_count_gram(lb, has_bias, center, include_bias) if link.linear is not None
              else _eig_desc(_np(lb.G)))
    spec_J = cut = None
    if link.linear is not None and link.next is not None:
        cut = link.act if link.act is not None else link.next
        spec_J = _eig_desc(_features_M(basis[cut]))
    scale_G = _top(spec_J) if spec_J is not None else 1.0
    scale_M = _top(spec_G) if name != OUTPUT else 1.0
    ld = LayerDiagnostics(
        name=name, dim=int(_np(lb.mean).reshape(-1).shape[0]), spectrum_G=spec_G,
        spectrum_M=spec_M, scale_G=scale_G, scale_M=scale_M,
        rank_G=rank_eps(spec_G, epsilon, scale_G, rtol),
        rank_M=rank_eps(spec_M, epsilon, scale_M, rtol),
        rank_G_numerical=rank_eps(spec_G, 0.0, 1.0, rtol),
        rank_M_numerical=rank_eps(spec_M, 0.0, 1.0, rtol),
        notes=notes)
    if name == OUTPUT:
        notes.append("output layer: no parameters downstream, no counts")
    elif link.note is not None:
        notes.append(link.note)
    elif link.linear is None:
        notes.append(f"module {name!r} is a {type(module).__name__}, not nn.Linear: "
                     "spectra only, no free-direction counts")
    elif link.next is None:
        notes.append(f"the output of {name!r} reaches neither a node layer nor the model "
                     "output through a ReLU-like module: no counts")
    if spec_J is not None:
        d_out, d_in = link.linear.weight.shape
        ld.consumer, ld.has_bias, ld.jacobian_cut = name, has_bias, cut
        ld.d_in_aug = int(d_in + (1 if has_bias else 0))
        ld.d_out = int(d_out)
        ld.spectrum_J = spec_J
        ld.scale_J = _top(spec_G)
        ld.rank_J = rank_eps(spec_J, epsilon, ld.scale_J, rtol)
        ld.rank_J_numerical = rank_eps(spec_J, 0.0, 1.0, rtol)
        ld.missing_G = ld.d_in_aug - ld.rank_G
        ld.missing_J = ld.d_out - ld.rank_J
        ld.n_free_activation = ld.d_out * ld.missing_G
        ld.n_free_jacobian = ld.d_in_aug * ld.missing_J
        ld.n_free_overlap = ld.missing_G * ld.missing_J
        if has_bias and not include_bias:
            notes.append("include_bias=False but the consuming Linear has a bias: the count "
                         "still treats the bias as an input slot (d_in_aug = d_in + 1)")
    return ld


def add_sync_counts(ld: LayerDiagnostics, link: _Link, act: str | None, res: SyncResult | None,
                    pre_lb: Any, *, epsilon: float, rtol: float, center: bool,
                    include_bias: bool) -> None:
    """Blocks, dead neurons and the ReLU counts of the ReLU-like module ``act`` whose output is
    node layer ``ld`` (``res`` its :class:`SyncResult`, ``pre_lb`` the LayerBasis at its input,
    with Jacobians of the output; all None when the layer has no such producer), then
    ``ld.n_free``. ``link``: how the layer itself is consumed (counted only by an nn.Linear)."""
    if act is not None and res is not None:
        ld.nonlinearity = act
        ld.sync_tol = res.tol
        ld.sync_blocks = res.blocks
        ld.sync_blocks_exact = res.blocks_exact
        ld.sync_block_sizes = [len(b) for b in res.blocks]
        ld.sync_measures = res.measures
        ld.dead_neurons, ld.n_dead = res.dead, len(res.dead)
        _, P2 = _second_moments(pre_lb, center, include_bias)
        J = _features_M(pre_lb)
        s_blk, k_blk, n_single = _relu_block_ranks(P2, J, res.blocks, epsilon, rtol)
        ld.sync_block_s, ld.sync_block_k = s_blk, k_blk
        if link.linear is None:
            ld.notes.append(f"the output of {act!r} is not consumed by an nn.Linear node "
                            "layer: synchronised blocks reported, not counted")
        else:
            in_big = np.zeros(res.d, dtype=bool)
            for b in res.blocks:
                in_big[np.asarray(b)] = True
            ld.n_free_rescaling = int(n_single.sum())
            ld.n_free_sync = int(sum(k * s_ for k, s_ in zip(k_blk, s_blk))
                                 - n_single[in_big].sum())
        ld.n_free_sync_naive = int(sum(len(b) * (len(b) - 1) for b in res.blocks))
    ld.n_free = int(ld.n_free_activation + ld.n_free_jacobian - ld.n_free_overlap
                    + ld.n_free_sync + ld.n_free_rescaling)
