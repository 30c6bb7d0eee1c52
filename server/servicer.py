"""IntermodService: a thin translation of RPCs into intermod.analysis calls, jobs and storage.

Blocking work (parsing uploads, loading models and graphs, module searches, plots) runs in
threads via ``asyncio.to_thread`` so the event loop keeps serving other clients; work that can
run long goes through :func:`.calls.run_blocking`, which stops it when the client cancels the
call or its deadline passes. Every request is checked against ``ServerConfig``'s limits before
anything is built: sizes of repeated fields first, then values. The servicer is registered by
:func:`.handlers.service_handler`, from the service descriptor.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from intermod import analysis as ia
from intermod.v1 import intermod_pb2 as pb
from intermod.v1 import intermod_pb2_grpc as pb_grpc

from . import ablate, compute, convert, tensors, uploads
from .calls import run_blocking
from .config import CHUNK_BYTES, ServerConfig
from .errors import FailedPrecondition, InvalidArgument, NotFound, echo, rpc
from .graphs import GraphStore
from .jobs import JobManager, Progress
from .models import EXAMPLE, OPERATOR, SPEC, ModelEntry, ModelRegistry
from .storage import Store, new_id

EXPORTS = {pb.EXPORT_FORMAT_JSON: "json", pb.EXPORT_FORMAT_GRAPHML: "graphml",
           pb.EXPORT_FORMAT_SAFETENSORS: "safetensors", pb.EXPORT_FORMAT_PNG: "png",
           pb.EXPORT_FORMAT_SVG: "svg", pb.EXPORT_FORMAT_HTML: "html"}
SOURCES = {SPEC: pb.MODEL_SOURCE_SPEC, OPERATOR: pb.MODEL_SOURCE_OPERATOR,
           EXAMPLE: pb.MODEL_SOURCE_EXAMPLE}


def check_size(values: Sized, limit: int, field: str, what: str = "entries") -> None:
    """InvalidArgument(field) when a repeated field holds more than `limit` values."""
    if len(values) > limit:
        raise InvalidArgument(field, f"{len(values)} {what} exceed the server's limit of {limit}")


@contextmanager
def library_errors(field: str, named: dict[str, str] | None = None) -> Iterator[None]:
    """The library's ValueError (a request it refuses) as InvalidArgument: the field of the
    first key of `named` that its message mentions, else `field`."""
    try:
        yield
    except ValueError as exc:
        name = next((f for key, f in (named or {}).items() if key in str(exc)), field)
        raise InvalidArgument(name, str(exc)) from None


class IntermodServicer(pb_grpc.IntermodServiceServicer):
    """Implements intermod.v1.IntermodService."""

    def __init__(self, config: ServerConfig, store: Store, models: ModelRegistry,
                 jobs: JobManager, graphs: GraphStore) -> None:
        self.config = config
        self.store = store
        self.models = models
        self.jobs = jobs
        self.graphs = graphs

    # uploads and models
    @rpc
    async def UploadTensors(self, request_iterator: AsyncIterator[pb.UploadTensorsRequest],
                            context: Any) -> pb.UploadTensorsResponse:
        rec = await uploads.receive_upload(request_iterator, self.store,
                                           self.config.max_upload_bytes)
        return pb.UploadTensorsResponse(tensor_set=self._tensor_set(rec))

    @staticmethod
    def _tensor_set(rec: dict) -> pb.TensorSet:
        return pb.TensorSet(tensor_set_id=rec["id"], name=rec["name"],
                            total_bytes=rec["total_bytes"], sha256=rec["sha256"],
                            tensors=[pb.TensorInfo(**t) for t in rec["tensors"]])

    def _tensor_set_record(self, tensor_set_id: str, field: str) -> dict:
        rec = self.store.tensor_set(tensor_set_id) if tensor_set_id else None
        if rec is None:
            if not tensor_set_id:
                raise InvalidArgument(field, "required")
            raise NotFound(f"no tensor set {echo(tensor_set_id)} ({field})")
        return rec

    @rpc
    async def RegisterModel(self, request: pb.RegisterModelRequest,
                            context: Any) -> pb.RegisterModelResponse:
        rec = self._tensor_set_record(request.weights_tensor_set_id, "weights_tensor_set_id")
        if request.hf_config_json:
            if request.spec.layers:
                raise InvalidArgument("spec", "give either a spec or an hf_config_json, not both")
            try:
                config = json.loads(request.hf_config_json)
            except json.JSONDecodeError as exc:
                raise InvalidArgument("hf_config_json", f"not JSON: {exc}") from None
            if not isinstance(config, dict):
                raise InvalidArgument("hf_config_json", "must be a JSON object")
            entry = await asyncio.to_thread(self.models.register_hf, request.name or "model",
                                            config, rec, self.config.max_parameters)
        else:
            check_size(request.spec.layers, self.config.max_layers, "spec.layers", "layers")
            spec = convert.spec_to_dict(request.spec)
            entry = await asyncio.to_thread(self.models.register_spec, request.name or "model",
                                            spec, rec, self.config.max_parameters)
        return pb.RegisterModelResponse(model=self._model_info(entry))

    @rpc
    async def ListModels(self, request: pb.ListModelsRequest,
                         context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._model_info(e) for e in self.models.list()])

    @staticmethod
    def _model_info(entry: ModelEntry) -> pb.ModelInfo:
        cached = entry.cached
        info = pb.ModelInfo(model_id=entry.id, name=entry.name, source=SOURCES[entry.source],
                            n_parameters=entry.n_parameters, description=entry.description,
                            layers=cached.layers if cached else [],
                            has_inputs=bool(cached and cached.inputs is not None))
        if entry.spec is not None:
            info.spec.CopyFrom(convert.spec_from_dict(entry.spec))
        return info

    # jobs
    async def _model_and_data(self, model_id: str, tensor_set_id: str, tensor: str,
                              layers: list[str], layout: dict[str, str] | None = None
                              ) -> tuple[ModelEntry, Any, Any, list[str]]:
        """Resolve and check model, data, layers (and their layouts) of a request. Blocking
        parts in threads."""
        check_size(layers, self.config.max_layers, "layers", "node layers")
        entry = self.models.get(model_id)
        loaded = await asyncio.to_thread(entry.loaded)
        if tensor_set_id:
            rec = self._tensor_set_record(tensor_set_id, "data_tensor_set_id")
            names = [t["name"] for t in rec["tensors"]]
            if tensor and tensor not in names:
                raise InvalidArgument("data_tensor", f"no tensor {echo(tensor)} in the set; it "
                                                     f"holds {names[:20]}")
            if tensor or len(names) == 1:
                inputs = await asyncio.to_thread(tensors.load_tensor, Path(rec["path"]),
                                                 tensor or names[0])
            else:   # several tensors: keyword arguments (input_ids, attention_mask, ...)
                inputs = await asyncio.to_thread(tensors.load_all, Path(rec["path"]))
        elif loaded.inputs is not None:
            inputs = loaded.inputs
        else:
            raise InvalidArgument("data_tensor_set_id", f"required: model {echo(model_id)} has "
                                                        "no inputs of its own")
        n = compute.n_samples(inputs)
        if n is not None and n > self.config.max_samples:
            raise InvalidArgument("data_tensor_set_id", f"{n} samples exceed the server's "
                                                        f"limit of {self.config.max_samples}")
        if n == 0:
            raise InvalidArgument("data_tensor_set_id", "the data hold no samples")
        layers = compute.resolve_layers(loaded.model, list(layers) or loaded.layers,
                                        self.config.max_layers)
        await asyncio.to_thread(compute.probe, loaded.model, inputs, layers,
                                self.config.max_nodes, layout=layout)
        return entry, loaded.model, inputs, layers

    @rpc
    async def ComputeGraph(self, request: pb.ComputeGraphRequest,
                           context: Any) -> pb.ComputeGraphResponse:
        basis_kw, graph_kw = compute.graph_options(request.options, self.config)
        entry, model, inputs, layers = await self._model_and_data(
            request.model_id, request.data_tensor_set_id, request.data_tensor, request.layers,
            basis_kw.get("layout"))
        job_id = new_id("j")

        def work(device: str, progress: Progress) -> str:
            graph = compute.compute_graph(model, inputs, layers, basis_kw, graph_kw, device,
                                          progress)
            return self.graphs.save(graph, job_id, entry.id)

        self.jobs.submit(job_id, entry.id, json_format.MessageToJson(request), work)
        return pb.ComputeGraphResponse(job_id=job_id)

    @rpc
    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: Any) -> AsyncIterator[pb.WatchJobResponse]:
        async for status in self.jobs.watch(request.job_id):
            yield pb.WatchJobResponse(job=convert.job_to_proto(status))

    @rpc
    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=convert.job_to_proto(self.jobs.cancel(request.job_id)))

    @rpc
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=convert.job_to_proto(self.jobs.get(request.job_id)))

    # graphs
    @rpc
    async def GetGraph(self, request: pb.GetGraphRequest, context: Any) -> pb.GetGraphResponse:
        rec = self.graphs.record(request.graph_id)
        response = pb.GetGraphResponse(graph=convert.graph_info(rec))
        if request.include_nodes or request.include_edges:   # large: built off the event loop
            graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
            await asyncio.to_thread(convert.add_nodes_and_edges, response, graph,
                                    request.include_nodes, request.include_edges)
        return response

    @rpc
    async def ExportGraph(self, request: pb.ExportGraphRequest,
                          context: Any) -> AsyncIterator[pb.ExportGraphResponse]:
        fmt = EXPORTS.get(request.format)
        if fmt is None:
            raise InvalidArgument("format", f"must be one of {sorted(EXPORTS.values())}")
        if request.HasField("top_n") and fmt not in ("png", "svg"):
            raise InvalidArgument("top_n", "only PNG and SVG exports take top_n")
        if request.HasField("top_n") and request.top_n <= 0:
            raise InvalidArgument("top_n", f"must be positive, got {request.top_n}")
        partition = None
        if request.HasField("modules"):
            if fmt not in ("png", "svg", "html"):
                raise InvalidArgument("modules", "only PNG, SVG and HTML exports draw modules")
            partition = await self._find_modules(context, request.graph_id, request.modules,
                                                 "modules")
        top_n = request.top_n if request.HasField("top_n") else None
        path, temporary = await run_blocking(
            context, lambda check: self.graphs.export(request.graph_id, fmt, partition, top_n))
        try:
            data = await asyncio.to_thread(path.read_bytes)
        finally:
            if temporary:
                path.unlink(missing_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        starts = range(0, max(len(data), 1), CHUNK_BYTES)
        for i, start in enumerate(starts):
            yield pb.ExportGraphResponse(
                chunk=data[start:start + CHUNK_BYTES],
                total_bytes=len(data) if i == 0 else 0,
                sha256=digest if i == len(starts) - 1 else "")

    @rpc
    async def ListGraphs(self, request: pb.ListGraphsRequest,
                         context: Any) -> pb.ListGraphsResponse:
        return pb.ListGraphsResponse(graphs=[convert.graph_info(r) for r in self.store.graphs()])

    @rpc
    async def DeleteGraph(self, request: pb.DeleteGraphRequest,
                          context: Any) -> pb.DeleteGraphResponse:
        self.graphs.delete(request.graph_id)
        return pb.DeleteGraphResponse()

    # partitions
    @rpc
    async def FindModules(self, request: pb.FindModulesRequest,
                          context: Any) -> pb.FindModulesResponse:
        part = await self._find_modules(context, request.graph_id, request.search)
        return pb.FindModulesResponse(partition=convert.partition_to_proto(part))

    async def _find_modules(self, context: Any, graph_id: str, search: pb.ModuleSearch,
                            field: str = "search", **point: Any) -> ia.Partition:
        """find_modules on a stored graph, stopped when the call is cancelled."""
        kw = convert.search_kwargs(search, self.config.max_n_restarts, field) | point
        self.graphs.record(graph_id)
        graph = await asyncio.to_thread(self.graphs.get, graph_id)
        with library_errors(field, {k: f"{field}.{k}" for k in ("n_modules", "epsilon",
                                                                 "resolution")}):
            return await run_blocking(
                context, lambda check: ia.find_modules(graph, **kw, callback=check))

    @rpc
    async def Sweep(self, request: pb.SweepRequest,
                    context: Any) -> AsyncIterator[pb.SweepResponse]:
        n_points = len(request.epsilons) * max(1, len(request.resolutions))
        if n_points > self.config.max_sweep_points:   # before anything is built
            raise InvalidArgument("epsilons", f"{len(request.epsilons)} epsilons x "
                                  f"{len(request.resolutions)} resolutions = {n_points} points "
                                  f"exceed the server's limit of {self.config.max_sweep_points}")
        if not request.epsilons:
            raise InvalidArgument("epsilons", "required: at least one epsilon")
        for i, eps in enumerate(request.epsilons):
            convert.check_epsilon(eps, f"epsilons[{i}]")
        for i, res in enumerate(request.resolutions):
            if not (np.isfinite(res) and res >= 0):
                raise InvalidArgument(f"resolutions[{i}]", f"must be finite and >= 0, got {res}")
        if request.resolutions and request.search.HasField("n_modules"):
            raise InvalidArgument("resolutions", "give resolutions or search.n_modules, not both")
        search = pb.ModuleSearch()
        search.CopyFrom(request.search)
        search.ClearField("epsilon")
        resolutions = list(request.resolutions) or [None]
        for i in range(n_points):   # the grid, point by point, never materialised
            eps, res = request.epsilons[i // len(resolutions)], resolutions[i % len(resolutions)]
            point = {"epsilon": eps} | ({} if res is None else {"resolution": res})
            part = await self._find_modules(context, request.graph_id, search, **point)
            yield pb.SweepResponse(index=i, total=n_points,
                                   partition=convert.partition_to_proto(part))

    @rpc
    async def ScorePartition(self, request: pb.ScorePartitionRequest,
                             context: Any) -> pb.ScorePartitionResponse:
        convert.check_epsilon(request.epsilon, "epsilon")
        rec = self.graphs.record(request.graph_id)
        check_size(request.membership, rec["n_nodes"], "membership", "entries (one per node)")
        membership = convert.check_membership(request.membership, rec["n_nodes"], "membership")
        graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
        score = await asyncio.to_thread(ia.partition_cost, graph, membership, request.epsilon)
        return pb.ScorePartitionResponse(cost=float(score.cost),
                                         cost_units=float(score.cost_units),
                                         n_cut_edges=int(score.n_cut_edges))

    @rpc
    async def ComparePartitions(self, request: pb.ComparePartitionsRequest,
                                context: Any) -> pb.ComparePartitionsResponse:
        for name in ("membership_a", "membership_b"):
            check_size(getattr(request, name), self.config.max_nodes, name, "entries (nodes)")
        if not request.membership_a:
            raise InvalidArgument("membership_a", "required")
        a = convert.check_membership(request.membership_a, len(request.membership_a),
                                     "membership_a")
        b = convert.check_membership(request.membership_b, a.size, "membership_b",
                                     against="membership_a has")
        with library_errors("membership_b"):
            result = await asyncio.to_thread(ia.compare_partitions, a, b)
        return pb.ComparePartitionsResponse(ari=float(result["ari"]), nmi=float(result["nmi"]))

    @rpc
    async def Diagnose(self, request: pb.DiagnoseRequest, context: Any) -> pb.DiagnoseResponse:
        convert.check_epsilon(request.epsilon, "epsilon")
        _, model, inputs, layers = await self._model_and_data(
            request.model_id, request.data_tensor_set_id, request.data_tensor, request.layers)
        with library_errors("data_tensor_set_id", {"layers": "layers"}):
            report = await run_blocking(
                context, lambda check, device: ia.diagnose(
                    model, inputs, layers, request.epsilon, device=device, progress=False,
                    callback=check), runner=self.jobs.run_on_device)
        return pb.DiagnoseResponse(report_json=convert.dumps(report.to_dict()))


    # ablations
    @rpc
    async def Ablate(self, request: pb.AblateRequest, context: Any) -> pb.AblateResponse:
        rec = self.graphs.record(request.graph_id)
        graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
        kind, kw = ablate.request_kwargs(request, graph, self.config)
        if kind == "curve":
            kw["layer"] = request.layer
        partition = (await asyncio.to_thread(ablate.partition_of, request, graph, self.config.max_n_restarts)
                     if kind in ("cut", "effects") else None)
        if request.data_tensor_set_id:
            model_id, data_id, tensor = rec["model_id"], request.data_tensor_set_id, request.data_tensor
        else:
            model_id, data_id, tensor = ablate.graph_source(self.store, rec)
        entry, model, inputs, _ = await self._model_and_data(
            model_id, data_id, tensor, list(graph.layers), graph.metadata.get("layout"))
        job_id = new_id("j")

        def work(device: str, progress: Progress) -> str:
            result = ablate.run(kind, model, inputs, graph, kw, partition, device, progress)
            ablate.save(self.store, job_id, kind, result)
            return request.graph_id

        self.jobs.submit(job_id, entry.id, json_format.MessageToJson(request), work)
        return pb.AblateResponse(job_id=job_id)

    @rpc
    async def GetAblation(self, request: pb.GetAblationRequest, context: Any) -> pb.GetAblationResponse:
        status = self.jobs.get(request.job_id)
        if status.state != "succeeded":
            raise FailedPrecondition(f"job {request.job_id!r} is {status.state}"
                                     + (f": {status.error}" if status.error else "")
                                     + "; wait for it with WatchJob")
        kind, result = await asyncio.to_thread(ablate.load, self.store, request.job_id)
        return ablate.to_proto(kind, result, convert.job_to_proto(status))
