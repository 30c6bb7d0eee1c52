"""Edge ablation and the choice of ε by ablation (DESIGN.md §1).

Edge ablation keeps a set of edges per section, the N strongest or all with w > √ε, and
computes each output direction from its kept in-edges only, f̂^{l+1}_i = g_i(C⁻¹(m_i ⊙ f̂^l)),
in every section at once (see :func:`.plans.edge_plan`). ε from ablation: the largest ε for
which ablating every edge with w ≤ √ε raises L by at most δ, by bisection on log ε.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ..core.graph import InteractionGraph
from ..core.inputs import Inputs
from .common import graph_ablator, options
from .forward import Ablator
from .loss import LossFn, resolve_tolerance
from .plans import concat, edge_plan

#: ε stays below 1 (the module search needs ε in (0, 1)).
EPSILON_CAP = 0.999


@dataclass
class EdgeAblation:
    """loss: L with only the kept edges; reconstruction_loss: L with every edge kept (the
    projections onto the bases only); n_kept / n_total: edges (w > 0) kept / in the graph;
    n_masks: distinct masks (copies) per section."""

    loss: float
    reconstruction_loss: float
    n_kept: int
    n_total: int
    n_masks: list[int]
    epsilon: float | None
    keep: int | None
    scale: float | None
    loss_name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EdgeAblation:
        return cls(**d)


def keep_matrices(graph: InteractionGraph, *, epsilon: float | None = None,
                  keep: int | None = None) -> list[np.ndarray]:
    """Per section a bool (k_{l+1}, k_l): w > √ε, or the ``keep`` strongest edges (w > 0)."""
    if (epsilon is None) == (keep is None):
        raise ValueError("give exactly one of epsilon= (keep edges with w > √ε) or keep= (the N strongest per section)")
    mats = [graph.edge_matrix(a, b) for a, b in zip(graph.layers, graph.layers[1:])]
    if epsilon is not None:
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        return [m > math.sqrt(epsilon) for m in mats]
    if not (isinstance(keep, (int, np.integer)) and keep >= 0):
        raise ValueError(f"keep must be an integer >= 0, got {keep!r}")
    out = []
    for m in mats:
        flat = np.zeros(m.size, dtype=bool)
        order = np.argsort(-m, axis=None, kind="stable")[:keep]
        flat[order] = True
        out.append(flat.reshape(m.shape) & (m > 0))
    return out


@dataclass
class _EdgeRun:
    loss: float
    reconstruction_loss: float
    n_masks: list[int]
    scale: float | None


def _run_edges(ab: Ablator, graph: InteractionGraph, keep: list[np.ndarray]) -> _EdgeRun:
    """Loss with the edges ``keep`` and with every edge kept, in one pass."""
    plan = edge_plan(graph, keep)
    everything = edge_plan(graph, [np.ones_like(k) for k in keep])
    ev = ab.evaluate(concat([plan, everything]), stage="edge ablation")
    n_masks = [int(np.unique(lp.mask, axis=0).shape[0]) for lp in list(plan.layers.values())[:-1]]
    return _EdgeRun(float(ev.loss[0]), float(ev.loss[1]), n_masks, ev.scale)


def _count(keeps: list[np.ndarray]) -> int:
    return int(sum(k.sum() for k in keeps))


def edge_ablation(model: nn.Module, inputs: Inputs, graph: InteractionGraph, *,
                  epsilon: float | None = None, keep: int | None = None,
                  loss: str | LossFn = "mse", **kw: Any) -> EdgeAblation:
    """Ablate every edge with w ≤ √ε (``epsilon``) or all but the ``keep`` strongest per section.

    One forward pass per distinct mask, batched; all sections in the same pass. Keyword
    options: output_fn, batch_size (rows per forward pass), device, dtype, progress, callback.
    """
    keeps = keep_matrices(graph, epsilon=epsilon, keep=keep)
    ab = graph_ablator(model, inputs, graph, loss=loss, **options(kw))
    run = _run_edges(ab, graph, keeps)
    return EdgeAblation(run.loss, run.reconstruction_loss, _count(keeps), graph.n_edges, run.n_masks,
                        epsilon, keep, run.scale, ab.loss.name)


@dataclass
class EpsilonChoice:
    """ε from ablation.

    epsilon: the largest ε found with L(ε) ≤ δ, where L(ε) is the loss with every edge of
    w ≤ √ε ablated (all sections at once); loss = L(ε); tolerance = δ; curve: every (ε, L,
    edges kept) evaluated, sorted by ε; loss_at_double = L(2ε) (None when 2ε is past the cap)
    and exceeds_at_double = L(2ε) > δ (True when 2ε is past the cap and L(cap) > δ);
    capped: ablating up to the cap stays within δ; feasible: False when even ablating nothing
    (the reconstruction loss) exceeds δ (then epsilon is the smallest value tried).
    """

    epsilon: float
    loss: float
    tolerance: float
    reconstruction_loss: float
    loss_at_double: float | None
    exceeds_at_double: bool
    capped: bool
    feasible: bool
    scale: float | None
    loss_name: str
    curve: list[tuple[float, float, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [list(c) for c in self.curve]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpsilonChoice:
        return cls(**dict(d, curve=[(float(e), float(v), int(n)) for e, v, n in d["curve"]]))


def epsilon_from_ablation(model: nn.Module, inputs: Inputs, graph: InteractionGraph, *,
                          tolerance: float | None = None, loss: str | LossFn = "mse",
                          ratio: float = 1.0, max_steps: int = 60, **kw: Any) -> EpsilonChoice:
    """Bisection on log ε for the largest ε whose edge ablation (w ≤ √ε) keeps L ≤ δ.

    L(ε) only changes where √ε crosses an edge strength, so every trial ε is snapped to the
    threshold w² nearest (in log) to the bracket's geometric midpoint; the search ends when
    no threshold lies strictly inside the bracket: then [lo, hi) is the last interval of ε that
    ablates one set of edges within δ (hi: the first threshold that breaks it, exact for a loss
    that grows with ε), and ε is its geometric middle, so every edge's ŵ = ln(w/√ε) is clearly
    above or below 0. With ``ratio`` > 1 the search stops once hi/lo ≤ ratio (ε = lo). δ =
    ``tolerance``, or 1 % of the output's scale (see :mod:`.loss`). Then L(2ε) is measured.
    Keyword options: output_fn, batch_size, device, dtype, progress, callback.
    """
    if not ratio >= 1:
        raise ValueError(f"ratio must be >= 1 (1: exact), got {ratio}")
    ab = graph_ablator(model, inputs, graph, loss=loss, **options(kw))
    w = graph.w[graph.w > 0]
    if w.size == 0:
        raise ValueError("the graph has no edges: nothing to ablate")
    thresholds = np.unique(w.astype(np.float64) ** 2)
    thresholds = thresholds[thresholds < EPSILON_CAP]
    curve: dict[float, tuple[float, int]] = {}

    def L(eps: float) -> float:
        if eps not in curve:
            keeps = keep_matrices(graph, epsilon=eps)
            run = _run_edges(ab, graph, keeps)
            curve[eps] = (run.loss, _count(keeps))
            state.update(recon=run.reconstruction_loss, scale=run.scale)
        return curve[eps][0]

    state: dict[str, Any] = {}
    lo = float(thresholds[0]) / 2 if thresholds.size else EPSILON_CAP / 2
    L(lo)
    delta = resolve_tolerance(tolerance, state["scale"])
    feasible = L(lo) <= delta
    capped = feasible and L(EPSILON_CAP) <= delta
    eps, hi = lo, EPSILON_CAP
    if capped:
        eps = EPSILON_CAP
    elif feasible:
        for _ in range(max_steps):
            inner = thresholds[(thresholds > lo) & (thresholds < hi)]
            if inner.size == 0 or (ratio > 1 and hi / lo <= ratio):
                break
            mid = float(inner[np.argmin(np.abs(np.log(inner) - 0.5 * (math.log(lo) + math.log(hi))))])
            if L(mid) <= delta:
                lo = mid
            else:
                hi = mid
        inner = thresholds[(thresholds > lo) & (thresholds < hi)]
        # no threshold in (lo, hi): every ε in it ablates the same edges as lo; take the middle
        # (log scale), so that no kept edge sits at ŵ ≈ 0 and no ablated one just below it
        eps = lo if inner.size else math.sqrt(lo * hi)
        if L(eps) > delta:
            eps = lo
    double = 2 * eps
    at_double = L(double) if double < EPSILON_CAP else None
    exceeds = (at_double > delta) if at_double is not None else (not capped and L(EPSILON_CAP) > delta)
    return EpsilonChoice(float(eps), L(eps), float(delta), float(state["recon"]), at_double, bool(exceeds),
                         bool(capped), bool(feasible), state["scale"], ab.loss.name,
                         sorted((e, v, n) for e, (v, n) in curve.items()))
