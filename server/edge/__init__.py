"""The protocol edges: where requests come in and errors become statuses.

``grpc_servicer`` (KServe v2 / Triton gRPC, ``STATUS_OF``: the one error -> status table), ``codec`` (protobuf
<-> numpy, request limits), ``rest`` + ``rest_codec`` (REST v2 over the same servicer methods), ``security``
(tokens, scopes, the one interceptor), ``triton`` (Triton-shaped config and metadata messages),
``surge_servicer`` (the ``surge.v1`` Admin and Feedback services), ``stream`` (ModelStreamInfer's response flags and
errors), ``reflection`` (server reflection, v1 and v1alpha).
"""
