"""Micro-benchmarks of routing on the request path (pytest-benchmark; not part of the test suite).

    .venv/bin/python -m pytest bench/micro/test_routing.py --benchmark-only

``test_no_routes`` is all a model without routes, shadow or feedback pays: one dict lookup that misses.
``test_route_*``: hashing the routing key and choosing among two versions, and the shadow draw.
"""

from __future__ import annotations

from dataclasses import dataclass

from surge.server.traffic.routing import Routes, compile_entry, stable_hash


@dataclass(frozen=True)
class _Version:
    version: int


V1, V2 = _Version(1), _Version(2)
ENTRY = compile_entry(Routes(weights=((1, 90.0), (2, 10.0)), shadow_version=2, shadow_fraction=0.5), [(1, V1), (2, V2)])
TABLE = {"routed": ENTRY}


def test_no_routes(benchmark) -> None:
    assert benchmark(TABLE.get, "mlp") is None


def test_route_two_versions(benchmark) -> None:
    def route(key: str) -> object:
        h = stable_hash(key)
        primary = ENTRY.primary(h)
        return primary, ENTRY.shadow_for(primary, h)

    assert benchmark(route, "user-12345")[0] in (V1, V2)


def test_stable_hash(benchmark) -> None:
    benchmark(stable_hash, "user-12345")
