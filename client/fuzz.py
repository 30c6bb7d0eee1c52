"""Fuzzing an intermod server: random, raw-byte and abusive requests on every RPC.

The RPCs come from the service descriptor, so an RPC added to the .proto is fuzzed without
a change here. A request is either a random message built from its descriptor (field values
drawn from edge cases and from ids that exist on the server, so calls get past the id checks
into the real work), raw random bytes, or one of the named :data:`ABUSES` (oversized grids,
unbounded counts, huge layers and configs, long ids). Every answer must be a deliberate
status: UNKNOWN or INTERNAL count as failures. During the run a health check is timed every
``health_every`` requests (the event loop must stay responsive).

``python -m intermod.client.fuzz --requests 10000`` starts a server (or uses ``--address``),
runs, prints the codes per RPC, the failure count, p95 health latency and the server's RSS,
and exits 1 on any failure (this is ``make fuzz``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from intermod.v1 import intermod_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["IntermodService"]
#: Codes that mean the server did not handle a request on purpose.
FAILURES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
F = FieldDescriptor
_INTS = (0, 1, 2, 3, -1, 7, 64, 1000, 2**31 - 1, -2**31, 2**31, 2**62, -2**63)
_FLOATS = (0.0, 1e-3, 0.5, 1.0, -1.0, 0.05, 1e-12, 1e300, -1e300, math.nan, math.inf,
           -math.inf, 5e-324)
_STRINGS = ("", "0", "2", "output", "cpm", "modularity", "integrated", "float32", "linear",
            "relu", "layernorm", "{}", "[]", "null", "\x00", "é" * 3, "../etc/passwd")


@dataclass
class Ids:
    """Ids that exist on the server, offered to string fields by name, and valid requests
    (``templates``, by RPC name) that the fuzzer mutates to reach past the first checks."""

    graphs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    tensor_sets: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=lambda: ["0", "1", "2", "output"])
    templates: dict[str, list[Any]] = field(default_factory=dict)

    def for_field(self, name: str) -> list[str]:
        for key, pool in (("graph", self.graphs), ("model", self.models), ("job", self.jobs),
                          ("tensor_set", self.tensor_sets), ("layer", self.layers)):
            if key in name:
                return pool
        return []


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


class MessageFuzzer:
    """Random messages of a descriptor: edge-case values, known ids, bounded sizes."""

    def __init__(self, rng: random.Random, ids: Ids, max_repeated: int = 6) -> None:
        self.rng, self.ids, self.max_repeated = rng, ids, max_repeated

    def message(self, descriptor: Descriptor, depth: int = 0) -> Any:
        msg = message_factory.GetMessageClass(descriptor)()
        for fd in descriptor.fields:
            if self.rng.random() < 0.35:
                continue   # unset
            if _is_map(fd):
                self.fill_map(getattr(msg, fd.name), fd)
                continue
            if fd.is_repeated:
                n = self.rng.choice((0, 1, 2, 3, self.rng.randint(0, self.max_repeated)))
                target = getattr(msg, fd.name)
                for _ in range(n):
                    if fd.type == F.TYPE_MESSAGE:
                        if depth < 3:
                            target.add().CopyFrom(self.message(fd.message_type, depth + 1))
                    else:
                        target.append(self.scalar(fd))
            elif fd.type == F.TYPE_MESSAGE:
                if depth < 3:
                    getattr(msg, fd.name).CopyFrom(self.message(fd.message_type, depth + 1))
            else:
                setattr(msg, fd.name, self.scalar(fd))
        return msg

    def mutate(self, msg: Any, n: int) -> Any:
        """A copy of `msg` with `n` random fields (top level or one level down) redrawn."""
        out = type(msg)()
        out.CopyFrom(msg)
        for _ in range(n):
            target = out
            fd = self.rng.choice(target.DESCRIPTOR.fields)
            if fd.type == F.TYPE_MESSAGE and not fd.is_repeated and self.rng.random() < 0.6:
                target = getattr(target, fd.name)
                fd = self.rng.choice(target.DESCRIPTOR.fields)
            target.ClearField(fd.name)
            if _is_map(fd):
                self.fill_map(getattr(target, fd.name), fd)
            elif fd.is_repeated:
                values = getattr(target, fd.name)
                for _ in range(self.rng.randint(0, self.max_repeated)):
                    if fd.type == F.TYPE_MESSAGE:
                        values.add().CopyFrom(self.message(fd.message_type, 2))
                    else:
                        values.append(self.scalar(fd))
            elif fd.type == F.TYPE_MESSAGE:
                getattr(target, fd.name).CopyFrom(self.message(fd.message_type, 1))
            elif self.rng.random() < 0.8:
                setattr(target, fd.name, self.scalar(fd))
        return out

    def fill_map(self, target: Any, fd: FieldDescriptor) -> None:
        """A few entries of a scalar map (e.g. layout: layer -> name): keys often known layers,
        values often valid layout names, the rest edge cases."""
        key_fd, value_fd = (fd.message_type.fields_by_name[k] for k in ("key", "value"))
        if value_fd.type == F.TYPE_MESSAGE:
            return
        for _ in range(self.rng.choice((0, 1, 2, self.rng.randint(0, self.max_repeated)))):
            key = (self.rng.choice(self.ids.layers) if self.ids.layers and key_fd.type == F.TYPE_STRING
                   and self.rng.random() < 0.6 else self.scalar(key_fd))
            value = (self.rng.choice(("features", "tokens", "channels", "flatten"))
                     if value_fd.type == F.TYPE_STRING and self.rng.random() < 0.5 else self.scalar(value_fd))
            target[key] = value

    def scalar(self, fd: FieldDescriptor) -> Any:
        rng = self.rng
        if fd.type == F.TYPE_STRING:
            known = self.ids.for_field(fd.name)
            if known and rng.random() < 0.7:
                return rng.choice(known)
            choice = rng.random()
            if choice < 0.05:
                return "A" * rng.choice((300, 10_000))
            if choice < 0.3:
                return "".join(rng.choice("abcdefghij_0123456789.") for _ in range(rng.randint(1, 20)))
            return rng.choice(_STRINGS)
        if fd.type == F.TYPE_BYTES:
            return rng.randbytes(rng.randint(0, 64))
        if fd.type == F.TYPE_BOOL:
            return rng.random() < 0.5
        if fd.type == F.TYPE_ENUM:
            values = [v.number for v in fd.enum_type.values]
            return rng.choice(values + [99])
        if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            value = rng.choice(_FLOATS + (rng.uniform(-2, 2),))
            return value if fd.type == F.TYPE_DOUBLE or not abs(value) > 3e38 or math.isinf(value) else 1.0
        bits = 32 if fd.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32, F.TYPE_UINT32,
                                 F.TYPE_FIXED32) else 64
        unsigned = fd.type in (F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_FIXED32, F.TYPE_FIXED64)
        lo, hi = (0, 2**bits - 1) if unsigned else (-2**(bits - 1), 2**(bits - 1) - 1)
        value = rng.choice(_INTS + (rng.randint(-5, 50),))
        return min(max(value, lo), hi)


def _bytes_stream(items: list[bytes]) -> Iterator[bytes]:
    yield from items


def _abuses(ids: Ids) -> dict[str, tuple[str, Any]]:
    """Named abusive requests: (RPC name, request) — what a careless or hostile client sends."""
    g = ids.graphs[0] if ids.graphs else "g_missing"
    m = ids.models[0] if ids.models else "m_missing"
    t = ids.tensor_sets[0] if ids.tensor_sets else "t_missing"
    big_bert = json.dumps({"model_type": "bert", "hidden_size": 1024, "num_hidden_layers": 24,
                           "num_attention_heads": 16, "intermediate_size": 4096,
                           "vocab_size": 30522})
    return {
        "sweep 3000x3000": ("Sweep", pb.SweepRequest(graph_id=g, epsilons=[1e-3] * 3000,
                                                     resolutions=[0.1] * 3000)),
        "n_alpha 6000": ("ComputeGraph", pb.ComputeGraphRequest(
            model_id=m, data_tensor_set_id=t, options=pb.GraphOptions(
                edge_method="integrated", n_alpha=6000))),
        "n_probes 10000": ("ComputeGraph", pb.ComputeGraphRequest(
            model_id=m, data_tensor_set_id=t, options=pb.GraphOptions(n_probes=10000))),
        "batch_size 2^40": ("ComputeGraph", pb.ComputeGraphRequest(
            model_id=m, data_tensor_set_id=t, options=pb.GraphOptions(batch_size=2**40))),
        "n_restarts 1000": ("FindModules", pb.FindModulesRequest(
            graph_id=g, search=pb.ModuleSearch(n_restarts=1000))),
        "n_modules 10^6": ("FindModules", pb.FindModulesRequest(
            graph_id=g, search=pb.ModuleSearch(n_modules=10**6))),
        "linear 2^31 x 2^31": ("RegisterModel", pb.RegisterModelRequest(
            weights_tensor_set_id=t, spec=pb.ModelSpec(layers=[pb.LayerSpec(
                type="linear", in_features=2**31, out_features=2**31)]))),
        "layernorm 2^62": ("RegisterModel", pb.RegisterModelRequest(
            weights_tensor_set_id=t, spec=pb.ModelSpec(layers=[pb.LayerSpec(
                type="layernorm", in_features=2**62)]))),
        "bert-large config, tiny weights": ("RegisterModel", pb.RegisterModelRequest(
            weights_tensor_set_id=t, hf_config_json=big_bert)),
        "hf config 10^6 layers": ("RegisterModel", pb.RegisterModelRequest(
            weights_tensor_set_id=t, hf_config_json=json.dumps(
                {"model_type": "bert", "num_hidden_layers": 10**6}))),
        "job id 10^4 chars": ("GetJob", pb.GetJobRequest(job_id="j_" + "A" * 10_000)),
        "graph id 10^4 chars": ("GetGraph", pb.GetGraphRequest(graph_id="g_" + "A" * 10_000)),
        "compare one labelled": ("ComparePartitions", pb.ComparePartitionsRequest(
            membership_a=[0, -1, -1], membership_b=[0, 0, 0])),
        "membership 10^6": ("ScorePartition", pb.ScorePartitionRequest(
            graph_id=g, membership=[0] * 10**6, epsilon=1e-3)),
        "layers 10^4": ("ComputeGraph", pb.ComputeGraphRequest(
            model_id=m, data_tensor_set_id=t, layers=["0"] * 10_000)),
    }


@dataclass
class FuzzReport:
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    n_requests: int = 0
    seconds: float = 0.0

    @property
    def p95_health_ms(self) -> float:
        return float(np.percentile(self.health_ms, 95)) if self.health_ms else 0.0

    def table(self) -> str:
        names = sorted({c for counts in self.codes.values() for c in counts})
        rows = [f"{'rpc':<18}" + "".join(f"{n:>19}" for n in names)]
        for rpc in sorted(self.codes):
            rows.append(f"{rpc:<18}" + "".join(f"{self.codes[rpc].get(n, 0):>19}" for n in names))
        return "\n".join(rows)


class Fuzzer:
    """Sends requests to one server and records every status code per RPC."""

    def __init__(self, channel: grpc.Channel, ids: Ids, seed: int = 0, timeout: float = 10.0,
                 metadata: tuple = ()) -> None:
        self.channel, self.ids, self.timeout, self.metadata = channel, ids, timeout, metadata
        self.rng = random.Random(seed)
        self.messages = MessageFuzzer(self.rng, ids)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.report = FuzzReport()

    def _callable(self, method: MethodDescriptor) -> Callable:
        path = f"/{SERVICE.full_name}/{method.name}"
        kind = {(False, False): self.channel.unary_unary, (False, True): self.channel.unary_stream,
                (True, False): self.channel.stream_unary,
                (True, True): self.channel.stream_stream}[(method.client_streaming, method.server_streaming)]
        return kind(path, request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
                    response_deserializer=lambda b: b)

    def call(self, method: MethodDescriptor, request: Any) -> grpc.StatusCode:
        """One call (a stream is read to its end, at most 50 messages); its status code."""
        fn = self._callable(method)
        if method.client_streaming:
            items = request if isinstance(request, list) else [request]
            request = _bytes_stream(items)
        try:
            result = fn(request, timeout=self.timeout, metadata=self.metadata)
            if method.server_streaming:
                for i, _ in enumerate(result):
                    if i >= 50:
                        result.cancel()
                        break
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details() or ""
            if code in FAILURES or code is None:
                self.report.failures.append(f"{method.name}: {code}: {detail[:300]}")
        self.report.codes[method.name][code.name if code else "NONE"] += 1
        self.report.n_requests += 1
        return code

    def random_request(self, method: MethodDescriptor) -> Any:
        """Raw bytes (20%), a mutated valid request (40%, when the RPC has templates) or a
        random message."""
        r = self.rng.random()
        if r < 0.2:   # raw bytes: mostly undecodable, sometimes a valid prefix
            return self.rng.randbytes(self.rng.randint(1, 64))
        templates = self.ids.templates.get(method.name)
        if templates and r < 0.6:
            template = self.rng.choice(templates)
            if isinstance(template, list):   # a stream: mutate one of its messages
                i = self.rng.randrange(len(template))
                return template[:i] + [self.messages.mutate(template[i], 1)] + template[i + 1:]
            msg = self.messages.mutate(template, self.rng.randint(0, 2))
        else:
            msg = self.messages.message(method.input_type)
        if method.name.startswith("Delete"):   # keep the seeded objects for the other RPCs
            for fd in method.input_type.fields:
                if fd.type == F.TYPE_STRING and getattr(msg, fd.name) in self.ids.for_field(fd.name):
                    setattr(msg, fd.name, f"{getattr(msg, fd.name)}_gone")
        if method.client_streaming:
            n = self.rng.randint(0, 4)
            return [msg] + [self.messages.message(method.input_type) for _ in range(n)]
        return msg

    def time_health(self) -> None:
        start = time.perf_counter()
        self.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        self.report.health_ms.append(1000 * (time.perf_counter() - start))

    def run(self, n_requests: int, abuses: bool = True, health_every: int = 10) -> FuzzReport:
        """`n_requests` random requests spread over every RPC, the abuses first."""
        start = time.perf_counter()
        methods = {m.name: m for m in SERVICE.methods}
        if abuses:
            for rpc, request in _abuses(self.ids).values():
                self.call(methods[rpc], request)
        for i in range(n_requests):
            method = self.rng.choice(SERVICE.methods)
            self.call(method, self.random_request(method))
            if i % health_every == 0:
                self.time_health()
        self.report.seconds += time.perf_counter() - start
        return self.report


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def seed_server(address: str) -> Ids:
    """Upload a small model and data, compute a graph: ids for the fuzzer to aim at."""
    import torch
    from torch import nn

    from .client import Client
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    data = torch.randn(64, 4, dtype=torch.float64)
    from google.protobuf import json_format
    from intermod.server.model_spec import describe_model
    spec, weights = describe_model(model)
    layers = ["0", "2", "output"]
    with Client(address) as client:
        weights_id = client.upload(weights).id
        info = client.register_model(spec, weights_id)
        ts = client.upload(data)
        multi = client.upload({"x": np.zeros((3, 4)), "scalar": np.zeros(()), "y": np.zeros((5, 4))})
        job = client.submit(info.id, ts.id, layers)
        graph_id = client.watch(job, progress=False).graph_id
        n_nodes = client.graph_info(graph_id).n_nodes
    npy = io.BytesIO()
    np.save(npy, np.zeros((4, 4)))
    raw = npy.getvalue()
    header = pb.UploadHeader(name="x", format=pb.TENSOR_FORMAT_NPY, total_bytes=len(raw),
                             sha256=hashlib.sha256(raw).hexdigest())
    search = pb.ModuleSearch(epsilon=1e-3, resolution=0.05)
    templates = {
        "UploadTensors": [[pb.UploadTensorsRequest(header=header), pb.UploadTensorsRequest(chunk=raw)]],
        "RegisterModel": [pb.RegisterModelRequest(name="fuzz", weights_tensor_set_id=weights_id,
                                                  spec=json_format.ParseDict(spec, pb.ModelSpec()))],
        "ComputeGraph": [pb.ComputeGraphRequest(model_id=info.id, data_tensor_set_id=ts.id,
                                                layers=layers, options=pb.GraphOptions(batch_size=32))],
        "Diagnose": [pb.DiagnoseRequest(model_id=info.id, data_tensor_set_id=ts.id, layers=layers,
                                        epsilon=1e-3)],
        "GetGraph": [pb.GetGraphRequest(graph_id=graph_id, include_nodes=True, include_edges=True)],
        "ExportGraph": [pb.ExportGraphRequest(graph_id=graph_id, format=f, modules=search, top_n=5)
                        for f in (pb.EXPORT_FORMAT_JSON, pb.EXPORT_FORMAT_PNG)],
        "FindModules": [pb.FindModulesRequest(graph_id=graph_id, search=search)],
        "Sweep": [pb.SweepRequest(graph_id=graph_id, epsilons=[1e-3, 1e-2], resolutions=[0.1],
                                  search=search)],
        "ScorePartition": [pb.ScorePartitionRequest(graph_id=graph_id, membership=[0] * n_nodes,
                                                    epsilon=1e-3)],
        "ComparePartitions": [pb.ComparePartitionsRequest(membership_a=[0, 0, 1, 1],
                                                          membership_b=[0, 1, 0, 1])],
        "GetJob": [pb.GetJobRequest(job_id=job)], "WatchJob": [pb.WatchJobRequest(job_id=job)],
    }
    return Ids(graphs=[graph_id], models=[info.id], tensor_sets=[ts.id, multi.id, weights_id],
               jobs=[job], templates=templates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intermod.client.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="fuzz this server (default: start one)")
    parser.add_argument("--data-dir", default="out/fuzz-data")
    parser.add_argument("--rss-every", type=int, default=2000, help="print RSS every N requests")
    args = parser.parse_args(argv)
    from .spawn import running_server

    def fuzz(address: str, pid: int | None) -> int:
        ids = seed_server(address)
        before = rss_mb(pid) if pid else math.nan
        with grpc.insecure_channel(address) as channel:
            fuzzer = Fuzzer(channel, ids, seed=args.seed)
            done = 0
            while done < args.requests:   # in rounds, to show how RSS evolves
                n = min(args.rss_every, args.requests - done)
                fuzzer.run(n, abuses=done == 0)
                done += n
                if pid:
                    print(f"after {fuzzer.report.n_requests:>6} requests: server RSS "
                          f"{rss_mb(pid):.0f} MB", flush=True)
            report = fuzzer.report
        after = rss_mb(pid) if pid else math.nan
        print(report.table())
        print(f"\n{report.n_requests} requests in {report.seconds:.0f} s; UNKNOWN/INTERNAL: "
              f"{len(report.failures)}; health check p95 {report.p95_health_ms:.1f} ms "
              f"(max {max(report.health_ms):.1f} ms); server RSS {before:.0f} -> {after:.0f} MB")
        for line in report.failures[:20]:
            print("  FAILURE", line)
        return 1 if report.failures else 0

    if args.address:
        return fuzz(args.address, None)
    limits = ["--max-samples", "5000", "--max-nodes", "500", "--max-queued-jobs", "2"]
    with running_server(Path(args.data_dir), limits) as server:
        return fuzz(server.address, server.proc.pid)


if __name__ == "__main__":
    sys.exit(main())
