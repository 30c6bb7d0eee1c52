"""Module cut, module ablation and modules from ablation (DESIGN.md §1).

Module cut: remove every edge between different modules in every section at once (direction i
of module c at layer l+1 sees only module c and the constant direction at layer l) and ablate
the inactive directions; the baseline is the same cut for random partitions with the module
sizes of every layer (:func:`.plans.random_partition`). Module ablation: all directions of one
module set to 0 at every layer; the loss per output group says what the module computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from ..core.graph import InteractionGraph
from ..core.inputs import Inputs
from ..core.partition import Partition, cutoff_strength, find_modules
from .common import graph_ablator, options
from .edges import EpsilonChoice, epsilon_from_ablation
from .forward import Ablator
from .loss import LossFn
from .plans import concat, cut_plan, edge_plan, module_ablation_plan, random_partition


def _membership(graph: InteractionGraph, partition: Partition | np.ndarray | Sequence[int]) -> np.ndarray:
    m = np.asarray(partition.membership if isinstance(partition, Partition) else partition)
    if m.ndim != 1 or m.shape[0] != graph.n_nodes:
        raise ValueError(f"partition must have one label per graph node ({graph.n_nodes}), got shape {m.shape}")
    if m.size and not np.issubdtype(m.dtype, np.integer):
        raise ValueError("partition labels must be integers (−1: outside every module)")
    return m.astype(np.int64)


@dataclass
class ModuleCut:
    """loss: L of the cut; baseline / baseline_spread: mean / standard deviation of L over
    random partitions with equal module sizes per layer (baseline_losses: each one);
    inactive_loss: L with only the inactive directions ablated; reconstruction_loss: L with
    nothing ablated; scale: the loss of the best constant output; n_forward: the copies the
    evaluation stacks + the clean pass, its cost in forward passes over the data at most (a
    model run module by module runs each section on its distinct copies only)."""

    loss: float
    baseline: float
    baseline_spread: float
    baseline_losses: list[float]
    inactive_loss: float
    reconstruction_loss: float
    n_modules: int
    scale: float | None
    loss_name: str
    n_forward: int

    @property
    def relative(self) -> float | None:
        """loss / scale (for MSE: the cut's MSE over the output's variance)."""
        return None if not self.scale else self.loss / self.scale

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), relative=self.relative)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModuleCut:
        return cls(**{k: v for k, v in d.items() if k != "relative"})


def _cut(ab: Ablator, graph: InteractionGraph, mem: np.ndarray, n_baseline: int, seed: int) -> ModuleCut:
    rng = np.random.default_rng(seed)
    bias = graph.is_bias
    plans = [cut_plan(graph, mem)] + [cut_plan(graph, random_partition(graph, mem, rng)) for _ in range(n_baseline)]
    sections = [np.ones((graph.layer_sizes[b], graph.layer_sizes[a]), dtype=bool)
                for a, b in zip(graph.layers, graph.layers[1:])]
    plans += [edge_plan(graph, sections, nodes=(mem >= 0) | bias), edge_plan(graph, sections)]
    ev = ab.evaluate(concat(plans), stage="module cut")
    base = ev.loss[1:1 + n_baseline]
    return ModuleCut(float(ev.loss[0]), float(base.mean()) if n_baseline else math.nan,
                     float(base.std()) if n_baseline else math.nan, base.tolist(), float(ev.loss[-2]),
                     float(ev.loss[-1]), len(np.unique(mem[mem >= 0])), ev.scale, ab.loss.name, ev.n_copies + 1)


def module_cut(model: nn.Module, inputs: Inputs, graph: InteractionGraph,
               partition: Partition | np.ndarray, *, loss: str | LossFn = "mse", n_baseline: int = 8,
               seed: int = 0, **kw: Any) -> ModuleCut:
    """The module cut of ``partition`` (a Partition or one label per node, −1 = inactive) and
    its random baseline (``n_baseline`` partitions, ≥ 8 recommended), in one pass over the data.
    Keyword options: output_fn, batch_size, device, dtype, progress, callback."""
    if not (isinstance(n_baseline, int) and n_baseline >= 0):
        raise ValueError(f"n_baseline must be an integer >= 0, got {n_baseline!r}")
    mem = _membership(graph, partition)
    ab = graph_ablator(model, inputs, graph, loss=loss, **options(kw))
    return _cut(ab, graph, mem, n_baseline, seed)


_ARRAYS = ("loss", "loss_increase", "reconstruction_by_group", "counts")


@dataclass
class ModuleEffects:
    """What each module computes: L per output group with the module ablated at every layer.

    module_ids: the membership value of each row (ascending); loss: (n_modules,) total L;
    loss_increase: (n_modules, n_outputs) L per group minus the reconstruction's (nothing
    ablated) L per group; group: "coordinate" | "class" (the clean prediction's class) |
    "position"; output_labels: one per column; reconstruction_loss: total L with nothing ablated;
    reconstruction_by_group: (n_outputs,); counts: samples per group.
    """

    module_ids: list[int]
    loss: np.ndarray
    loss_increase: np.ndarray
    output_labels: list[str]
    group: str
    reconstruction_loss: float
    reconstruction_by_group: np.ndarray
    counts: np.ndarray
    loss_name: str
    scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in _ARRAYS:
            d[key] = np.where(np.isnan(d[key]), None, d[key]).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModuleEffects:
        arrays = {k: np.array(d[k], dtype=np.float64) for k in _ARRAYS}   # None -> NaN
        return cls(**dict(d, **arrays))


def module_effects(model: nn.Module, inputs: Inputs, graph: InteractionGraph,
                   partition: Partition | np.ndarray, *, loss: str | LossFn = "mse",
                   group: str | None = None, **kw: Any) -> ModuleEffects:
    """Ablate each module at every layer (one copy per module, one pass) and measure L per output
    group: ``"coordinate"`` (MSE per output coordinate; default for MSE), ``"class"`` (L over the
    samples whose clean prediction is each class; default for KL) or ``"position"`` (default
    for outputs with positions). Keyword options: output_fn, batch_size, device, dtype,
    progress, callback."""
    mem = _membership(graph, partition)
    ids = sorted(int(c) for c in np.unique(mem[mem >= 0]))
    ab = graph_ablator(model, inputs, graph, loss=loss, **options(kw))
    has_positions = ab.output_positions > 1
    group = group or ab.loss.default_group(has_positions)
    ab.loss.check_group(group, has_positions)
    ev = ab.evaluate(module_ablation_plan(graph, mem, ids), group=group, stage="module effects")
    prefix = {"coordinate": "y", "class": "class ", "position": "position "}[group]
    labels = [f"{prefix}{i}" for i in range(ev.grouped.shape[1])]
    return ModuleEffects(ids, ev.loss[1:], ev.grouped[1:] - ev.grouped[:1], labels, group,
                         float(ev.loss[0]), ev.grouped[0], ev.counts, ab.loss.name, ev.scale)


@dataclass
class AutoModules:
    """The truth-free pipeline: partition (the most modules whose cut loss is ≤ δ over the
    resolution sweep at ε, counting modules with an internal interaction; ties: lower cost),
    epsilon, cut_loss, tolerance, sweep (one row per resolution: resolution, n_modules,
    n_counted, cost, cut_loss, within), within_tolerance (False: no
    partition met δ, the one with the lowest cut loss is returned), choice (the ε bisection),
    n_directions (non-constant directions of the graph)."""

    partition: Partition
    epsilon: float
    cut_loss: float
    tolerance: float
    within_tolerance: bool
    sweep: list[dict[str, Any]]
    choice: EpsilonChoice
    n_directions: int

    @property
    def coverage(self) -> float:
        """Share of the non-constant directions that are in a module (the rest are inactive)."""
        return float((self.partition.membership >= 0).sum() / max(self.n_directions, 1))

    def to_dict(self) -> dict[str, Any]:
        return dict(partition=self.partition.to_dict(), epsilon=self.epsilon, cut_loss=self.cut_loss,
                    tolerance=self.tolerance, within_tolerance=self.within_tolerance, sweep=self.sweep,
                    choice=self.choice.to_dict(), n_directions=self.n_directions, coverage=self.coverage)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoModules:
        d = {k: v for k, v in d.items() if k != "coverage"}
        return cls(**dict(d, partition=Partition.from_dict(d["partition"]),
                          choice=EpsilonChoice.from_dict(d["choice"])))


def resolution_grid(graph: InteractionGraph, epsilon: float, n: int = 16) -> np.ndarray:
    """CPM resolutions γ from 1e-4 to 1 times the largest ŵ at ε (log spaced): γ is a ŵ per
    node pair, so this spans one giant module to singletons."""
    w_hat = cutoff_strength(graph.w, epsilon)
    top = float(w_hat.max()) if w_hat.size and w_hat.max() > 0 else 1.0
    return top * np.logspace(-4, 0, n)


def _counted(p: Partition) -> int:
    """Modules that hold an interaction (internal ŵ > 0): a module of one direction, or of
    directions with no edge above √ε between them, computes nothing of its own."""
    return sum(1 for m in p.modules if m.internal > 0)


def modules_from_ablation(model: nn.Module, inputs: Inputs, graph: InteractionGraph, *,
                          tolerance: float | None = None, loss: str | LossFn = "mse",
                          resolutions: Sequence[float] | None = None, objective: str = "cpm",
                          seed: int = 0, n_restarts: int = 1, max_modules: int = 32,
                          **kw: Any) -> AutoModules:
    """ε by :func:`epsilon_from_ablation`, then the partitions of a resolution sweep at that ε
    (``find_modules``); every distinct one with at most ``max_modules`` modules gets its cut loss
    (all in one pass), and the one with the most modules whose cut loss is ≤ δ wins (ties: lower
    cost). Only modules that hold an interaction are counted (internal ŵ > 0): splitting off a
    lone weak direction is cheap to cut but is no module of the computation. Keyword options:
    output_fn, batch_size, device, dtype, progress, callback."""
    opt = options(kw)
    choice = epsilon_from_ablation(model, inputs, graph, tolerance=tolerance, loss=loss, **opt)
    eps, delta = choice.epsilon, choice.tolerance
    grid = resolution_grid(graph, eps) if resolutions is None else np.asarray(list(resolutions), dtype=float)
    parts, seen, row_of = [], {}, []
    for gamma in grid:
        p = find_modules(graph, eps, objective=objective, resolution=float(gamma), seed=seed, n_restarts=n_restarts)
        key = p.membership.tobytes()
        if key not in seen:
            seen[key] = len(parts)
            parts.append(p)
        row_of.append(seen[key])
    ab = graph_ablator(model, inputs, graph, loss=loss, **opt)
    todo = [i for i, p in enumerate(parts) if 1 <= p.n_modules <= max_modules]
    cut_losses: dict[int, float] = {}
    if todo:
        ev = ab.evaluate(concat([cut_plan(graph, parts[i].membership) for i in todo]), stage="cut sweep")
        cut_losses = dict(zip(todo, ev.loss.tolist()))
    sweep = [dict(resolution=float(gamma), n_modules=parts[i].n_modules, n_counted=_counted(parts[i]),
                  cost=parts[i].cost, cut_loss=cut_losses.get(i),
                  within=i in cut_losses and cut_losses[i] <= delta)
             for gamma, i in zip(grid, row_of)]
    ok = [i for i in cut_losses if cut_losses[i] <= delta]
    if ok:
        best = max(ok, key=lambda i: (_counted(parts[i]), -parts[i].cost))
    elif cut_losses:
        best = min(cut_losses, key=cut_losses.get)
    elif choice.capped:
        raise ValueError(f"ε reached its cap ({eps:g}): cutting every interaction keeps the loss within δ={delta:.3g}, "
                         "so these inputs show no dependence of the output on the graph's interactions and there "
                         "is no partition to test")
    else:
        raise ValueError(f"no partition of the sweep has between 1 and max_modules={max_modules} modules at ε={eps:g}")
    return AutoModules(parts[best], eps, float(cut_losses[best]), delta, bool(ok), sweep, choice,
                       int((~graph.is_bias).sum()))
