"""The descriptor pool that holds Surge's generated protocol code (``surge.protos.*_pb2``).

Surge's ``grpc_service.proto`` and ``model_config.proto`` define Triton's ``inference.*`` messages and service, as
Triton's own generated code (``tritonclient.grpc``) does. Two files defining one symbol cannot share protobuf's
default pool, so Surge's files live in this pool of their own (protos/generate.py points the generated modules
here): tritonclient and ``surge.protos`` import into one process, in either order, whatever tritonclient's version.
The messages are the same on the wire; only their descriptors are distinct objects.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

__all__ = ["POOL"]

POOL = descriptor_pool.DescriptorPool()
