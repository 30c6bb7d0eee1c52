"""Synchronised neurons in piecewise-linear layers (paper §3.2, eqs. 17, 20).

A ReLU-like layer computes f_i(x) = r_i(x) p_i(x) from its preactivation p, with the firing
pattern (eq. 17)

    r_i(x) = f_i(x) / p_i(x)  if p_i(x) != 0,  else 1,

so r ∈ {0, 1} for ReLU and r ∈ {slope, 1} for LeakyReLU/PReLU. Neurons i and j are
*synchronised* when r_i(x) = r_j(x) on every sample (an equivalence relation: the blocks S_a).

Approximate synchronisation (eq. 20). The scrape prints the summand as
(r_i p_i − r_i p_{i'})², which does not vanish for two synchronised neurons with different
preactivations; we read it as the change of neuron i's output when it uses neuron i′'s pattern,
(r_i(x) − r_{i'}(x)) p_i(x). Summed over ordered pairs of a block this gives

    |r_a|² = Σ_{i<i' ∈ S_a} δ²_{ii'},   δ²_{ij} = (1/n) Σ_x (r_i(x) − r_j(x))² (p_i(x)² + p_j(x)²),

in activation units squared; |r_a|² = 0 exactly for a synchronised block. A block is
approximately synchronised at tolerance τ when |r_a|² ≤ τ. Because |r_a|² only grows when a
block grows, blocks are formed by greedy agglomeration (start from the exact blocks, merge the
pair of blocks whose union has the smallest |r_a|², stop when every union would exceed τ); every
reported block satisfies |r_a|² ≤ τ, and no block lies across two connected components of the
graph {δ²_ij ≤ τ}.

Dead neurons. A neuron whose output f_i(x) is 0 on every sample (a ReLU that never fires on
the data) is *dead*: it is reported on its own (``SyncResult.dead``) and placed in no block, exact
or approximate. Dead neurons share the "off" pattern, but that is no synchronisation: the
weights into and out of them are free already (missing activation and Jacobian directions).

Everything streams over batches with O(d²) memory: the pairwise matrix is assembled from
d×d moment matrices (see :class:`SyncAccumulator`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn

#: Modules treated as ReLU-like (two linear pieces meeting at 0, so f = r·p with r piecewise
#: constant). Functional calls (``F.relu``) are invisible to hooks and are not detected.
RELU_LIKE = (nn.ReLU, nn.LeakyReLU, nn.PReLU)


def firing_pattern(p: Tensor, f: Tensor) -> Tensor:
    """r = f / p where p != 0, else 1 (eq. 17). Shapes (..., d) -> (..., d)."""
    nz = p != 0
    safe = torch.where(nz, p, torch.ones_like(p))
    return torch.where(nz, f / safe, torch.ones_like(p))


class SyncAccumulator:
    """Streaming moments for the eq. 20 pairwise measure and exact pattern equality.

    With q = p², for samples x (rows) and neurons i, j:

        n·δ²_ij = a_i + a_j + A_ij + A_ji − 2 B_ij − 2 B_ji,
        a_i = Σ r_i² q_i,  A_ij = Σ r_i² q_j,  B_ij = Σ r_i q_i r_j,

    and n·mismatch_ij = Σ (r_i − r_j)² = c_i + c_j − 2 R_ij with c_i = Σ r_i², R = rᵀr
    (pattern values are 0/1 or slope/1, so exact patterns give mismatch exactly 0 up to
    float64 rounding of sums of slopes). ``nonzero_i`` = #{x : f_i(x) ≠ 0} finds dead neurons.
    """

    def __init__(self, d: int, device: torch.device | str = "cpu") -> None:
        self.d = d
        self.n = 0
        z = {"dtype": torch.float64, "device": device}
        self.a = torch.zeros(d, **z)
        self.c = torch.zeros(d, **z)
        self.A = torch.zeros(d, d, **z)
        self.B = torch.zeros(d, d, **z)
        self.R = torch.zeros(d, d, **z)
        self.nonzero = torch.zeros(d, dtype=torch.int64, device=device)

    def add(self, p: Tensor, f: Tensor) -> None:
        """p, f: (..., d) preactivations and activations; leading dims are samples."""
        p = p.detach().to(torch.float64).reshape(-1, self.d)
        f = f.detach().to(torch.float64).reshape(-1, self.d)
        r = firing_pattern(p, f)
        q = p * p
        r2 = r * r
        self.n += p.shape[0]
        self.a += (r2 * q).sum(0)
        self.c += r2.sum(0)
        self.A += r2.T @ q
        self.B += (r * q).T @ r
        self.R += r.T @ r
        self.nonzero += (f != 0).sum(0).to(self.nonzero.device)

    def dead(self) -> list[int]:
        """Neurons whose output was 0 on every sample seen (none before the first sample)."""
        return [] if self.n == 0 else [int(i) for i in torch.nonzero(self.nonzero == 0).flatten()]

    def delta2(self) -> np.ndarray:
        """δ²_ij (d, d), eq. 20 per unordered pair, zero diagonal, clipped at 0."""
        n = max(self.n, 1)
        a = self.a
        D = a[:, None] + a[None, :] + self.A + self.A.T - 2 * self.B - 2 * self.B.T
        D = (D + D.T) / (2 * n)
        D.fill_diagonal_(0.0)
        return D.clamp_min(0.0).cpu().numpy()

    def mismatch(self) -> np.ndarray:
        """(1/n) Σ_x (r_i − r_j)² (d, d): 0 exactly when the patterns are identical."""
        n = max(self.n, 1)
        M = (self.c[:, None] + self.c[None, :] - 2 * self.R) / n
        M.fill_diagonal_(0.0)
        return M.clamp_min(0.0).cpu().numpy()


def exact_blocks(mismatch: np.ndarray, atol: float = 1e-12) -> list[list[int]]:
    """Blocks of neurons with identical firing patterns (all blocks, singletons included).

    ``mismatch`` is :meth:`SyncAccumulator.mismatch`; identical patterns have mismatch 0
    (``atol`` absorbs rounding of non-integer slopes). Sorted by first index.
    """
    d = mismatch.shape[0]
    label = -np.ones(d, dtype=np.int64)
    blocks: list[list[int]] = []
    for i in range(d):
        if label[i] >= 0:
            continue
        members = np.flatnonzero((mismatch[i] <= atol) & (label < 0))
        members = np.union1d(members, [i])
        label[members] = len(blocks)
        blocks.append([int(j) for j in members])
    return blocks


def block_measure(delta2: np.ndarray, block: list[int]) -> float:
    """|r_a|² = Σ_{i<i' in block} δ²_{ii'} (eq. 20)."""
    idx = np.asarray(block)
    return float(delta2[np.ix_(idx, idx)].sum() / 2.0)


def approximate_blocks(delta2: np.ndarray, tol: float,
                       start: list[list[int]] | None = None) -> list[list[int]]:
    """Greedy agglomeration of neurons into blocks with |r_a|² ≤ ``tol`` (all blocks).

    ``start``: initial partition (default: singletons; pass :func:`exact_blocks` so that exact
    blocks are never split). Merging X and Y costs m(X) + m(Y) + Σ_{i∈X, j∈Y} δ²_ij; the
    cheapest admissible merge is done first, ties broken by the smallest indices, so the
    result is deterministic.
    """
    d = delta2.shape[0]
    blocks = [list(b) for b in (start or [[i] for i in range(d)])]
    if tol < 0 or len(blocks) < 2:
        return sorted(blocks, key=lambda b: b[0])
    k = len(blocks)
    label = np.empty(d, dtype=np.int64)
    for b, members in enumerate(blocks):
        label[members] = b
    onehot = np.zeros((d, k))
    onehot[np.arange(d), label] = 1.0
    cross = onehot.T @ delta2 @ onehot                   # Σ_{i∈X, j∈Y} δ²_ij
    meas = np.array([block_measure(delta2, b) for b in blocks])
    # A merge costs at least cross(X, Y): blocks only ever merge inside the connected
    # components of {cross ≤ tol}, so the greedy search runs per component.
    adj = (cross <= tol) & ~np.eye(k, dtype=bool)
    _, comp = connected_components(csr_matrix(adj), directed=False)
    out: list[list[int]] = []
    for c in np.unique(comp):
        idx = np.flatnonzero(comp == c)
        if idx.size == 1:
            out.append(blocks[idx[0]])
            continue
        out.extend(_greedy([blocks[i] for i in idx], meas[idx], cross[np.ix_(idx, idx)], tol))
    return sorted(out, key=lambda b: b[0])


def _greedy(blocks: list[list[int]], meas: np.ndarray, cross: np.ndarray, tol: float
            ) -> list[list[int]]:
    k = len(blocks)
    blocks = [list(b) for b in blocks]
    meas, cross = meas.copy(), cross.copy()
    alive = np.ones(k, dtype=bool)
    while True:
        cost = meas[:, None] + meas[None, :] + cross
        mask = alive[:, None] & alive[None, :] & ~np.eye(k, dtype=bool)
        cost = np.where(mask & (cost <= tol), cost, np.inf)
        flat = int(np.argmin(cost))
        i, j = divmod(flat, k)
        if not np.isfinite(cost[i, j]):
            break
        i, j = min(i, j), max(i, j)
        blocks[i] = sorted(blocks[i] + blocks[j])
        meas[i] = cost[i, j]
        cross[i, :] += cross[j, :]
        cross[:, i] += cross[:, j]
        cross[i, i] = 0.0
        alive[j] = False
    return [blocks[b] for b in range(k) if alive[b]]


@dataclass
class SyncResult:
    """Synchronisation of one ReLU-like layer of width d.

    ``blocks_exact`` / ``blocks``: blocks of size ≥ 2 of live neurons (indices) with identical
    patterns / with eq. 20 measure ≤ ``tol``; ``measures``: |r_a|² of each of ``blocks``;
    ``dead``: neurons whose output is 0 on every sample (in no block);
    ``delta2``: the (d, d) pairwise eq. 20 matrix; ``n``: number of samples.
    """

    d: int
    tol: float
    blocks_exact: list[list[int]]
    blocks: list[list[int]]
    measures: list[float]
    delta2: np.ndarray = field(repr=False)
    n: int = 0
    dead: list[int] = field(default_factory=list)


def synchronisation(acc: SyncAccumulator, tol: float) -> SyncResult:
    """Dead neurons, and exact and approximate (|r_a|² ≤ tol) synchronised blocks of the live
    ones, from accumulated moments."""
    mism = acc.mismatch()
    d2 = acc.delta2()
    dead = acc.dead()
    live = np.setdiff1d(np.arange(acc.d), dead)
    sub = np.ix_(live, live)
    exact = [[int(live[i]) for i in b] for b in exact_blocks(mism[sub])]
    local = [[int(np.searchsorted(live, i)) for i in b] for b in exact]
    approx = [[int(live[i]) for i in b] for b in approximate_blocks(d2[sub], tol, start=local)]
    big = [b for b in approx if len(b) >= 2]
    return SyncResult(d=acc.d, tol=float(tol),
                      blocks_exact=[b for b in exact if len(b) >= 2],
                      blocks=big, measures=[block_measure(d2, b) for b in big],
                      delta2=d2, n=acc.n, dead=dead)
