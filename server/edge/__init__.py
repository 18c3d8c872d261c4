"""The protocol edges: where requests come in, are turned into the data plane's plain arguments, and errors become statuses.

``grpc_servicer`` (KServe v2 / Triton gRPC over ``server/dataplane.py``, ``STATUS_OF``: status names -> gRPC codes),
``codec`` (protobuf <-> numpy, request limits), ``rest`` + ``rest_codec`` (REST v2 over the same data plane,
``HTTP_STATUS_OF``: status names -> HTTP statuses), ``security`` (tokens, scopes, the one interceptor), ``triton``
(Triton-shaped config and statistics messages), ``surge_servicer`` (the ``surge.v1`` Admin and Feedback services),
``stream`` (ModelStreamInfer's response flags and errors), ``reflection`` (server reflection, v1 and v1alpha),
``metrics_http`` (the ``/metrics`` endpoint, served by aiohttp), ``scrape`` (the one HTTP client, reading Surge's own
``/metrics`` pages: the ``--workers`` supervisor, ``surge top``/``ab``/``drift``).
"""
