"""Input attribution of interaction-basis directions: which input coordinates drive f̂_i.

For a direction i of node layer l, with x̄ the baseline input (the data mean for real-valued
inputs; the zero embedding for token inputs) and Δ = x − x̄, integrated gradients give

    A_ia(x) = Δ_a · ∫₀¹ ∂f̂_i/∂x_a (x̄ + α Δ) dα          (Gauss–Legendre, ``n_alpha`` nodes)

with Σ_a A_ia(x) = f̂_i(x) − f̂_i(x̄) (completeness). When layer l *is* the model input the map
is linear, f̂_i = Σ_a C_ai x_a + const, and A_ia = C_ai Δ_a exactly (no gradients needed).
The energy of coordinate a in direction i is, as for the edges (E = mean A²),

    E_ia = (1/n) Σ_(x,t) A_{t,ia}(x)²        (t: output positions of a sequence; exact sum or ±1 probes)

so the share of a in a set S of directions (a module's first-layer directions) is
Σ_{i∈S} E_ia / Σ_{i∈S, b} E_ib. Token inputs (integer ids) are attributed at the output of the
input embedding, per embedding dimension, per token position s and per vocabulary item (the
energy Σ_e A²_{s,e} of each occurrence, added to the id found at s).

Everything runs on ``device`` (the model's parameter copies in ``dtype``, float64 by default,
the batches, C, the colourings, the cotangents); f̂, Δ and E are float64 there, E returned as
CPU numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.colouring import Colouring, coloured_cotangents, dependency_colouring, position_dependency
from ..core.edges import quadrature
from ..core.graph import InteractionGraph
from ..core.inputs import Inputs, add_padded, batch_size_of, count_batches, position_mask
from ..core.jacobians import (
    DEFAULT_MAX_MEMORY,
    ProbeDraw,
    SavedNumel,
    chunk_size,
    per_direction_cotangents,
    probe_signs,
    vjp,
)
from ..core.layout import Layout
from ..core.nodes import NodeModel, OutputFn
from ..core.progress import Callback, Progress
from .coords import Batches, LayerCoordinates, setup

__all__ = ["DirectionAttribution", "direction_attribution", "set_attribution", "token_ids"]

SIGN_CACHE_BYTES = 1 << 27   # the set probes' int8 signs kept across one batch's quadrature nodes


@dataclass
class DirectionAttribution:
    """Energies E of the input coordinates in the selected directions of each node layer.

    ``directions[layer]``: the direction indices (rows of the arrays below, in that order);
    ``energy[layer]``: (k_sel, *input_shape) for real-valued inputs, (k_sel, d_embed) for tokens;
    ``by_position[layer]``: (k_sel, P) for tokens (None otherwise); ``by_token[layer]``:
    (k_sel, n_tokens) over ``token_ids`` (the ids present in the data); ``exact[layer]``: the
    linear map was used; ``kind``: "tensor" or "tokens"; ``n_samples``: (input, position) count.
    From :func:`set_attribution` the rows are ``sets[layer]`` instead (n_sets in place of k_sel),
    and ``probed[layer]`` (n_sets,) marks the sets estimated by probes in some batch (the others
    are exact).
    """

    directions: dict[str, list[int]]
    energy: dict[str, np.ndarray]
    kind: str
    exact: dict[str, bool]
    n_samples: float
    input_shape: tuple[int, ...]
    by_position: dict[str, np.ndarray] = field(default_factory=dict)
    by_token: dict[str, np.ndarray] = field(default_factory=dict)
    token_ids: np.ndarray | None = None
    sets: dict[str, list[list[int]]] | None = None
    probed: dict[str, np.ndarray] | None = None

    def rows(self, layer: str, indices: Sequence[int]) -> np.ndarray:
        """Rows of the arrays that hold the given direction indices: their positions in
        ``directions[layer]``, or, when the rows are ``sets`` (:func:`set_attribution`), the one
        row of the set made of exactly these indices."""
        if self.sets is not None:
            return np.array([self.sets[layer].index(sorted(int(i) for i in indices))], dtype=np.int64)
        where = {d: r for r, d in enumerate(self.directions[layer])}
        return np.array([where[i] for i in indices], dtype=np.int64)


def token_ids(batch) -> Tensor | None:
    """The integer token ids of a batch (a LongTensor, or a mapping's ``input_ids``), else None."""
    if isinstance(batch, Mapping):
        batch = batch.get("input_ids")
    if isinstance(batch, Tensor) and not batch.is_floating_point() and not batch.is_complex():
        return batch
    return None


def _embedding_module(model: nn.Module, embedding: str | None) -> nn.Module:
    if embedding is not None:
        return model.get_submodule(embedding)
    get = getattr(model, "get_input_embeddings", None)
    if callable(get) and isinstance(get(), nn.Module):
        return get()
    found = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not found:
        raise ValueError("integer inputs but no nn.Embedding in the model: pass embedding='module.path'")
    return found[0]


def direction_attribution(model: nn.Module, inputs: Inputs, graph: InteractionGraph,
                          directions: Mapping[str, Sequence[int]], *, n_alpha: int = 8,
                          n_probes: int | None = None, embedding: str | None = None,
                          output_fn: OutputFn | None = None, batch_size: int = 256,
                          seed: int = 0, device: str | torch.device = "auto", dtype: torch.dtype = torch.float64,
                          progress: bool = True, callback: Callback | None = None) -> DirectionAttribution:
    """Energies E_ia of every input coordinate a in each requested direction (module docstring).

    directions: layer -> direction indices. ``n_probes`` replaces the exact sum over output
    positions by R random ±1/√R probes r (sequences): Σ_r (Δ·∫∂⟨r, f̂_i⟩/∂x dα)² estimates
    Σ_t A_{t,i}², each probe the same at every α, keyed by (``seed``, sample, valid position)
    as the basis's probes are; ``embedding`` names the input-embedding module for token inputs
    (default: ``model.get_input_embeddings()`` or the first ``nn.Embedding``). ``device``: where
    the work runs ("auto": CUDA when available, else the CPU; the model is not moved). ``dtype``:
    the model's forward and backward passes in float64 (default) or float32 (f̂, the path's
    baseline and Δ, and the energies stay float64; measured on a ResNet-18-shaped CNN: energies
    within 1e-5 relative of float64's and several times faster, torch's float32 convolutions
    having oneDNN kernels that its float64 ones lack).
    ``progress``: a bar over batches × quadrature nodes ("input attribution"); ``callback(stage,
    done, total)`` after each (raise from it to cancel).
    """
    wanted = {layer: sorted({int(i) for i in idx}) for layer, idx in directions.items() if len(idx)}
    return _attribute(model, inputs, graph, wanted, None, n_alpha=n_alpha, n_probes=n_probes, embedding=embedding,
                      output_fn=output_fn, batch_size=batch_size, seed=seed, device=device, dtype=dtype,
                      progress=progress, callback=callback)


def set_attribution(model: nn.Module, inputs: Inputs, graph: InteractionGraph,
                    sets: Mapping[str, Sequence[Sequence[int]]], *, n_probes: int, **options: Any) -> DirectionAttribution:
    """Energies of the input coordinates in *sets* of directions (a module's first-layer
    directions S): row s of ``energy[layer]`` (and of ``by_position``, ``by_token``) is
    Σ_{i∈S_s} E_ia, at most R = ``n_probes`` cotangents per set and quadrature node. Where the
    exact sum needs no more (|S| directions × the output positions, or × the colours of a conv
    map, ≤ R) it is exact; otherwise R random ±1/√R probes r over the set's directions and the
    output positions jointly give Σ_r (Δ·∫∂⟨r, f̂_S⟩/∂x dα)², unbiased as
    :func:`direction_attribution`'s probes are, instead of |S|·R (probes per direction) or |S|·P
    cotangents. A layer that is the model input keeps its exact linear map. ``options``: those of
    :func:`direction_attribution`. The result's ``sets[layer]`` lists the rows (each set sorted),
    ``probed[layer]`` the sets estimated, ``directions[layer]`` their union."""
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive int, got {n_probes!r}")
    rows = {layer: [sorted({int(i) for i in S}) for S in group] for layer, group in sets.items() if len(group)}
    if any(not S for group in rows.values() for S in group):
        raise ValueError("sets: every set needs at least one direction")
    wanted = {layer: sorted(set().union(*group)) for layer, group in rows.items()}
    return _attribute(model, inputs, graph, wanted, rows, n_probes=n_probes, **options)


def _attribute(model: nn.Module, inputs: Inputs, graph: InteractionGraph, wanted: dict[str, list[int]],
               sets: dict[str, list[list[int]]] | None, *, n_alpha: int = 8, n_probes: int | None = None,
               embedding: str | None = None, output_fn: OutputFn | None = None, batch_size: int = 256,
               seed: int = 0, device: str | torch.device = "auto", dtype: torch.dtype = torch.float64,
               progress: bool = True, callback: Callback | None = None) -> DirectionAttribution:
    """Rows: the directions ``wanted[layer]``, or with ``sets`` those sets (probed jointly)."""
    for layer, idx in wanted.items():
        if layer not in graph.layers:
            raise ValueError(f"unknown layer {layer!r}; graph layers: {graph.layers}")
        if idx[0] < 0 or idx[-1] >= graph.layer_sizes[layer]:
            raise ValueError(f"layer {layer!r}: direction indices must be in [0, {graph.layer_sizes[layer]})")
    if n_alpha < 1:
        raise ValueError(f"n_alpha must be >= 1, got {n_alpha}")
    if not wanted:
        raise ValueError("directions: no direction selected")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    net, batches, coords = setup(model, inputs, graph, list(wanted), output_fn=output_fn, batch_size=batch_size,
                                 device=device, dtype=dtype)
    first = next(iter(batches))
    tokens = token_ids(first) is not None
    run = _TokenRun(net, _embedding_module(model, embedding), batches) if tokens else _TensorRun(net, batches, first)
    alphas, weights = quadrature("integrated", n_alpha)
    exact = {layer: not tokens and run.is_input(layer) for layer in wanted}
    cols = {layer: None if tokens or (n_probes is not None and sets is None)
            else _input_colouring(net, layer, tuple(first.shape)) for layer in wanted}
    member = {layer: None if sets is None else _membership(wanted[layer], sets[layer], net.device)
              for layer in wanted}                             # None: a row per direction
    probed = {layer: np.zeros(len(sets[layer]), dtype=bool) for layer in wanted} if sets is not None else None
    start = 0
    n_batches = count_batches(inputs, batch_size)
    with Progress(progress, callback).steps("input attribution", n_batches and n_batches * len(alphas)) as advance:
        for batch in batches:
            mask = position_mask(batch)
            draw = ProbeDraw(seed, 0, start)     # one draw per batch, shared by every α and layer
            start += batch_size_of(batch)
            g_sum: dict[str, Tensor] = {}
            rows: dict[str, Tensor] = {}
            sign_cache: dict[str, dict] = {}
            acts = None
            for q, (alpha, wq) in enumerate(zip(alphas, weights)):
                if all(exact.values()) and acts is not None:
                    advance(len(alphas) - q)       # linear in the input: one node is exact
                    break
                with SavedNumel(net.params.values()) as saved:
                    acts = run.forward(batch, alpha)
                for layer, idx in wanted.items():
                    if exact[layer] and layer in g_sum:
                        continue
                    g, rows[layer], est = _gradients(run.leaf, acts[layer], net.layouts[layer], coords[layer], idx,
                                                     mask, None if exact[layer] and sets is not None else n_probes,
                                                     draw, cols[layer], saved.numel, member[layer],
                                                     sign_cache.setdefault(layer, {}))
                    if probed is not None:
                        probed[layer] |= est.cpu().numpy()
                    g_sum[layer] = g_sum[layer] + wq * g if layer in g_sum else (1.0 if exact[layer] else wq) * g
                advance(1)
            for layer in wanted:
                n_rows = len(wanted[layer]) if sets is None else len(sets[layer])
                run.add(layer, g_sum[layer], rows[layer], n_rows, mask)
            first_layer = next(iter(wanted))
            run.n += float(net.layouts[first_layer].samples(acts[first_layer], mask)[1].sum())
    out = run.result(wanted, exact)
    out.sets, out.probed = sets, probed
    return out


def _membership(idx: list[int], sets: list[list[int]], device: torch.device | str) -> Tensor:
    """(n_sets, k_sel) float64 0/1: set s holds the selected direction ``idx[j]``."""
    col = {d: j for j, d in enumerate(idx)}
    M = torch.zeros(len(sets), len(idx), dtype=torch.float64)
    for s, S in enumerate(sets):
        M[s, [col[i] for i in S]] = 1.0
    return M.to(device)


def _input_colouring(net: NodeModel, layer: str, in_shape: tuple[int, ...]) -> Colouring | None:
    """The output positions of conv-map layer ``layer`` coloured so that the positions of one
    colour read disjoint input positions (:mod:`~intermod.analysis.core.colouring`, the model
    from its input to the layer), or None (not a Sequential of local modules, not a map, or
    nothing saved). One cotangent then serves a whole colour: every input coordinate a receives
    the gradient of at most one of its positions t, so the square of the coloured attribution
    at a is Σ_{t in the colour} A_{t,ia}², and summing over colours gives E exactly. The
    colouring's index tensors live on ``net.device``; the structural probes that find it run
    on the CPU (0/1 maps through parameter-free stand-ins of the modules)."""
    modules = net.modules_before(layer)
    if modules is None or len(in_shape) < 3 or net.layouts[layer].kind != "channels":
        return None
    found = position_dependency(modules, in_shape[2:], lambda m: False, include_bias=False)
    return None if found is None else dependency_colouring(*found, net.device)


def _gradients(leaf: Tensor, act: Tensor, layout: Layout, coords: LayerCoordinates, idx: list[int],
               mask: Tensor | None, n_probes: int | None, draw: ProbeDraw, col: Colouring | None,
               saved: int, member: Tensor | None, cache: dict) -> tuple[Tensor, Tensor, Tensor | None]:
    """(g, rows, probed): g (n_cot, *leaf.shape) = ∂⟨c, f̂⟩/∂leaf for every cotangent c on the
    selected directions' f̂ (positions and features as ``layout`` reads the layer's tensor), and
    the row whose energy each adds to. ``saved``: the elements autograd saved in the forward pass.

    Without ``member`` a row is a direction i, its cotangents e_i ⊗ a unit pattern per position,
    one pattern per colour of ``col``, or ±1 probes over positions. With ``member`` (n_sets,
    k_sel) a row is a set S: the exact patterns of its directions where |S|·n_patterns ≤ R =
    ``n_probes`` (every set when R is None), else R probes ±1/√R over the set's directions and
    positions jointly; ``probed`` (n_sets,) bool marks the sets estimated. ``cache``: where the
    probes' signs are kept between the quadrature nodes of one batch."""
    x, w = layout.samples(act, mask)
    f_hat = coords(x, torch.as_tensor(idx, device=x.device))   # (B, P, k_sel)
    k, dev = len(idx), leaf.device
    per_item = f_hat.numel() + leaf.numel() + saved
    if member is None:
        pair_row = pair_dir = torch.arange(k, device=dev)      # (row, direction) of each exact pair
        probed, unit_probes = None, n_probes
    else:
        n_pat = col.n_colours if col is not None else w.shape[1]
        probed = (torch.zeros(len(member), dtype=torch.bool, device=dev) if n_probes is None
                  else member.sum(1) * n_pat > n_probes)
        pair_row, pair_dir = (member * ~probed[:, None]).nonzero(as_tuple=True)
        unit_probes = None
    eye = torch.eye(k, dtype=f_hat.dtype, device=dev)
    chunks: list[tuple[Tensor, Tensor]] = []
    if len(pair_dir):
        patterns = (per_direction_cotangents(w, len(pair_dir), unit_probes, draw, f_hat.dtype, per_item)
                    if col is None else coloured_cotangents(col, w, len(pair_dir), f_hat.dtype, per_item,
                                                            DEFAULT_MAX_MEMORY))
        chunks += [(pattern[..., None] * eye[pair_dir[which]][:, None, None, :], pair_row[which])
                   for pattern, which, *_ in patterns]
    if probed is not None and bool(probed.any()):
        chunks += _set_cotangents(w, member, probed.nonzero()[:, 0], n_probes, draw, per_item, cache)
    g = torch.cat([vjp(f_hat, [leaf], c)[0] for c, _ in chunks], 0)
    return g, torch.cat([r for _, r in chunks]), probed


def _set_cotangents(w: Tensor, member: Tensor, sets: Tensor, n_probes: int, draw: ProbeDraw, per_item: int,
                    cache: dict) -> Iterator[tuple[Tensor, Tensor]]:
    """(cotangents (c, B, P, k_sel), their sets (c,)): ``n_probes`` = R probes of each set in
    ``sets``, probe-major, probe r of set s being r_{b,t,i}·w_{b,t}/√R on the set's directions i
    (``member`` (n_sets, k_sel) 0/1). The signs are keyed by (seed, sample, valid position, probe,
    direction: its rank among the probed sets' directions) and kept in ``cache`` (int8, one batch's
    quadrature nodes draw the same) up to SIGN_CACHE_BYTES, else drawn again per chunk."""
    B, P = w.shape
    m = member[sets].to(w.dtype)                                               # (n, k_sel)
    cols = m.any(0).nonzero()[:, 0]                                            # the probed directions
    m, n = m[:, cols], len(sets)
    keep = n_probes * w.numel() * len(cols) <= SIGN_CACHE_BYTES
    scale = (w / math.sqrt(n_probes))[None, :, :, None]
    total = n_probes * n
    step = chunk_size(total, per_item, w.dtype, DEFAULT_MAX_MEMORY, w.device)
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total), device=w.device)
        r0, r1 = start // n, (int(idx[-1]) // n) + 1
        signs = cache.get((r0, r1))
        if signs is None:
            signs = probe_signs(draw, w, range(r0, r1), len(cols))             # (r1 − r0, B, P, k_p) int8
            if keep:
                cache[(r0, r1)] = signs
        cot = torch.zeros((len(idx), B, P, member.shape[1]), dtype=w.dtype, device=w.device)
        cot[..., cols] = signs[idx // n - r0].to(w.dtype) * scale * m[idx % n][:, None, None, :]
        yield cot, sets[idx % n]


class _TensorRun:
    """Real-valued inputs: the path x̄ + α(x − x̄) starts at the data mean x̄."""

    kind = "tensor"

    def __init__(self, net: NodeModel, batches: Batches, first: Tensor):
        if not isinstance(first, Tensor):
            raise TypeError("input attribution needs tensor inputs (or token ids); got a mapping "
                            "without input_ids")
        self.net, self.first = net, first
        total, n = 0.0, 0
        for b in batches:
            total, n = total + b.sum(0, dtype=torch.float64), n + b.shape[0]
        self.baseline = total / n
        self.shape = tuple(first.shape[1:])
        self.energy: dict[str, Tensor] = {}
        self.n = 0.0
        self.leaf = torch.zeros(0)

    def is_input(self, layer: str) -> bool:
        """Node layer ``layer`` is the model input itself (its map to f̂ is then linear)."""
        if layer != self.net.layers[0] or layer == "output":
            return False
        x = self.first
        with torch.no_grad():
            act = self.net.forward(x)[layer]
        return act.ndim == 2 and act.numel() == x.numel() and torch.equal(act.reshape(x.shape), x)

    def forward(self, x: Tensor, alpha: float) -> dict[str, Tensor]:
        self.delta = x.to(torch.float64) - self.baseline      # float64 whatever the model's dtype
        self.leaf = (self.baseline + alpha * self.delta).to(x.dtype).requires_grad_(True)
        return self.net.forward(self.leaf, grad=True)

    def add(self, layer: str, g: Tensor, rows: Tensor, n_rows: int, mask: Tensor | None) -> None:
        A = g.to(torch.float64) * self.delta                   # (n_cot, B, *shape)
        e = torch.zeros((n_rows,) + self.shape, dtype=A.dtype, device=A.device)
        e.index_add_(0, rows, A.square().sum(1).detach())
        self.energy[layer] = self.energy.get(layer, 0) + e

    def result(self, wanted: dict[str, list[int]], exact: dict[str, bool]) -> DirectionAttribution:
        n = max(self.n, 1.0)
        return DirectionAttribution(wanted, {k: (v / n).cpu().numpy() for k, v in self.energy.items()},
                                    self.kind, exact, n, self.shape)


class _TokenRun:
    """Token inputs: the path α·e from the zero embedding to the input embeddings e (B, P, d)."""

    kind = "tokens"

    def __init__(self, net: NodeModel, embedding: nn.Module, batches: Batches):
        self.net, self.embedding = net, embedding
        self.token_ids = torch.unique(torch.cat([torch.unique(token_ids(b)) for b in batches]))
        self.energy: dict[str, Tensor] = {}
        self.by_position: dict[str, Tensor] = {}
        self.by_token: dict[str, Tensor] = {}
        self.n = 0.0
        self.leaf = torch.zeros(0)

    def is_input(self, layer: str) -> bool:
        return False

    def forward(self, batch, alpha: float) -> dict[str, Tensor]:
        def hook(module, args, out):
            self.e = out.detach()
            self.leaf = (alpha * self.e).requires_grad_(True)
            return self.leaf

        handle = self.embedding.register_forward_hook(hook)
        try:
            acts = self.net.forward(batch, grad=True)
        finally:
            handle.remove()
        self.ids = token_ids(batch)
        return acts

    def add(self, layer: str, g: Tensor, rows: Tensor, n_rows: int, mask: Tensor | None) -> None:
        A = g.to(torch.float64) * self.e.to(torch.float64)     # (n_cot, B, P, d)
        if mask is not None:
            A = A * mask.to(A.dtype)[None, :, :, None]
        per_pos = torch.zeros((n_rows,) + tuple(A.shape[1:]), dtype=A.dtype, device=A.device)
        per_pos.index_add_(0, rows, A.square().detach())      # (rows, B, P, d)
        self.energy[layer] = self.energy.get(layer, 0) + per_pos.sum((1, 2))
        self.by_position[layer] = add_padded(self.by_position.get(layer, 0), per_pos.sum((1, 3)))
        col = torch.searchsorted(self.token_ids, self.ids.reshape(-1))
        tok = torch.zeros(n_rows, len(self.token_ids), dtype=A.dtype, device=A.device)
        tok.index_add_(1, col, per_pos.sum(3).reshape(n_rows, -1))
        self.by_token[layer] = self.by_token.get(layer, 0) + tok

    def result(self, wanted: dict[str, list[int]], exact: dict[str, bool]) -> DirectionAttribution:
        n = max(self.n, 1.0)

        def norm(d: dict[str, Tensor]) -> dict[str, np.ndarray]:
            return {k: (v / n).cpu().numpy() for k, v in d.items()}

        return DirectionAttribution(wanted, norm(self.energy), self.kind, exact, n,
                                    (int(self.e.shape[-1]),), norm(self.by_position),
                                    norm(self.by_token), self.token_ids.cpu().numpy())
