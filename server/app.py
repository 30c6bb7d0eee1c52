"""Assembling and running the gRPC server (service, health, reflection, auth, TLS)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from intermod.analysis.core.inputs import resolve_device
from intermod.v1 import intermod_pb2 as pb

from .auth import TokenAuth
from .config import MAX_MESSAGE_BYTES, ServerConfig
from .graphs import GraphStore
from .handlers import service_handler
from .jobs import JobManager
from .models import ModelRegistry
from .servicer import IntermodServicer
from .storage import Store

log = logging.getLogger("intermod.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IntermodService"].full_name
INTERRUPTED_REASON = "the server stopped while the job was queued or running"


def resolve_devices(device: str) -> list[str]:
    """Devices to run jobs on, one worker each: "auto" = every CUDA device, else the CPU;
    "cuda" = every CUDA device; otherwise a comma-separated list ("cuda:0,cuda:1", "cpu")."""
    n_cuda = torch.cuda.device_count()
    if device in ("auto", "cuda"):
        if n_cuda:
            return [f"cuda:{i}" for i in range(n_cuda)]
        if device == "cuda":
            raise ValueError("--device cuda: no CUDA device is available")
        return ["cpu"]
    listed = [d.strip() for d in device.split(",") if d.strip()]
    for d in listed:   # at start-up, not in the first job: a name torch cannot parse or see
        resolve_device(d)
    return listed


def read_tls_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """(key, certificate chain) PEM bytes, checked to load as a pair; ValueError naming the
    files otherwise (grpc itself would only report "Failed to bind to address")."""
    try:
        pair = key.read_bytes(), cert.read_bytes()
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cert, key, password=lambda: b"")   # never prompt for a passphrase
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS: cannot read the certificate {str(cert)!r} or the key "
                         f"{str(key)!r} as a PEM certificate chain and its private key: "
                         f"{exc}") from None
    return pair


class IntermodServer:
    """The running service; `start()` then `wait()`, `stop()` to shut down cleanly."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        cfg = self.config
        self.store = Store(cfg.data_dir)
        n = self.store.interrupt_unfinished_jobs(INTERRUPTED_REASON)
        if n:
            log.warning("marked %d unfinished job(s) of a previous run as interrupted", n)
        self.jobs = JobManager(self.store, resolve_devices(cfg.device), cfg.max_queued_jobs,
                               cfg.max_finished_jobs)
        self.graphs = GraphStore(self.store, cfg.graph_cache_size, cfg.graph_cache_bytes)
        self.models = ModelRegistry(self.store, cfg.operator_models, cfg.model_cache_size)
        servicer = IntermodServicer(cfg, self.store, self.models, self.jobs, self.graphs)

        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        interceptors = [TokenAuth(cfg.token)] if cfg.token else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        self.server.add_generic_rpc_handlers((service_handler(servicer),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)

        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert or cfg.tls_key:
            if not (cfg.tls_cert and cfg.tls_key):
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            creds = grpc.ssl_server_credentials([read_tls_pair(cfg.tls_cert, cfg.tls_key)])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind {address}")
        self.jobs.start()
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("intermod serving on %s:%d (devices %s, data %s, auth %s, tls %s)", cfg.host,
                 self.port,
                 self.jobs.devices, self.store.root, "on" if cfg.token else "off",
                 "on" if cfg.tls_cert else "off")
        return self.port

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.jobs.stop()
        self.store.close()
        self.server = None


async def _serve(config: ServerConfig, json_output: bool) -> None:
    server = IntermodServer(config)
    port = await server.start()
    address = f"{config.host}:{port}"
    print(json.dumps({"serving": address}) if json_output else f"intermod serving on {address}",
          flush=True)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    waiter = asyncio.create_task(server.wait())
    await asyncio.wait([waiter, asyncio.create_task(stopping.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    await server.stop()
    waiter.cancel()


def serve(config: ServerConfig, json_output: bool = False) -> None:
    """Run the server until SIGINT/SIGTERM (blocking); prints the bound address on stdout
    ("intermod serving on HOST:PORT", or {"serving": "HOST:PORT"} with `json_output`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(config, json_output))
