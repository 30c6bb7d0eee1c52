"""Ablation jobs as the server runs them: request checks, the library call, typed results.

Every field is checked before the job is queued (INVALID_ARGUMENT naming it); every size is
bounded. An ablation runs on a stored graph with the model and data the graph was computed
on (from the graph's ComputeGraph job record), or on other data named in the request. The
result is written as the library's JSON (``to_dict``) next to the graphs, keyed by job id.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from intermod import analysis as ia
from intermod.v1 import intermod_pb2 as pb

from . import convert
from .config import ServerConfig
from .errors import FailedPrecondition, InvalidArgument, NotFound, echo
from .storage import Store, atomic_write

KINDS = {pb.ABLATION_KIND_CURVE: "curve", pb.ABLATION_KIND_EDGES: "edges", pb.ABLATION_KIND_CUT: "cut",
         pb.ABLATION_KIND_EFFECTS: "effects", pb.ABLATION_KIND_AUTO: "auto"}
KIND_IDS = {v: k for k, v in KINDS.items()}
RESULTS = {"curve": ia.AblationCurve, "edges": ia.EdgeAblation, "cut": ia.ModuleCut,
           "effects": ia.ModuleEffects, "auto": ia.AutoModules}
MAX_BASELINE = 64
MAX_SCHEDULE = 10_000
MAX_RESOLUTIONS = 256
MAX_MODULES = 256
MAX_KEEP = 10_000_000


def _positive_int(value: int, field: str, limit: int) -> int:
    if not 1 <= value <= limit:
        raise InvalidArgument(field, f"must be in 1..{limit}, got {value}")
    return int(value)


def request_kwargs(req: pb.AblateRequest, graph: ia.InteractionGraph, config: ServerConfig) -> tuple[str, dict]:
    """(kind, keyword arguments of the library function) for a valid request."""
    kind = KINDS.get(req.kind)
    if kind is None:
        raise InvalidArgument("kind", f"must be one of {sorted(KIND_IDS)} (ABLATION_KIND_*)")
    if req.loss not in ("", "mse", "kl", "disagreement"):
        raise InvalidArgument("loss", f"must be 'mse', 'kl' or 'disagreement', got {echo(req.loss)}")
    kw: dict[str, Any] = {"loss": req.loss or "mse"}
    if req.HasField("batch_size"):
        kw["batch_size"] = _positive_int(req.batch_size, "batch_size", config.max_batch_size)
    if req.HasField("tolerance"):
        if not (math.isfinite(req.tolerance) and req.tolerance >= 0):
            raise InvalidArgument("tolerance", f"must be finite and >= 0, got {req.tolerance}")
        if kind == "auto":
            kw["tolerance"] = req.tolerance
    if kind == "curve":
        if req.layer not in graph.layers:
            raise InvalidArgument("layer", f"must be a layer of the graph {graph.layers[:20]}, got {echo(req.layer)}")
        if req.schedule_points:
            if req.schedule:
                raise InvalidArgument("schedule", "give schedule or schedule_points, not both")
            start = graph.node_offset[req.layer]
            k = int((~graph.is_bias[start:start + graph.layer_sizes[req.layer]]).sum())
            if len(req.schedule_points) > MAX_SCHEDULE or not all(0 <= m <= k for m in req.schedule_points):
                raise InvalidArgument("schedule_points", f"at most {MAX_SCHEDULE} numbers in 0..{k}")
            kw["schedule"] = [int(m) for m in req.schedule_points]
        elif req.schedule:
            if req.schedule not in ("exponential", "all"):
                raise InvalidArgument("schedule", f"must be 'exponential' or 'all', got {echo(req.schedule)}")
            kw["schedule"] = req.schedule
    elif kind == "edges":
        if req.HasField("epsilon") == req.HasField("keep"):
            raise InvalidArgument("epsilon", "give exactly one of epsilon and keep")
        if req.HasField("epsilon"):
            convert.check_epsilon(req.epsilon, "epsilon")
            kw["epsilon"] = req.epsilon
        else:
            if not 0 <= req.keep <= MAX_KEEP:
                raise InvalidArgument("keep", f"must be in 0..{MAX_KEEP}, got {req.keep}")
            kw["keep"] = int(req.keep)
    elif kind in ("cut", "effects"):
        if req.HasField("n_baseline") and kind == "cut":
            if not 0 <= req.n_baseline <= MAX_BASELINE:
                raise InvalidArgument("n_baseline", f"must be in 0..{MAX_BASELINE}, got {req.n_baseline}")
            kw["n_baseline"] = int(req.n_baseline)
        if req.group and kind == "effects":
            if req.group not in ("coordinate", "class", "position"):
                raise InvalidArgument("group", f"must be 'coordinate', 'class' or 'position', got {echo(req.group)}")
            if req.group == "coordinate" and kw["loss"] != "mse":
                raise InvalidArgument("group", "'coordinate' needs loss 'mse'")
            kw["group"] = req.group
    else:
        if len(req.resolutions) > MAX_RESOLUTIONS:
            raise InvalidArgument("resolutions", f"at most {MAX_RESOLUTIONS} values")
        for i, r in enumerate(req.resolutions):
            if not (math.isfinite(r) and r >= 0):
                raise InvalidArgument(f"resolutions[{i}]", f"must be finite and >= 0, got {r}")
        if req.resolutions:
            kw["resolutions"] = list(req.resolutions)
        if req.HasField("max_modules"):
            kw["max_modules"] = _positive_int(req.max_modules, "max_modules", MAX_MODULES)
    if req.HasField("seed") and kind in ("cut", "auto"):
        kw["seed"] = int(req.seed)
    return kind, kw


def partition_of(req: pb.AblateRequest, graph: ia.InteractionGraph, max_restarts: int) -> Any:
    """The membership of a cut / effects request: given, or found with ``search``."""
    if req.membership:
        return convert.check_membership(req.membership, graph.n_nodes, "membership")
    if not req.HasField("search"):
        raise InvalidArgument("membership", "required: give membership or search")
    try:
        return ia.find_modules(graph, **convert.search_kwargs(req.search, max_restarts, "search"))
    except ValueError as exc:
        raise InvalidArgument("search", str(exc)) from None


def graph_source(store: Store, rec: dict) -> tuple[str, str, str]:
    """(model id, data tensor set id, data tensor) the graph was computed with."""
    job = store.job(rec.get("job_id") or "")
    if job is None:
        raise FailedPrecondition(f"graph {rec['id']!r} has no job record: its data are unknown; "
                                 "name data_tensor_set_id")
    computed = json_format.Parse(job["request"], pb.ComputeGraphRequest())
    return rec["model_id"], computed.data_tensor_set_id, computed.data_tensor


def run(kind: str, model: Any, inputs: Any, graph: ia.InteractionGraph, kw: dict, partition: Any,
        device: str, progress: Any) -> Any:
    """The library call of one ablation job."""
    common = dict(kw, device=device, progress=False, callback=progress)
    if kind == "curve":
        layer = common.pop("layer")
        return ia.ablation_curve(model, inputs, graph, layer, **common)
    if kind == "edges":
        return ia.edge_ablation(model, inputs, graph, **common)
    if kind == "cut":
        return ia.module_cut(model, inputs, graph, partition, **common)
    if kind == "effects":
        return ia.module_effects(model, inputs, graph, partition, **common)
    return ia.modules_from_ablation(model, inputs, graph, **common)


def result_path(store: Store, job_id: str) -> Path:
    folder = store.dir("ablations")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{job_id}.json"


def save(store: Store, job_id: str, kind: str, result: Any) -> None:
    data = {"kind": kind, "result": json.loads(convert.dumps(result.to_dict()))}
    with atomic_write(result_path(store, job_id)) as fh:
        fh.write(json.dumps(data).encode())


def load(store: Store, job_id: str) -> tuple[str, dict]:
    path = result_path(store, job_id)
    if not path.exists():
        raise NotFound(f"no ablation result for job {job_id!r}")
    data = json.loads(path.read_text())
    return data["kind"], data["result"]


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def to_proto(kind: str, d: dict, job: pb.Job) -> pb.GetAblationResponse:
    """The typed response for a stored result ``d`` (the library's to_dict())."""
    out = pb.GetAblationResponse(job=job, kind=KIND_IDS[kind], result_json=json.dumps(d))
    obj = RESULTS[kind].from_dict(d)
    if kind == "auto":
        out.loss, scale = obj.choice.loss_name, obj.choice.scale
        out.auto.CopyFrom(pb.AutoModulesResult(
            partition=convert.partition_to_proto(obj.partition), epsilon=obj.epsilon,
            cut_loss=obj.cut_loss, tolerance=obj.tolerance, within_tolerance=obj.within_tolerance,
            coverage=obj.coverage))
    else:
        out.loss, scale = obj.loss_name, obj.scale
    out.scale = 0.0 if scale is None else float(scale)
    if kind == "curve":
        needed = obj.needed() if obj.scale is not None else None
        out.curve.CopyFrom(pb.AblationCurveResult(
            layer=obj.layer, basis_kind=obj.kind, n_kept=obj.n_kept.tolist(), loss=obj.loss.tolist(),
            n_directions=obj.n_directions, reconstruction_loss=obj.reconstruction_loss,
            needed=-1 if needed is None else needed))
    elif kind == "edges":
        out.edges.CopyFrom(pb.EdgeAblationResult(loss=obj.loss, reconstruction_loss=obj.reconstruction_loss,
                                                 n_kept=obj.n_kept, n_total=obj.n_total, n_masks=obj.n_masks))
    elif kind == "cut":
        out.cut.CopyFrom(pb.ModuleCutResult(
            loss=obj.loss, baseline=_num(obj.baseline), baseline_spread=_num(obj.baseline_spread),
            baseline_losses=obj.baseline_losses, inactive_loss=obj.inactive_loss,
            reconstruction_loss=obj.reconstruction_loss, n_modules=obj.n_modules, n_forward=obj.n_forward))
    elif kind == "effects":
        out.effects.CopyFrom(pb.ModuleEffectsResult(
            module_ids=obj.module_ids, output_labels=obj.output_labels, group=obj.group,
            loss_increase=np.asarray(obj.loss_increase, dtype=float).reshape(-1).tolist(),
            loss=np.asarray(obj.loss, dtype=float).tolist(), reconstruction_loss=obj.reconstruction_loss))
    return out
