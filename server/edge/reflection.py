"""gRPC server reflection under both of its names: ``grpc.reflection.v1`` (what grpcurl and newer tools ask
first) and ``grpc.reflection.v1alpha`` (older tools).

grpcio-reflection (1.85) implements v1alpha only. v1 is the same protocol renamed: the same messages with the
same field numbers in package ``grpc.reflection.v1``. So one ``grpc_reflection`` servicer answers both names
(v1alpha's message classes read and write v1's bytes unchanged), and v1's file descriptor, made from v1alpha's
with the package renamed, joins the descriptor pool so that reflection can also describe the v1 service itself.

Reflection answers from a pool of its own: Surge's files live in ``surge.protos.pool.POOL`` (so that they import
beside tritonclient's), the health and reflection services in protobuf's default pool; the served services' files,
with their imports, are copied into one pool that describes them all.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from surge.protos.pool import POOL as SURGE_POOL

__all__ = ["SERVICE_NAMES", "enable_reflection"]

V1ALPHA = reflection.SERVICE_NAME  # "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
#: Both reflection services, as reflection lists them.
SERVICE_NAMES = (V1, V1ALPHA)

_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Put v1's reflection.proto in ``pool`` (once): v1alpha's, with the package and the file renamed."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    alpha_package = reflection_pb2.DESCRIPTOR.package
    v1_package = V1.rpartition(".")[0]
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _V1_FILE, v1_package
    file.options.Clear()  # v1alpha's options name its own Java/C# packages
    prefix, renamed = f".{alpha_package}.", f".{v1_package}."

    def rename(type_name: str) -> str:
        return renamed + type_name[len(prefix):] if type_name.startswith(prefix) else type_name

    for message in file.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type, method.output_type = rename(method.input_type), rename(method.output_type)
    pool.Add(file)


def _copy_file(pool: descriptor_pool.DescriptorPool, file: descriptor.FileDescriptor) -> None:
    """Add ``file`` and, first, the files it imports to ``pool`` (each once)."""
    try:
        pool.FindFileByName(file.name)
        return
    except KeyError:
        pass
    for dependency in file.dependencies:
        _copy_file(pool, dependency)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)


def _service_file(name: str) -> descriptor.FileDescriptor:
    try:
        return SURGE_POOL.FindServiceByName(name).file
    except KeyError:
        return descriptor_pool.Default().FindServiceByName(name).file


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` (plus both reflection services) on ``server``, under v1 and v1alpha."""
    service_names = tuple(service_names)
    pool = descriptor_pool.DescriptorPool()
    for name in (*service_names, V1ALPHA):
        _copy_file(pool, _service_file(name))
    _add_v1_descriptor(pool)
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICE_NAMES), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # v1alpha
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": v1}),))
