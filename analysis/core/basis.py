"""Interaction basis of every node layer: :func:`compute_basis`.

Data flow: batches -> activations at node layers -> G (and, for the output target, M in the
same pass) -> rotation per layer (:mod:`intermod.analysis.core.rotation`). With
``jacobian_target="next_layer"`` the layers are rotated last first: M^l is the Jacobian Gram
of f̂^{l+1} = C_{l+1}ᵀ f^{l+1}, one pass over the data per layer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .distributed import all_reduce_float, all_reduce_sum, rank_world, shard
from .gram import GramSum, MomentAccumulator, augmented_gram
from .inputs import Inputs, batch_size_of, batch_to, count_batches, iter_batches, position_mask, resolve_device
from .jacobians import DEFAULT_MAX_MEMORY, ProbeDraw, SavedNumel, joint_cotangents, rotated_cotangents, vjp
from .layout import LayoutSpec, spread_slot
from .nodes import OUTPUT, NodeModel, OutputFn
from .progress import Callback, Progress
from .reprs import summary_repr
from .rotation import Rotation, gram_factor, kept_eigenvalues, rotate
from .structured import ActivationMoments, AffineSection, accumulate_moments, affine_section, next_layer_gram

TARGETS = ("output", "next_layer")
KINDS = ("interaction", "pca", "neuron")


@dataclass(frozen=True, eq=False)
class LayerBasis:
    """The basis of one node layer.

    C, Cinv: (d [+1], k) with f̂ = Cᵀ f_aug and f_aug = Cinv f̂ (bias slot = last row);
    Lambda: (k,) = E[f̂²] (index 0 is the constant direction when ``bias_direction``);
    G, M: raw Grams (d [+1], d [+1]) (G centred with ``center``); mean: (d,); D: kept
    eigenvalues of the activation covariance (or second moment), computed from G on first use
    (the rotation itself needs no eigendecomposition of G); layout: how the layer's tensor
    is read as samples (:class:`~intermod.analysis.core.layout.Layout`; its ``from_samples``
    writes coordinates back into the activation's shape).
    """

    name: str
    dim: int
    C: np.ndarray
    Cinv: np.ndarray
    Lambda: np.ndarray
    G: np.ndarray
    M: np.ndarray | None
    mean: np.ndarray
    bias_direction: bool
    include_bias: bool
    center: bool
    layout: str = "features"
    tol_G: float = 1e-10

    __repr__ = summary_repr

    @functools.cached_property
    def D(self) -> np.ndarray:
        """Eigenvalues of G above tol_G·max (descending), of its covariance block when centred
        with the slot."""
        D = kept_eigenvalues(torch.as_tensor(self.G), self.center, self.include_bias, self.tol_G)
        return D.numpy()

    @property
    def k(self) -> int:
        return int(self.Lambda.shape[0])

    def augment(self, f: np.ndarray | Tensor) -> np.ndarray:
        """f (…, d) -> f_aug (…, d+1) with the slot 1, or f − μ when centred without a slot."""
        f = np.asarray(f.detach().cpu() if isinstance(f, Tensor) else f, dtype=np.float64)
        if f.shape[-1] != self.dim:
            raise ValueError(f"layer {self.name!r}: expected activations of size {self.dim}, got {f.shape[-1]}")
        if self.include_bias:
            return np.concatenate([f, np.ones(f.shape[:-1] + (1,))], axis=-1)
        return f - self.mean if self.center else f

    def transform(self, f: np.ndarray | Tensor) -> np.ndarray:
        """Interaction-basis coordinates f̂ = Cᵀ f_aug, shape (…, k)."""
        return self.augment(f) @ self.C


class Basis(Mapping[str, LayerBasis]):
    """Read-only mapping layer -> :class:`LayerBasis` in forward order, plus the options used."""

    def __init__(self, layers: dict[str, LayerBasis], options: dict[str, Any], n_samples: float,
                 output_fn: OutputFn | None = None, timings: dict[str, float] | None = None):
        self._layers = layers
        self.options = options
        self.n_samples = n_samples
        self.output_fn = output_fn
        self.timings = timings or {}   # seconds per stage

    @property
    def layers(self) -> list[str]:
        return list(self._layers)

    def __getitem__(self, name: str) -> LayerBasis:
        try:
            return self._layers[name]
        except KeyError:
            raise KeyError(f"no layer {name!r} in this basis; layers: {self.layers}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        ks = ", ".join(f"{n}: k={b.k}" for n, b in self._layers.items())
        return f"Basis({ks}; {self.options['kind']}, target={self.options['jacobian_target']})"


def default_tol(dtype: torch.dtype) -> float:
    """Relative eigenvalue cut-off that sits above the rounding noise of ``dtype``."""
    return 1e-10 if dtype == torch.float64 else 1e-6 if dtype == torch.float32 else 1e-3


@dataclass
class _Setup:
    net: NodeModel
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    progress: Progress
    seed: int
    n_batches: int | None
    inputs: Inputs = field(repr=False)
    structured: bool = True            # closed forms where a section allows (core/structured.py)
    max_memory: int = DEFAULT_MAX_MEMORY   # bytes of temporaries per chunk

    def batches(self, stage: str, stream: int = 0) -> Iterator[tuple[Any, Tensor | None, ProbeDraw]]:
        """This process's batches (all of them without a process group), on the device, with the
        position mask and the probe draw of each (keyed by the global index of its samples)."""
        rank, world = rank_world()
        total = None if self.n_batches is None else len(range(rank, self.n_batches, world))
        for first, batch in self.progress.track(shard(_numbered(iter_batches(self.inputs, self.batch_size))),
                                                stage, total):
            batch = batch_to(batch, self.device, self.dtype)
            yield batch, position_mask(batch), ProbeDraw(self.seed, stream, first)


def _numbered(batches: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """(global index of the first sample, batch) for every batch."""
    first = 0
    for batch in batches:
        yield first, batch
        first += batch_size_of(batch)


def prepare(model: nn.Module, inputs: Inputs, layers: Sequence[str], *, output_fn: OutputFn | None,
            include_bias: bool, dtype: torch.dtype, batch_size: int, device: str | torch.device,
            seed: int, progress: bool, callback: Callback | None, layout: LayoutSpec = None,
            structured: bool = True, max_memory: int = DEFAULT_MAX_MEMORY) -> _Setup:
    """Resolve the device, cut the model at ``layers`` (read with ``layout``) and set up
    batching and progress."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    dev = resolve_device(device)
    first = next(iter_batches(inputs, batch_size), None)
    if first is None:
        raise ValueError("inputs: no data")
    net = NodeModel(model, layers, batch_to(first, dev, dtype), output_fn=output_fn,
                    include_bias=include_bias, dtype=dtype, device=dev, layout=layout)
    return _Setup(net, dev, dtype, batch_size, Progress(progress, callback), seed,
                  count_batches(inputs, batch_size), inputs, bool(structured), max_memory)


def _output_jacobians(s: _Setup, batch: Any, mask: Tensor | None, draw: ProbeDraw,
                      acts: dict[str, Tensor], saved: int, n_probes: int | None,
                      sums: dict[int, GramSum]) -> None:
    """Add one batch to M_p^j = Σ ĝ ĝᵀ for y = the output, for every node layer j in ``sums``
    at once (the others take their Grams from closed forms: their ĝ only carry slots down).

    ĝ = (∂y/∂p^j, slot) per (sample, position, cotangent). The slot of layer j scales every
    bias downstream of its point: its derivative is ∂y/∂s_j (the biases of section j, through
    the slot leaf) plus, carried back from layer j+1 by :func:`spread_slot`, ⟨∂y/∂f^{j+1}, β_j⟩
    (β_j: the tangent of section j's other biases), the slot derivative of layer j+1 and
    ⟨∂y/∂z^{j+1}, b_{j+1}⟩ for a Linear head at layer j+1 (a head's own bias at layer j is
    carried by the pull-back P_j instead). ``saved``: the elements autograd saved in the
    forward pass (:class:`~intermod.analysis.core.jacobians.SavedNumel`), per cotangent.
    """
    net = s.net
    L = net.layouts
    T = len(net.chain) - 1
    points = [net.last_points[n] for n in net.chain[:T]]
    inner = [acts[n] for n in net.chain[1:T]]
    slot_leaves = [sl for sl in net.last_slots] if net.include_bias else []
    y = acts[OUTPUT]
    yw = L[OUTPUT].samples(y, mask)[1]
    betas = []
    if net.needs_tangent:
        betas = [L[net.chain[m + 1]].to_samples(net.bias_tangent(batch, m, point=points[m].detach()))
                 for m in range(T)]
    weights = [L[n].samples(acts[n], mask)[1] for n in net.chain[:T]]
    per_item = sum(t.numel() for t in points + inner) + y.numel() + saved
    for R in joint_cotangents(yw, L[OUTPUT].n_features(y.shape), n_probes, draw, s.dtype, per_item,
                              s.max_memory):
        s.progress.heartbeat()
        K = R.shape[0]
        grads = vjp(y, points + inner + slot_leaves, L[OUTPUT].from_samples(R, y.shape))
        g_points = [L[n].to_samples(g, p.ndim) for n, g, p in zip(net.chain, grads[:T], points)]
        if net.include_bias:
            g_slots = [g.reshape(K, g.shape[1], -1) for g in grads[2 * T - 1:]]
            slots: list[Tensor] = [None] * T   # type: ignore[list-item]
            carry: Tensor | float = 0.0        # slot derivative of layer m+1 (its positions)
            for m in range(T - 1, -1, -1):
                down = carry
                if betas:
                    g_next = R if m == T - 1 else L[net.chain[m + 1]].to_samples(grads[T + m], inner[m].ndim)
                    down = down + (g_next * betas[m]).sum(-1)
                slots[m] = g_slots[m] + (spread_slot(down, weights[m]) if isinstance(down, Tensor) else 0.0)
                head_bias = net.head_bias(net.chain[m])
                carry = slots[m] if head_bias is None else slots[m] + g_points[m] @ head_bias
        for j in sums:
            g = g_points[j]
            if net.include_bias:
                g = torch.cat([g, slots[j][..., None]], -1)
            sums[j].add(g, weights[j])


def _next_layer_jacobians(s: _Setup, j: int, C_next: Tensor, n_probes: int | None) -> tuple[Tensor, float]:
    """M_p^j = Σ ĝ ĝᵀ for y = f̂^{j+1} = C_{j+1}ᵀ f^{j+1}_aug (one pass over the data), by
    batched VJPs of the rows of C_{j+1}ᵀ."""
    net = s.net
    aug = int(net.include_bias)
    src, dst = net.layouts[net.chain[j]], net.layouts[net.chain[j + 1]]
    total = GramSum(net.point_dims[net.chain[j]] + aug, s.device)
    n = 0.0
    for batch, mask, draw in s.batches(f"jacobians {net.chain[j]}", stream=j + 1):
        with SavedNumel(net.params.values()) as saved:
            point, f_out, slot_leaf = net.section(batch, j)
        beta = dst.to_samples(net.bias_tangent(batch, j)) if net.needs_tangent else None
        wo = dst.weights(f_out.shape, mask, s.dtype, s.device)
        wi = src.weights(point.shape, mask, s.dtype, s.device)
        n += float(wi.sum())
        B = wi.shape[0]
        per_item = point.numel() + f_out.numel() * 2 + saved.numel
        for data, down in rotated_cotangents(wo, C_next, n_probes, draw, s.dtype, per_item, bool(aug),
                                             s.max_memory):
            s.progress.heartbeat()
            K = data.shape[0]
            grads = vjp(f_out, [point] + ([slot_leaf] if aug else []), dst.from_samples(data, f_out.shape))
            g = src.to_samples(grads[0], point.ndim)
            if aug:   # slot: hooked biases (per position) + other biases + the next slot row
                if beta is not None:
                    down = down + (data * beta).sum(-1)
                slot = grads[1].reshape(K, B, -1) + spread_slot(down, wi)
                g = torch.cat([g, slot[..., None]], -1)
            total.add(g, wi)
    return all_reduce_sum(total.total), all_reduce_float(n, s.device)


def _closed_forms(s: _Setup, n_probes: int | None) -> dict[int, tuple[AffineSection, ActivationMoments]]:
    """Sections with a closed form (:mod:`~intermod.analysis.core.structured`; exact sums only),
    each with the accumulator of its σ′ moments: their next-layer Grams need no pass of their own."""
    if not s.structured or n_probes is not None:
        return {}
    net = s.net
    forms = {j: affine_section(net, j) for j in range(len(net.chain) - 1)}
    return {j: (sec, _moments(s, j, sec)) for j, sec in forms.items() if sec is not None}


def _moments(s: _Setup, j: int, sec: AffineSection) -> ActivationMoments:
    """An empty accumulator of the σ′ moments of section j."""
    return ActivationMoments(sec.width(s.net.point_dims[s.net.chain[j]]), s.device)


def _output_closed_forms(s: _Setup, n_probes: int | None
                         ) -> dict[int, tuple[AffineSection, ActivationMoments, Tensor]]:
    """Layers whose *output*-target Jacobian Gram is a next-layer closed form
    (:func:`~intermod.analysis.core.structured.next_layer_gram`), each with its σ′ moments and
    the readout R with y = Rᵀ f^{j+1}_aug: section j is affine–activation–affine and y is affine
    in layer j+1, i.e. j+1 is the output (R = [I; 0]), or the last section is the identity, so
    that y is the point of layer T−1 (R = P_{T−1}[:d_y]ᵀ, its Linear-head pull-back). This
    replaces K·n·h² of Jacobian-Gram products (K output coordinates) with n·h² for the σ′
    moments; the batched backward pass still serves the layers before."""
    if not s.structured or n_probes is not None:
        return {}
    net = s.net
    T, aug, d_y = len(net.chain) - 1, int(net.include_bias), net.dims[OUTPUT]
    last = affine_section(net, T - 1)
    if last is None:
        return {}
    forms = {T - 1: (last, torch.eye(d_y + aug, d_y, dtype=torch.float64, device=s.device))}
    before = affine_section(net, T - 2) if T >= 2 and last.identity else None
    if before is not None:
        forms[T - 2] = (before, net.pullback(net.chain[T - 1])[:d_y].T)
    return {j: (sec, _moments(s, j, sec), R) for j, (sec, R) in forms.items()}


def _terminal_M(d: int, include_bias: bool, device: torch.device) -> Tensor:
    """The output's own Jacobian Gram: ∂y/∂y = I, and no bias lies downstream of it."""
    M = torch.eye(d + int(include_bias), dtype=torch.float64, device=device)
    if include_bias:
        M[d, d] = 0.0
    return M


def compute_basis(model: nn.Module, inputs: Inputs, layers: Sequence[str], *,
                  jacobian_target: str = "output", center: bool = True, include_bias: bool = True,
                  tol_G: float | None = None, tol_M: float | None = None, scaling: str = "sqrt",
                  kind: str = "interaction", n_probes: int | None = None,
                  output_fn: OutputFn | None = None, dtype: torch.dtype = torch.float64,
                  batch_size: int = 512, device: str | torch.device = "auto", seed: int = 0,
                  progress: bool = True, callback: Callback | None = None,
                  layout: LayoutSpec = None, structured: bool = True,
                  max_memory: int = DEFAULT_MAX_MEMORY) -> Basis:
    """Rotate every node layer into the interaction basis (docs/design.md §1).

    G^l = (1/n) Σ (Y f)(Y f)ᵀ over all (input, position) samples; M^l = (1/n) Σ Σ_k
    (∂y_k/∂f_aug)(∂y_k/∂f_aug)ᵀ with y the output (``"output"``; one backward pass per output
    coordinate, or ``n_probes`` random ±1 probes, serves every layer) or y = f̂^{l+1}
    (``"next_layer"``, last layer first). The final node layer has M = I (PCA of the outputs).
    ``layout`` (one name, or layer -> name; see :mod:`~intermod.analysis.core.layout`) says how
    a layer's tensor splits into samples × features where the default rules do not, e.g.
    ``{"fc": "flatten"}``; ``output_fn`` may name a field of the model's output (``"logits"``).
    ``structured`` uses the exact closed form of sections made of Linear maps and one elementwise
    activation (:mod:`~intermod.analysis.core.structured`; False: batched VJPs everywhere);
    ``max_memory`` bounds the bytes of the temporaries of one chunk of cotangents.
    Returns a :class:`Basis` (layer -> C (d[+1], k), Lambda (k,), …).
    """
    if jacobian_target not in TARGETS:
        raise ValueError(f"jacobian_target must be one of {TARGETS}, got {jacobian_target!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if scaling not in ("sqrt", "inverse"):
        raise ValueError(f"scaling must be 'sqrt' or 'inverse', got {scaling!r}")
    if n_probes is not None and n_probes < 1:
        raise ValueError(f"n_probes must be None (exact) or >= 1, got {n_probes}")
    tol_G = default_tol(dtype) if tol_G is None else tol_G
    tol_M = default_tol(dtype) if tol_M is None else tol_M
    s = prepare(model, inputs, layers, output_fn=output_fn, include_bias=include_bias, dtype=dtype,
                batch_size=batch_size, device=device, seed=seed, progress=progress, callback=callback,
                layout=layout, structured=structured, max_memory=max_memory)
    net, aug = s.net, int(include_bias)
    chain, T = net.chain, len(net.chain) - 1
    moments = {n: MomentAccumulator() for n in chain}
    jac_now = kind == "interaction" and jacobian_target == "output"
    closed = _closed_forms(s, n_probes) if kind == "interaction" and jacobian_target == "next_layer" else {}
    out_closed = _output_closed_forms(s, n_probes) if jac_now else {}
    sums = {j: GramSum(net.point_dims[chain[j]] + aug, s.device)
            for j in range(T) if j not in out_closed} if jac_now else {}
    sigmas = {j: form[:2] for j, form in (closed | out_closed).items()}
    for batch, mask, draw in s.batches("activations + jacobians" if jac_now else "activations"):
        if jac_now:
            with SavedNumel(net.params.values()) as saved:
                acts = net.forward(batch, grad=True)
            _output_jacobians(s, batch, mask, draw, acts, saved.numel, n_probes, sums)
        else:
            with torch.no_grad():
                acts = net.forward(batch)
        for j, (sec, sigma) in sigmas.items():   # σ′ moments of closed-form sections, same pass
            point = net.last_points[chain[j]].detach()
            accumulate_moments(sec, *net.layouts[chain[j]].samples(point, mask), sigma)
        for n, a in acts.items():
            x, w = net.layouts[n].samples(a.detach(), mask)
            try:
                moments[n].add(x, w)
            except FloatingPointError:
                raise ValueError(f"activations at layer {n!r} contain NaN or Inf: check the inputs "
                                 "and the model's weights") from None
    stats = {n: m.result(s.device) for n, m in moments.items()}
    totals = {j: all_reduce_sum(gs.total) for j, gs in sums.items()}
    G = {n: augmented_gram(mean, cov, center=center, include_bias=include_bias)
         for n, (_, mean, cov) in stats.items()}
    F: dict[str, Tensor | None] = {n: None for n in chain}   # M = Fᵀ F
    F[OUTPUT] = _terminal_M(net.dims[OUTPUT], include_bias, s.device)
    for j, (sec, sigma, R) in out_closed.items():
        totals[j] = all_reduce_sum(next_layer_gram(sec, sigma, R, include_bias, net.point_dims[chain[j]]))
    for j, total in totals.items():
        F[chain[j]] = gram_factor(total / stats[chain[j]][0], net.pullback(chain[j]))

    def rot(n: str) -> Rotation:
        return rotate(G[n], F[n], stats[n][1], center=center, include_bias=include_bias,
                      tol_G=tol_G, tol_M=tol_M, scaling=scaling, kind=kind)

    rots: dict[str, Rotation] = {}
    timings = s.progress.timings
    t0 = time.perf_counter()
    if kind == "interaction" and jacobian_target == "next_layer":
        rots[OUTPUT] = rot(OUTPUT)
        for j in range(T - 1, -1, -1):
            if j in closed:
                sec, sigma = closed[j]
                total = all_reduce_sum(next_layer_gram(sec, sigma, rots[chain[j + 1]].C, net.include_bias,
                                                       net.point_dims[chain[j]]))
                n = all_reduce_float(sigma.n, s.device)
            else:
                total, n = _next_layer_jacobians(s, j, rots[chain[j + 1]].C, n_probes)
            t0 = time.perf_counter()
            F[chain[j]] = gram_factor(total / n, net.pullback(chain[j]))
            rots[chain[j]] = rot(chain[j])
            timings["rotations"] = timings.get("rotations", 0.0) + time.perf_counter() - t0
    else:
        rots = {n: rot(n) for n in chain}
        timings["rotations"] = time.perf_counter() - t0

    def np64(t: Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    out = {n: LayerBasis(name=n, dim=net.dims[n], C=np64(rots[n].C), Cinv=np64(rots[n].Cinv),
                         Lambda=np64(rots[n].Lambda), G=np64(G[n]),
                         M=None if F[n] is None else np64(F[n].T @ F[n]),
                         mean=np64(stats[n][1]), bias_direction=rots[n].bias_direction,
                         include_bias=include_bias, center=center, layout=net.layouts[n].kind,
                         tol_G=tol_G)
           for n in net.layers}
    options = dict(layers=net.layers, jacobian_target=jacobian_target, center=center,
                   include_bias=include_bias, tol_G=tol_G, tol_M=tol_M, scaling=scaling, kind=kind,
                   n_probes=n_probes, dtype=str(dtype).replace("torch.", ""), seed=seed,
                   layout={n: net.layouts[n].kind for n in net.chain})
    return Basis(out, options, stats[chain[0]][0], output_fn=output_fn, timings=dict(timings))
