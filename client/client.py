"""`Client`: typed, synchronous access to an intermod server.

Results are the library's own objects (``ia.Partition``, ``ia.InteractionGraph``,
``ia.Score``), so analysis code runs the same against a server or in process.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from intermod import analysis as ia
from intermod.server.convert import spec_to_dict
from intermod.server.model_spec import describe_model
from intermod.v1 import intermod_pb2 as pb
from intermod.v1 import intermod_pb2_grpc as pb_grpc
from torch import nn
from tqdm.auto import tqdm

from .ablation import AblationMixin
from .errors import JobError, RemoteError

CHUNK_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
EXPORT_FORMATS = {"json": pb.EXPORT_FORMAT_JSON, "graphml": pb.EXPORT_FORMAT_GRAPHML,
                  "safetensors": pb.EXPORT_FORMAT_SAFETENSORS, "png": pb.EXPORT_FORMAT_PNG,
                  "svg": pb.EXPORT_FORMAT_SVG, "html": pb.EXPORT_FORMAT_HTML}
JOB_STATES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in pb.JobState.items()}
SOURCES = {v: k.removeprefix("MODEL_SOURCE_").lower() for k, v in pb.ModelSource.items()}
Array = np.ndarray | torch.Tensor


@dataclass
class TensorSet:
    id: str
    name: str
    tensors: dict[str, dict]  # name -> {"shape": [...], "dtype": str}
    total_bytes: int
    sha256: str


@dataclass
class ModelInfo:
    id: str
    name: str
    source: str  # "spec", "operator" or "example"
    layers: list[str]
    has_inputs: bool
    n_parameters: int
    description: str = ""
    spec: dict | None = None


@dataclass
class Job:
    id: str
    state: str  # queued, running, succeeded, failed, cancelled, interrupted
    stage: str
    fraction: float
    elapsed: float
    eta: float
    graph_id: str
    error: str
    model_id: str
    device: str

    @property
    def done(self) -> bool:
        return self.state not in ("queued", "running")


@dataclass
class GraphInfo:
    id: str
    model_id: str
    layers: list[str]
    n_nodes: int
    n_edges: int
    n_samples: int
    created: float
    job_id: str
    summary: dict = field(default_factory=dict)


def _job(msg: pb.Job) -> Job:
    return Job(id=msg.job_id, state=JOB_STATES[msg.state], stage=msg.stage,
               fraction=msg.fraction, elapsed=msg.elapsed_seconds, eta=msg.eta_seconds,
               graph_id=msg.graph_id, error=msg.error, model_id=msg.model_id, device=msg.device)


def _graph_info(msg: pb.GraphInfo) -> GraphInfo:
    return GraphInfo(id=msg.graph_id, model_id=msg.model_id, layers=list(msg.layers),
                     n_nodes=msg.n_nodes, n_edges=msg.n_edges, n_samples=msg.n_samples,
                     created=msg.created_time, job_id=msg.job_id,
                     summary=json.loads(msg.summary_json or "{}"))


def _model_info(msg: pb.ModelInfo) -> ModelInfo:
    spec = spec_to_dict(msg.spec) if msg.HasField("spec") else None
    return ModelInfo(id=msg.model_id, name=msg.name, source=SOURCES[msg.source],
                     layers=list(msg.layers), has_inputs=msg.has_inputs,
                     n_parameters=msg.n_parameters, description=msg.description, spec=spec)


def partition_from_proto(msg: pb.Partition) -> ia.Partition:
    """The library's Partition from a response (exact, via Partition.from_dict)."""
    return ia.Partition.from_dict(json.loads(msg.partition_json))


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _membership(p: Any) -> list[int]:
    return np.asarray(getattr(p, "membership", p), dtype=np.int64).tolist()


def _search(epsilon: float | None = None, objective: str | None = None,
            resolution: float | None = None, n_modules: int | None = None,
            seed: int | None = None, n_restarts: int | None = None,
            include_bias: bool | None = None) -> pb.ModuleSearch:
    given = {"epsilon": epsilon, "objective": objective, "resolution": resolution,
             "n_modules": n_modules, "seed": seed, "n_restarts": n_restarts,
             "include_bias": include_bias}
    kw = {k: v for k, v in given.items() if v is not None}
    return pb.ModuleSearch(**kw)


def graph_options(**options: Any) -> pb.GraphOptions:
    """GraphOptions from the library's keyword names (tol_G, dtype=torch.float32, ...)."""
    msg = pb.GraphOptions()
    for name, value in options.items():
        if value is None:
            continue
        key = {"tol_G": "tol_g", "tol_M": "tol_m"}.get(name, name)
        if key not in msg.DESCRIPTOR.fields_by_name:
            raise TypeError(f"unknown graph option {name!r}")
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        if key == "layout":   # a map: one name per layer (the library also takes one for all)
            if not isinstance(value, Mapping):
                raise TypeError("layout must be a mapping layer -> layout name over the wire")
            msg.layout.update({str(k): str(v) for k, v in value.items()})
            continue
        setattr(msg, key, value)
    return msg


class Client(AblationMixin):
    """Synchronous client of an intermod server.

    address: "host:port". token: the server's bearer token. tls: None (plain), True (system
    roots), a path to a PEM CA certificate, or grpc.ChannelCredentials.
    """

    def __init__(self, address: str, token: str | None = None,
                 tls: bool | str | Path | grpc.ChannelCredentials | None = None,
                 timeout: float | None = None) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if tls:
            if isinstance(tls, grpc.ChannelCredentials):
                creds = tls
            else:
                roots = None if tls is True else Path(tls).read_bytes()
                creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._stub = pb_grpc.IntermodServiceStub(self._channel)
        self.address = address

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    _search = staticmethod(_search)

    # plumbing
    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata,
                                               timeout=timeout or self._timeout)
        except grpc.RpcError as exc:
            raise RemoteError.from_rpc_error(exc) from None

    def _stream(self, method: str, request: Any) -> Iterator[Any]:
        try:
            yield from getattr(self._stub, method)(request, metadata=self._metadata,
                                                   timeout=self._timeout)
        except grpc.RpcError as exc:
            raise RemoteError.from_rpc_error(exc) from None

    def health(self, service: str = "") -> str:
        """Health status of the server ("SERVING" when up)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as exc:
            raise RemoteError.from_rpc_error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # tensors and models
    def upload(self, data: Array | Mapping[str, Array] | str | Path, name: str = "") -> TensorSet:
        """Upload tensors: an array (stored as tensor "data"), a mapping name -> array, or a
        .npy / .safetensors file. Sent in 1 MiB chunks with a SHA-256 checksum."""
        if isinstance(data, (str, Path)):
            path = Path(data)
            raw = path.read_bytes()
            fmt = pb.TENSOR_FORMAT_NPY if path.suffix == ".npy" else pb.TENSOR_FORMAT_SAFETENSORS
            name = name or path.name
        elif isinstance(data, Mapping):
            raw = safetensors.numpy.save({k: np.ascontiguousarray(_numpy(v))
                                          for k, v in data.items()})
            fmt = pb.TENSOR_FORMAT_SAFETENSORS
        else:
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(_numpy(data)), allow_pickle=False)
            raw, fmt = buf.getvalue(), pb.TENSOR_FORMAT_NPY
        header = pb.UploadHeader(name=name, format=fmt, total_bytes=len(raw),
                                 sha256=hashlib.sha256(raw).hexdigest())

        def requests() -> Iterator[pb.UploadTensorsRequest]:
            yield pb.UploadTensorsRequest(header=header)
            for start in range(0, len(raw), CHUNK_BYTES):
                yield pb.UploadTensorsRequest(chunk=raw[start:start + CHUNK_BYTES])

        ts = self._call("UploadTensors", requests()).tensor_set
        return TensorSet(id=ts.tensor_set_id, name=ts.name, total_bytes=ts.total_bytes,
                         sha256=ts.sha256, tensors={t.name: {"shape": list(t.shape),
                                                             "dtype": t.dtype}
                                                    for t in ts.tensors})

    def register_model(self, model: nn.Sequential | Mapping, weights: Any = None,
                       name: str = "") -> ModelInfo:
        """Register an nn.Sequential (converted to spec + safetensors weights), or a spec
        dict plus weights (a mapping of tensors, a .safetensors path or a tensor-set id)."""
        if isinstance(model, nn.Module):
            spec, tensors = describe_model(model)
            weights_id = self.upload(tensors, name=f"{name or 'model'}-weights").id
        else:
            spec = dict(model)
            if weights is None:
                raise ValueError("a spec needs its weights")
            weights_id = (weights if isinstance(weights, str) and not Path(weights).exists()
                          else self.upload(weights).id)
        request = pb.RegisterModelRequest(name=name, weights_tensor_set_id=weights_id,
                                          spec=json_format.ParseDict(spec, pb.ModelSpec()))
        return _model_info(self._call("RegisterModel", request).model)

    def register_hf(self, config: Mapping | str | Path, weights: Any, name: str = "") -> ModelInfo:
        """Register a Hugging Face model: its config.json (a mapping or a path) and its weights
        (a state dict, a .safetensors path or a tensor-set id). The server builds the
        architecture from the config (no remote code) and checks the weights against it."""
        if not isinstance(config, Mapping):
            config = json.loads(Path(config).read_text())
        if isinstance(weights, str) and not Path(weights).exists():
            weights_id = weights
        else:
            weights_id = self.upload(weights, name=f"{name or 'hf'}-weights").id
        request = pb.RegisterModelRequest(name=name, weights_tensor_set_id=weights_id,
                                          hf_config_json=json.dumps(dict(config)))
        return _model_info(self._call("RegisterModel", request).model)

    def models(self) -> list[ModelInfo]:
        return [_model_info(m) for m in self._call("ListModels", pb.ListModelsRequest()).models]

    # jobs
    def _model_id(self, model: str | nn.Module) -> str:
        return model if isinstance(model, str) else self.register_model(model).id

    def _data(self, data: Any) -> str:
        """A tensor-set id: `data` itself when it is one, else the id of its upload."""
        if data is None or isinstance(data, str) and not Path(data).is_file():
            return data or ""
        return self.upload(data).id

    def submit(self, model: str | nn.Module, data: Any = None, layers: Iterable[str] = (),
               data_tensor: str = "", **options: Any) -> str:
        """Queue a graph job; returns its id. model: a model id or an nn.Sequential; data: a
        tensor-set id, an array / mapping / file to upload, or None for the model's own inputs.
        options: the library's basis and edge options (jacobian_target, center, include_bias,
        tol_G, tol_M, scaling, kind, n_probes, edge_method, n_alpha, batch_size, dtype, seed,
        layout = {layer: "channels" | "flatten" | …}, rerotate=True)."""
        request = pb.ComputeGraphRequest(
            model_id=self._model_id(model), data_tensor_set_id=self._data(data),
            data_tensor=data_tensor, layers=list(layers), options=graph_options(**options))
        return self._call("ComputeGraph", request).job_id

    def job(self, job_id: str) -> Job:
        return _job(self._call("GetJob", pb.GetJobRequest(job_id=job_id)).job)

    def cancel(self, job_id: str) -> Job:
        return _job(self._call("CancelJob", pb.CancelJobRequest(job_id=job_id)).job)

    def watch(self, job_id: str, progress: bool = True,
              on_update: Callable[[Job], None] | None = None) -> Job:
        """Follow a job to its end; returns the final Job. With `progress`: a tqdm bar on a
        terminal or in a notebook, else (a log, CI) one plain line per change of state or stage."""
        terminal = sys.stderr.isatty() or "ipykernel" in sys.modules
        bar = tqdm(total=100, unit="%", desc=job_id, disable=not (progress and terminal), leave=False)
        job, shown = None, None
        try:
            for msg in self._stream("WatchJob", pb.WatchJobRequest(job_id=job_id)):
                job = _job(msg.job)
                bar.n = round(job.fraction * 100, 1)
                bar.set_postfix_str(f"{job.state} {job.stage}", refresh=True)
                if progress and not terminal and (job.state, job.stage) != shown:
                    shown = (job.state, job.stage)
                    print(f"{job_id}: {job.state} {job.stage} ({job.fraction:.0%})", file=sys.stderr, flush=True)
                if on_update is not None:
                    on_update(job)
        finally:
            bar.close()
        return job if job is not None else self.job(job_id)

    def compute_graph(self, model: str | nn.Module, data: Any = None,
                      layers: Iterable[str] = (), progress: bool = True,
                      **options: Any) -> str:
        """Submit, watch and return the graph id; JobError when the job ends without one."""
        job = self.watch(self.submit(model, data, layers, **options), progress=progress)
        if job.state != "succeeded":
            raise JobError(job.id, job.state, job.error)
        return job.graph_id

    # graphs
    def graph_info(self, graph_id: str) -> GraphInfo:
        return _graph_info(self._call("GetGraph", pb.GetGraphRequest(graph_id=graph_id)).graph)

    def graphs(self) -> list[GraphInfo]:
        return [_graph_info(g) for g in self._call("ListGraphs", pb.ListGraphsRequest()).graphs]

    def delete_graph(self, graph_id: str) -> None:
        self._call("DeleteGraph", pb.DeleteGraphRequest(graph_id=graph_id))

    def export(self, graph_id: str, format: str = "json", path: str | Path | None = None,
               modules: Mapping[str, Any] | None = None, top_n: int | None = None) -> bytes:
        """Export bytes (json, graphml, safetensors, png, svg, html); also written to `path` when
        given (atomically). `modules`: find_modules arguments to colour a plot by (or the
        modules an HTML report explains)."""
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {sorted(EXPORT_FORMATS)}, got {format!r}")
        request = pb.ExportGraphRequest(graph_id=graph_id, format=EXPORT_FORMATS[format])
        if modules is not None:
            request.modules.CopyFrom(_search(**modules))
        if top_n is not None:
            request.top_n = top_n
        chunks, digest = [], ""
        for msg in self._stream("ExportGraph", request):
            chunks.append(msg.chunk)
            digest = msg.sha256 or digest
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != digest:
            raise RemoteError(grpc.StatusCode.DATA_LOSS, "export checksum mismatch")
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(data)
            tmp.replace(path)
        return data

    def plot(self, graph_id: str, path: str | Path, top_n: int | None = None,
             **search: Any) -> Path:
        """Draw the graph coloured by its modules (find_modules arguments) to .png or .svg."""
        path = Path(path)
        self.export(graph_id, path.suffix.lstrip(".").lower(), path, modules=search,
                    top_n=top_n)
        return path

    def graph(self, graph_id: str) -> ia.InteractionGraph:
        """The whole graph (with its bases C) as the library's InteractionGraph."""
        with _tempdir() as d:
            path = d / "graph.safetensors"
            self.export(graph_id, "safetensors", path)
            return ia.InteractionGraph.load_safetensors(path)

    # partitions
    def find_modules(self, graph_id: str, epsilon: float | None = None,
                     objective: str | None = None, resolution: float | None = None,
                     n_modules: int | None = None, seed: int | None = None,
                     n_restarts: int | None = None,
                     include_bias: bool | None = None) -> ia.Partition:
        """ia.find_modules on the server's cached graph; unset arguments = library defaults."""
        search = _search(epsilon, objective, resolution, n_modules, seed, n_restarts,
                         include_bias)
        msg = self._call("FindModules", pb.FindModulesRequest(graph_id=graph_id, search=search))
        return partition_from_proto(msg.partition)

    def sweep(self, graph_id: str, epsilons: Iterable[float],
              resolutions: Iterable[float] = (), **search: Any) -> Iterator[ia.Partition]:
        """Partitions over the grid epsilons x resolutions, streamed as they are found."""
        request = pb.SweepRequest(graph_id=graph_id, epsilons=list(epsilons),
                                  resolutions=list(resolutions), search=_search(**search))
        for msg in self._stream("Sweep", request):
            yield partition_from_proto(msg.partition)

    def score(self, graph_id: str, membership: Any, epsilon: float) -> ia.Score:
        """ia.partition_cost of a membership array (or Partition) on the server's graph."""
        msg = self._call("ScorePartition", pb.ScorePartitionRequest(
            graph_id=graph_id, membership=_membership(membership), epsilon=epsilon))
        return ia.Score(cost=msg.cost, cost_units=msg.cost_units, n_cut_edges=msg.n_cut_edges)

    def compare(self, a: Any, b: Any) -> ia.Comparison:
        """ARI and NMI between two partitions (membership arrays or Partitions)."""
        msg = self._call("ComparePartitions", pb.ComparePartitionsRequest(
            membership_a=_membership(a), membership_b=_membership(b)))
        return ia.Comparison(ari=msg.ari, nmi=msg.nmi)

    def diagnose(self, model: str | nn.Module, data: Any = None, layers: Iterable[str] = (),
                 epsilon: float = 1e-4, data_tensor: str = "") -> dict:
        """Degeneracy diagnostics (the library's report.to_dict())."""
        msg = self._call("Diagnose", pb.DiagnoseRequest(
            model_id=self._model_id(model), data_tensor_set_id=self._data(data),
            data_tensor=data_tensor, layers=list(layers), epsilon=epsilon))
        return json.loads(msg.report_json)


@contextmanager
def _tempdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="intermod-") as d:
        yield Path(d)
