"""Jacobian Grams of the interaction basis (docs/design.md §1), section by section.

By batched VJPs: the output target's K cotangents serve every layer in the activation pass
(:func:`output_jacobians`); the next-layer target takes one pass per layer
(:func:`next_layer_jacobians`), with coloured cotangents where the section is local
(:mod:`~intermod.analysis.core.colouring`); conv sections without a closed form (a ResNet
block's activation after the sum, a mean slot, a convolution before a pool) are summed over each
output's receptive field (:mod:`~intermod.analysis.core.field_grams`). From closed forms: sections of Linear maps and one
activation (:mod:`~intermod.analysis.core.structured`) and [activation] [Conv] sections
(:mod:`~intermod.analysis.core.convolution`), whose σ′ moments are summed in the activation pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .colouring import Colouring, at_owner, coloured_cotangents, missing_slot_square, split_slot
from .conv_grams import ConvMoments, conv_next_layer_gram
from .convolution import ConvSection, conv_section
from .distributed import all_reduce_float, all_reduce_sum
from .field_grams import FieldSums, field_gram, field_section, field_sums, field_total, receptive_fields
from .gram import GramSum
from .inputs import batch_size_of, iter_batches, position_mask, sample_shape, slice_batch
from .jacobians import (
    VJP_CHUNK_BYTES,
    ProbeDraw,
    SavedNumel,
    chunk_budget,
    chunk_size,
    joint_cotangents,
    rotated_cotangents,
    vjp,
)
from .layout import spread_slot
from .nodes import OUTPUT, NodeModel
from .pool_grams import PoolMoments
from .separable_grams import SeparableMoments, SeparableSection, separable_section
from .setup import Setup
from .structured import ActivationMoments, AffineSection, Workspace, affine_section, pull_back
from .two_conv_grams import PairMoments


def output_pass(s: Setup, batch: Any, mask: Tensor | None, draw: ProbeDraw, n_probes: int | None,
                sums: dict[int, GramSum], per_sample: dict[tuple, int]) -> dict[str, Tensor]:
    """The output target's activation pass on one batch: a forward pass with grad, then
    :func:`output_jacobians`; returns the activations (detached when the batch ran in parts).

    One backward pass takes a chunk of cotangents over the whole batch, so on a batch of large
    maps even one cotangent's temporaries can overrun the chunk budget (the chunk size is at
    least 1) and stream through main memory in every pass. Such a batch runs in parts sized to
    fit it, each with its own forward pass, decided *before* any forward pass over the whole
    batch (whose graph would be built and dropped unused): ``per_sample`` holds the elements
    per cotangent and sample of the last batch of the same sample shape
    (:func:`~intermod.analysis.core.inputs.sample_shape`), else one sample's forward pass
    measures them (every tensor counted scales with the batch). The parts' activations and
    points are joined along the batch (every layout is batch-first), so the σ′ moments and the
    activation Grams read the whole batch; the probes keep their samples' draws."""
    net = s.net
    B, key = batch_size_of(batch), sample_shape(batch)
    if B > 1 and key not in per_sample:
        with SavedNumel(net.params.values()) as saved:
            acts = net.forward(slice_batch(batch, 0, 1), grad=True)
        per_sample[key] = _per_cotangent(net, acts, saved.numel)
    budget = chunk_budget(s.max_memory, VJP_CHUNK_BYTES, s.device) // s.dtype.itemsize
    size = B if B == 1 else max(1, min(B, budget // max(per_sample[key], 1)))

    def run(part: Any, part_mask: Tensor | None, part_draw: ProbeDraw) -> dict[str, Tensor]:
        with SavedNumel(net.params.values()) as saved:
            acts = net.forward(part, grad=True)
        per_item = _per_cotangent(net, acts, saved.numel)
        per_sample[key] = -(-per_item // batch_size_of(part))
        output_jacobians(s, part, part_mask, part_draw, acts, per_item, n_probes, sums)
        return acts

    if size == B:
        return run(batch, mask, draw)
    parts: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
    for i, part in enumerate(iter_batches(batch, size)):
        acts = run(part, position_mask(part), ProbeDraw(draw.seed, draw.stream, draw.first + i * size))
        parts.append(({n: a.detach() for n, a in acts.items()}, {n: p.detach() for n, p in net.last_points.items()}))
    net.last_points = {n: torch.cat([points[n] for _, points in parts]) for n in parts[0][1]}
    net.last_slots = [None] * (len(net.chain) - 1)   # as after a forward pass without grad
    return {n: torch.cat([acts[n] for acts, _ in parts]) for n in parts[0][0]}


def _per_cotangent(net: NodeModel, acts: Mapping[str, Tensor], saved: int) -> int:
    """Elements of one cotangent's temporaries in :func:`output_jacobians`' backward pass: the
    gradients at every point and inner activation, the output's cotangent and ``saved``, the
    elements autograd saved (:class:`~intermod.analysis.core.jacobians.SavedNumel`)."""
    T = len(net.chain) - 1
    return (sum(net.last_points[n].numel() for n in net.chain[:T]) + sum(acts[n].numel() for n in net.chain[1:T])
            + acts[OUTPUT].numel() + saved)


def output_jacobians(s: Setup, batch: Any, mask: Tensor | None, draw: ProbeDraw,
                      acts: dict[str, Tensor], per_item: int, n_probes: int | None,
                      sums: dict[int, GramSum]) -> None:
    """Add one batch to M_p^j = Σ ĝ ĝᵀ for y = the output, for every node layer j in ``sums``
    at once (the others take their Grams from closed forms: their ĝ only carry slots down).

    ĝ = (∂y/∂p^j, slot) per (sample, position, cotangent). The slot of layer j scales every
    bias downstream of its point: its derivative is ∂y/∂s_j (the biases of section j, through
    the slot leaf) plus, carried back from layer j+1 by :func:`spread_slot`, ⟨∂y/∂f^{j+1}, β_j⟩
    (β_j: the tangent of section j's other biases), the slot derivative of layer j+1 and
    ⟨∂y/∂z^{j+1}, b_{j+1}⟩ for a Linear head at layer j+1 (a head's own bias at layer j is
    carried by the pull-back P_j instead). ``acts``: the batch's forward pass with grad;
    ``per_item``: its elements per cotangent (:func:`_per_cotangent`).
    """
    net = s.net
    L = net.layouts
    T = len(net.chain) - 1
    points = [net.last_points[n] for n in net.chain[:T]]
    inner = [acts[n] for n in net.chain[1:T]]
    y = acts[OUTPUT]
    yw = L[OUTPUT].samples(y, mask)[1]
    slot_leaves = [sl for sl in net.last_slots] if net.include_bias else []
    betas = []
    if net.needs_tangent:
        betas = [L[net.chain[m + 1]].to_samples(net.bias_tangent(batch, m, point=points[m].detach()))
                 for m in range(T)]
    weights = [L[n].samples(acts[n], mask)[1] for n in net.chain[:T]]
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
            sums[j].add(g_points[j], weights[j], slots[j] if net.include_bias else None)


@dataclass
class AffineChain:
    """Sections j₀ … T−1 as (section, the Linear head of layer j as an affine map or None), and
    the scratch memory their per-sample cotangents cycle through (three buffers: a pull-back
    writes at most two, and its input is the last one written)."""

    sections: dict[int, tuple[AffineSection, AffineSection | None]]
    workspace: Workspace = field(default_factory=Workspace)

    def scratch(self, s: Setup) -> Callable[[tuple[int, ...]], Tensor]:
        turn = itertools.cycle("abc")
        return lambda shape: self.workspace.get(next(turn), shape, s.dtype, s.device)


def affine_chain(s: Setup, sums: Mapping[int, GramSum]) -> AffineChain | None:
    """The sections from j₀ (the first layer whose output-target Gram is summed) to the output,
    when every one is affine–activation–affine on (batch, features) layers and every bias is a
    slot or a head's (a head: W₂, b₂ = its weight and bias): then :func:`chain_jacobians`
    carries the output's cotangents back in closed form, with no backward pass (whose batched
    activation backward broadcasts σ′ over the K cotangents, and whose first op multiplies the
    unit cotangents by a weight matrix). None otherwise."""
    net = s.net
    if not (s.structured and sums) or net.needs_tangent:
        return None
    T, j0 = len(net.chain) - 1, min(sums)
    if any(net.layouts[n].kind != "features" for n in net.chain[j0:]):
        return None
    sections = {j: affine_section(net, j) for j in range(j0, T)}
    if any(sec is None for sec in sections.values()):
        return None
    heads = {j: AffineSection(None, None, None, net.params[net._param_name(net.heads[n], "weight")],
                              net.head_bias(n))
             for j, n in enumerate(net.chain[:T]) if n in net.heads}
    return AffineChain({j: (sec, heads.get(j)) for j, sec in sections.items()})   # type: ignore[misc]


def chain_jacobians(s: Setup, chain: AffineChain, derivs: Mapping[int, tuple[Tensor, Tensor]],
                    draw: ProbeDraw, n_probes: int | None, sums: dict[int, GramSum]) -> None:
    """Add one batch to M_p^j = Σ ĝ ĝᵀ (y = the output) for every j in ``sums``, pulling the
    cotangents of y back section by section from the last, (ĝ_j, s_j)ᵀ = (ĝ_f, s_f)ᵀ J_j(x)
    with (ĝ_f, s_f) those of f^{j+1} (:func:`~intermod.analysis.core.structured.pull_back`),
    then through layer j's Linear head (point_aug = P_j f_aug) onto f^j.

    Exact: the unit vectors of y's coordinates, which stay one matrix (K, d) for all samples
    until the first activation; probes: the same ±1 cotangents as the batched VJPs
    (:func:`~intermod.analysis.core.jacobians.joint_cotangents`). ``derivs[j]``: (σ′ (N, h),
    weights (N,)) of section j on this batch."""
    net = s.net
    T, d_y, j0 = len(net.chain) - 1, net.dims[OUTPUT], min(sums)
    w = derivs[T - 1][1]
    N = w.shape[0]
    widths = [max(derivs[j][0].shape[1], net.point_dims[net.chain[j]], net.dims[net.chain[j]] if j > j0 else 0)
              for j in chain.sections]
    per_item = 3 * N * max(widths)   # the three scratch buffers, per cotangent
    if n_probes is None:
        eye = torch.eye(d_y, dtype=s.dtype, device=s.device)
        step = chunk_size(d_y, per_item, s.dtype, s.max_memory, s.device)
        starts: Any = (eye[i:i + step] for i in range(0, d_y, step))
    else:
        starts = (R[:, :, 0] for R in joint_cotangents(w[:, None], d_y, n_probes, draw, s.dtype, per_item,
                                                       s.max_memory))
    scratch = chain.scratch(s)
    for g in starts:
        s.progress.heartbeat()
        slot = torch.zeros(g.shape[:-1], dtype=s.dtype, device=s.device) if net.include_bias else None
        for j in range(T - 1, j0 - 1, -1):
            sec, head = chain.sections[j]
            g, slot = pull_back(sec, g, slot, derivs[j][0], scratch)
            if j in sums:   # constant rows (no activation met yet) and slots count once per sample
                K = g.shape[0]
                sums[j].add(g[:, None, :].expand(K, N, g.shape[-1]) if g.ndim == 2 else g, w,
                            None if slot is None else slot.reshape(K, -1).expand(K, N))
            if head is not None and j > j0:
                g, slot = pull_back(head, g, slot, derivs[j][0], scratch)


def next_layer_jacobians(s: Setup, j: int, C_next: Tensor, n_probes: int | None) -> tuple[Tensor, float]:
    """M_p^j = Σ ĝ ĝᵀ for y = f̂^{j+1} = C_{j+1}ᵀ f^{j+1}_aug (one pass over the data), by
    batched VJPs of the rows of C_{j+1}ᵀ (coloured where the section is local)."""
    net = s.net
    aug = int(net.include_bias)
    src, dst = net.layouts[net.chain[j]], net.layouts[net.chain[j + 1]]
    total = GramSum(net.point_dims[net.chain[j]] + aug, s.device)
    n = 0.0
    sec = conv_section(net, j) if s.structured and n_probes is None else None
    sums: dict[tuple[int, ...], FieldSums | None] = {}   # per map size: the receptive-field sums
    for batch, mask, draw in s.batches(f"jacobians {net.chain[j]}", stream=j + 1):
        if field_section(sec):           # GEMMs over each output's receptive field
            with torch.no_grad():
                net.forward(batch)
            point = net.last_points[net.chain[j]].detach()
            wi = src.weights(point.shape, mask, s.dtype, s.device)
            shape = tuple(point.shape[1:])
            if shape not in sums:
                fields = receptive_fields(sec, shape, bool(aug))
                sums[shape] = None if fields is None else field_sums(sec, fields, C_next, bool(aug), s.dtype)
            if sums[shape] is not None and bool((wi == 1).all()):
                s.progress.heartbeat()
                field_gram(sec, sums[shape], point, s.max_memory)
                n += float(wi.sum())
                continue
        with SavedNumel(net.params.values()) as saved:
            point, f_out, slot_leaf = net.section(batch, j)
        beta = dst.to_samples(net.bias_tangent(batch, j)) if net.needs_tangent else None
        wo = dst.weights(f_out.shape, mask, s.dtype, s.device)
        wi = src.weights(point.shape, mask, s.dtype, s.device)
        n += float(wi.sum())
        B = wi.shape[0]
        per_item = point.numel() + f_out.numel() * 2 + saved.numel
        col = s.colouring(j, point.shape) if n_probes is None else None
        if col is not None:
            total.total[-1, -1] += _coloured_jacobians(s, j, batch, col, point, f_out, slot_leaf, beta, wi,
                                                       wo, C_next, per_item, total)
            continue
        for data, down in rotated_cotangents(wo, C_next, n_probes, draw, s.dtype, per_item, bool(aug),
                                             s.max_memory):
            s.progress.heartbeat()
            K = data.shape[0]
            grads = vjp(f_out, [point] + ([slot_leaf] if aug else []), dst.from_samples(data, f_out.shape))
            g = src.to_samples(grads[0], point.ndim)
            slot = None
            if aug:   # slot: hooked biases (per position) + other biases + the next slot row
                if beta is not None:
                    down = down + (data * beta).sum(-1)
                slot = grads[1].reshape(K, B, -1) + spread_slot(down, wi)
            total.add(g, wi, slot)
    for found in sums.values():
        if found is not None:
            total.total += field_total(sec, found)
    return all_reduce_sum(total.total), all_reduce_float(n, s.device)


def _coloured_jacobians(s: Setup, j: int, batch: Any, col: Colouring, point: Tensor, f_out: Tensor,
                        slot_leaf: Tensor | None, beta: Tensor | None, wi: Tensor, wo: Tensor,
                        C_next: Tensor, per_item: int, total: GramSum) -> float:
    """Add one batch of section j's Jacobian Gram to ``total`` by coloured cotangents
    (:mod:`~intermod.analysis.core.colouring`); returns the slot–slot entry no colour carries."""
    net = s.net
    aug = net.include_bias
    src, dst = net.layouts[net.chain[j]], net.layouts[net.chain[j + 1]]
    d = C_next.shape[0] - int(aug)
    C_data = C_next[:d].to(s.dtype)
    share = wi / wi.sum(-1, keepdim=True).clamp_min(1.0)
    hook = down = None
    if aug:
        hook = (dst.to_samples(net.mean_slot_tangent(batch, j)) @ C_data) if col.mean_hooks else None
        down = C_next[d].to(s.dtype) + (0.0 if beta is None else beta @ C_data)     # (B, P_out, k')
        down = down.expand(wo.shape + (C_next.shape[1],))
    gamma_sq = torch.zeros_like(wo)
    for pattern, which, colour in coloured_cotangents(col, wo, C_next.shape[1], s.dtype, per_item,
                                                      s.max_memory):
        s.progress.heartbeat()
        data = pattern[..., None] * C_data[:, which].T[:, None, None, :]          # (K, B, P_out, d)
        grads = vjp(f_out, [point] + ([slot_leaf] if aug else []), dst.from_samples(data, f_out.shape))
        g = src.to_samples(grads[0], point.ndim)
        slot = None
        if aug:
            loc, gamma = split_slot(col, grads[1].reshape(pattern.shape[0], wi.shape[0], -1), pattern, which,
                                    hook, down, share)
            slot = loc + share * at_owner(col, gamma, colour)
            gamma_sq += gamma.square().sum(0)
        total.add(g, wi, slot)
    return missing_slot_square(col, gamma_sq.to(torch.float64), share.to(torch.float64),
                               wi.to(torch.float64)) if aug else 0.0


def closed_forms(s: Setup, n_probes: int | None) -> dict[int, tuple[AffineSection, ActivationMoments]]:
    """Sections with a closed form (:mod:`~intermod.analysis.core.structured`; exact sums only),
    each with the accumulator of its σ′ moments: their next-layer Grams need no pass of their own."""
    if not s.structured or n_probes is not None:
        return {}
    net = s.net
    forms = {j: affine_section(net, j) for j in range(len(net.chain) - 1)}
    return {j: (sec, _moments(s, j, sec)) for j, sec in forms.items() if sec is not None}


@dataclass
class _ConvForm:
    section: ConvSection | SeparableSection
    moments: ConvMoments | PoolMoments | PairMoments | SeparableMoments | None = None   # made at the first batch


def conv_closed_forms(s: Setup, n_probes: int | None, closed: Mapping[int, Any]) -> dict[int, _ConvForm]:
    """Conv sections whose next-layer Gram has a closed form (``ConvSection.gram_closed``:
    [activation] [pool] [Conv], [Conv] [activation]; :mod:`~intermod.analysis.core.convolution`;
    depthwise-separable blocks, :mod:`~intermod.analysis.core.separable_grams`; exact sums only)
    and no Linear one: their Grams come from σ′ moments."""
    if not s.structured or n_probes is not None:
        return {}
    forms = {j: conv_section(s.net, j) or separable_section(s.net, j)
             for j in range(len(s.net.chain) - 1) if j not in closed}
    return {j: _ConvForm(sec) for j, sec in forms.items()
            if sec is not None and sec.gram_closed}


def conv_gram(s: Setup, form: _ConvForm, C_next: Tensor) -> tuple[Tensor, float] | None:
    """(Σ Jᵀ C Cᵀ J, number of samples) of a conv closed form, or None when some batch could not
    be summed by it (then the coloured VJPs take the section, on every process)."""
    mom = form.moments
    M = None if mom is None else conv_next_layer_gram(form.section, mom, C_next, s.net.include_bias)
    if all_reduce_float(float(M is None), s.device) > 0:
        return None
    return all_reduce_sum(M), all_reduce_float(mom.n * math.prod(mom.spatial), s.device)


def _moments(s: Setup, j: int, sec: AffineSection) -> ActivationMoments:
    """An empty accumulator of the σ′ moments of section j."""
    return ActivationMoments(sec.width(s.net.point_dims[s.net.chain[j]]), s.device)


def output_closed_forms(s: Setup, n_probes: int | None
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
    unit = torch.eye(d_y + aug, d_y, dtype=torch.float64, device=s.device)   # R = [I; 0]
    forms = {T - 1: (last, unit)}
    before = affine_section(net, T - 2) if T >= 2 and last.identity else None
    if before is not None:
        P = net.pullback(net.chain[T - 1])
        forms[T - 2] = (before, unit if P is None else P[:d_y].T)
    return {j: (sec, _moments(s, j, sec), R) for j, (sec, R) in forms.items()}


def terminal_M(d: int, include_bias: bool, device: torch.device) -> Tensor:
    """The output's own Jacobian Gram: ∂y/∂y = I, and no bias lies downstream of it."""
    M = torch.eye(d + int(include_bias), dtype=torch.float64, device=device)
    if include_bias:
        M[d, d] = 0.0
    return M
