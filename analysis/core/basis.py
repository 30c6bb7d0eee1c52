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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .conv_grams import conv_moments
from .distributed import all_reduce_float, all_reduce_sum
from .gram import GramSum, MomentAccumulator, augmented_gram, augmented_rows, gram
from .inputs import Inputs
from .jacobian_grams import (
    affine_chain,
    chain_jacobians,
    closed_forms,
    conv_closed_forms,
    conv_gram,
    next_layer_jacobians,
    output_closed_forms,
    output_pass,
    terminal_M,
)
from .jacobians import DEFAULT_MAX_MEMORY
from .lapack import run_steps
from .layout import LayoutSpec
from .nodes import OUTPUT, OutputFn
from .progress import Callback
from .reprs import summary_repr
from .rotation import (
    Rotation,
    Whitening,
    gram_factor,
    kept_eigenvalues,
    rotate_all,
    rotation_steps,
    rounding_floor,
    whitening,
)
from .setup import prepare
from .structured import next_layer_gram, section_derivative

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
    floor_G: float = 0.0   # absolute floor of D (rotation.rounding_floor)

    __repr__ = summary_repr

    @functools.cached_property
    def D(self) -> np.ndarray:
        """Eigenvalues of G above max(tol_G·max, floor_G) (descending), of its covariance block
        when centred with the slot."""
        D = kept_eigenvalues(torch.as_tensor(self.G), self.center, self.include_bias, self.tol_G, self.floor_G)
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
    ``structured`` uses the exact closed forms of sections made of Linear maps (or convolutions)
    and one elementwise activation (:mod:`~intermod.analysis.core.structured`,
    :mod:`~intermod.analysis.core.convolution`), sums over receptive fields for conv sections
    without one (:mod:`~intermod.analysis.core.field_grams`) and coloured cotangents for the
    other local sections between conv maps (:mod:`~intermod.analysis.core.colouring`); False: one batched
    VJP per output position and direction everywhere;
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
    closed = closed_forms(s, n_probes) if kind == "interaction" and jacobian_target == "next_layer" else {}
    convs = conv_closed_forms(s, n_probes, closed) if kind == "interaction" and jacobian_target == "next_layer" else {}
    out_closed = output_closed_forms(s, n_probes) if jac_now else {}
    sums = {j: GramSum(net.point_dims[chain[j]] + aug, s.device)
            for j in range(T) if j not in out_closed} if jac_now else {}
    sigmas = {j: form[:2] for j, form in (closed | out_closed).items()}
    affine = affine_chain(s, sums) if jac_now else None
    per_sample: dict[tuple, int] = {}   # output_pass: elements per cotangent and sample, by sample shape
    sections = {j: sec for j, (sec, _) in (sigmas | (affine.sections if affine else {})).items()}
    for batch, mask, draw in s.batches("activations + jacobians" if jac_now else "activations"):
        if jac_now and affine is None:
            acts = output_pass(s, batch, mask, draw, n_probes, sums, per_sample)
        else:
            with torch.no_grad():
                acts = net.forward(batch)
        derivs = {j: section_derivative(sec, *net.layouts[chain[j]].samples(net.last_points[chain[j]].detach(),
                                                                             mask))
                  for j, sec in sections.items()}   # σ′ of closed-form sections, same pass
        if affine is not None:
            chain_jacobians(s, affine, derivs, draw, n_probes, sums)
        for j, (_, sigma) in sigmas.items():
            sigma.add(*derivs[j])
        for j, form in convs.items():            # per-tap σ′ moments of [activation] [Conv] sections
            point = net.last_points[chain[j]].detach()
            if form.moments is None:
                form.moments = conv_moments(form.section, tuple(point.shape[1:]), include_bias, s.device)
            form.moments.add(form.section, point, net.layouts[chain[j]].weights(point.shape, mask, s.dtype, s.device))
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
    rows = {n: None if (R := m.rows(center)) is None else
            augmented_rows(R, stats[n][0], center=center, include_bias=include_bias)
            for n, m in moments.items()}   # fewer samples than dimensions: G's SVD from them
    F: dict[str, Tensor | None] = {n: None for n in chain}   # M = Fᵀ F
    F[OUTPUT] = terminal_M(net.dims[OUTPUT], include_bias, s.device)
    for j, (sec, sigma, R) in out_closed.items():
        totals[j] = all_reduce_sum(next_layer_gram(sec, sigma, R, include_bias))
    for j, total in totals.items():
        F[chain[j]] = gram_factor(total / stats[chain[j]][0], net.pullback(chain[j]))

    floors = {n: rounding_floor(stats[n][1], torch.finfo(dtype).eps) for n in chain}   # G's absolute floors
    rotation_options = dict(center=center, include_bias=include_bias, tol_G=tol_G, tol_M=tol_M,
                            scaling=scaling, kind=kind)

    rots: dict[str, Rotation] = {}

    def rotate_beside(n: str, white: Whitening | None, below: str | None) -> Whitening | None:
        """Rotate layer n (with its whitening ``white`` when made already); the whitening of the
        layer ``below``, which needs only its G, is factorised in the same rounds, beside n's SVD."""
        steps: list = [rotation_steps(G[n], F[n], stats[n][1], white=white, rows=rows[n], floor=floors[n],
                                      **rotation_options)]
        if below:
            steps.append(whitening(G[below], center, include_bias, tol_G, rows[below], floors[below]))
        done = run_steps(steps)
        rots[n] = done[0]
        return done[1] if below else None

    timings = s.progress.timings
    t0 = time.perf_counter()
    if kind == "interaction" and jacobian_target == "next_layer":
        white = rotate_beside(OUTPUT, None, chain[T - 1] if T > 0 else None)
        for j in range(T - 1, -1, -1):
            found = conv_gram(s, convs[j], rots[chain[j + 1]].C) if j in convs else None
            if found is not None:
                total, n = found
            elif j in closed:
                sec, sigma = closed[j]
                total = all_reduce_sum(next_layer_gram(sec, sigma, rots[chain[j + 1]].C, net.include_bias))
                n = all_reduce_float(sigma.n, s.device)
            else:
                total, n = next_layer_jacobians(s, j, rots[chain[j + 1]].C, n_probes)
            t0 = time.perf_counter()
            F[chain[j]] = gram_factor(total / n, net.pullback(chain[j]))
            white = rotate_beside(chain[j], white, chain[j - 1] if j > 0 else None)
            timings["rotations"] = timings.get("rotations", 0.0) + time.perf_counter() - t0
    else:   # independent layers: their decompositions run side by side
        rots = dict(zip(chain, rotate_all([(G[n], F[n], stats[n][1], rows[n]) for n in chain],
                                                [floors[n] for n in chain], **rotation_options)))
        timings["rotations"] = time.perf_counter() - t0

    def np64(t: Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    out = {n: LayerBasis(name=n, dim=net.dims[n], C=np64(rots[n].C), Cinv=np64(rots[n].Cinv),
                         Lambda=np64(rots[n].Lambda), G=np64(G[n]),
                         M=None if F[n] is None else np64(gram(F[n])),
                         mean=np64(stats[n][1]), bias_direction=rots[n].bias_direction,
                         include_bias=include_bias, center=center, layout=net.layouts[n].kind,
                         tol_G=tol_G, floor_G=floors[n])
           for n in net.layers}
    options = dict(layers=net.layers, jacobian_target=jacobian_target, center=center,
                   include_bias=include_bias, tol_G=tol_G, tol_M=tol_M, scaling=scaling, kind=kind,
                   n_probes=n_probes, dtype=str(dtype).replace("torch.", ""), seed=seed,
                   layout={n: net.layouts[n].kind for n in net.chain})
    return Basis(out, options, stats[chain[0]][0], output_fn=output_fn, timings=dict(timings))
