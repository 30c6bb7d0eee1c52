"""Service errors and their translation into gRPC statuses (with google.rpc details)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger("intermod.server")


#: Longest status message or field description sent back: status details travel in metadata,
#: which clients cap (16 KiB by default), so no echo of the request may grow with it.
MAX_DESCRIPTION = 1000
#: Longest id, name or value quoted back in a message (see :func:`echo`).
MAX_ECHO = 80


def bounded(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """`text` cut to `limit` characters (marked with " …")."""
    return text if len(text) <= limit else text[:limit] + " …"


def echo(value: object) -> str:
    """repr of a client-supplied value for an error message, cut to MAX_ECHO characters with
    its full length noted: ``'j_AAAA…' (10002 characters)``."""
    text = repr(value)
    if len(text) <= MAX_ECHO:
        return text
    return f"{text[:MAX_ECHO]}… ({len(str(value))} characters)"


class ServiceError(Exception):
    """An error the client caused or must handle; carries a gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message)


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT naming the offending request field (google.rpc.BadRequest)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        field, description = bounded(field, MAX_ECHO), bounded(description)
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description

    def to_status(self) -> status_pb2.Status:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=self.field,
                                                        description=self.description)]))
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=self.message,
                                 details=[detail])


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Cancelled(ServiceError):
    """The client cancelled the call or its deadline passed; the work stopped."""

    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(Cancelled):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


#: What the custom deserializers hand the servicer for bytes that are no request message.
MALFORMED = object()


def malformed() -> InvalidArgument:
    return InvalidArgument("request", "malformed request message (not a serialized protobuf "
                                      "of the RPC's request type)")


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is MALFORMED:
            raise malformed()
        yield request


def _checked(request: Any) -> Any:
    """The request, its stream wrapped so malformed messages raise; raises for one itself."""
    if request is MALFORMED:
        raise malformed()
    return _checked_stream(request) if hasattr(request, "__aiter__") else request


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ServiceError):
        await context.abort_with_status(rpc_status.to_status(exc.to_status()))
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL,
                        bounded(f"internal error: {type(exc).__name__}: {exc}"))


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a servicer method (coroutine or async generator): exceptions become statuses,
    undecodable requests (:data:`MALFORMED`) INVALID_ARGUMENT "malformed request message"."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for item in method(self, _checked(request), context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated into a status
                await _abort(context, exc)
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, _checked(request), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated into a status
            await _abort(context, exc)
    return unary
