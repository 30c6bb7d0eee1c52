"""IntermodService: a thin translation of RPCs into intermod.analysis calls, jobs and storage.

Blocking work (parsing uploads, loading models and graphs, module searches, plots) runs in
threads via ``asyncio.to_thread`` so the event loop keeps serving other clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from intermod import analysis as ia
from intermod.v1 import intermod_pb2 as pb
from intermod.v1 import intermod_pb2_grpc as pb_grpc

from . import compute, convert, tensors, uploads
from .config import CHUNK_BYTES, ServerConfig
from .errors import InvalidArgument, NotFound, rpc
from .graphs import GraphStore
from .jobs import JobManager, Progress
from .models import EXAMPLE, OPERATOR, SPEC, ModelEntry, ModelRegistry
from .storage import Store, new_id

EXPORTS = {pb.EXPORT_FORMAT_JSON: "json", pb.EXPORT_FORMAT_GRAPHML: "graphml",
           pb.EXPORT_FORMAT_SAFETENSORS: "safetensors", pb.EXPORT_FORMAT_PNG: "png",
           pb.EXPORT_FORMAT_SVG: "svg", pb.EXPORT_FORMAT_HTML: "html"}
SOURCES = {SPEC: pb.MODEL_SOURCE_SPEC, OPERATOR: pb.MODEL_SOURCE_OPERATOR,
           EXAMPLE: pb.MODEL_SOURCE_EXAMPLE}
MAX_SWEEP_POINTS = 10_000


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
            raise NotFound(f"no tensor set {tensor_set_id!r} ({field})")
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
                                            config, Path(rec["path"]))
        else:
            spec = convert.spec_to_dict(request.spec)
            entry = await asyncio.to_thread(self.models.register_spec,
                                            request.name or "model", spec, Path(rec["path"]))
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
                              layers: list[str]) -> tuple[ModelEntry, Any, Any, list[str]]:
        """Resolve and check model, data and layers of a request. Blocking parts in threads."""
        entry = self.models.get(model_id)
        loaded = await asyncio.to_thread(entry.loaded)
        if tensor_set_id:
            rec = self._tensor_set_record(tensor_set_id, "data_tensor_set_id")
            names = [t["name"] for t in rec["tensors"]]
            if tensor and tensor not in names:
                raise InvalidArgument("data_tensor", f"no tensor {tensor!r} in the set; it "
                                                     f"holds {names}")
            if tensor or len(names) == 1:
                inputs = await asyncio.to_thread(tensors.load_tensor, Path(rec["path"]),
                                                 tensor or names[0])
            else:   # several tensors: keyword arguments (input_ids, attention_mask, ...)
                inputs = await asyncio.to_thread(tensors.load_all, Path(rec["path"]))
        elif loaded.inputs is not None:
            inputs = loaded.inputs
        else:
            raise InvalidArgument("data_tensor_set_id", f"required: model {model_id!r} has no "
                                                        "inputs of its own")
        n = compute.n_samples(inputs)
        if n is not None and n > self.config.max_samples:
            raise InvalidArgument("data_tensor_set_id", f"{n} samples exceed the server's "
                                                        f"limit of {self.config.max_samples}")
        if n == 0:
            raise InvalidArgument("data_tensor_set_id", "the data hold no samples")
        layers = compute.resolve_layers(loaded.model, list(layers) or loaded.layers)
        await asyncio.to_thread(compute.probe, loaded.model, inputs, layers,
                                self.config.max_nodes)
        return entry, loaded.model, inputs, layers

    @rpc
    async def ComputeGraph(self, request: pb.ComputeGraphRequest,
                           context: Any) -> pb.ComputeGraphResponse:
        basis_kw, graph_kw = compute.graph_options(request.options, self.config.max_samples)
        entry, model, inputs, layers = await self._model_and_data(
            request.model_id, request.data_tensor_set_id, request.data_tensor, request.layers)
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
        if request.include_nodes or request.include_edges:
            graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
            if request.include_nodes:
                response.nodes.extend(pb.Node(layer=n.layer, index=int(n.index),
                                              is_bias=bool(n.is_bias), **{"lambda": n.Lambda})
                                      for n in graph.nodes)
            if request.include_edges:
                response.src.extend(np.asarray(graph.src, dtype=np.int64).tolist())
                response.dst.extend(np.asarray(graph.dst, dtype=np.int64).tolist())
                response.w.extend(np.asarray(graph.w, dtype=np.float64).tolist())
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
            kw = convert.search_kwargs(request.modules, "modules")
            graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
            partition = await asyncio.to_thread(ia.find_modules, graph, **kw)
        path, temporary = await asyncio.to_thread(
            self.graphs.export, request.graph_id, fmt, partition,
            request.top_n if request.HasField("top_n") else None)
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
        kw = convert.search_kwargs(request.search)
        graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
        part = await asyncio.to_thread(ia.find_modules, graph, **kw)
        return pb.FindModulesResponse(partition=convert.partition_to_proto(part))

    @rpc
    async def Sweep(self, request: pb.SweepRequest,
                    context: Any) -> AsyncIterator[pb.SweepResponse]:
        if not request.epsilons:
            raise InvalidArgument("epsilons", "required: at least one epsilon")
        for i, eps in enumerate(request.epsilons):
            convert.check_epsilon(eps, f"epsilons[{i}]")
        kw = convert.search_kwargs(request.search)
        kw.pop("epsilon", None)
        if request.resolutions and "n_modules" in kw:
            raise InvalidArgument("resolutions", "give resolutions or search.n_modules, not both")
        for i, res in enumerate(request.resolutions):
            if not (np.isfinite(res) and res >= 0):
                raise InvalidArgument(f"resolutions[{i}]", f"must be finite and >= 0, got {res}")
        base_resolution = kw.pop("resolution", None)
        resolutions = list(request.resolutions) or [base_resolution]
        grid = [(e, r) for e in request.epsilons for r in resolutions]
        if len(grid) > MAX_SWEEP_POINTS:
            raise InvalidArgument("epsilons", f"{len(grid)} grid points exceed "
                                              f"{MAX_SWEEP_POINTS}")
        graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
        for i, (eps, res) in enumerate(grid):
            point = dict(kw, epsilon=eps, **({} if res is None else {"resolution": res}))
            part = await asyncio.to_thread(ia.find_modules, graph, **point)
            yield pb.SweepResponse(index=i, total=len(grid),
                                   partition=convert.partition_to_proto(part))

    @rpc
    async def ScorePartition(self, request: pb.ScorePartitionRequest,
                             context: Any) -> pb.ScorePartitionResponse:
        convert.check_epsilon(request.epsilon, "epsilon")
        rec = self.graphs.record(request.graph_id)
        membership = convert.check_membership(request.membership, rec["n_nodes"], "membership")
        graph = await asyncio.to_thread(self.graphs.get, request.graph_id)
        score = await asyncio.to_thread(ia.partition_cost, graph, membership, request.epsilon)
        return pb.ScorePartitionResponse(cost=float(score.cost),
                                         cost_units=float(score.cost_units),
                                         n_cut_edges=int(score.n_cut_edges))

    @rpc
    async def ComparePartitions(self, request: pb.ComparePartitionsRequest,
                                context: Any) -> pb.ComparePartitionsResponse:
        a = np.asarray(request.membership_a, dtype=np.int64)
        if a.size == 0:
            raise InvalidArgument("membership_a", "required")
        b = convert.check_membership(request.membership_b, a.size, "membership_b",
                                     against="membership_a has")
        result = await asyncio.to_thread(ia.compare_partitions, a, b)
        return pb.ComparePartitionsResponse(ari=float(result["ari"]), nmi=float(result["nmi"]))

    @rpc
    async def Diagnose(self, request: pb.DiagnoseRequest, context: Any) -> pb.DiagnoseResponse:
        convert.check_epsilon(request.epsilon, "epsilon")
        _, model, inputs, layers = await self._model_and_data(
            request.model_id, request.data_tensor_set_id, request.data_tensor, request.layers)
        report = await self.jobs.run_on_device(
            lambda device: ia.diagnose(model, inputs, layers, request.epsilon, device=device,
                                       progress=False))
        return pb.DiagnoseResponse(report_json=convert.dumps(report.to_dict()))

