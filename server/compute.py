"""Graph computations as the server runs them: request checks, then the library's calls.

The checks catch bad requests before a job is queued (unknown layer, data the model cannot
run on, too many samples or nodes, unknown option values), so they fail with
INVALID_ARGUMENT naming the field instead of as a failed job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from intermod import analysis as ia
from intermod.analysis.core.layout import LAYOUTS
from intermod.analysis.core.nodes import NodeModel
from intermod.v1 import intermod_pb2 as pb
from torch import nn

from .config import ServerConfig
from .errors import InvalidArgument, echo

_CHOICES = {"jacobian_target": ("output", "next_layer"), "scaling": ("sqrt", "inverse"),
            "kind": ("interaction", "pca", "neuron"), "edge_method": ("gradient", "integrated"),
            "dtype": ("float64", "float32")}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _bounded_count(opts: pb.GraphOptions, name: str, limit: int, what: str) -> int:
    value = getattr(opts, name)
    if value <= 0:
        raise InvalidArgument(f"options.{name}", f"must be positive, got {value}")
    if value > limit:
        raise InvalidArgument(f"options.{name}", f"{value} exceeds the server's limit of "
                                                 f"{limit} {what}")
    return value


def graph_options(opts: pb.GraphOptions, config: ServerConfig) -> tuple[dict, dict]:
    """Keyword arguments of compute_basis and build_graph for the options that are set,
    checked against the server's limits (``config.max_n_alpha`` …)."""
    basis: dict[str, Any] = {}
    graph: dict[str, Any] = {}
    for name, allowed in _CHOICES.items():
        value = getattr(opts, name)
        if value and value not in allowed:
            raise InvalidArgument(f"options.{name}", f"must be one of {list(allowed)}, got "
                                                     f"{echo(value)}")
    if opts.jacobian_target:
        basis["jacobian_target"] = opts.jacobian_target
    for name in ("scaling", "kind"):
        if getattr(opts, name):
            basis[name] = getattr(opts, name)
    if opts.edge_method:
        graph["edge_method"] = opts.edge_method
    if opts.dtype:
        basis["dtype"] = graph["dtype"] = _DTYPES[opts.dtype]
    for name in ("center", "include_bias"):
        if opts.HasField(name):
            basis[name] = getattr(opts, name)
    for name, lib in (("tol_g", "tol_G"), ("tol_m", "tol_M")):
        if opts.HasField(name):
            value = getattr(opts, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise InvalidArgument(f"options.{name}", f"must be in [0, 1), got {value}")
            basis[lib] = value
    limits = {"n_probes": (config.max_n_probes, "probes", (basis, graph)),
              "n_alpha": (config.max_n_alpha, "integration points", (graph,)),
              "batch_size": (min(config.max_batch_size, config.max_samples), "samples per batch",
                             (basis, graph))}
    for name, (limit, what, targets) in limits.items():
        if opts.HasField(name):
            value = _bounded_count(opts, name, limit, what)
            for target in targets:
                target[name] = value
    if opts.HasField("seed"):
        basis["seed"] = graph["seed"] = opts.seed
    if opts.HasField("rerotate"):
        basis["rerotate"] = bool(opts.rerotate)
    if opts.layout:
        if len(opts.layout) > config.max_layers:
            raise InvalidArgument("options.layout", f"{len(opts.layout)} layers exceed the server's "
                                                    f"limit of {config.max_layers}")
        for layer, kind in opts.layout.items():
            if kind not in LAYOUTS:
                raise InvalidArgument("options.layout", f"layer {echo(layer)}: layout must be one of "
                                                        f"{list(LAYOUTS)}, got {echo(kind)}")
        basis["layout"] = dict(opts.layout)
    return basis, graph


def resolve_layers(model: nn.Module, layers: list[str], max_layers: int) -> list[str]:
    """Check that every node layer is a module path of `model` or "output"."""
    if not layers:
        raise InvalidArgument("layers", "required: name the node layers (module paths or "
                                        "'output')")
    if len(layers) > max_layers:
        raise InvalidArgument("layers", f"{len(layers)} node layers exceed the server's limit "
                                        f"of {max_layers}")
    names = {n for n, _ in model.named_modules() if n}
    for i, layer in enumerate(layers):
        if layer != "output" and layer not in names:
            raise InvalidArgument(f"layers[{i}]", f"unknown layer {echo(layer)}; the model has "
                                                  f"{sorted(names)[:50]} and 'output'")
    if len(set(layers)) != len(layers):
        raise InvalidArgument("layers", "a layer is named twice")
    return layers


def n_samples(inputs: Any, field: str = "data_tensor_set_id") -> int | None:
    """Number of samples of a tensor or a mapping of tensors (keyword inputs); None for other
    inputs. InvalidArgument(field) for a scalar, or tensors of different batch sizes."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise InvalidArgument(field, "the data tensor is a scalar: it needs a batch "
                                         "dimension (samples first)")
        return int(inputs.shape[0])
    if isinstance(inputs, dict) and inputs:
        sizes = {}
        for name, tensor in inputs.items():
            if tensor.dim() == 0:
                raise InvalidArgument(field, f"tensor {echo(name)} is a scalar; keyword inputs "
                                             "need a batch dimension each (or choose one "
                                             "tensor with data_tensor)")
            sizes[name] = int(tensor.shape[0])
        if len(set(sizes.values())) > 1:
            raise InvalidArgument(field, f"the tensors have different batch sizes "
                                         f"{dict(list(sizes.items())[:10])}; keyword inputs "
                                         "must share their first dimension (or choose one "
                                         "tensor with data_tensor)")
        return next(iter(sizes.values()))
    return None


def probe(model: nn.Module, inputs: Any, layers: list[str], max_nodes: int,
          field: str = "data_tensor_set_id", layout: dict[str, str] | None = None) -> None:
    """Run the model on two samples: the data must fit it, every layer's layout must be clear
    (or given in ``layout``), and the node count (Σ features + 1, in each layer's layout) the
    limit."""
    if not isinstance(inputs, torch.Tensor):
        return
    params = [p for p in model.parameters() if p.is_floating_point()]
    sample = inputs[:2]
    dtype = params[0].dtype if params else torch.float64
    if sample.is_floating_point():
        sample = sample.to(dtype)
    try:
        with torch.no_grad():
            model(sample)
    except Exception as exc:  # noqa: BLE001 - any failure means the data do not fit
        raise InvalidArgument(field, f"the model cannot run on data of shape "
                                     f"{tuple(inputs.shape)} and dtype {inputs.dtype}: "
                                     f"{exc}") from None
    try:
        with torch.no_grad():
            net = NodeModel(model, layers, sample, output_fn=None, include_bias=False,
                            dtype=dtype, device=torch.device("cpu"), layout=layout)
    except (ValueError, TypeError, RuntimeError) as exc:   # an ambiguous layout, a layer never called, …
        raise InvalidArgument("options.layout" if "layout" in str(exc) else "layers", str(exc)) from None
    nodes = sum(net.dims[name] + 1 for name in layers)
    if nodes > max_nodes:
        raise InvalidArgument("layers", f"{nodes} nodes exceed the server's limit of "
                                        f"{max_nodes}; choose fewer or narrower layers")


def compute_graph(model: nn.Module, inputs: Any, layers: list[str], basis_kw: dict,
                  graph_kw: dict, device: str,
                  progress: Callable[[str, int, int], None]) -> ia.InteractionGraph:
    """Basis (re-rotated when asked) then graph, reporting progress as "basis/<stage>" and
    "graph/<stage>"."""
    kw = dict(basis_kw)
    rerotate = kw.pop("rerotate", False)
    basis = ia.compute_basis(model, inputs, layers, device=device, progress=False,
                             callback=lambda s, d, t: progress(f"basis/{s}", d, t), **kw)
    if rerotate:
        progress("basis/rerotate", 0, 1)
        basis = ia.rerotate_degenerate(model, inputs, basis)
    return ia.build_graph(model, inputs, basis, device=device, progress=False,
                          callback=lambda s, d, t: progress(f"graph/{s}", d, t), **graph_kw)
