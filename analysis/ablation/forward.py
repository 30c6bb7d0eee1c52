"""The masked forward pass: every ablation is one pass over the data with copies of each batch.

A :class:`Plan` runs K *copies* of every batch side by side (stacked along the batch
dimension, copy c = rows c·B … c·B + B − 1) and says, per node layer l, how the copies'
activations are rewritten on their way in (see :mod:`.maps` for f̂ and the write-back):

    f̂[c] = Cᵀ (f_aug[src[c]] − b)   read direction i of copy c from copy src[c, i]
    f′[c] = b + C⁻¹ (mask[c] ⊙ f̂[c])

``src`` = own copy for node ablation (each copy is its own experiment); for edge ablation the
copies of a section are its distinct masks: output direction i of section l → l+1 is read from
the copy that ran i's mask m_i, so direction i is g_i(C⁻¹(m_i ⊙ f̂^l)), and every copy of the
next section starts from that combined f̂^{l+1}. All sections run in the one pass, so the cost
is K forward passes (plus one clean pass for y), whatever the number of sections. Several
experiments share a pass by concatenating their plans (:func:`concat`); ``readout`` names the
copy whose output is each experiment's result.

When the model applies its modules in sequence (``NodeModel.sequence``) and the inputs are
tensors, the pass runs module by module and copies that hold the same activation by
construction run once (:class:`_Chain`): all copies before the first rewritten layer, and at
layer l the copies with equal rows (read copy, mask) — for an edge ablation the distinct masks of
section l. A section then costs its own number of distinct copies K_l instead of K (the copies
of every section together), the part before the first cut one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.conv_taps import tap_convs
from ..core.eval_mode import eval_mode
from ..core.inputs import Batch, Inputs, add_padded, as_samples, batch_size_of, batch_to, iter_batches, position_mask
from ..core.nodes import OUTPUT, NodeModel, OutputFn
from ..core.progress import Callback
from ..core.setup import prepare
from .loss import Loss, LossFn, ScaleAccumulator
from .maps import LayerMap, TorchMap


@dataclass
class LayerPlan:
    """mask: (K, k) in {0, 1}; src: (K, k) copy indices, or None (every copy reads itself)."""

    mask: np.ndarray
    src: np.ndarray | None = None


@dataclass
class Plan:
    """K copies; ``layers`` maps node layers to their rewrite, ``readout`` the result copies."""

    n_copies: int
    layers: dict[str, LayerPlan]
    readout: list[int]

    def __post_init__(self) -> None:
        for name, lp in self.layers.items():
            if lp.mask.shape[0] != self.n_copies or (lp.src is not None and lp.src.shape != lp.mask.shape):
                raise ValueError(f"plan for layer {name!r}: masks {lp.mask.shape} do not fit "
                                 f"{self.n_copies} copies")


def concat(plans: Sequence[Plan]) -> Plan:
    """One plan running ``plans`` side by side (layers missing from a plan: nothing ablated)."""
    names = list(dict.fromkeys(n for p in plans for n in p.layers))
    layers, readout, offset = {}, [], 0
    sizes = {n: next(p.layers[n].mask.shape[1] for p in plans if n in p.layers) for n in names}
    for p in plans:
        readout += [offset + r for r in p.readout]
        offset += p.n_copies
    for n in names:
        masks, srcs, off = [], [], 0
        for p in plans:
            lp = p.layers.get(n, LayerPlan(np.ones((p.n_copies, sizes[n]))))
            masks.append(lp.mask)
            own = np.repeat(np.arange(p.n_copies)[:, None], sizes[n], 1)
            srcs.append(off + (own if lp.src is None else lp.src))
            off += p.n_copies
        layers[n] = LayerPlan(np.concatenate(masks).astype(np.float64), np.concatenate(srcs))
    return Plan(offset, layers, readout)


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
    inputs is split into chunks of ``batch_size // K`` samples (at least one).
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
        self.torch_maps = {n: TorchMap(lm, self.s.device, dtype) for n, lm in maps.items()}
        for n, tm in self.torch_maps.items():   # the input of a Linear: write back at its output
            if isinstance(net.modules.get(n), nn.Linear) and tm.layout.kind in ("features", "tokens"):
                tm.fold_head(net.params[f"{n}.weight"], net.params.get(f"{n}.bias"))
        self.batch_size = batch_size
        first = batch_to(next(iter_batches(inputs, batch_size)), self.s.device, dtype)
        y = net.run_replacing(first, {})
        self._tensors = isinstance(first, Tensor)   # a sequence of modules runs on tensors
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
        net, dev = self.s.net, self.s.device
        K, R = plan.n_copies, len(plan.readout)
        readout = torch.as_tensor(plan.readout, device=dev, dtype=torch.long)
        chain = _Chain(plan, net, self.torch_maps) if net.sequence is not None and self._tensors else None
        if chain is None:
            tensors = {n: (torch.as_tensor(lp.mask, device=dev, dtype=self.s.dtype),
                           None if lp.src is None else torch.as_tensor(lp.src, device=dev, dtype=torch.long))
                       for n, lp in plan.layers.items()}
            first = next(n for n in net.chain if n in plan.layers)   # copies still identical there
        scale = ScaleAccumulator(self.loss)
        sums: _Sums | None = None
        for batch in self._chunks(K if chain is None else chain.rows, stage):
            B = batch_size_of(batch)
            mask = position_mask(batch)
            with torch.no_grad():
                y = net.run_replacing(batch, {})
                if chain is not None:
                    with eval_mode(net.model), tap_convs(net.has_conv):
                        ya = chain.run(batch)[chain.final[readout]]          # (R, B, …)
                else:
                    pre, post = {}, {}
                    for n in plan.layers:
                        self._hook(pre, post, n, *tensors[n], K, n == first)
                    ya = net.run_replacing(_repeat(batch, K), pre, post)
                    ya = ya.reshape((K, B) + ya.shape[1:])[readout]         # (R, B, …)
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

    def _hook(self, pre: dict, post: dict, name: str, mask: Tensor, src: Tensor | None, K: int,
              identical: bool) -> None:
        """The rewrite of layer ``name``: f′ = b + C⁻¹ (mask ⊙ f̂[src]) on the way in; when the
        layer is the input of an ``nn.Linear`` the module runs on one copy only and its output
        is computed from the masked f̂ (:meth:`TorchMap.fold_head`). With ``identical`` (no layer before it is rewritten)
        the K copies hold the same activation, so f̂ is computed once."""
        tm = self.torch_maps[name]
        stash: dict[str, Tensor] = {}

        def masked_coords(x: Tensor) -> tuple[Tensor, Tensor]:
            xs = tm.samples(x)                                               # (K·B, P, d)
            if identical:
                B = xs.shape[0] // K
                h = tm.coords(xs[:B]).expand(K, B, xs.shape[1], tm.k)       # (K, B, P, k)
            else:
                h = tm.coords(xs).reshape(K, -1, xs.shape[1], tm.k)
                if src is not None:
                    h = torch.gather(h, 0, src[:, None, None, :].expand_as(h))
            return xs, h * mask[:, None, None, :]

        if hasattr(tm, "WB"):
            def head_in(x: Tensor) -> Tensor:
                _, stash["h"] = masked_coords(x)
                return x[:x.shape[0] // K]

            def head_out(z: Tensor) -> Tensor:
                return tm.head_out(stash.pop("h")).reshape((K * z.shape[0],) + z.shape[1:])
            pre[name], post[name] = head_in, head_out
            return

        def rewrite(x: Tensor) -> Tensor:
            xs, h = masked_coords(x)
            return tm.unsamples(tm.back(h).reshape(xs.shape), x)
        pre[name] = rewrite


class _Chain:
    """A plan run module by module through ``net.sequence``, each distinct copy once.

    Before node layer l the copies fall into classes that hold the same activation (one class
    before the first rewrite). The rewrite of copy c reads direction i from copy src[c, i], i.e.
    from class cls[src[c, i]], and applies mask[c]: copies with equal rows (cls[src[c]], mask[c])
    get the same activation, so they form one class of layer l's output and run the next section
    once. Activations hold the classes stacked along the batch dimension (class u = rows
    u·B … u·B + B − 1). ``final[c]``: the class of copy c's output; ``rows``: the most classes
    any section runs (what bounds a chunk's rows)."""

    def __init__(self, plan: Plan, net: NodeModel, maps: Mapping[str, TorchMap]):
        self.net, self.maps = net, maps
        device = net.device
        cls = np.zeros(plan.n_copies, dtype=np.int64)
        self.steps: list[tuple[str, Tensor, Tensor]] = []    # (layer, read (U, k), mask (U, k))
        for name in (n for n in net.chain if n in plan.layers):
            lp = plan.layers[name]
            src = np.arange(plan.n_copies)[:, None].repeat(lp.mask.shape[1], 1) if lp.src is None else lp.src
            read = cls[src]
            _, rep, inverse = np.unique(np.concatenate([read, lp.mask], 1), axis=0, return_index=True,
                                        return_inverse=True)
            mask = torch.as_tensor(lp.mask[rep], device=device, dtype=maps[name].A.dtype)
            self.steps.append((name, torch.as_tensor(read[rep], device=device), mask))
            cls = inverse.reshape(-1)
        self.final = torch.as_tensor(cls, device=device)
        self.rows = max(len(read) for _, read, _ in self.steps)

    def run(self, x: Tensor) -> Tensor:
        """The output of every class (U, B, …) for the batch x (B, …)."""
        seq, params, B, start = self.net.sequence, self.net.params, x.shape[0], 0
        for name, read, mask in self.steps:
            stop = len(seq) if name == OUTPUT else seq.index(name)
            x = seq.run(start, stop, x, params)
            x, start = self.net.output_fn(x) if name == OUTPUT else x, stop
            tm = self.maps[name]
            xs = tm.samples(x)                                                 # (U_prev·B, P, d)
            h = tm.coords(xs).reshape(-1, B, xs.shape[1], tm.k)                 # (U_prev, B, P, k)
            h = torch.gather(h, 0, read[:, None, None, :].expand(len(read), B, xs.shape[1], tm.k))
            h = h * mask[:, None, None, :]                                      # (U, B, P, k)
            if hasattr(tm, "WB") and name != OUTPUT and seq.modules[start] is self.net.modules[name]:
                z = tm.head_out(h)                                              # the Linear's output
                x, start = z.reshape((-1,) + tuple(x.shape[1:-1]) + (z.shape[-1],)), start + 1
            else:
                x = tm.layout.from_samples(tm.back(h).reshape(-1, xs.shape[1], tm.dim), (len(read) * B,) + x.shape[1:])
        if start < len(seq):
            x = self.net.output_fn(seq.run(start, len(seq), x, params))
        return x.reshape((-1, B) + tuple(x.shape[1:]))


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


def _repeat(batch: Batch, K: int) -> Batch:
    """K copies of a batch stacked along dim 0 (copy c = rows c·B … c·B + B − 1)."""
    def rep(v: Any) -> Any:
        if isinstance(v, Tensor) and v.ndim > 0:
            return v.repeat((K,) + (1,) * (v.ndim - 1))
        return v
    return rep(batch) if isinstance(batch, Tensor) else {k: rep(v) for k, v in batch.items()}


