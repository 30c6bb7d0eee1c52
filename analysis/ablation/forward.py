"""The masked forward pass: every ablation is one pass over the data with copies of each batch.

A :class:`~.plans.Plan` runs K *copies* of every batch side by side (stacked along the batch
dimension, copy c = rows c·B … c·B + B − 1) and says, per node layer l, how the copies'
activations are rewritten on their way in (see :mod:`.maps` for f̂ and the write-back):

    f̂[c] = Cᵀ (f_aug[src[c]] − b)   read direction i of copy c from copy src[c, i]
    f′[c] = b + C⁻¹ (mask[c] ⊙ f̂[c])

``src`` = own copy for node ablation (each copy is its own experiment); for edge ablation the
copies of a section are its distinct masks: output direction i of section l → l+1 is read from
the copy that ran i's mask m_i, so direction i is g_i(C⁻¹(m_i ⊙ f̂^l)), and every copy of the
next section starts from that combined f̂^{l+1}. All sections run in the one pass, so the cost
is K forward passes (plus one clean pass for y), whatever the number of sections. Several
experiments share a pass by concatenating their plans (:func:`~.plans.concat`); ``readout``
names the copy whose output is each experiment's result.

How the copies run (module by module, or with hooks, each class of equal copies once) is
:mod:`.copies`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.inputs import Batch, Inputs, add_padded, as_samples, batch_size_of, batch_to, iter_batches, position_mask
from ..core.nodes import OutputFn
from ..core.progress import Callback
from ..core.setup import prepare
from .copies import Chain, Copies, SectionCosts
from .loss import Loss, LossFn, ScaleAccumulator
from .maps import LayerMap, TorchMap
from .plans import Plan


@dataclass
class Evaluation:
    """Losses of one pass: ``loss`` (R,) per readout; with a group, ``grouped`` (R, G) mean
    loss per output group (``counts`` (G,) samples in each); ``scale``: the loss of the best
    constant output (None for a callable loss); ``n``: samples (weight) seen."""

    loss: np.ndarray
    scale: float | None
    n: float
    grouped: np.ndarray | None = None
    counts: np.ndarray | None = None
    n_copies: int = 0


@dataclass
class _Sums:
    total: Tensor
    grouped: Tensor | None = None
    counts: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Ablator:
    """A model cut at the node layers of ``maps``, ready to evaluate plans on ``inputs``.

    ``batch_size`` bounds the rows of one forward pass (samples × copies): a batch of the
    inputs is split into chunks of ``batch_size // K`` samples (at least one), K the copies
    the pass runs at once.
    """

    def __init__(self, model: nn.Module, inputs: Inputs, maps: Mapping[str, LayerMap], *,
                 loss: str | LossFn | Loss = "mse", output_fn: OutputFn | None = None,
                 include_bias: bool = True, batch_size: int = 4096,
                 device: str | torch.device = "auto", dtype: torch.dtype = torch.float64,
                 progress: bool = True, callback: Callback | None = None):
        self.loss = Loss.resolve(loss)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.s = prepare(model, inputs, list(maps), output_fn=output_fn, include_bias=include_bias,
                         dtype=dtype, batch_size=batch_size, device=device, seed=0,
                         progress=progress, callback=callback,
                         layout={n: lm.layout for n, lm in maps.items()})
        net = self.s.net
        for name, lm in maps.items():
            if net.dims[name] != lm.dim:
                raise ValueError(f"layer {name!r}: the model gives {net.dims[name]} features, "
                                 f"the basis was built for {lm.dim}")
        self.maps = dict(maps)
        unanchored = [n for n, lm in maps.items() if lm.unanchored]
        if unanchored:
            warnings.warn(f"layers {unanchored}: the basis has a bias slot but no constant direction (it was built "
                          "without center), so an ablated direction also moves the slot row of f_aug′, which is "
                          "not written back: the model's biases keep their own value, while the graph's edges "
                          "scale them with the slot. Edges of weight 0 can then change the output and the "
                          "reconstruction loss need not be 0; build the basis with center=True for ablations "
                          "(docs/ablation.md, Limits)", RuntimeWarning, stacklevel=3)
        self.torch_maps = {n: TorchMap(lm, self.s.device, dtype) for n, lm in maps.items()}
        for n, tm in self.torch_maps.items():   # the input of a Linear: write back at its output
            if isinstance(net.modules.get(n), nn.Linear) and tm.layout.kind in ("features", "tokens"):
                tm.fold_head(net.params[f"{n}.weight"], net.params.get(f"{n}.bias"))
        self.batch_size = batch_size
        first = batch_to(next(iter_batches(inputs, batch_size)), self.s.device, dtype)
        self._tensors = isinstance(first, Tensor)   # a sequence of modules runs on tensors
        self._costs = None if net.sequence is not None and self._tensors else SectionCosts(net)
        with self._costs or nullcontext():
            y = net.run_replacing(first, {})
        self.output_positions = as_samples(y, position_mask(first))[0].shape[1]   # P of the output
        self.passes = 0            # forward passes run, in units of one pass over the data

    # -- batches -----------------------------------------------------------------------------
    def _chunks(self, n_copies: int, stage: str) -> Iterator[Batch]:
        s = self.s
        rows = max(1, self.batch_size // n_copies)
        for batch in s.progress.track(iter_batches(s.inputs, s.batch_size), stage, s.n_batches):
            for chunk in iter_batches(batch, rows):
                yield batch_to(chunk, s.device, s.dtype)

    # -- one pass ----------------------------------------------------------------------------
    def evaluate(self, plan: Plan, *, group: str | None = None, stage: str = "ablation") -> Evaluation:
        """Run ``plan`` over the data: the mean loss of every readout copy (and per group)."""
        net = self.s.net
        K, R = plan.n_copies, len(plan.readout)
        readout = torch.as_tensor(plan.readout, device=self.s.device, dtype=torch.long)
        runner = self._runner(plan)
        scale = ScaleAccumulator(self.loss)
        sums: _Sums | None = None
        for batch in self._chunks(runner.rows, stage):
            B = batch_size_of(batch)
            mask = position_mask(batch)
            with torch.no_grad():
                y = net.run_replacing(batch, {})
                ya = runner.outputs(batch, readout)                          # (R, B, …)
            ys, w = as_samples(y, mask)
            scale.add(ys, w)
            yas = ya.reshape((R, B) + ys.shape[1:])                         # (R, B, P, d)
            per = self._per_sample(yas, ys, ya, y, batch)                   # (R, B, P)
            sums = _accumulate(sums, per, yas, ys, w, group)
        if sums is None:
            raise ValueError("inputs: no data")
        self.passes += K + 1
        n = float(sums.extra["n"])
        out = Evaluation((sums.total / max(n, 1e-300)).cpu().numpy(), scale.result(), n, n_copies=K)
        if group is not None:
            counts = sums.counts.cpu().numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                out.grouped = np.where(counts > 0, sums.grouped.cpu().numpy() / counts, np.nan)
            out.counts = counts
        return out

    def _runner(self, plan: Plan) -> Chain | Copies:
        """Module by module where the model is a sequence of modules run on tensors, else hooks."""
        if self.s.net.sequence is not None and self._tensors:
            return Chain(plan, self.s.net, self.torch_maps)
        return Copies(plan, self.s.net, self.torch_maps, self.batch_size, self._costs.cost)

    def _per_sample(self, yas: Tensor, ys: Tensor, ya: Tensor, y: Tensor, batch: Batch) -> Tensor:
        if self.loss.fn is None:
            return self.loss.per_sample(yas, ys, batch)
        rows = []
        for r in range(ya.shape[0]):
            v = torch.as_tensor(self.loss.fn(ya[r], y, batch), device=ys.device, dtype=ys.dtype)
            if v.shape not in {(ys.shape[0],), ys.shape[:2]}:
                raise ValueError(f"a callable loss must return one loss per sample, shape "
                                 f"({ys.shape[0]},) or {tuple(ys.shape[:2])}, got {tuple(v.shape)}")
            rows.append(v.reshape(ys.shape[0], -1).expand(ys.shape[:2]))
        return torch.stack(rows)


def _accumulate(sums: _Sums | None, per: Tensor, yas: Tensor, ys: Tensor, w: Tensor,
                group: str | None) -> _Sums:
    """Add one chunk: Σ w·loss per readout, and per group (coordinate / class / position)."""
    total = torch.einsum("rbp,bp->r", per, w).to(torch.float64)
    grouped = counts = None
    if group == "coordinate":
        grouped = torch.einsum("rbpd,bp->rd", (yas - ys).square(), w)
        counts = w.sum().expand(ys.shape[-1])
    elif group == "position":
        grouped = torch.einsum("rbp,bp->rp", per, w)
        counts = w.sum(0)
    elif group == "class":
        cls = ys.argmax(-1).reshape(-1)                                      # clean prediction
        n_cls = ys.shape[-1]
        grouped = torch.zeros(per.shape[0], n_cls, dtype=per.dtype, device=per.device)
        grouped.index_add_(1, cls, (per * w).reshape(per.shape[0], -1))
        counts = torch.zeros(n_cls, dtype=w.dtype, device=w.device).index_add_(0, cls, w.reshape(-1))
    if sums is None:
        return _Sums(total, grouped, counts, {"n": float(w.sum())})
    sums.total += total
    if grouped is not None:           # positions: batches of other lengths add into the first P of them
        sums.grouped, sums.counts = add_padded(sums.grouped, grouped), add_padded(sums.counts, counts)
    sums.extra["n"] += float(w.sum())
    return sums
