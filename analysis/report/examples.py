"""Top examples: the samples (and positions) where a module's coordinates are largest.

For module c with directions S_c (over all its node layers) the activity of sample x at
position t is ‖f̂_c(x, t)‖ = (Σ_{(l,i)∈S_c} f̂^l_i(x, t)²)^{1/2}; with ``center`` f̂ = 0 is the
mean, so this is how far the module moves from its average. Per direction the score is
|f̂^l_i(x, t)|. The data are streamed; only the running top k per module and direction is kept.
Positions are reported for sequences (every node layer with the same number of positions);
otherwise a sample's score sums over its positions. The scores and the running top k stay on
``device`` (float64); only the final hits come back to the CPU.

Decoders turn a hit into something a person can look at: :func:`decode_text` (a tokenizer and
the input ids: a window of text with the position marked ⟦…⟧) and :func:`decode_image` (an
array of images: the sample's image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..core.graph import InteractionGraph
from ..core.inputs import Inputs, position_mask
from ..core.nodes import OutputFn
from .coords import setup

__all__ = ["Hit", "TopExamples", "decode_image", "decode_text", "top_examples"]

#: A decoder: (sample index, position or None) -> text (str, focus marked ⟦…⟧) or an image array.
Decoder = Callable[[int, "int | None"], "str | np.ndarray"]


@dataclass(frozen=True)
class Hit:
    """One top example: sample index, position (None without positions) and score (f̂ units)."""

    sample: int
    position: int | None
    score: float

    @property
    def key(self) -> int | tuple[int, int]:
        return self.sample if self.position is None else (self.sample, self.position)


@dataclass
class TopExamples:
    """``modules[c]``: the top hits of module c (best first); ``directions[layer][i]``: of direction
    i of ``layer`` (only directions in a module); ``positions``: hits carry positions."""

    modules: dict[int, list[Hit]]
    directions: dict[str, dict[int, list[Hit]]]
    positions: bool


class _TopK:
    """Running top k of the columns of score matrices (N, m) with row labels (N, 2), on ``device``."""

    def __init__(self, k: int, m: int, device: torch.device):
        self.k = k
        self.scores = torch.full((0, m), -torch.inf, dtype=torch.float64, device=device)
        self.labels = torch.zeros((0, m, 2), dtype=torch.int64, device=device)

    def add(self, scores: Tensor, labels: Tensor) -> None:
        s = torch.cat([self.scores, scores])
        lab = torch.cat([self.labels, labels[:, None, :].expand(-1, scores.shape[1], -1)])
        top = torch.topk(s, min(self.k, s.shape[0]), dim=0)
        self.scores = top.values
        self.labels = torch.gather(lab, 0, top.indices[..., None].expand(-1, -1, 2))

    def hits(self, column: int, positions: bool) -> list[Hit]:
        scores, labels = self.scores[:, column].tolist(), self.labels[:, column].tolist()
        return [Hit(int(lab[0]), int(lab[1]) if positions else None, float(sc))
                for sc, lab in zip(scores, labels) if np.isfinite(sc)]


def top_examples(model: nn.Module, inputs: Inputs, graph: InteractionGraph, membership: np.ndarray,
                 *, top_k: int = 10, output_fn: OutputFn | None = None, batch_size: int = 512,
                 device: str | torch.device = "auto") -> TopExamples:
    """The top ``top_k`` (sample, position) of every module of ``membership`` (one label per graph
    node, −1 = none) and of every direction in a module; see the module docstring. ``device``:
    where the work runs ("auto": CUDA when available, else the CPU; the model is not moved)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    membership = np.asarray(membership, dtype=np.int64)
    if membership.shape != (graph.n_nodes,):
        raise ValueError(f"membership must have one entry per graph node ({graph.n_nodes})")
    f64 = torch.float64
    layers = [name for name in graph.layers if (membership[_layer_ids(graph, name)] >= 0).any()]
    net, batches, coords = setup(model, inputs, graph, layers, output_fn=output_fn, batch_size=batch_size,
                                 device=device)
    dev = net.device
    n_mod = int(membership.max()) + 1 if membership.size else 0
    selected = {name: np.flatnonzero(membership[_layer_ids(graph, name)] >= 0) for name in layers}
    columns = {name: torch.as_tensor(selected[name], device=dev) for name in layers}
    onehot = {name: torch.nn.functional.one_hot(torch.as_tensor(membership[_layer_ids(graph, name)][selected[name]],
                                                                device=dev), n_mod).to(f64) for name in layers}
    per_module = _TopK(top_k, n_mod, dev)
    per_direction = {name: _TopK(top_k, len(selected[name]), dev) for name in layers}
    positions = None
    start = 0
    with torch.no_grad():
        for batch in batches:
            acts = net.forward(batch)
            mask = position_mask(batch)
            f_hat = {}
            for name in layers:
                x, w = net.layouts[name].samples(acts[name], mask)
                f_hat[name] = (coords[name](x, columns[name]), w)
            if positions is None:
                positions = len({f.shape[1] for f, _ in f_hat.values()}) == 1 and next(iter(f_hat.values()))[0].shape[1] > 1
            sq = 0.0
            for name, (f, w) in f_hat.items():
                s = f.square() @ onehot[name]                    # (B, P, n_mod)
                sq = sq + (s if positions else s.sum(1, keepdim=True))
                d = f.abs() if positions else f.square().sum(1, keepdim=True).sqrt()
                per_direction[name].add(_flat(d, w, positions), _labels(start, d.shape[:2], dev))
            w0 = next(iter(f_hat.values()))[1]
            if isinstance(sq, Tensor):
                per_module.add(_flat(sq.sqrt(), w0, positions), _labels(start, sq.shape[:2], dev))
            start += acts[graph.layers[0]].shape[0]
    positions = bool(positions)
    return TopExamples({c: per_module.hits(c, positions) for c in range(n_mod)},
                       {name: {int(i): per_direction[name].hits(j, positions) for j, i in enumerate(selected[name])}
                        for name in layers}, positions)


def _layer_ids(graph: InteractionGraph, layer: str) -> np.ndarray:
    start = graph.node_offset[layer]
    return np.arange(start, start + graph.layer_sizes[layer])


def _flat(scores: Tensor, w: Tensor, positions: bool) -> Tensor:
    """(B, P, m) -> (B·P, m) with padded positions at −inf."""
    if positions:
        scores = scores.masked_fill(w[..., None] == 0, -torch.inf)
    return scores.reshape(-1, scores.shape[-1])


def _labels(start: int, shape: Sequence[int], device: torch.device) -> Tensor:
    """(B·P, 2) labels (sample, position) of a batch's (B, P) scores, row-major, on ``device``."""
    B, P = shape
    b = torch.arange(start, start + B, device=device).repeat_interleave(P)
    p = torch.arange(P, device=device).repeat(B)
    return torch.stack([b, p], 1)


def decode_text(tokenizer, input_ids: Tensor | np.ndarray, window: int = 8) -> Decoder:
    """Decoder for token inputs: the tokens around the position (``window`` either side), the
    token at the position marked ⟦…⟧; without a position, the whole (truncated) sequence.

    tokenizer: anything with ``decode(list[int]) -> str`` (a Hugging Face tokenizer);
    input_ids: (n, P) ids of the same inputs the report runs on.
    """
    ids = np.asarray(input_ids)

    def decode(sample: int, position: int | None) -> str:
        row = ids[sample].tolist()
        if position is None:
            return tokenizer.decode(row[:4 * window])
        lo, hi = max(0, position - window), min(len(row), position + window + 1)
        return (tokenizer.decode(row[lo:position]) + " ⟦" + tokenizer.decode(row[position:position + 1])
                + "⟧ " + tokenizer.decode(row[position + 1:hi]))
    return decode


def decode_image(images: Tensor | np.ndarray, shape: Sequence[int] | None = None) -> Decoder:
    """Decoder for image inputs: sample i's image, reshaped to ``shape`` (e.g. (8, 8) for flat
    digits; (H, W) grey or (H, W, 3) colour; channels-first (3, H, W) is moved last)."""
    arr = np.asarray(images.detach().cpu() if isinstance(images, Tensor) else images, dtype=np.float64)

    def decode(sample: int, position: int | None) -> np.ndarray:
        img = arr[sample] if shape is None else arr[sample].reshape(shape)
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = np.moveaxis(img, 0, -1)
        return img.squeeze(-1) if img.ndim == 3 and img.shape[-1] == 1 else img
    return decode
