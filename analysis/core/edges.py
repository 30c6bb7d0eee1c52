"""Interaction strengths between adjacent node layers: :func:`build_graph`.

For section l -> l+1 in interaction-basis coordinates, with f_aug = C⁻¹ f̂ (the inverse map):

    A_ij(x) = ∂f̂^{l+1}_i/∂f̂^l_j · f̂^l_j                       (edge_method="gradient")
    A_ij(x) = ∫₀¹ ∂f̂^{l+1}_i/∂f̂^l_j(α x̂) dα · f̂^l_j            ("integrated", Gauss–Legendre)
    E_ij = (1/n) Σ_x A_ij(x)²,   w_ij = √E_ij                      (output units)

With positions, A_{t,i,j} = Σ_s ∂f̂_{t,i}/∂f̂_{s,j} · f̂_{s,j} and E averages over (x, t).
The per-sample Jacobian ∂f̂^{l+1}/∂f̂^l = C_{l+1}ᵀ K(x) P_l C⁻¹_l (K: the section's augmented
Jacobian at its point, P_l: the pull-back through a Linear head) comes from batched VJPs of
the rows of C_{l+1}ᵀ. The integrated path scales the augmented activation (slot included, so
every bias of the section is scaled by α too) and the integral has n_alpha nodes. Layers are
read as samples in the layouts the basis was built with (``basis.options["layout"]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .affine_edges import edge_sums
from .basis import Basis
from .colouring import coloured_cotangents, split_slot, to_owner
from .convolution import conv_edge_sums, conv_section
from .distributed import all_reduce_float, all_reduce_sum
from .graph import InteractionGraph
from .inputs import Inputs
from .jacobians import DEFAULT_MAX_MEMORY, ProbeDraw, SavedNumel, per_direction_cotangents, vjp
from .layout import path_point, spread_slot
from .nodes import OutputFn
from .progress import Callback
from .separable_edges import separable_edge_sums
from .separable_grams import SeparableSection, separable_section
from .setup import prepare
from .structured import Workspace, affine_section
from .tangent_edges import activation_width, forward_mode_works, tangent_edge_sums

EDGE_METHODS = ("gradient", "integrated")


def quadrature(edge_method: str, n_alpha: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of ∫₀¹ dα: the end point for "gradient", Gauss–Legendre for "integrated"."""
    if edge_method == "gradient":
        return [1.0], [1.0]
    if n_alpha < 1:
        raise ValueError(f"n_alpha must be >= 1, got {n_alpha}")
    x, w = np.polynomial.legendre.leggauss(n_alpha)
    return list((x + 1) / 2), list(w / 2)


def build_graph(model: nn.Module, inputs: Inputs, basis: Basis, *, edge_method: str = "gradient",
                n_alpha: int = 8, n_probes: int | None = None, output_fn: OutputFn | None = None,
                batch_size: int = 512, device: str | torch.device = "auto",
                dtype: torch.dtype = torch.float64, seed: int = 0, progress: bool = True,
                callback: Callback | None = None, structured: bool = True,
                max_memory: int = DEFAULT_MAX_MEMORY) -> InteractionGraph:
    """Interaction graph of ``basis``: nodes = basis directions, edges between adjacent layers.

    Returns an :class:`InteractionGraph` whose ``edge_matrix(l, l+1)`` is w (k_{l+1}, k_l).
    ``n_probes`` replaces the exact sum over output positions by random ±1 probes (sequences).
    ``structured``: sections of Linear maps and one elementwise activation use the closed form
    Ĵ(x) = L diag(σ′) R + u vᵀ as GEMMs over samples (:mod:`~intermod.analysis.core.structured`),
    [Conv] [activation] [pool] [Conv] sections and ResNet blocks its convolutional form
    (:mod:`~intermod.analysis.core.convolution`), other sections with positions (attention, other
    conv sections) one forward-mode JVP per input direction where those are fewer passes than
    the VJPs (:mod:`~intermod.analysis.core.tangent_edges`), other local sections coloured cotangents
    (:mod:`~intermod.analysis.core.colouring`; all exact sums only); False: one batched VJP per
    output position and direction everywhere. ``max_memory``: bytes of temporaries per
    chunk. ``dtype`` is the compute dtype; E is accumulated in float64 either way.
    """
    if edge_method not in EDGE_METHODS:
        raise ValueError(f"edge_method must be one of {EDGE_METHODS}, got {edge_method!r}")
    if not isinstance(basis, Basis):
        raise TypeError(f"basis must come from compute_basis, got {type(basis).__name__}")
    alphas, weights = quadrature(edge_method, n_alpha)
    include_bias = basis.options["include_bias"]
    t0 = time.perf_counter()
    s = prepare(model, inputs, basis.layers, output_fn=output_fn or basis.output_fn,
                include_bias=include_bias, dtype=dtype, batch_size=batch_size, device=device,
                seed=seed, progress=progress, callback=callback, layout=basis.options.get("layout"),
                structured=structured, max_memory=max_memory)
    net, aug = s.net, int(include_bias)
    if net.layers != basis.layers:
        raise ValueError(f"the model runs layers in the order {net.layers}, the basis has {basis.layers}")
    for n in net.layers:
        if net.dims[n] != basis[n].dim:
            raise ValueError(f"layer {n!r}: the model gives {net.dims[n]} features, the basis was built for {basis[n].dim}")
    layers = net.layers
    as_t = {n: (torch.as_tensor(basis[n].C, device=s.device),
                torch.as_tensor(basis[n].Cinv, device=s.device)) for n in layers}
    P = [net.pullback(n) for n in layers[:-1]]   # None: the identity
    Q = [(as_t[n][1] if P[j] is None else P[j] @ as_t[n][1]).to(dtype) for j, n in enumerate(layers[:-1])]
    E = [torch.zeros(basis[layers[j + 1]].k, basis[layers[j]].k, dtype=torch.float64, device=s.device)
         for j in range(len(layers) - 1)]
    counts = [0.0] * len(E)
    baselines = [_baseline(net, layers[j], basis[layers[j]].mean, basis[layers[j]].center)
                 for j in range(len(E))]
    closed = [affine_section(net, j) if structured and n_probes is None else None for j in range(len(E))]
    convs = [conv_section(net, j) if structured and n_probes is None and closed[j] is None else None
             for j in range(len(E))]
    separables = [_separable(net, j) if structured and n_probes is None and closed[j] is None and convs[j] is None
                  else None for j in range(len(E))]
    tangents: list[bool | None] = [None if structured and n_probes is None and closed[j] is None and convs[j] is None
                                   and separables[j] is None else False for j in range(len(E))]   # None: not yet tried
    widths: dict[int, float] = {}
    workspace = Workspace()
    for batch, mask, draw in s.batches("edges"):
        with torch.no_grad():
            acts = net.forward(batch)
        points = dict(net.last_points)
        for j in range(len(E)):
            src, dst = layers[j], layers[j + 1]
            w_out = net.layouts[dst].weights(acts[dst].shape, mask, s.dtype, s.device)
            counts[j] += float(w_out.sum())
            if E[j].numel() == 0:       # a layer without basis directions: no edges to sum
                continue
            f_in, w_in = net.layouts[src].samples(acts[src], mask)
            f_hat = (torch.cat([f_in, torch.ones_like(f_in[..., :1])], -1) if aug
                     else f_in - torch.as_tensor(basis[src].mean, device=s.device, dtype=dtype)
                     if basis[src].center else f_in) @ as_t[src][0].to(dtype)
            f_hat = f_hat * w_in[..., None]
            if closed[j] is not None:
                edge_sums(closed[j], net.layouts[src].samples(points[src], mask)[0], baselines[j], f_hat,
                          w_out, as_t[dst][0], Q[j], alphas, weights, bool(aug), E[j], s.max_memory,
                          workspace, s.progress.heartbeat)
                continue
            if convs[j] is not None:
                conv_edge_sums(convs[j], points[src], baselines[j], f_hat, w_in, w_out, as_t[dst][0], Q[j], alphas,
                               weights, bool(aug), E[j], s.max_memory, s.progress.heartbeat)
                continue
            if separables[j] is not None:
                separable_edge_sums(separables[j], points[src], baselines[j], f_hat, w_in, w_out, as_t[dst][0],
                                    Q[j], alphas, weights, bool(aug), E[j], s.max_memory, s.progress.heartbeat)
                continue
            pays = tangents[j] is not False and _forward_pays(s, j, points[src], f_hat.shape[-1], w_out, E[j].shape[0])
            if pays and tangents[j] is None:     # tried once per section
                tangents[j] = forward_mode_works(net, batch, j, points[src])
            if pays and tangents[j]:
                if j not in widths:      # the section's activations per input element, measured once
                    widths[j] = activation_width(net, batch, j, points[src])
                tangent_edge_sums(net, batch, j, points[src], baselines[j], f_hat, w_in, w_out, as_t[dst][0], Q[j],
                                  alphas, weights, E[j], widths[j], s.max_memory, s.progress.heartbeat)
                continue
            _section_edges(s, batch, mask, draw, j, points[src], baselines[j], f_hat, w_in, w_out,
                           as_t[dst][0], Q[j], alphas, weights, n_probes, E[j])
    counts = [all_reduce_float(c, s.device) for c in counts]
    mats = [(all_reduce_sum(e) / max(c, 1.0)).sqrt().cpu().numpy() for e, c in zip(E, counts)]
    metadata = dict(basis.options, edge_method=edge_method, n_alpha=n_alpha if edge_method == "integrated" else None,
                    edge_n_probes=n_probes, n_samples=basis.n_samples,
                    seconds_edges=round(time.perf_counter() - t0, 3),
                    timings_basis=basis.timings)
    return InteractionGraph.from_arrays(
        layers, [basis[n].Lambda for n in layers], mats,
        bias_direction=[basis[n].bias_direction for n in layers],
        bases={n: (basis[n].C, basis[n].Lambda) for n in layers}, metadata=metadata,
        inverses={n: basis[n].Cinv for n in layers}, means={n: basis[n].mean for n in layers})


def _separable(net, j: int) -> SeparableSection | None:
    """Section j as a depthwise-separable block whose edges have the closed form
    (:mod:`~intermod.analysis.core.separable_edges`): with the slot, its depthwise map must keep
    the positions or stride (which changes their number: the mean slot's rule)."""
    sec = separable_section(net, j)
    return sec if sec is not None and sec.reads_slot(net.include_bias) else None


def _baseline(net, name: str, mean: np.ndarray, center: bool) -> Tensor | None:
    """The point where f̂ = 0 when there is no bias slot: f = μ (centred) or 0, pushed through a
    Linear head (z = W f + b). With a slot, f̂ = 0 is f_aug = 0 and the path is simply α·point."""
    if net.include_bias:
        return None
    f0 = torch.as_tensor(mean, device=net.device) if center else torch.zeros(net.dims[name], dtype=torch.float64, device=net.device)
    P = net.pullback(name)
    p0 = f0 if P is None else P @ f0
    b = net.head_bias(name)
    return (p0.to(net.dtype) + b) if b is not None else p0.to(net.dtype)


def _forward_pays(s, j: int, point: Tensor, k: int, w_out: Tensor, k_next: int) -> bool:
    """Whether section j's edges take JVPs (:mod:`~intermod.analysis.core.tangent_edges`, one per
    input direction: k) rather than VJPs: the VJPs would need more than one pass per output
    direction (n_colours of them, or one per output position) and more passes in all."""
    col = s.colouring(j, point.shape)
    passes = w_out.shape[1] if col is None else col.n_colours
    return passes > 1 and k < passes * k_next


def _section_edges(s, batch, mask, draw: ProbeDraw, j: int, point: Tensor, baseline: Tensor | None,
                   f_hat: Tensor, w_in: Tensor, w_out: Tensor, C_next: Tensor, Q: Tensor,
                   alphas: Sequence[float], weights: Sequence[float], n_probes: int | None, E: Tensor) -> None:
    """Add one batch of section j to E (k_{j+1}, k_j). The integrated path runs from the
    ``baseline`` point (f̂ = 0) to ``point``; w_in (B, P_in), w_out (B, P_out): sample weights."""
    net = s.net
    src, dst = net.layouts[net.chain[j]], net.layouts[net.chain[j + 1]]
    aug = net.include_bias
    d_next = C_next.shape[0] - int(aug)
    C_data = C_next[:d_next].to(s.dtype)
    c_slot = C_next[d_next].to(s.dtype) if aug else None
    k_next = C_next.shape[1]
    B = f_hat.shape[0]

    def at(alpha: float) -> Tensor:
        return path_point(src, point, baseline, alpha)

    # The section's graph at each α is built once and reused by every chunk of cotangents
    # when the graphs of all α fit in half of max_memory (a graph holds `saved.numel` elements);
    # otherwise each chunk rebuilds them one at a time (the first chunk's α₀ uses the graph
    # built to count). β (the tangent of the biases no slot covers) depends on α only.
    with SavedNumel(net.params.values()) as saved:
        first = net.section(batch, j, point=at(alphas[0]), alpha=alphas[0])
    keep = len(alphas) == 1 or len(alphas) * saved.numel * s.dtype.itemsize <= s.max_memory // 2
    graphs = [first] + [net.section(batch, j, point=at(a), alpha=a) for a in alphas[1:]] if keep else None
    betas = ([dst.to_samples(net.bias_tangent(batch, j, point=at(a), alpha=a)) for a in alphas]
             if aug and net.needs_tangent else None)
    col = s.colouring(j, point.shape) if n_probes is None else None
    per_item = (point.numel() * (2 + len(alphas)) + f_hat.numel() + w_out.numel() * d_next * 2
                + saved.numel + (0 if col is None else w_out.numel() * f_hat.shape[-1]))
    spare = None if keep else first        # the first chunk's α₀ graph when graphs are rebuilt
    del first
    if col is not None:
        share = w_in / w_in.sum(-1, keepdim=True).clamp_min(1.0)
        f_bar = torch.einsum("bs,bsj->bj", share, f_hat)         # Σ_s ŵ_s f̂_s: what the mean slot reads
        hooks = downs = [None] * len(alphas)
        if aug:
            hooks = [dst.to_samples(net.mean_slot_tangent(batch, j, point=at(a), alpha=a)) @ C_data
                     if col.mean_hooks else None for a in alphas]
            downs = [(c_slot + (0.0 if betas is None else betas[q] @ C_data)).expand(w_out.shape + (k_next,))
                     for q in range(len(alphas))]
        cotangents = coloured_cotangents(col, w_out, k_next, s.dtype, per_item, s.max_memory)
    else:
        cotangents = ((pattern, which, None) for pattern, which in
                      per_direction_cotangents(w_out, k_next, n_probes, draw, s.dtype, per_item, s.max_memory))
    for pattern, which, colour in cotangents:
        K = pattern.shape[0]                                     # cotangent = e_i ⊗ pattern
        C_which = C_data[:, which]                               # (d_{j+1}, K)
        data = pattern[..., None] * C_which.T[:, None, None, :]  # (K, B, P, d_{j+1})
        g_sum = slot_sum = gamma_sum = None
        for q, (alpha, wq) in enumerate(zip(alphas, weights)):
            s.progress.heartbeat()                               # cancellation inside the quadrature
            if graphs:
                p_leaf, f_out, slot_leaf = graphs[q]
            elif spare is not None:
                (p_leaf, f_out, slot_leaf), spare = spare, None
            else:
                p_leaf, f_out, slot_leaf = net.section(batch, j, point=at(alpha), alpha=alpha)
            grads = vjp(f_out, [p_leaf] + ([slot_leaf] if aug else []), dst.from_samples(data, f_out.shape))
            g = wq * src.to_samples(grads[0], p_leaf.ndim)
            g_sum = g if g_sum is None else g_sum + g
            if aug and col is not None:   # slot: local at the owners, global per output position
                slot, gamma = split_slot(col, grads[1].reshape(K, B, -1), pattern, which, hooks[q], downs[q],
                                         share)
                gamma_sum = wq * gamma if gamma_sum is None else gamma_sum + wq * gamma
            elif aug:  # slot: hooked biases (per position), other biases (β), the next slot row
                down = pattern * c_slot[which][:, None, None]
                if betas is not None:
                    down = down + pattern * torch.einsum("bpd,dk->kbp", betas[q], C_which)
                slot = grads[1].reshape(K, B, -1) + spread_slot(down, w_in)
            if aug:
                slot_sum = wq * slot if slot_sum is None else slot_sum + wq * slot
        J_hat = g_sum @ Q[:g_sum.shape[-1]]                      # (K, B, P_in, k_j)
        if aug:
            J_hat.addcmul_(slot_sum[..., None], Q[-1])
        if col is not None:                                      # Σ_s per owner t: (K, B, P_out, k_j)
            A = to_owner(col, J_hat.mul_(f_hat[None]), colour)
            if aug:
                A.addcmul_(gamma_sum[..., None], (f_bar * Q[-1])[None, :, None, :])
            E.index_add_(0, which, A.square_().sum((1, 2)).to(torch.float64))
            continue
        if J_hat.shape[2] == 1:
            A = J_hat[:, :, 0].mul_(f_hat[:, 0])                 # (K, B, k_j)
        else:
            A = torch.einsum("kbpj,bpj->kbj", J_hat, f_hat)      # Σ_s over input positions
        E.index_add_(0, which, A.square_().sum(1).to(torch.float64))
