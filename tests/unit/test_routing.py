"""routing.py is a pure function: tables of weights, keys, stickiness, minimal movement, explicit versions, shadow sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from surge.server.traffic.routing import RouteEntry, Routes, choose, compile_entry, shadow_sampled, stable_hash

KEYS = [f"user-{i}" for i in range(20_000)]


@dataclass(frozen=True)
class Version:
    """Stands in for a ModelVersion: the router only needs an identity and a number."""

    version: int


def _shares(weights: list[tuple[int, float]], keys: list[str] = KEYS) -> dict[int, float]:
    counts: dict[int, int] = {}
    for key in keys:
        v = choose(weights, stable_hash(key))
        counts[v] = counts.get(v, 0) + 1
    return {v: c / len(keys) for v, c in counts.items()}


def test_hash_and_choice_are_pinned() -> None:
    # pinned values: a change here would silently move every user to another variant after an upgrade
    assert stable_hash("user-1") == 0x88E1EA21865AAC9A
    assert stable_hash("") == 0xB4B2797457A0A6E4
    assert [choose([(1, 50.0), (2, 50.0)], stable_hash(f"user-{i}")) for i in range(10)] == [2, 2, 1, 2, 2, 1, 2, 2, 1, 2]


@pytest.mark.parametrize(
    "weights",
    [
        [(1, 1.0)],
        [(1, 90.0), (2, 10.0)],
        [(1, 0.5), (2, 0.5)],
        [(1, 95.0), (2, 5.0)],
        [(1, 1.0), (2, 2.0), (3, 7.0)],
        [(3, 1.0), (7, 1.0), (12, 2.0)],
    ],
)
def test_shares_match_the_weights(weights: list[tuple[int, float]]) -> None:
    total = sum(w for _, w in weights)
    shares = _shares(weights)
    for version, weight in weights:
        expected = weight / total
        sigma = math.sqrt(expected * (1 - expected) / len(KEYS)) or 1e-9
        assert abs(shares.get(version, 0.0) - expected) < 5 * sigma + 1e-12, (version, shares)


@pytest.mark.parametrize(
    ("before", "after", "moved_from", "moved_to", "share_moved"),
    [
        ([(1, 90.0), (2, 10.0)], [(1, 80.0), (2, 20.0)], 1, 2, 0.10),  # canary 10% -> 20%: only 10% of keys move, all to v2
        ([(1, 50.0), (2, 50.0)], [(1, 0.000001), (2, 100.0)], 1, 2, 0.50),
        ([(1, 95.0), (2, 5.0)], [(1, 50.0), (2, 50.0)], 1, 2, 0.45),
        ([(1, 80.0), (2, 20.0)], [(1, 90.0), (2, 10.0)], 2, 1, 0.10),  # back down: only v2's extra keys return
    ],
)
def test_changing_weights_moves_only_keys_that_must_move(
    before: list[tuple[int, float]], after: list[tuple[int, float]], moved_from: int, moved_to: int, share_moved: float
) -> None:
    moves: dict[tuple[int, int], int] = {}
    for key in KEYS:
        h = stable_hash(key)
        a, b = choose(before, h), choose(after, h)
        if a != b:
            moves[(a, b)] = moves.get((a, b), 0) + 1
    assert set(moves) <= {(moved_from, moved_to)}, moves  # no key moves the other way
    moved = sum(moves.values()) / len(KEYS)
    assert abs(moved - share_moved) < 0.02, moved


def test_three_versions_raising_one_moves_keys_only_to_it() -> None:
    before = [(1, 60.0), (2, 30.0), (3, 10.0)]
    after = [(1, 60.0), (2, 30.0), (3, 30.0)]
    for key in KEYS[:5000]:
        h = stable_hash(key)
        a, b = choose(before, h), choose(after, h)
        assert a == b or b == 3, (key, a, b)


def test_a_key_keeps_its_version_across_calls() -> None:
    weights = [(1, 50.0), (2, 50.0)]
    for key in KEYS[:200]:
        assert len({choose(weights, stable_hash(key)) for _ in range(5)}) == 1


def test_a_version_that_stops_serving_gives_away_only_its_own_keys() -> None:
    routes = Routes(weights=((1, 1.0), (2, 1.0), (3, 1.0)))
    v1, v2, v3 = Version(1), Version(2), Version(3)
    full = compile_entry(routes, [(1, v1), (2, v2), (3, v3)])
    without_2 = compile_entry(routes, [(1, v1), (3, v3)])
    assert full is not None and without_2 is not None
    for key in KEYS[:3000]:
        h = stable_hash(key)
        before, after = full.primary(h), without_2.primary(h)
        if before is not v2:
            assert after is before  # keys of v1 and v3 stay
        else:
            assert after in (v1, v3)


@pytest.mark.parametrize(
    ("routes", "serving", "expected_primaries"),
    [
        (None, [1, 2], {2}),  # no routes: the highest serving version (as without routing)
        (Routes(), [1, 2], {2}),
        (Routes(weights=((1, 1.0),)), [1, 2], {1}),  # pinned to v1 while v2 is loaded beside it
        (Routes(weights=((3, 1.0),)), [1, 2], {2}),  # no weighted version serving: the highest serving
        (Routes(weights=((1, 1.0), (3, 1.0))), [1, 2], {1}),  # v3 not serving: its keys go to their second choice
        (Routes(weights=((1, 1.0), (2, 1.0))), [1, 2], {1, 2}),
        (Routes(shadow_version=2), [1, 2], {1}),  # shadowing the highest version does not give it the traffic
        (Routes(shadow_version=2), [2], {2}),  # unless it is all that serves
        (Routes(shadow_version=1), [1, 2], {2}),
    ],
)
def test_compiled_entry_table(routes: Routes | None, serving: list[int], expected_primaries: set[int]) -> None:
    versions = {n: Version(n) for n in serving}
    entry = compile_entry(routes, [(n, versions[n]) for n in serving])
    assert entry is not None
    seen = {entry.primary(stable_hash(key)).version for key in KEYS[:500]}
    assert seen == expected_primaries


def test_nothing_serving_compiles_to_none() -> None:
    assert compile_entry(Routes(weights=((1, 1.0),)), []) is None


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5, 0.9])
def test_shadow_sampling_fraction(fraction: float) -> None:
    sampled = sum(shadow_sampled(fraction, stable_hash(k)) for k in KEYS) / len(KEYS)
    sigma = math.sqrt(fraction * (1 - fraction) / len(KEYS))
    assert abs(sampled - fraction) < 5 * sigma


def test_shadow_sampling_is_sticky_and_independent_of_the_split() -> None:
    assert all(shadow_sampled(1.0, stable_hash(k)) for k in KEYS[:100])
    # among keys routed to v1, the sampled share is still the fraction (the draws use different salts)
    weights = [(1, 50.0), (2, 50.0)]
    on_v1 = [k for k in KEYS if choose(weights, stable_hash(k)) == 1]
    share = sum(shadow_sampled(0.3, stable_hash(k)) for k in on_v1) / len(on_v1)
    assert abs(share - 0.3) < 0.03


@pytest.mark.parametrize(
    ("shadow_version", "fraction", "primary", "expect_shadow"),
    [
        (2, 1.0, 1, True),
        (2, 1.0, 2, False),  # the shadow answered the request itself: nothing to mirror
        (0, 1.0, 1, False),  # no shadow
        (3, 1.0, 1, False),  # shadow version not serving
    ],
)
def test_shadow_for(shadow_version: int, fraction: float, primary: int, expect_shadow: bool) -> None:
    versions = {1: Version(1), 2: Version(2)}
    entry = compile_entry(Routes(weights=((1, 1.0), (2, 1.0)), shadow_version=shadow_version, shadow_fraction=fraction), sorted(versions.items()))
    assert isinstance(entry, RouteEntry)
    shadow = entry.shadow_for(versions[primary], stable_hash("k"))
    assert (shadow is versions[shadow_version]) if expect_shadow else shadow is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": ((1, 1.0), (1, 2.0))},
        {"weights": ((0, 1.0),)},
        {"weights": ((1, 0.0),)},
        {"weights": ((1, float("inf")),)},
        {"shadow_version": 2, "shadow_fraction": 0.0},
        {"shadow_version": 2, "shadow_fraction": 1.5},
    ],
)
def test_invalid_routes_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Routes(**kwargs)


def test_choose_needs_candidates() -> None:
    with pytest.raises(ValueError):
        choose([], 1)
