"""``surge bench``: a load generator for any Open Inference Protocol (v2) gRPC server, and a latency gate.

    surge bench mlp --concurrency 1,8,64 --duration-s 10 --json run.json --slo 'p99<20ms,errors<0.1%'
    python -m surge.clients.loadgen mlp --rate 500 --arrival poisson

Modules: ``scenario`` (what to send, serialised before the run), ``engine`` (closed and open loop, several
connections and processes), ``histogram`` (HDR histograms), ``results`` (tables, JSON, SLO, comparison),
``plot`` (matplotlib, optional), ``cli``. Imports grpc, protobuf, numpy, hdrhistogram and ``surge.protos`` /
``surge.clients`` only: never ``surge.server`` or a model runtime (a test checks it).
"""

from __future__ import annotations

from surge.clients.loadgen.cli import main

__all__ = ["main"]
