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
    # Limits on what one request may ask for (checked before anything is built or queued).
    #: Integration points of edge_method="integrated" (cost grows linearly in n_alpha).
    max_n_alpha: int = 64
    #: Random ±1 probes of n_probes (cost grows linearly in n_probes).
    max_n_probes: int = 512
    #: Leiden restarts of one module search.
    max_n_restarts: int = 100
    #: Samples per batch of a graph job (memory grows linearly in it).
    max_batch_size: int = 65_536
    #: Points of one Sweep (len(epsilons) × max(1, len(resolutions))).
    max_sweep_points: int = 10_000
    #: Node layers of one request.
    max_layers: int = 256
    #: Parameters of a registered model (spec or Hugging Face), checked before it is built.
    max_parameters: int = 1_000_000_000
    # Bounds on what the server holds in memory (disk keeps everything).
    #: Graphs kept loaded (also bounded by graph_cache_bytes).
    graph_cache_bytes: int = 1024 * 1024 * 1024
    #: Models kept loaded (least recently used ones are unloaded).
    model_cache_size: int = 4
    #: Finished jobs kept in memory (older ones are answered from the database).
    max_finished_jobs: int = 1000
    #: Operator models: Python factories "module:function" returning an Example-like object
    #: (fields name, model, inputs, layers) or an nn.Module.
    operator_models: tuple[str, ...] = ()
