"""``intermod serve``: its flags and the ServerConfig they make."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path


def limit_names() -> tuple[str, ...]:
    """ServerConfig's integer limits, settable with --limit NAME=VALUE (imported on use: the
    server package is heavy for the other commands)."""
    from intermod.server.config import ServerConfig
    return tuple(f.name for f in dataclasses.fields(ServerConfig)
                 if f.type in ("int", int) and f.name.startswith(("max_", "graph_cache", "model_cache")))


def _limit(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in limit_names():
        raise argparse.ArgumentTypeError(f"unknown limit {name!r}; known: {', '.join(limit_names())}")
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit {name}: {value!r} is not an integer") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"--limit {name}: must be >= 0, got {number}")
    return name, number


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=50051, help="0 = any free port")
    p.add_argument("--data-dir", default="intermod-data")
    p.add_argument("--token", default=os.environ.get("INTERMOD_TOKEN"),
                   help="require this bearer token (default $INTERMOD_TOKEN)")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:0,cuda:1")
    p.add_argument("--max-upload-bytes", type=int, default=1 << 30)
    p.add_argument("--max-samples", type=int, default=1_000_000)
    p.add_argument("--max-nodes", type=int, default=20_000)
    p.add_argument("--max-queued-jobs", type=int, default=16)
    p.add_argument("--graph-cache", type=int, default=8, help="graphs kept in memory")
    p.add_argument("--limit", action="append", default=[], type=_limit, metavar="NAME=VALUE",
                   help="any other server limit, e.g. max_n_alpha=64 (ServerConfig's fields; "
                        "see docs/service.md)")
    p.add_argument("--operator-model", action="append", default=[],
                   metavar="[NAME=]MODULE:FUNCTION", help="register an operator model")


def cmd_serve(args: argparse.Namespace) -> None:
    from intermod.server import ServerConfig, serve
    config = ServerConfig(
        host=args.host, port=args.port, data_dir=Path(args.data_dir), token=args.token or None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None, device=args.device,
        max_upload_bytes=args.max_upload_bytes, max_samples=args.max_samples,
        max_nodes=args.max_nodes, max_queued_jobs=args.max_queued_jobs,
        graph_cache_size=args.graph_cache, operator_models=tuple(args.operator_model))
    serve(dataclasses.replace(config, **dict(args.limit)), json_output=args.json)
