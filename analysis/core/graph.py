"""The interaction graph: nodes are basis directions, edges join adjacent node layers."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .jsonutil import plain

FORMAT = "intermod.graph/1"
#: Edges with w ≤ EDGE_RTOL · (the graph's largest w) are not kept (from_arrays sets them to 0).
#: In float64 an interaction that is exactly zero comes out at ~1e-16 · w_max or at exactly 0,
#: depending on the order of summation (thread count, processes, BLAS kernels); the threshold
#: sits six orders above that, so the edge list does not depend on round-off, and far below any
#: noise scale (an edge this weak has ŵ > 0 only for ε < 1e-20 · w_max²). float32 computations
#: leave round-off near 1e-7 · w_max: pass a larger ``edge_rtol`` to drop it too.
EDGE_RTOL = 1e-10


@dataclass(frozen=True)
class Node:
    """One basis direction: its layer, index within the layer, Λ and whether it is the constant."""

    layer: str
    index: int
    Lambda: float
    is_bias: bool = False


class InteractionGraph:
    """Layered graph of interaction strengths w = √E (output units).

    ``nodes`` fixes the order every membership array follows (layer by layer, index within a
    layer); ``src``, ``dst``, ``w`` list the edges with w > 0 (src in layer l, dst in l+1);
    graphs built by :meth:`from_arrays` keep only w > EDGE_RTOL · max(w).
    ``bases[layer] = (C, Lambda)``; ``inverses[layer]`` = C⁻¹ (d [+1], k), the inverse map
    f_aug = C⁻¹ f̂, and ``means[layer]`` = μ (d,), the activation mean: what ablations need to
    write a masked f̂ back into the model (files written before they were stored lack them).
    """

    def __init__(self, layers: list[str], nodes: list[Node], mats: list[np.ndarray],
                 bases: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 metadata: dict[str, Any] | None = None, *,
                 inverses: dict[str, np.ndarray] | None = None,
                 means: dict[str, np.ndarray] | None = None):
        self.layers = list(layers)
        self.nodes = nodes
        self._mats = [np.asarray(m, dtype=np.float64) for m in mats]
        self.bases = bases or {}
        self.inverses = {n: np.asarray(a, dtype=np.float64) for n, a in (inverses or {}).items()}
        self.means = {n: np.asarray(a, dtype=np.float64) for n, a in (means or {}).items()}
        self.metadata = metadata or {}
        sizes = [sum(1 for n in nodes if n.layer == layer) for layer in self.layers]
        self.layer_sizes = dict(zip(self.layers, sizes))
        self.node_offset = dict(zip(self.layers, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()))
        for j, m in enumerate(self._mats):
            want = (sizes[j + 1], sizes[j])
            if m.shape != want:
                raise ValueError(f"edge matrix {self.layers[j]}->{self.layers[j + 1]} has shape "
                                 f"{m.shape}, expected {want} (k_dst, k_src)")
            if not np.all(np.isfinite(m)) or (m < 0).any():
                raise ValueError(f"edge matrix {self.layers[j]}->{self.layers[j + 1]}: strengths "
                                 "must be finite and non-negative")
        src, dst, w = [], [], []
        for j, m in enumerate(self._mats):
            rows, cols = np.nonzero(m)
            src.append(cols + self.node_offset[self.layers[j]])
            dst.append(rows + self.node_offset[self.layers[j + 1]])
            w.append(m[rows, cols])
        empty = np.zeros(0, dtype=np.int64)
        self.src = np.concatenate(src).astype(np.int64) if src else empty
        self.dst = np.concatenate(dst).astype(np.int64) if dst else empty
        self.w = np.concatenate(w) if w else np.zeros(0)

    @classmethod
    def from_arrays(cls, layers: Sequence[str], Lambdas: Sequence[np.ndarray],
                    edge_matrices: Sequence[np.ndarray], *, bias_direction: Sequence[bool] | None = None,
                    bases: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    metadata: dict[str, Any] | None = None,
                    edge_rtol: float = EDGE_RTOL, inverses: dict[str, np.ndarray] | None = None,
                    means: dict[str, np.ndarray] | None = None) -> InteractionGraph:
        """Build from per-layer Λ (k_l,) and edge matrices w (k_{l+1}, k_l), vectorised.

        Strengths w ≤ edge_rtol · max over all matrices are set to 0 (see ``EDGE_RTOL``).
        """
        if len(edge_matrices) != len(layers) - 1:
            raise ValueError(f"need {len(layers) - 1} edge matrices for {len(layers)} layers, got {len(edge_matrices)}")
        if not (math.isfinite(edge_rtol) and 0 <= edge_rtol < 1):
            raise ValueError(f"edge_rtol must be in [0, 1), got {edge_rtol!r}")
        mats = [np.asarray(m, dtype=np.float64) for m in edge_matrices]
        w_max = max((float(m.max()) for m in mats if m.size), default=0.0)
        mats = [np.where((m >= 0) & (m <= edge_rtol * w_max), 0.0, m) for m in mats]  # NaN stays, to be refused
        bias_direction = bias_direction or [False] * len(layers)
        nodes = [Node(layer, i, float(lam), bool(bias and i == 0))
                 for layer, lams, bias in zip(layers, Lambdas, bias_direction)
                 for i, lam in enumerate(np.asarray(lams, dtype=np.float64))]
        return cls(list(layers), nodes, mats, bases, metadata, inverses=inverses, means=means)

    # -- queries -----------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return int(self.w.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays: edge matrices, edge lists and bases."""
        return (sum(m.nbytes for m in self._mats) + self.src.nbytes + self.dst.nbytes + self.w.nbytes
                + sum(np.asarray(C).nbytes + np.asarray(lam).nbytes for C, lam in self.bases.values()))

    @property
    def Lambda(self) -> np.ndarray:
        return np.array([n.Lambda for n in self.nodes])

    @property
    def is_bias(self) -> np.ndarray:
        return np.array([n.is_bias for n in self.nodes], dtype=bool)

    @property
    def layer_index(self) -> np.ndarray:
        """Layer position (0 … L−1) of every node."""
        return np.repeat(np.arange(len(self.layers)), [self.layer_sizes[n] for n in self.layers])

    def edge_matrix(self, src_layer: str, dst_layer: str) -> np.ndarray:
        """Strengths w between two adjacent layers, shape (k_dst, k_src)."""
        for name in (src_layer, dst_layer):
            if name not in self.layers:
                raise KeyError(f"unknown layer {name!r}; layers: {self.layers}")
        j = self.layers.index(src_layer)
        if j + 1 >= len(self.layers) or self.layers[j + 1] != dst_layer:
            raise ValueError(f"{src_layer!r} -> {dst_layer!r} are not adjacent node layers")
        return self._mats[j].copy()

    def summary(self) -> dict[str, Any]:
        return dict(layers=self.layers, layer_sizes=self.layer_sizes, n_nodes=self.n_nodes,
                    n_edges=self.n_edges, w_max=float(self.w.max()) if self.n_edges else 0.0,
                    metadata=self.metadata)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}: {v}" for k, v in self.layer_sizes.items())
        return f"InteractionGraph({sizes}; {self.n_edges} edges)"

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self, bases: bool = True) -> dict[str, Any]:
        """Plain JSON-able dict: layers, nodes, edges, metadata and (``bases``) every layer's C,
        C⁻¹ and mean."""
        out = {"format": FORMAT, "layers": self.layers,
               "nodes": [asdict(n) for n in self.nodes],
               "edges": {"src": self.src.tolist(), "dst": self.dst.tolist(), "w": self.w.tolist()},
               "metadata": plain(self.metadata)}
        if bases and self.bases:
            out["bases"] = {name: np.asarray(C).tolist() for name, (C, _) in self.bases.items()}
            out["inverses"] = {name: a.tolist() for name, a in self.inverses.items()}
            out["means"] = {name: a.tolist() for name, a in self.means.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InteractionGraph:
        if data.get("format") != FORMAT:
            raise ValueError(f"not an intermod graph (format {data.get('format')!r}, expected {FORMAT!r})")
        layers = list(data["layers"])
        nodes = [Node(**n) for n in data["nodes"]]
        offset, sizes = {}, {}
        for i, n in enumerate(nodes):
            offset.setdefault(n.layer, i)
            sizes[n.layer] = sizes.get(n.layer, 0) + 1
        mats = [np.zeros((sizes.get(b, 0), sizes.get(a, 0))) for a, b in zip(layers, layers[1:])]
        src = np.asarray(data["edges"]["src"], dtype=np.int64)
        dst = np.asarray(data["edges"]["dst"], dtype=np.int64)
        w = np.asarray(data["edges"]["w"], dtype=np.float64)
        layer_of = np.array([layers.index(n.layer) for n in nodes], dtype=np.int64)
        starts = np.array([offset.get(name, 0) for name in layers])
        for j in range(len(mats)):
            sel = layer_of[src] == j if len(src) else np.zeros(0, dtype=bool)
            if np.any(layer_of[dst[sel]] != j + 1):
                raise ValueError("edges must join adjacent layers")
            mats[j][dst[sel] - starts[j + 1], src[sel] - starts[j]] = w[sel]
        lams = {name: np.array([n.Lambda for n in nodes if n.layer == name]) for name in layers}
        bases = {name: (np.asarray(C, dtype=np.float64), lams[name])
                 for name, C in data.get("bases", {}).items()}
        return cls(layers, nodes, mats, bases, data.get("metadata", {}),
                   inverses=data.get("inverses"), means=data.get("means"))

    def to_json(self, path: str | os.PathLike) -> None:
        _atomic_write(path, json.dumps(self.to_dict()).encode())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> InteractionGraph:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_igraph(self):
        """An undirected igraph.Graph with node attributes layer, index, Lambda, is_bias and edge w."""
        import igraph as ig

        g = ig.Graph(n=self.n_nodes, edges=np.stack([self.src, self.dst], 1).tolist())
        g.vs["layer"] = [n.layer for n in self.nodes]
        g.vs["index"] = [n.index for n in self.nodes]
        g.vs["Lambda"] = [n.Lambda for n in self.nodes]
        g.vs["is_bias"] = [n.is_bias for n in self.nodes]
        g.es["w"] = self.w.tolist()
        return g

    def to_graphml(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        self.to_igraph().write_graphml(tmp)
        os.replace(tmp, path)

    def save_safetensors(self, path: str | os.PathLike) -> None:
        """C, Lambda of every layer and the edge matrices, with the node layout in the metadata."""
        from safetensors.numpy import save

        tensors = {}
        for name in self.layers:
            if name in self.bases:
                C, lam = self.bases[name]
                tensors[f"C/{name}"] = np.ascontiguousarray(C)
            for key, store in (("Cinv", self.inverses), ("mean", self.means)):
                if name in store:
                    tensors[f"{key}/{name}"] = np.ascontiguousarray(store[name])
            tensors[f"Lambda/{name}"] = np.array([n.Lambda for n in self.nodes if n.layer == name])
        for a, b, m in zip(self.layers, self.layers[1:], self._mats):
            tensors[f"w/{a}->{b}"] = np.ascontiguousarray(m)
        meta = {"format": FORMAT, "layers": json.dumps(self.layers),
                "bias_direction": json.dumps([bool(self.is_bias[self.node_offset[n]]) if self.layer_sizes[n] else False
                                              for n in self.layers]),
                "metadata": json.dumps(plain(self.metadata))}
        _atomic_write(path, save(tensors, metadata=meta))

    @classmethod
    def load_safetensors(cls, path: str | os.PathLike) -> InteractionGraph:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not an intermod graph file")
            layers = json.loads(meta["layers"])
            lams = [f.get_tensor(f"Lambda/{n}") for n in layers]
            mats = [f.get_tensor(f"w/{a}->{b}") for a, b in zip(layers, layers[1:])]
            keys = set(f.keys())
            bases = {n: (f.get_tensor(f"C/{n}"), lam) for n, lam in zip(layers, lams) if f"C/{n}" in keys}
            inverses = {n: f.get_tensor(f"Cinv/{n}") for n in layers if f"Cinv/{n}" in keys}
            means = {n: f.get_tensor(f"mean/{n}") for n in layers if f"mean/{n}" in keys}
        return cls.from_arrays(layers, lams, mats, bias_direction=json.loads(meta["bias_direction"]),
                               bases=bases, metadata=json.loads(meta["metadata"]),
                               inverses=inverses, means=means)


def _atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file and rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
