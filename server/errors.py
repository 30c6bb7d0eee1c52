"""Service errors and their translation into gRPC statuses (with google.rpc details)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger("intermod.server")


class ServiceError(Exception):
    """An error the client caused or must handle; carries a gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message)


MAX_DESCRIPTION = 1000


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT naming the offending request field (google.rpc.BadRequest)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        if len(description) > MAX_DESCRIPTION:   # status details travel in size-capped metadata
            description = description[:MAX_DESCRIPTION] + " …"
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


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ServiceError):
        await context.abort_with_status(rpc_status.to_status(exc.to_status()))
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a servicer method (coroutine or async generator): exceptions become statuses."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated into a status
                await _abort(context, exc)
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated into a status
            await _abort(context, exc)
    return unary
