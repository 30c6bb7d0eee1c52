"""How the copies of a plan (:mod:`.plans`) run through the model, each copy that holds the
same activation by construction once where the model allows it.

Before node layer l the copies fall into classes that hold the same activation (one class
before the first rewrite). The rewrite of copy c reads direction i from copy src[c, i], i.e.
from class cls[src[c, i]], and applies mask[c]: copies with equal rows (cls[src[c]], mask[c])
get the same activation, so they form one class of layer l's output and run the next section
once (:func:`_steps`) — for an edge ablation the distinct masks of section l. A section then
costs its own number of classes U_l instead of K (the copies of every section together), the
part before the first rewrite one. Activations hold the classes stacked along the batch
dimension (class u = rows u·B … u·B + B − 1).

- :class:`Chain`: a model that applies its modules in sequence (``NodeModel.sequence``), on
  tensors, run module by module;
- :class:`Copies`: any other model (a mapping batch, attention masks), with hooks on the whole
  model: the classes where they pay and the model follows them (checked), else the K copies
  stacked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.conv_taps import tap_convs
from ..core.eval_mode import eval_mode
from ..core.inputs import Batch, batch_size_of, iter_batches, slice_batch
from ..core.nodes import OUTPUT, NodeModel
from .maps import TorchMap
from .plans import Plan


@dataclass
class _Step:
    """The rewrite of one node layer, over classes of copies: ``n_in`` classes arrive (stacked
    along the batch dimension, class u = rows u·B … u·B + B − 1); output class u reads
    direction i from arriving class read[u, i] (U, k) and keeps the directions mask[u] (U, k).
    ``read`` is None where no gather is needed: one class arrives (every output class reads
    it), or each output class u reads all of arriving class u."""

    name: str
    read: Tensor | None
    mask: Tensor
    n_in: int

    @property
    def n_out(self) -> int:
        """U, the classes the step writes."""
        return self.mask.shape[0]


def _steps(plan: Plan, chain: Sequence[str], maps: Mapping[str, TorchMap], device: torch.device,
           dedup: bool) -> tuple[list[_Step], Tensor]:
    """The plan's rewrites in the order the model runs them, and final (K,): the class of each
    copy's output. Before the first rewrite all copies are one class. The rewrite of copy c
    reads direction i from copy src[c, i], i.e. from class cls[src[c, i]], and applies mask[c].
    With ``dedup``, copies with equal rows (cls[src[c]], mask[c]) hold the same activation and
    form one class; without, every copy is its own class after the first rewrite."""
    K = plan.n_copies
    cls, n_in, steps = np.zeros(K, dtype=np.int64), 1, []
    for name in (n for n in chain if n in plan.layers):
        lp = plan.layers[name]
        read = cls[np.arange(K)[:, None].repeat(lp.mask.shape[1], 1) if lp.src is None else lp.src]
        mask = lp.mask
        if dedup:
            _, rep, cls = np.unique(np.concatenate([read, mask], 1), axis=0, return_index=True,
                                    return_inverse=True)
            read, mask, cls = read[rep], mask[rep], cls.reshape(-1)
        else:
            cls = np.arange(K)
        plain = n_in == 1 or (len(read) == n_in and bool((read == np.arange(n_in)[:, None]).all()))
        steps.append(_Step(name, None if plain else torch.as_tensor(read, device=device),
                           torch.as_tensor(mask, device=device, dtype=maps[name].A.dtype), n_in))
        n_in = len(read)
    return steps, torch.as_tensor(cls, device=device)


def _masked(tm: TorchMap, step: _Step, x: Tensor, B: int) -> tuple[Tensor, Tensor]:
    """x: the activation arriving at the step's layer, ≥ n_in·B rows (its first n_in·B are the
    classes). Returns the samples of those rows (n_in·B, P, d) and f̂ of every output class,
    read and masked: (U, B, P, k)."""
    xs = tm.samples(x[:step.n_in * B])
    h = tm.coords(xs).reshape(step.n_in, B, xs.shape[1], tm.k)
    if step.read is not None:
        h = torch.gather(h, 0, step.read[:, None, None, :].expand(step.n_out, B, xs.shape[1], tm.k))
    return xs, h * step.mask[:, None, None, :]                   # one arriving class broadcasts


def _written(tm: TorchMap, h: Tensor, x: Tensor, P: int) -> Tensor:
    """The activation of every class (U·B, *x.shape[1:]) with f̂ = h (U, B, P, k)."""
    return tm.layout.from_samples(tm.back(h).reshape(-1, P, tm.dim), (h.shape[0] * h.shape[1],) + x.shape[1:])


class Chain:
    """A plan run module by module through ``net.sequence``, each class of equal copies once
    (:func:`_steps` with dedup). ``rows``: the most classes any section runs (what bounds a
    chunk's rows)."""

    def __init__(self, plan: Plan, net: NodeModel, maps: Mapping[str, TorchMap]):
        self.net, self.maps = net, maps
        self.steps, self.final = _steps(plan, net.chain, maps, net.device, dedup=True)
        self.rows = max(s.n_out for s in self.steps)

    def outputs(self, x: Tensor, readout: Tensor) -> Tensor:
        """The output of the copies ``readout`` (R, B, …) for the batch x (B, …)."""
        with eval_mode(self.net.model), tap_convs(self.net.has_conv):
            return self._run(x)[self.final[readout]]

    def _run(self, x: Tensor) -> Tensor:
        seq, params, B, start = self.net.sequence, self.net.params, x.shape[0], 0
        for step in self.steps:
            stop = len(seq) if step.name == OUTPUT else seq.index(step.name)
            x = seq.run(start, stop, x, params)
            x, start = self.net.output_fn(x) if step.name == OUTPUT else x, stop
            tm = self.maps[step.name]
            xs, h = _masked(tm, step, x, B)                                    # (U, B, P, k)
            if hasattr(tm, "WB") and step.name != OUTPUT and seq.modules[start] is self.net.modules[step.name]:
                z = tm.head_out(h)                                              # the Linear's output
                x, start = z.reshape((-1,) + tuple(x.shape[1:-1]) + (z.shape[-1],)), start + 1
            else:
                x = _written(tm, h, x, xs.shape[1])
        if start < len(seq):
            x = self.net.output_fn(seq.run(start, len(seq), x, params))
        return x.reshape((-1, B) + tuple(x.shape[1:]))


class _Hooked:
    """A plan run through the whole model with hooks at the node layers (any model, any batch):
    the model gets ``copies`` stacked copies of the batch (1: the classes' rows change at each
    rewrite)."""

    def __init__(self, steps: list[_Step], final: Tensor, net: NodeModel, maps: Mapping[str, TorchMap],
                 copies: int):
        self.steps, self.final, self.net, self.maps, self.copies = steps, final, net, maps, copies

    def outputs(self, batch: Batch, readout: Tensor) -> Tensor:
        B = batch_size_of(batch)
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        for step in self.steps:
            self._hook(pre, post, step, B)
        y = self.net.run_replacing(batch if self.copies == 1 else _repeat(batch, self.copies), pre, post)
        return y.reshape((-1, B) + y.shape[1:])[self.final[readout]]

    def _hook(self, pre: dict, post: dict, step: _Step, B: int) -> None:
        """The rewrite f′ = b + C⁻¹ (mask ⊙ f̂[read]) on the way in; when the layer is the input
        of an ``nn.Linear`` the module runs on one class only and its output is computed from
        the masked f̂ (:meth:`TorchMap.fold_head`)."""
        tm = self.maps[step.name]
        if hasattr(tm, "WB"):
            stash: dict[str, Tensor] = {}

            def head_in(x: Tensor) -> Tensor:
                stash["h"] = _masked(tm, step, x, B)[1]
                return x[:B]

            def head_out(z: Tensor) -> Tensor:
                return tm.head_out(stash.pop("h")).reshape((-1,) + z.shape[1:])
            pre[step.name], post[step.name] = head_in, head_out
            return

        def rewrite(x: Tensor) -> Tensor:
            xs, h = _masked(tm, step, x, B)
            return _written(tm, h, x, xs.shape[1])
        pre[step.name] = rewrite


#: the classes of equal copies replace the stacked copies where they cut the work by this factor
MIN_ROW_SAVING = 2.0
#: ... and, where the model takes them one sample per pass only, where a pass holds this many
#: classes in its widest section (fewer rows per pass cost more in per-pass overhead than
#: they save, on a GPU above all)
MIN_CLASSES_ONE_SAMPLE = 32


class SectionCosts:
    """While active (``with``), a forward pass adds up a FLOP proxy per section of the node-layer
    chain: ``cost[j]`` (L + 1,) sums, over the leaf modules run after node layer j − 1 and before
    node layer j (j = 0: before the first, j = L: after the last), each output's numel times the
    fan-in of the module's weight (a Linear or conv: its multiply-adds; 1 without a weight of
    ≥ 2 dimensions, or for an Embedding, a look-up)."""

    def __init__(self, net: NodeModel):
        self.net = net
        self.cost = np.zeros(len(net.chain) + 1)
        self.section = 0
        self._handles: list[Any] = []

    def _enter(self, j: int) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.section = j + 1
        return hook

    def _count(self, module: nn.Module, args: Any, out: Any) -> None:
        w = getattr(module, "weight", None)
        fan = w.numel() // w.shape[0] if isinstance(w, Tensor) and w.ndim >= 2 and not isinstance(module, nn.Embedding) else 1
        self.cost[self.section] += sum(t.numel() for t in (out if isinstance(out, tuple) else (out,))
                                       if isinstance(t, Tensor)) * fan

    def __enter__(self) -> SectionCosts:
        self.section = 0
        net = self.net
        self._handles = [net.modules[n].register_forward_pre_hook(self._enter(j))
                         for j, n in enumerate(net.chain) if n != OUTPUT]
        self._handles += [m.register_forward_hook(self._count) for m in net.model.modules() if not list(m.children())]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


class Copies:
    """A plan on a model that is not a chain of modules (a mapping batch, attention masks):
    hooks on the whole model.

    The plain way runs the K copies stacked (side tensors such as attention masks repeated
    with them). Where it cuts the work by :data:`MIN_ROW_SAVING` (K · Σ_j cost_j against
    Σ_j U_j · cost_j, U_j the classes in section j, ``costs`` from :class:`SectionCosts`), the
    classes of equal copies run once each instead, as in :class:`Chain`: the rows change from
    layer to layer, which a model follows where its side tensors broadcast over them (one
    sample per pass always broadcasts) and no value bypasses a rewritten layer. That is
    checked, not assumed: on the first chunk of every evaluation the classes' output of the
    first sample must equal the stacked copies' (relative tolerance √eps of the dtype), run
    with a second sample, then alone; otherwise the stacked copies run. One sample per pass
    is kept only where a pass holds :data:`MIN_CLASSES_ONE_SAMPLE` classes or the stacked
    copies would pass one sample at a time too.
    """

    def __init__(self, plan: Plan, net: NodeModel, maps: Mapping[str, TorchMap], batch_size: int,
                 costs: np.ndarray):
        K, dev = plan.n_copies, net.device
        self.stacked = _Hooked(*_steps(plan, net.chain, maps, dev, dedup=False), net, maps, K)
        steps, final = _steps(plan, net.chain, maps, dev, dedup=True)
        rows = np.ones(len(costs))                  # classes per section of the chain
        for step in steps:
            rows[net.chain.index(step.name) + 1:] = step.n_out
        self.classes = _Hooked(steps, final, net, maps, 1) if MIN_ROW_SAVING * (rows @ costs) <= K * costs.sum() else None
        self.rows = int(rows.max()) if self.classes is not None else K
        self.batch_size, self.K = batch_size, K
        self.samples = 0        # samples per pass of the classes, once checked (0: not yet)

    def outputs(self, batch: Batch, readout: Tensor) -> Tensor:
        if self.classes is not None and not self.samples:
            got = self._check(batch, readout)
            if got is not None:
                return got
        if self.classes is None:
            return self._split(self.stacked, batch, readout, max(1, self.batch_size // self.K))
        return self._split(self.classes, batch, readout, self.samples)

    def _check(self, batch: Batch, readout: Tensor) -> Tensor | None:
        """The classes against the stacked copies on the first sample, run with the second
        sample (rows of two samples), then alone; the chunk's outputs when the classes pass
        (None: they do not)."""
        first = slice_batch(batch, 0, 1)
        want = self.stacked.outputs(first, readout)
        for n in dict.fromkeys([min(2, batch_size_of(batch)), 1]):
            try:
                got = self.classes.outputs(slice_batch(batch, 0, n), readout)
            except Exception:      # noqa: BLE001 - a model that cannot follow changing rows
                continue
            if _agree(got[:, :1], want):
                if n == 1 and self.rows < MIN_CLASSES_ONE_SAMPLE and min(batch_size_of(batch), self.batch_size // self.K) > 1:
                    break                   # the stacked copies pass several samples at once
                self.samples = max(1, self.batch_size // self.rows) if n > 1 else 1
                rest = slice_batch(batch, n)
                if not batch_size_of(rest):
                    return got
                return torch.cat([got, self._split(self.classes, rest, readout, self.samples)], 1)
        self.classes = None
        return None

    def _split(self, run: _Hooked, batch: Batch, readout: Tensor, n: int) -> Tensor:
        """``run`` over ``batch`` in chunks of n samples, concatenated: (R, B, …)."""
        if batch_size_of(batch) <= n:
            return run.outputs(batch, readout)
        return torch.cat([run.outputs(c, readout) for c in iter_batches(batch, n)], 1)


def _agree(a: Tensor, b: Tensor) -> bool:
    """a = b within √eps of the dtype, relative to the largest finite |b| (infinities and NaNs
    must sit in the same places)."""
    tol = torch.finfo(b.dtype).eps ** 0.5 if b.is_floating_point() else 0.0
    scale = float(b.abs().nan_to_num(0.0, 0.0, 0.0).max()) if b.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol * scale, equal_nan=True)


def _repeat(batch: Batch, K: int) -> Batch:
    """K copies of a batch stacked along dim 0 (copy c = rows c·B … c·B + B − 1)."""
    def rep(v: Any) -> Any:
        if isinstance(v, Tensor) and v.ndim > 0:
            return v.repeat((K,) + (1,) * (v.ndim - 1))
        return v
    return rep(batch) if isinstance(batch, Tensor) else {k: rep(v) for k, v in batch.items()}
