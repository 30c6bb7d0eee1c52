"""intermod's Python client (:class:`Client`) and command line (``intermod``)."""

from .client import Client, GraphInfo, Job, ModelInfo, TensorSet
from .errors import JobError, RemoteError

__all__ = ["Client", "GraphInfo", "Job", "JobError", "ModelInfo", "RemoteError", "TensorSet"]
