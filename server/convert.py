"""Library objects <-> protobuf messages (the servicer's translation layer)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from intermod.analysis.core.jsonutil import dumps
from intermod.analysis.core.partition import OBJECTIVE_ALIASES
from intermod.v1 import intermod_pb2 as pb

from .errors import InvalidArgument, echo
from .jobs import JobStatus

JOB_STATES = {"queued": pb.JOB_STATE_QUEUED, "running": pb.JOB_STATE_RUNNING,
              "succeeded": pb.JOB_STATE_SUCCEEDED, "failed": pb.JOB_STATE_FAILED,
              "cancelled": pb.JOB_STATE_CANCELLED, "interrupted": pb.JOB_STATE_INTERRUPTED}



def spec_to_dict(spec: pb.ModelSpec) -> dict:
    """The spec as model_spec expects it: only the fields that are set, ints as ints."""
    def plain(v: Any) -> Any:   # a repeated field (kernel_size, …) as a list
        return v if isinstance(v, (str, bytes, bool, int, float)) else list(v)
    return {"layers": [{f.name: plain(v) for f, v in layer.ListFields()} for layer in spec.layers]}


def spec_from_dict(spec: dict, field: str = "spec") -> pb.ModelSpec:
    try:
        return json_format.ParseDict(spec, pb.ModelSpec())
    except json_format.ParseError as exc:
        raise InvalidArgument(field, f"not an intermod.v1.ModelSpec: {exc}") from None


def job_to_proto(s: JobStatus) -> pb.Job:
    return pb.Job(job_id=s.id, state=JOB_STATES[s.state], stage=s.stage,
                  stage_done=s.stage_done, stage_total=s.stage_total, fraction=s.fraction,
                  elapsed_seconds=s.elapsed, eta_seconds=s.eta, graph_id=s.graph_id,
                  error=s.error, model_id=s.model_id, device=s.device, created_time=s.created)


def graph_info(rec: dict) -> pb.GraphInfo:
    return pb.GraphInfo(graph_id=rec["id"], model_id=rec["model_id"], layers=rec["layers"],
                        n_nodes=rec["n_nodes"], n_edges=rec["n_edges"],
                        n_samples=rec["n_samples"] or 0, created_time=rec["created"],
                        summary_json=dumps(rec["summary"]), job_id=rec["job_id"] or "")


def add_nodes_and_edges(response: pb.GetGraphResponse, graph: Any, nodes: bool,
                        edges: bool) -> None:
    """Fill GetGraphResponse's node list and edge arrays from an InteractionGraph."""
    if nodes:
        response.nodes.extend(pb.Node(layer=n.layer, index=int(n.index), is_bias=bool(n.is_bias),
                                      **{"lambda": n.Lambda}) for n in graph.nodes)
    if edges:
        response.src.extend(np.asarray(graph.src, dtype=np.int64).tolist())
        response.dst.extend(np.asarray(graph.dst, dtype=np.int64).tolist())
        response.w.extend(np.asarray(graph.w, dtype=np.float64).tolist())


def search_kwargs(search: pb.ModuleSearch, max_restarts: int,
                  field: str = "search") -> dict[str, Any]:
    """find_modules keyword arguments for the fields that are set (validated; at most
    `max_restarts` restarts)."""
    kw: dict[str, Any] = {}
    if search.HasField("epsilon"):
        check_epsilon(search.epsilon, f"{field}.epsilon")
        kw["epsilon"] = search.epsilon
    if search.objective:
        if search.objective.lower() not in OBJECTIVE_ALIASES:
            raise InvalidArgument(f"{field}.objective", f"must be one of "
                                  f"{sorted(OBJECTIVE_ALIASES)}, got {echo(search.objective)}")
        kw["objective"] = search.objective
    if search.HasField("resolution"):
        if not (math.isfinite(search.resolution) and search.resolution >= 0):
            raise InvalidArgument(f"{field}.resolution", f"must be finite and >= 0, got "
                                                         f"{search.resolution}")
        kw["resolution"] = search.resolution
    if search.HasField("n_modules"):
        if search.n_modules <= 0:
            raise InvalidArgument(f"{field}.n_modules", f"must be positive, got "
                                                        f"{search.n_modules}")
        kw["n_modules"] = search.n_modules
    if search.HasField("n_restarts"):
        if not 1 <= search.n_restarts <= max_restarts:
            raise InvalidArgument(f"{field}.n_restarts", f"must be in 1..{max_restarts} (the "
                                  f"server's limit), got {search.n_restarts}")
        kw["n_restarts"] = search.n_restarts
    if search.HasField("seed"):
        kw["seed"] = search.seed
    if search.HasField("include_bias"):
        kw["include_bias"] = search.include_bias
    return kw


def check_epsilon(value: float, field: str) -> None:
    if not (math.isfinite(value) and 0 < value < 1):
        raise InvalidArgument(field, f"must be a number in (0, 1), got {value}")


def check_membership(membership: list[int], n_nodes: int, field: str,
                     against: str = "the graph has") -> np.ndarray:
    arr = np.asarray(membership, dtype=np.int64)
    if arr.shape != (n_nodes,):
        raise InvalidArgument(field, f"has {arr.size} entries; {against} {n_nodes} nodes")
    if arr.size and arr.min() < -1:
        raise InvalidArgument(field, "module ids must be >= 0 (or -1 for outside)")
    return arr


def partition_to_proto(part: Any) -> pb.Partition:
    return pb.Partition(
        membership=np.asarray(part.membership).tolist(),
        modules=[pb.Module(id=int(m.id), nodes=np.asarray(m.nodes).tolist(), size=int(m.size),
                           sizes_by_layer={str(k): int(v) for k, v in m.sizes_by_layer.items()},
                           internal=float(m.internal), cut=float(m.cut))
                 for m in part.modules],
        cost=float(part.cost), cost_units=float(part.cost_units), quality=float(part.quality),
        inactive=np.asarray(part.inactive, dtype=np.int64).tolist(),
        epsilon=float(part.epsilon), objective=str(part.objective),
        resolution=float(part.resolution), seed=int(part.seed),
        n_modules=int(part.n_modules), partition_json=dumps(part.to_dict()))
