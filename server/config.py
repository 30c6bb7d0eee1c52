"""Server settings: address, storage, security and limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: gRPC message cap on both directions; exports and uploads are chunked well below it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Chunk size of streamed exports (and of client uploads).
CHUNK_BYTES = 1024 * 1024


@dataclass
class ServerConfig:
    """Everything `intermod serve` can set. Limits reject work with RESOURCE_EXHAUSTED or
    INVALID_ARGUMENT before it starts."""

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("intermod-data")
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    device: str = "auto"
    max_upload_bytes: int = 1024 * 1024 * 1024
    max_samples: int = 1_000_000
    max_nodes: int = 20_000
    max_queued_jobs: int = 16
    graph_cache_size: int = 8
    #: Operator models: Python factories "module:function" returning an Example-like object
    #: (fields name, model, inputs, layers) or an nn.Module.
    operator_models: tuple[str, ...] = ()
