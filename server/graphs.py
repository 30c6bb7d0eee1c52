"""Stored interaction graphs: safetensors files written atomically, an LRU cache, exports.

Graphs are kept as the library's safetensors form (edges, Λ and the bases C, which the JSON
form leaves out), so a reloaded graph is the computed one.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from intermod import analysis as ia

from .convert import dumps
from .errors import NotFound, echo
from .storage import Store, atomic_path, new_id

EXPORT_SUFFIX = {"json": ".json", "graphml": ".graphml", "safetensors": ".safetensors",
                 "png": ".png", "svg": ".svg", "html": ".html"}
_PLOT_LOCK = threading.Lock()  # matplotlib's state is global


class GraphStore:
    """Graphs by id: saved once, loaded lazily, kept in a small LRU cache."""

    def __init__(self, store: Store, cache_size: int, cache_bytes: int = 1 << 30) -> None:
        self.store = store
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, ia.InteractionGraph] = OrderedDict()
        self._lock = threading.Lock()

    def save(self, graph: ia.InteractionGraph, job_id: str, model_id: str) -> str:
        """Write the graph (temp file, then rename), then record it. Blocking."""
        graph_id = new_id("g")
        path = self.store.dir("graphs") / f"{graph_id}.safetensors"
        with atomic_path(path) as tmp:
            graph.save_safetensors(tmp)
        summary = json.loads(dumps(graph.summary()))
        self.store.add_graph({
            "id": graph_id, "job_id": job_id, "model_id": model_id, "path": str(path),
            "layers": list(graph.layers), "n_nodes": int(graph.n_nodes),
            "n_edges": int(graph.n_edges),
            "n_samples": int(graph.metadata.get("n_samples", 0) or 0),
            "summary": summary, "created": time.time()})
        self._remember(graph_id, graph)
        return graph_id

    def record(self, graph_id: str) -> dict[str, Any]:
        rec = self.store.graph(graph_id) if graph_id else None
        if rec is None:
            raise NotFound(f"no graph {echo(graph_id)}")
        return rec

    def get(self, graph_id: str) -> ia.InteractionGraph:
        """The graph, from the cache or its file. Blocking."""
        with self._lock:
            if graph_id in self._cache:
                self._cache.move_to_end(graph_id)
                return self._cache[graph_id]
        graph = ia.InteractionGraph.load_safetensors(Path(self.record(graph_id)["path"]))
        self._remember(graph_id, graph)
        return graph

    def delete(self, graph_id: str) -> None:
        rec = self.record(graph_id)
        self.store.delete_graph(graph_id)
        with self._lock:
            self._cache.pop(graph_id, None)
        Path(rec["path"]).unlink(missing_ok=True)

    def export(self, graph_id: str, fmt: str, partition: Any = None,
               top_n: int | None = None) -> tuple[Path, bool]:
        """A file holding the export; (path, is_temporary). Blocking."""
        rec = self.record(graph_id)
        if fmt == "safetensors":
            return Path(rec["path"]), False
        graph = self.get(graph_id)
        path = self.store.dir("tmp") / f"{graph_id}-{uuid.uuid4().hex[:8]}{EXPORT_SUFFIX[fmt]}"
        if fmt == "json":
            graph.to_json(path)
        elif fmt == "graphml":
            graph.to_graphml(path)
        elif fmt == "html":
            partition = partition or ia.find_modules(graph)   # a report needs modules: defaults
            ia.module_report(None, None, graph, partition).save_html(path)
        else:
            kw = {"top_n": top_n} if top_n else {}
            if partition is not None:
                kw["epsilon"] = partition.epsilon
            with _PLOT_LOCK:
                ia.plot_graph(graph, partition=partition, path=path, **kw)
        return path, True

    def _remember(self, graph_id: str, graph: ia.InteractionGraph) -> None:
        """Cache `graph`, dropping the least recently used beyond cache_size graphs or
        cache_bytes of arrays (the newest graph stays even when it alone is larger)."""
        with self._lock:
            self._cache[graph_id] = graph
            self._cache.move_to_end(graph_id)
            while len(self._cache) > 1 and (len(self._cache) > self.cache_size or sum(
                    g.nbytes for g in self._cache.values()) > self.cache_bytes):
                self._cache.popitem(last=False)
