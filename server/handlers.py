"""Registering the servicer: one handler per RPC of the service descriptor, safe deserializers.

The generated ``add_IntermodServiceServicer_to_server`` parses requests with ``FromString``,
whose ``DecodeError`` grpc answers UNKNOWN (unary) or INTERNAL (streams). Here every RPC the
descriptor declares (so RPCs added to the .proto later too) gets a deserializer that turns
undecodable bytes into :data:`~.errors.MALFORMED`, which the servicer's ``@rpc`` wrapper
answers INVALID_ARGUMENT "malformed request message".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from intermod.v1 import intermod_pb2 as pb

from .errors import MALFORMED

SERVICE: ServiceDescriptor = pb.DESCRIPTOR.services_by_name["IntermodService"]

_HANDLER_KINDS = {(False, False): grpc.unary_unary_rpc_method_handler,
                  (False, True): grpc.unary_stream_rpc_method_handler,
                  (True, False): grpc.stream_unary_rpc_method_handler,
                  (True, True): grpc.stream_stream_rpc_method_handler}


def request_class(method: MethodDescriptor) -> type:
    """The generated message class of an RPC's request."""
    return message_factory.GetMessageClass(method.input_type)


def _deserializer(cls: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError):
            return MALFORMED
    return parse


def service_handler(servicer: Any, service: ServiceDescriptor = SERVICE) -> grpc.GenericRpcHandler:
    """A generic handler serving every method of `service` from `servicer`'s methods of the
    same name (a missing method is a programming error: AttributeError at start-up)."""
    handlers = {}
    for method in service.methods:
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        response = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = kind(getattr(servicer, method.name),
                                     request_deserializer=_deserializer(request_class(method)),
                                     response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
