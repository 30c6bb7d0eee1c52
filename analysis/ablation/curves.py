"""Node ablation curves (LIB paper, rib): keep the m largest-Λ directions of one node layer.

At node layer l with mask m (the m directions of largest Λ kept, the constant direction always
kept): f_aug′ = b + C⁻¹ (m ⊙ f̂), and L(m) is the behavioural loss of the output. L(k) is the
*reconstruction loss* of the basis's truncation (0 when nothing was truncated). One copy of
each batch per schedule entry, all in one pass over the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from ..core.basis import Basis
from ..core.graph import InteractionGraph
from ..core.inputs import Inputs
from .common import layer_map, options
from .forward import Ablator
from .loss import LossFn, resolve_tolerance
from .plans import node_plan


@dataclass
class AblationCurve:
    """Loss against the number of directions kept at one layer.

    n_kept: (S,) data directions kept (the constant direction is always kept on top);
    loss: (S,) the mean behavioural loss; n_directions: k (data directions of the basis);
    scale: the loss of the best constant output (the default tolerance is 1 % of it).
    """

    layer: str
    kind: str
    loss_name: str
    n_kept: np.ndarray
    loss: np.ndarray
    n_directions: int
    reconstruction_loss: float
    scale: float | None

    def needed(self, tolerance: float | None = None) -> int | None:
        """Fewest directions m in the schedule with L ≤ δ there and at every larger m (None if
        even m = k exceeds δ). δ defaults to 1 % of the output's scale."""
        delta = resolve_tolerance(tolerance, self.scale)
        ok = self.loss <= delta
        if not ok[-1]:
            return None
        bad = np.flatnonzero(~ok)
        return int(self.n_kept[bad[-1] + 1] if bad.size else self.n_kept[0])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_kept"], d["loss"] = self.n_kept.tolist(), self.loss.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AblationCurve:
        return cls(**dict(d, n_kept=np.asarray(d["n_kept"], dtype=np.int64),
                          loss=np.asarray(d["loss"], dtype=np.float64)))


def schedule_points(k: int, schedule: str | Sequence[int], exp_base: float = 2.0) -> np.ndarray:
    """Numbers of kept directions: "all" (0 … k), "exponential" (0, 1, base, base², …, k), or
    the given integers; sorted, unique."""
    if isinstance(schedule, str):
        if schedule == "all":
            return np.arange(k + 1)
        if schedule != "exponential":
            raise ValueError(f"schedule must be 'all', 'exponential' or a list of ints, got {schedule!r}")
        if not exp_base > 1:
            raise ValueError(f"exp_base must be > 1, got {exp_base}")
        pts, x = {0, k}, 1.0
        while x < k:
            pts.add(int(round(x)))
            x *= exp_base
        return np.array(sorted(pts))
    pts = np.asarray(list(schedule))
    if pts.size == 0 or pts.ndim != 1 or not np.issubdtype(pts.dtype, np.integer) or pts.min() < 0 or pts.max() > k:
        raise ValueError(f"schedule must list integers in [0, {k}], got {list(schedule)}")
    return np.unique(pts)


def ablation_curve(model: nn.Module, inputs: Inputs, basis: Basis | InteractionGraph, layer: str, *,
                   loss: str | LossFn = "mse", schedule: str | Sequence[int] = "exponential",
                   exp_base: float = 2.0, **kw: Any) -> AblationCurve:
    """Node ablation curve at ``layer`` of any basis (interaction, PCA, neuron) or graph.

    Keeps the m data directions of largest Λ for every m of the schedule (``"exponential"``
    by default, ``"all"`` or a list); the last point m = k is the reconstruction loss.
    Keyword options: output_fn, batch_size (rows per forward pass), device, dtype, progress,
    callback.
    """
    opt = options(kw)
    if opt["output_fn"] is None and isinstance(basis, Basis):
        opt["output_fn"] = basis.output_fn
    lm, kind, include_bias = layer_map(basis, layer)
    data = lm.data_directions
    order = data[np.argsort(-lm.Lambda[data], kind="stable")]
    pts = schedule_points(len(order), schedule, exp_base)
    pts = np.union1d(pts, [len(order)])
    masks = np.zeros((len(pts), lm.k))
    masks[:, :int(lm.bias_direction)] = 1.0
    for r, m in enumerate(pts):
        masks[r, order[:m]] = 1.0
    ab = Ablator(model, inputs, {layer: lm}, loss=loss, include_bias=include_bias, **opt)
    ev = ab.evaluate(node_plan(layer, masks), stage=f"node ablation {layer}")
    return AblationCurve(layer, kind, ab.loss.name, pts, ev.loss, len(order), float(ev.loss[-1]), ev.scale)


def ablation_curves(model: nn.Module, inputs: Inputs, bases: Mapping[str, Basis | InteractionGraph],
                    layer: str, **kw: Any) -> dict[str, AblationCurve]:
    """:func:`ablation_curve` of several bases at one layer, e.g. ``{"interaction": b,
    "pca": b_pca, "neuron": b_n}`` (the LIB paper's comparison); same keywords."""
    if not isinstance(bases, Mapping) or not bases:
        raise ValueError("bases must be a non-empty mapping name -> Basis")
    return {name: ablation_curve(model, inputs, b, layer, **kw) for name, b in bases.items()}
