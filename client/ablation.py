"""Ablation methods of :class:`~intermod.client.client.Client` (the ``Ablate`` job RPC).

Each method queues an ablation job on a graph stored on the server (with the model and data
the graph was computed on, unless ``data`` names others), follows it, and returns the
library's own result object (``ia.AblationCurve``, ``ia.EdgeAblation``, ``ia.ModuleCut``,
``ia.ModuleEffects``, ``ia.AutoModules``), rebuilt exactly from the result JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from intermod import analysis as ia
from intermod.v1 import intermod_pb2 as pb

from .errors import JobError

KINDS = {"curve": pb.ABLATION_KIND_CURVE, "edges": pb.ABLATION_KIND_EDGES, "cut": pb.ABLATION_KIND_CUT,
         "effects": pb.ABLATION_KIND_EFFECTS, "auto": pb.ABLATION_KIND_AUTO}
RESULTS = {"curve": ia.AblationCurve, "edges": ia.EdgeAblation, "cut": ia.ModuleCut,
           "effects": ia.ModuleEffects, "auto": ia.AutoModules}
_SCALARS = ("loss", "layer", "schedule", "epsilon", "keep", "n_baseline", "group", "tolerance",
            "max_modules", "seed", "batch_size", "data_tensor")


class AblationMixin:
    """Ablate on the server; needs the client's ``_call``, ``_data``, ``watch`` and ``_search``."""

    def submit_ablation(self, graph_id: str, kind: str, *, data: Any = None,
                        partition: Any = None, search: dict[str, Any] | None = None,
                        schedule: str | Iterable[int] | None = None,
                        resolutions: Iterable[float] = (), **fields: Any) -> str:
        """Queue an ablation job (kind: curve, edges, cut, effects, auto); returns its id.
        ``partition``: a membership / Partition (cut, effects), or ``search``: find_modules
        arguments used on the server. Other fields: see AblateRequest in the proto."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        unknown = set(fields) - set(_SCALARS)
        if unknown:
            raise TypeError(f"unknown ablation fields {sorted(unknown)}; known: {sorted(_SCALARS)}")
        req = pb.AblateRequest(graph_id=graph_id, kind=KINDS[kind], data_tensor_set_id=self._data(data),
                               resolutions=list(resolutions))
        for name, value in fields.items():
            if value is not None:
                setattr(req, name, value)
        if isinstance(schedule, str):
            req.schedule = schedule
        elif schedule is not None:
            req.schedule_points.extend(int(m) for m in schedule)
        if partition is not None:
            req.membership.extend(np.asarray(getattr(partition, "membership", partition), dtype=np.int64).tolist())
        if search is not None:
            req.search.CopyFrom(self._search(**search))
        return self._call("Ablate", req).job_id

    def ablation_result(self, job_id: str) -> Any:
        """The library result object of a finished ablation job."""
        msg = self._call("GetAblation", pb.GetAblationRequest(job_id=job_id))
        kind = {v: k for k, v in KINDS.items()}[msg.kind]
        return RESULTS[kind].from_dict(json.loads(msg.result_json))

    def ablate(self, graph_id: str, kind: str, progress: bool = True, **fields: Any) -> Any:
        """Submit, watch and return the result; JobError when the job does not succeed."""
        job = self.watch(self.submit_ablation(graph_id, kind, **fields), progress=progress)
        if job.state != "succeeded":
            raise JobError(job.id, job.state, job.error)
        return self.ablation_result(job.id)

    def ablation_curve(self, graph_id: str, layer: str, **fields: Any) -> ia.AblationCurve:
        return self.ablate(graph_id, "curve", layer=layer, **fields)

    def edge_ablation(self, graph_id: str, **fields: Any) -> ia.EdgeAblation:
        return self.ablate(graph_id, "edges", **fields)

    def module_cut(self, graph_id: str, partition: Any = None, **fields: Any) -> ia.ModuleCut:
        return self.ablate(graph_id, "cut", partition=partition, **fields)

    def module_effects(self, graph_id: str, partition: Any = None, **fields: Any) -> ia.ModuleEffects:
        return self.ablate(graph_id, "effects", partition=partition, **fields)

    def modules_from_ablation(self, graph_id: str, **fields: Any) -> ia.AutoModules:
        return self.ablate(graph_id, "auto", **fields)
