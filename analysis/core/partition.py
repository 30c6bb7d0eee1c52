"""Module search on the interaction graph (paper §5.2.3).

At noise scale ε an interaction of strength w carries ŵ = max(0, ln(w/√ε)) nats of
"unit-strength interaction"; nothing at or below √ε. The cost of a partition is

    cost(P) = Σ_{edges e between different modules} ŵ_e      (also / ln(1/√ε): units cut)

and the search maximises a Leiden quality on the ŵ graph: CPM, Σ_within ŵ − γ Σ_c n_c(n_c−1)/2
(i.e. minimises cost + γ·pairs), or RB-configuration modularity with resolution γ; or hits a
target number of modules by bisection on γ. igraph's ``community_leiden`` does CPM and
modularity; leidenalg is used when nodes are held fixed (``fixed``).
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import igraph as ig
import numpy as np

from .graph import InteractionGraph
from .progress import Callback
from .reprs import summary_repr

OBJECTIVES = ("cpm", "modularity")
MAX_ROUNDS = 50
_RNG_LOCK = threading.Lock()


def cutoff_strength(w: np.ndarray, epsilon: float) -> np.ndarray:
    """ŵ = max(0, ln(w/√ε)), elementwise (0 for w = 0)."""
    _check_epsilon(epsilon)
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.maximum(0.0, np.log(w) - 0.5 * math.log(epsilon))


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and 0 < epsilon < 1):
        raise ValueError(f"epsilon must be a number in (0, 1), got {epsilon!r}")


@dataclass
class Module:
    id: int
    nodes: list[int]
    size: int
    sizes_by_layer: dict[str, int]
    internal: float       # Σ ŵ of edges inside the module
    cut: float            # Σ ŵ of edges leaving it


class Score(float):
    """The cost of a partition in nats; a float, with ``cost_units`` (cost / ln(1/√ε)) and
    ``n_cut_edges`` (edges with ŵ > 0 between different modules) attached."""

    cost_units: float
    n_cut_edges: int

    def __new__(cls, cost: float, cost_units: float, n_cut_edges: int) -> Score:
        obj = super().__new__(cls, cost)
        obj.cost_units, obj.n_cut_edges = float(cost_units), int(n_cut_edges)
        return obj

    @property
    def cost(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return f"Score(cost={float(self)!r}, cost_units={self.cost_units!r}, n_cut_edges={self.n_cut_edges})"


class Comparison(dict):
    """{"ari": …, "nmi": …}, also readable as attributes (``.ari``, ``.nmi``)."""

    def __getattr__(self, name: str) -> float:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


OBJECTIVE_ALIASES = {"cpm": "cpm", "modularity": "modularity", "rb": "modularity",
                     "rbconfiguration": "modularity", "rb_configuration": "modularity",
                     "rb-configuration": "modularity"}


@dataclass
class Partition:
    membership: np.ndarray
    modules: list[Module]
    cost: float
    cost_units: float
    quality: float
    epsilon: float
    objective: str
    resolution: float
    seed: int
    inactive: list[int] = field(default_factory=list)

    __repr__ = summary_repr

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["membership"] = self.membership.tolist()
        d["n_modules"] = self.n_modules
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Partition:
        d = {k: v for k, v in d.items() if k != "n_modules"}
        d["membership"] = np.asarray(d["membership"], dtype=np.int64)
        d["modules"] = [Module(**m) for m in d["modules"]]
        return cls(**d)


def _membership_array(graph: InteractionGraph, membership: Any) -> np.ndarray:
    m = np.asarray(membership.membership if isinstance(membership, Partition) else membership)
    if m.ndim != 1 or m.shape[0] != graph.n_nodes:
        raise ValueError(f"membership must have one entry per graph node ({graph.n_nodes}), got shape {m.shape}")
    if m.size and not np.issubdtype(m.dtype, np.integer):
        if not np.all(np.mod(m, 1) == 0):
            raise ValueError("membership entries must be integers (−1 = outside the partition)")
    m = m.astype(np.int64)
    if (m < -1).any():
        raise ValueError("membership entries must be >= −1 (−1 = outside the partition)")
    return m


def partition_cost(graph: InteractionGraph, membership: Any, epsilon: float) -> Score:
    """Cost of any partition: Σ ŵ over edges whose ends are in different modules.

    Nodes labelled −1 are outside the partition; edges touching them are not counted.
    """
    m = _membership_array(graph, membership)
    w_hat = cutoff_strength(graph.w, epsilon)
    a, b = m[graph.src], m[graph.dst]
    cut = (a != b) & (a >= 0) & (b >= 0) & (w_hat > 0)
    cost = float(w_hat[cut].sum())
    return Score(cost, cost / (-0.5 * math.log(epsilon)), int(cut.sum()))


def _quality(objective: str, labels: np.ndarray, src: np.ndarray, dst: np.ndarray,
             w_hat: np.ndarray, resolution: float) -> float:
    """CPM: Σ_within ŵ − γ Σ_c n_c(n_c−1)/2; modularity: Σ_c [W_c/m − γ (K_c/2m)²].

    labels: module of every node (−1: not partitioned); src, dst, w_hat: the active edges.
    """
    within = labels[src] == labels[dst]
    sizes = np.bincount(labels[labels >= 0])
    if objective == "cpm":
        return float(w_hat[within].sum() - resolution * (sizes * (sizes - 1) / 2).sum())
    m = w_hat.sum()
    if m == 0:
        return 0.0
    W = np.bincount(labels[src][within], weights=w_hat[within], minlength=len(sizes))
    K = np.bincount(labels[src], weights=w_hat, minlength=len(sizes)) + \
        np.bincount(labels[dst], weights=w_hat, minlength=len(sizes))
    return float((W / m - resolution * (K / (2 * m)) ** 2).sum())


def _leiden(g: ig.Graph, weights: np.ndarray, objective: str, resolution: float, seed: int,
            fixed: np.ndarray | None, initial: np.ndarray | None) -> np.ndarray:
    """Leiden labels of every node of g (edges of weight 0 carry nothing)."""
    if fixed is not None:
        import leidenalg as la

        cls = la.CPMVertexPartition if objective == "cpm" else la.RBConfigurationVertexPartition
        part = cls(g, weights=weights.tolist(), resolution_parameter=resolution,
                   initial_membership=None if initial is None else initial.tolist())
        opt = la.Optimiser()
        opt.set_rng_seed(seed)
        for _ in range(MAX_ROUNDS):
            if opt.optimise_partition(part, n_iterations=1, is_membership_fixed=fixed.tolist()) <= 0:
                break
        return np.asarray(part.membership, dtype=np.int64)
    # Leiden rounds from the previous membership until the quality stops rising (at most
    # MAX_ROUNDS): igraph's own "until stable" (n_iterations=-1) can cycle forever on some graphs.
    membership = None if initial is None else initial.tolist()
    best = -math.inf
    with _RNG_LOCK:  # igraph draws from a process-wide RNG: seed it, run, restore
        ig.set_random_number_generator(random.Random(seed))
        try:
            for _ in range(MAX_ROUNDS):
                cl = g.community_leiden(objective_function="CPM" if objective == "cpm" else "modularity",
                                        weights=weights, resolution=resolution, beta=0.01,
                                        n_iterations=2, initial_membership=membership)
                membership = cl.membership
                if cl.quality <= best + 1e-12 * max(1.0, abs(best)):
                    break
                best = cl.quality
        finally:
            ig.set_random_number_generator(random)
    return np.asarray(membership, dtype=np.int64)


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel modules 0, 1, … in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse]


def find_modules(graph: InteractionGraph, epsilon: float = 1e-4, *, objective: str = "cpm",
                 resolution: float = 0.05, n_modules: int | None = None, seed: int = 0,
                 n_restarts: int = 1, include_bias: bool = False,
                 fixed: dict[int, int] | None = None, callback: Callback | None = None) -> Partition:
    """Partition the interaction graph into modules (see the module docstring for the maths).

    Only *active* nodes (with at least one edge of ŵ > 0) are partitioned; the others are
    reported in ``inactive`` with membership −1, as is the constant (bias) direction unless
    ``include_bias``. ``n_modules=k`` bisects γ (log scale) until k modules of active nodes are
    found. ``n_restarts`` runs seeds seed … seed+n−1 and keeps the best quality; the same seed
    gives the same answer. ``fixed`` maps node ids to module labels held fixed (leidenalg).
    ``callback(stage, done, total)`` is called after every Leiden run ("restarts", and
    "bisection" while ``n_modules`` searches γ); an exception it raises aborts the search.
    """
    _check_epsilon(epsilon)
    if not isinstance(objective, str) or objective.lower() not in OBJECTIVE_ALIASES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (or 'rb' / 'rb_configuration' for "
                         f"modularity), got {objective!r}")
    objective = OBJECTIVE_ALIASES[objective.lower()]
    if not (math.isfinite(resolution) and resolution >= 0):
        raise ValueError(f"resolution must be a finite number >= 0, got {resolution!r}")
    if n_restarts < 1:
        raise ValueError(f"n_restarts must be >= 1, got {n_restarts}")
    w_hat = cutoff_strength(graph.w, epsilon)
    excluded = np.zeros(graph.n_nodes, dtype=bool) if include_bias else graph.is_bias
    keep = (w_hat > 0) & ~excluded[graph.src] & ~excluded[graph.dst]
    active = np.zeros(graph.n_nodes, dtype=bool)
    active[graph.src[keep]] = active[graph.dst[keep]] = True
    weights = np.where(keep, w_hat, 0.0)            # one igraph per graph, weights per call
    src, dst, wk = graph.src[keep], graph.dst[keep], w_hat[keep]
    g = _igraph(graph)
    fixed_mask = initial = None
    if fixed:
        fixed_mask = np.zeros(graph.n_nodes, dtype=bool)
        initial = np.arange(graph.n_nodes)
        for node, label in fixed.items():
            if not (0 <= node < graph.n_nodes and active[node]):
                raise ValueError(f"fixed node {node} is not an active node at this epsilon")
            fixed_mask[node] = True
            initial[node] = graph.n_nodes + label
        initial = _canonical(initial)

    def run(gamma: float, seeds: range, stage: str = "restarts") -> tuple[np.ndarray, float]:
        """Best labels of the active nodes (−1 elsewhere) over ``seeds``, and their quality."""
        best, best_q = -np.ones(graph.n_nodes, dtype=np.int64), 0.0
        if not active.any():
            return best, best_q
        best_q = -math.inf
        for done, sd in enumerate(seeds, 1):
            labels = -np.ones(graph.n_nodes, dtype=np.int64)
            labels[active] = _canonical(_leiden(g, weights, objective, gamma, sd, fixed_mask, initial)[active])
            q = _quality(objective, labels, src, dst, wk, gamma)
            if q > best_q + 1e-12:
                best, best_q = labels, q
            if callback is not None:
                callback(stage, done, len(seeds))
        return best, best_q

    if n_modules is not None:
        resolution = _bisect_resolution(run, n_modules, int(active.sum()), float(wk.max()) if len(wk) else 1.0, seed)
    membership, quality = run(resolution, range(seed, seed + n_restarts))
    score = partition_cost(graph, membership, epsilon)
    return Partition(membership, _modules(graph, membership, w_hat), score.cost, score.cost_units,
                     quality, float(epsilon), objective, float(resolution), seed,
                     inactive=np.flatnonzero(~active & ~excluded).tolist())


def _igraph(graph: InteractionGraph) -> ig.Graph:
    """The graph's edges as an igraph.Graph, built once per InteractionGraph (weights are not
    stored on it, so concurrent searches on one graph do not interfere)."""
    cached = graph.__dict__.get("_igraph")
    if cached is None:
        cached = ig.Graph(n=graph.n_nodes)
        cached.add_edges(np.stack([graph.src, graph.dst], 1))
        graph.__dict__["_igraph"] = cached
    return cached


def _bisect_resolution(run, k: int, n_active: int, w_max: float, seed: int) -> float:
    """Resolution giving k modules (bisection on log γ); the closest count if k is never hit."""
    if k < 1 or k > max(n_active, 1):
        raise ValueError(f"n_modules must be between 1 and the number of active nodes ({n_active}), got {k}")

    def count(gamma: float) -> int:
        labels, _ = run(gamma, range(seed, seed + 1), "bisection")
        return len(np.unique(labels[labels >= 0]))

    lo, hi = 1e-9, max(w_max, 1.0)
    while count(hi) < k and hi < 1e12:
        hi *= 4
    best_gamma, best_gap = hi, abs(count(hi) - k)
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        c = count(mid)
        if abs(c - k) < best_gap or (abs(c - k) == best_gap and mid < best_gamma):
            best_gamma, best_gap = mid, abs(c - k)
        if c == k:
            return mid
        if c < k:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return best_gamma


def _modules(graph: InteractionGraph, membership: np.ndarray, w_hat: np.ndarray) -> list[Module]:
    """The module table, vectorised over edges (bincount), not a loop over modules × edges."""
    n_mod = int(membership.max()) + 1 if membership.size else 0
    if n_mod == 0:
        return []
    a, b = membership[graph.src], membership[graph.dst]
    both = (a >= 0) & (b >= 0)
    same = both & (a == b)
    internal = np.bincount(a[same], weights=w_hat[same], minlength=n_mod)
    cross = both & (a != b)
    cut = (np.bincount(a[cross], weights=w_hat[cross], minlength=n_mod)
           + np.bincount(b[cross], weights=w_hat[cross], minlength=n_mod))
    labelled = np.flatnonzero(membership >= 0)
    layer_idx = graph.layer_index
    per_layer = np.zeros((n_mod, len(graph.layers)), dtype=np.int64)
    np.add.at(per_layer, (membership[labelled], layer_idx[labelled]), 1)
    order = labelled[np.argsort(membership[labelled], kind="stable")]
    groups = np.split(order, np.cumsum(np.bincount(membership[labelled], minlength=n_mod))[:-1])
    return [Module(m, groups[m].tolist(), len(groups[m]),
                   dict(zip(graph.layers, per_layer[m].tolist())), float(internal[m]), float(cut[m]))
            for m in range(n_mod)]


def compare_partitions(a: Any, b: Any) -> Comparison:
    """Adjusted Rand index and normalised mutual information of two memberships.

    Entries −1 (outside the partition) in either membership are left out of the comparison.
    """
    ma = np.asarray(a.membership if isinstance(a, Partition) else a)
    mb = np.asarray(b.membership if isinstance(b, Partition) else b)
    if ma.shape != mb.shape or ma.ndim != 1:
        raise ValueError(f"memberships must be 1-D and of equal length, got {ma.shape} and {mb.shape}")
    keep = (ma >= 0) & (mb >= 0)
    if keep.sum() < 2:
        raise ValueError("need at least two nodes labelled in both memberships")
    ca, cb = _canonical(ma[keep]).tolist(), _canonical(mb[keep]).tolist()
    return Comparison(ari=float(ig.compare_communities(ca, cb, method="adjusted_rand")),
                      nmi=float(ig.compare_communities(ca, cb, method="nmi")))
