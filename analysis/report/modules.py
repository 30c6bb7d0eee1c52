"""What each module does: :func:`module_report` -> :class:`ModuleReport` of :class:`ModuleInfo`.

For module c of a partition (membership value c):

- ``directions``: its basis directions per node layer;
- ``inputs``: the share of each input coordinate in its first node layer's directions S
  (Σ_{i∈S} E_ia / Σ_{i∈S,b} E_ib with E the integrated-gradient energies of
  :mod:`.attribution`; the exact linear map when that layer is the model input); for token
  inputs also per token position and per vocabulary item;
- ``outputs``: from a module-effects table (``ia.module_effects``), the share of each output
  coordinate, class or position o (the column index of the table; ``output_names[o]`` is its
  label) in the loss increase when the module is ablated, max(0, ΔL_o) / Σ_o max(0, ΔL_o);
- ``top_examples``: the samples (and positions) with the largest ‖f̂_c‖ (:mod:`.examples`).

Attribution and top examples run on ``device`` ("auto": CUDA when available, else the CPU), in
float64, on copies of the model's parameters; the report holds CPU numpy arrays and Python numbers.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.graph import InteractionGraph
from ..core.inputs import Inputs, resolve_device
from ..core.jsonutil import plain
from ..core.nodes import OutputFn
from ..core.partition import Partition, cutoff_strength
from ..core.progress import Callback
from .attribution import DirectionAttribution, direction_attribution, set_attribution
from .examples import Decoder, Hit, top_examples

__all__ = ["ModuleInfo", "ModuleReport", "module_report"]

Key = Any   # an input coordinate: int, or a tuple of ints for shaped inputs


@dataclass
class ModuleInfo:
    """One module. Shares (``inputs``, ``outputs``, …) are dicts sorted largest first that sum
    to 1 (empty when nothing was measured); ``input_map`` has the shape of one input sample."""

    id: int
    size: int
    directions: dict[str, list[int]]
    internal: float = 0.0
    cut: float = 0.0
    first_layer: str | None = None
    inputs: dict[Key, float] = field(default_factory=dict)
    input_map: np.ndarray | None = None
    input_positions: dict[int, float] = field(default_factory=dict)
    input_tokens: dict[Any, float] = field(default_factory=dict)
    outputs: dict[int, float] | None = None
    output_loss: dict[int, float] | None = None
    ablation_loss: float | None = None
    top_examples: list[Any] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    direction_examples: dict[str, dict[int, list[Any]]] = field(default_factory=dict)
    decoded: list[Any] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list, repr=False)

    def summary(self, n: int = 3) -> str:
        """One line: size, layers, the top ``n`` inputs and outputs and the top examples."""
        layers = ", ".join(f"{k}: {len(v)}" for k, v in self.directions.items() if v)
        parts = [f"module {self.id}: {self.size} directions ({layers})"]
        if self.inputs:
            parts.append("reads " + _top(self.inputs, n) + (f" at layer {self.first_layer}" if self.first_layer else ""))
        if self.input_tokens:
            parts.append("tokens " + _top(self.input_tokens, n))
        if self.outputs:
            parts.append("ablating it moves " + _top(self.outputs, n, self.output_names))
        elif self.outputs is None:
            parts.append("no module effects given")
        if self.top_examples:
            parts.append("top examples " + ", ".join(map(str, self.top_examples[:n])))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return plain({
            "id": self.id, "size": self.size, "directions": self.directions, "internal": self.internal,
            "cut": self.cut, "first_layer": self.first_layer, "inputs": _keyed(self.inputs),
            "input_map": None if self.input_map is None else self.input_map.tolist(),
            "input_positions": _keyed(self.input_positions), "input_tokens": _keyed(self.input_tokens),
            "outputs": _keyed(self.outputs or {}, self.output_names) if self.outputs is not None else None,
            "output_loss": _keyed(self.output_loss or {}, self.output_names) if self.output_loss is not None else None,
            "ablation_loss": self.ablation_loss,
            "top_examples": [list(k) if isinstance(k, tuple) else k for k in self.top_examples],
            "top_scores": [h.score for h in self.hits],
            "decoded": [d for d in self.decoded if isinstance(d, str)],
        })


def _top(shares: dict, n: int, names: Sequence[str] = ()) -> str:
    return ", ".join(f"{_label(k, names)} ({v:.0%})" for k, v in list(shares.items())[:n])


def _label(key: Any, names: Sequence[str] = ()) -> str:
    """Display text of a key: "r,c" for a tuple, ``names[key]`` for an output index."""
    if isinstance(key, tuple):
        return ",".join(map(str, key))
    return names[key] if names and isinstance(key, int) else str(key)


def _keyed(shares: dict, names: Sequence[str] = ()) -> dict[str, float]:
    return {_label(k, names): float(v) for k, v in shares.items()}


def _shares(values: np.ndarray, keys: Sequence[Any]) -> dict[Any, float]:
    """{key: max(0, value) / Σ max(0, values)}, largest first (NaN counts as 0); {} when the total
    is not positive."""
    values = np.maximum(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0)
    total = values.sum()
    if not total > 0:
        return {}
    order = np.argsort(-values, kind="stable")
    return {keys[i]: float(values[i] / total) for i in order}


@dataclass
class ModuleReport:
    """Every module of a partition (``modules[c]`` has membership value c) and the context to
    draw them: the graph, the partition, ``module_graph`` (n_mod, n_mod) = Σ ŵ of the edges
    between two modules, ``input_shape``, the effects' ``group`` and ``reconstruction_loss``."""

    modules: list[ModuleInfo]
    graph: InteractionGraph = field(repr=False)
    partition: Partition = field(repr=False)
    module_graph: np.ndarray = field(repr=False)
    input_shape: tuple[int, ...] | None = None
    input_kind: str | None = None
    effects_group: str | None = None
    reconstruction_loss: float | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.modules)

    def table(self) -> list[list[str]]:
        """Rows: module, size, directions per layer, top inputs, top outputs, top examples."""
        rows = [["module", "size", "per layer", "inputs", "outputs", "top examples"]]
        for m in self.modules:
            rows.append([str(m.id), str(m.size),
                         " ".join(str(len(m.directions.get(name, []))) for name in self.graph.layers),
                         _top(m.inputs, 3) or "–", _top(m.outputs or {}, 3, m.output_names) or "–",
                         ", ".join(map(str, m.top_examples[:3])) or "–"])
        return rows

    def __str__(self) -> str:
        rows = self.table()
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        lines = [f"ModuleReport: {len(self.modules)} modules, ε = {self.partition.epsilon:g}, "
                 f"layers {' '.join(self.graph.layers)}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines + self.notes)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = self.table()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        return (f"<p>ModuleReport: {len(self.modules)} modules, ε = {self.partition.epsilon:g}</p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def to_dict(self) -> dict[str, Any]:
        return plain({"layers": self.graph.layers, "layer_sizes": self.graph.layer_sizes,
                      "epsilon": self.partition.epsilon, "cost": self.partition.cost,
                      "n_modules": len(self.modules), "input_shape": self.input_shape,
                      "input_kind": self.input_kind, "effects_group": self.effects_group,
                      "reconstruction_loss": self.reconstruction_loss, "notes": self.notes,
                      "module_graph": self.module_graph.tolist(),
                      "modules": [m.to_dict() for m in self.modules]})

    def save_html(self, path: str | os.PathLike, *, max_nodes: int = 400) -> str:
        """One self-contained HTML file (see :func:`~intermod.analysis.report.html.write_html`)."""
        from .html import write_html

        return write_html(self, path, max_nodes=max_nodes)


def module_graph(graph: InteractionGraph, membership: np.ndarray, epsilon: float) -> np.ndarray:
    """(n_mod, n_mod) symmetric matrix: Σ ŵ = max(0, ln(w/√ε)) over edges between modules a ≠ b."""
    n_mod = int(membership.max()) + 1 if membership.size else 0
    a, b = membership[graph.src], membership[graph.dst]
    keep = (a >= 0) & (b >= 0) & (a != b)
    out = np.zeros((n_mod, n_mod))
    np.add.at(out, (a[keep], b[keep]), cutoff_strength(graph.w[keep], epsilon))
    return out + out.T


def module_report(model: nn.Module | None, inputs: Inputs | None, graph: InteractionGraph,
                  partition: Partition, *, effects: Any = None, top_k: int = 10,
                  decode: Decoder | None = None, input_shape: Sequence[int] | None = None,
                  token_labels: Callable[[int], str] | None = None,
                  output_names: Sequence[str] | Callable[[int], str] | None = None, n_alpha: int = 8,
                  n_probes: int | None = None, embedding: str | None = None,
                  output_fn: OutputFn | None = None, batch_size: int = 256, seed: int = 0,
                  device: str | torch.device = "auto", dtype: torch.dtype = torch.float64,
                  progress: bool = True, callback: Callback | None = None) -> ModuleReport:
    """Explain every module of ``partition`` (see the module docstring).

    model, inputs: the data the graph was built on (None, None: a report of the graph only,
    without input attribution and top examples). effects: a ``ModuleEffects`` (rows
    ``module_ids``, ``loss_increase`` (n_modules, n_outputs), ``output_labels``, ``group``,
    ``reconstruction_loss``, ``loss``); without it ``outputs`` is None. decode: (sample,
    position) -> text or image, for the top examples. input_shape: the shape of one input
    sample for heat maps (e.g. (8, 8) for flat 8×8 images). token_labels: id -> text for the
    per-token input shares. output_names: names of the effects' columns (a list, or index ->
    name, e.g. a tokenizer's decode for LM logits, so the tokens whose logits move most are
    readable); default the effects' own labels. device: where attribution and top examples
    run ("auto": CUDA when available, else the CPU; "cpu", "cuda", "cuda:1", a torch.device;
    ValueError for anything else); the model is not moved. n_probes: None, the exact
    per-direction energies (:func:`.direction_attribution`); R, each module's first-layer
    directions as one set, estimated with R joint probes over them and the output positions where
    the exact sum would need more backward passes (:func:`.set_attribution`; the notes count
    those modules). dtype: the input attribution's model
    passes in float64 (default) or float32 (:func:`.direction_attribution`; the top examples run
    in float64). The other options (``progress``,
    ``callback`` included: the input attribution's bar) go to :func:`.direction_attribution`.
    """
    if not isinstance(graph, InteractionGraph):
        raise TypeError(f"graph must be an InteractionGraph, got {type(graph).__name__}")
    if not isinstance(partition, Partition):
        raise TypeError(f"partition must be a Partition (find_modules), got {type(partition).__name__}")
    if (model is None) != (inputs is None):
        raise ValueError("pass both model and inputs, or neither (a graph-only report)")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    device = resolve_device(device)
    membership = np.asarray(partition.membership, dtype=np.int64)
    if membership.shape != (graph.n_nodes,):
        raise ValueError(f"partition has {membership.shape[0]} nodes, the graph {graph.n_nodes}")
    mods = []
    for m in partition.modules:
        dirs: dict[str, list[int]] = {}
        for node in m.nodes:
            dirs.setdefault(graph.nodes[node].layer, []).append(graph.nodes[node].index)
        dirs = {name: sorted(dirs[name]) for name in graph.layers if name in dirs}
        mods.append(ModuleInfo(m.id, m.size, dirs, m.internal, m.cut, next(iter(dirs), None)))
    rep = ModuleReport(mods, graph, partition, module_graph(graph, membership, partition.epsilon))
    if not mods:
        rep.notes.append(f"the partition has no modules (no interaction above ε = {partition.epsilon:g}): "
                         "nothing to attribute or rank")
    elif model is not None:
        first: dict[str, list[list[int]]] = {}
        for m in mods:
            if m.first_layer is not None:
                first.setdefault(m.first_layer, []).append(m.directions[m.first_layer])
        options = {"n_alpha": n_alpha, "embedding": embedding, "output_fn": output_fn, "batch_size": batch_size,
                   "seed": seed, "device": device, "dtype": dtype, "progress": progress, "callback": callback}
        att = (direction_attribution(model, inputs, graph, {n: sum(g, []) for n, g in first.items()}, **options)
               if n_probes is None else set_attribution(model, inputs, graph, first, n_probes=n_probes, **options))
        _add_inputs(rep, att, input_shape, token_labels)
        n_est = 0 if att.probed is None else sum(int(v.sum()) for v in att.probed.values())
        if n_est:
            rep.notes.append(f"input shares of {n_est} module(s) estimated with {n_probes} random probes over their "
                             "first-layer directions and output positions (unbiased; the others exact)")
        top = top_examples(model, inputs, graph, membership, top_k=top_k, output_fn=output_fn,
                           batch_size=batch_size, device=device)
        for m in mods:
            m.hits = top.modules.get(m.id, [])
            m.top_examples = [h.key for h in m.hits]
            m.direction_examples = {name: {i: [h.key for h in top.directions[name][i]] for i in idx}
                                    for name, idx in m.directions.items() if name in top.directions}
            if decode is not None:
                m.decoded = [decode(h.sample, h.position) for h in m.hits]
    else:
        rep.notes.append("graph-only report: no model and inputs, so no input attribution or top examples")
    if effects is not None:
        _add_effects(rep, effects, output_names)
    else:
        rep.notes.append("no module effects given (ia.module_effects): outputs are not measured")
    return rep


def _add_inputs(rep: ModuleReport, att: DirectionAttribution, input_shape: Sequence[int] | None,
                token_labels: Callable[[int], str] | None) -> None:
    """Module input shares from the per-direction energies of its first layer."""
    shape = tuple(input_shape) if input_shape is not None else att.input_shape
    if att.kind == "tensor" and int(np.prod(shape)) != int(np.prod(att.input_shape)):
        raise ValueError(f"input_shape {shape} does not hold the {int(np.prod(att.input_shape))} input coordinates")
    rep.input_shape, rep.input_kind = shape, att.kind
    flat_keys: list[Any] = (list(range(int(np.prod(shape)))) if len(shape) == 1 or att.kind == "tokens"
                            else [tuple(int(v) for v in np.unravel_index(i, shape)) for i in range(int(np.prod(shape)))])
    for m in rep.modules:
        if m.first_layer is None:
            continue
        rows = att.rows(m.first_layer, m.directions[m.first_layer])
        energy = att.energy[m.first_layer][rows].sum(0).reshape(-1)
        m.inputs = _shares(energy, flat_keys)
        total = energy.sum()
        if att.kind == "tensor" and total > 0:
            m.input_map = (energy / total).reshape(shape)
        if att.kind == "tokens":
            pos = att.by_position[m.first_layer][rows].sum(0)
            m.input_positions = _shares(pos, list(range(len(pos))))
            ids = att.token_ids.tolist()
            labels = [token_labels(i) if token_labels else i for i in ids]
            m.input_tokens = _shares(att.by_token[m.first_layer][rows].sum(0), labels)


def _add_effects(rep: ModuleReport, effects: Any,
                 names: Sequence[str] | Callable[[int], str] | None = None) -> None:
    """Output shares per module from a ModuleEffects table (duck-typed)."""
    for name in ("module_ids", "loss_increase", "output_labels"):
        if not hasattr(effects, name):
            raise TypeError(f"effects must be a ModuleEffects (ia.module_effects); it has no {name!r}")
    inc = np.asarray(effects.loss_increase, dtype=np.float64)
    labels = [str(v) for v in effects.output_labels]
    ids = [int(i) for i in effects.module_ids]
    if inc.shape != (len(ids), len(labels)):
        raise ValueError(f"effects.loss_increase has shape {inc.shape}, expected ({len(ids)}, {len(labels)})")
    if callable(names):
        labels = [str(names(j)) for j in range(len(labels))]
    elif names is not None:
        if len(names) != len(labels):
            raise ValueError(f"output_names has {len(names)} entries, the effects {len(labels)} outputs")
        labels = [str(v) for v in names]
    rep.effects_group = getattr(effects, "group", None)
    rec = getattr(effects, "reconstruction_loss", None)
    rep.reconstruction_loss = None if rec is None else float(rec)
    loss = getattr(effects, "loss", None)
    row_of = {c: r for r, c in enumerate(ids)}
    for m in rep.modules:
        r = row_of.get(m.id)
        if r is None:
            continue
        m.output_names = labels
        m.outputs = _shares(inc[r], list(range(len(labels))))
        m.output_loss = {int(j): float(inc[r, j]) for j in np.argsort(-inc[r], kind="stable")}
        if loss is not None:
            m.ablation_loss = float(np.asarray(loss)[r])
