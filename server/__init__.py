"""intermod's gRPC service: ``IntermodServer`` (grpc.aio) over :mod:`intermod.analysis`."""

from .app import IntermodServer, serve
from .config import ServerConfig

__all__ = ["IntermodServer", "ServerConfig", "serve"]
