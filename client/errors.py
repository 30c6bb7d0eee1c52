"""Errors raised by the client: gRPC failures with their code, message and offending field."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class RemoteError(Exception):
    """A call failed on the server. `code` is the grpc.StatusCode; `field` names the request
    field for INVALID_ARGUMENT (from google.rpc.BadRequest), else None."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> RemoteError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        message = exc.details() if hasattr(exc, "details") else str(exc)
        field = None
        status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
        return cls(code, message or "", field)


class JobError(Exception):
    """A graph job ended without a graph (failed, cancelled or interrupted)."""

    def __init__(self, job_id: str, state: str, error: str) -> None:
        super().__init__(f"job {job_id} {state}: {error}")
        self.job_id = job_id
        self.state = state
        self.error = error
