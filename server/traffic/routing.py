"""Version routing, the pure part: which version answers a request that names none, and whether it is shadowed.

Everything here is a deterministic function of its arguments (no I/O, no clock, no global state), so it is
tested as a table (``tests/unit/test_routing.py``).

- **Weighted, sticky split: weighted rendezvous hashing.** A routing key (the request's ``routing_key``
  parameter, else the ``x-surge-routing-key`` metadata, else the request id) is hashed once with a stable
  hash (BLAKE2b, the same in every process and run, unlike Python's ``hash``). For each candidate version
  ``v`` with weight ``w``, ``u_v = unit(mix(key_hash, v))`` is a uniform draw in (0, 1) and the score is
  ``w / -ln(u_v)``; the highest score answers. ``-ln(u_v) / w`` is an exponential variable of rate ``w``, so
  version ``v`` wins with probability ``w / sum(w)``: the observed shares match the weights. Stickiness:
  the same key always picks the same version while the weights and the serving versions are unchanged.
  Minimal movement: raising one version's weight only raises its own scores, so keys only move *to* it
  (10% -> 20% moves 10% of the keys, all from the other versions to it, none between the others); a
  version that stops serving loses exactly its own keys, each to the version that scored second for it,
  and gets them back when it returns. (Cumulative intervals of [0, 1) would do the same for two versions
  but move keys between unrelated versions when a middle one changes.)
- **Shadow sampling**: ``shadow_sampled(fraction, key_hash)`` draws from the same key with another salt,
  so a sampled key stays sampled (a user's traffic is mirrored or not as a whole).
- **Routes**: what an engineer sets (config's ``[routing]`` or the admin RPCs): weights per version and a
  shadow. ``RouteEntry`` is the compiled form the servicer reads per request: only versions that are
  serving, as objects, so the request path does no lookups beyond one dict get and one hash.

Cost on the request path (shared dev box, CPython 3.11, ``bench/micro/test_routing.py``): hashing a
10-character key, choosing among two versions and drawing the shadow about 2.8 us in all; a model with no
entry in the table pays one dict lookup (about 70 ns).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["RouteEntry", "Routes", "choose", "compile_entry", "shadow_sampled", "stable_hash"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
#: Salt of the shadow-sampling draw (any constant that is not a version number's mix).
_SHADOW_SALT = 0x5EAD0_5EAD0
_INV_2_53 = 1.0 / (1 << 53)

V = TypeVar("V")


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process, run and machine (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _mix(key_hash: int, salt: int) -> int:
    """splitmix64's finaliser of ``key_hash ^ salt * golden``: a fresh, well-spread 64-bit value per salt."""
    z = (key_hash ^ (salt * _GOLDEN)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _unit(z: int) -> float:
    """A 64-bit value -> a float in the open interval (0, 1) (53 bits, never 0 or 1)."""
    return ((z >> 11) + 0.5) * (1.0 / (1 << 53))


def choose(weights: Sequence[tuple[V, float]], key_hash: int, salts: Sequence[int] | None = None) -> V:
    """The candidate that answers ``key_hash``: weighted rendezvous hashing over ``(candidate, weight)`` pairs.

    ``salts``: one integer per candidate (its version number), so a candidate's draw does not depend on
    which others are present; by default the candidates themselves must be integers. Weights must be > 0.
    Raises ValueError for no candidates.
    """
    if not weights:
        raise ValueError("choose: no candidates")
    premixed = tuple((int(salts[i] if salts is not None else c) * _GOLDEN) & _MASK64 for i, (c, _) in enumerate(weights))  # type: ignore[arg-type]
    return _choose(weights, key_hash, premixed)


def _choose(weights: Sequence[tuple[V, float]], key_hash: int, premixed: Sequence[int]) -> V:
    """``choose`` with each salt already multiplied by the golden ratio (the request path's form: no calls inside)."""
    best = weights[0][0]
    best_score = -1.0
    log = math.log
    for (candidate, weight), salt in zip(weights, premixed):
        z = key_hash ^ salt  # the body of _mix and _unit, inlined
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        score = weight / -log(((z >> 11) + 0.5) * _INV_2_53)
        if score > best_score:
            best, best_score = candidate, score
    return best


def shadow_sampled(fraction: float, key_hash: int) -> bool:
    """Whether the request with this key is mirrored to the shadow (a deterministic draw; 1.0: always)."""
    return fraction >= 1.0 or _unit(_mix(key_hash, _SHADOW_SALT)) < fraction


@dataclass(frozen=True, slots=True)
class Routes:
    """A model's routes as an engineer sets them (config ``[routing]`` or the admin RPCs).

    ``weights``: (version, weight > 0) pairs, sorted by version; empty means "no split": requests naming
    no version go to the highest serving version, as without routes. ``shadow_version`` 0: no shadow.
    """

    weights: tuple[tuple[int, float], ...] = ()
    shadow_version: int = 0
    shadow_fraction: float = 1.0

    def __post_init__(self) -> None:
        versions = [v for v, _ in self.weights]
        if len(set(versions)) != len(versions):
            raise ValueError(f"routes: a version appears twice in the weights {list(self.weights)}")
        for version, weight in self.weights:
            if version < 1 or not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"routes: weights need versions >= 1 and finite weights > 0, got {version}: {weight}")
        if self.shadow_version < 0 or not 0.0 < self.shadow_fraction <= 1.0:
            raise ValueError(f"routes: shadow fraction must be 0 < f <= 1, got {self.shadow_fraction}")

    def shares(self) -> dict[int, float]:
        """Each weighted version's expected share of the traffic (weights normalised)."""
        total = sum(w for _, w in self.weights)
        return {v: w / total for v, w in self.weights}


@dataclass(frozen=True, slots=True)
class RouteEntry(Generic[V]):
    """A model's routes compiled against its serving versions: what the request path reads.

    ``candidates``: the weighted versions that are serving, as (version object, weight); empty: every
    request goes to ``default``. ``salts``: the candidates' version numbers (the hash salts).
    ``shadow``: the shadow version's object when it is serving, else None. ``extras``: what the caller
    attaches (the shadow sender, the feedback index), opaque here.
    """

    default: V
    candidates: tuple[tuple[V, float], ...] = ()
    salts: tuple[int, ...] = ()
    premixed: tuple[int, ...] = ()  # the salts times the golden ratio (mod 2**64), computed once here
    shadow: V | None = None
    shadow_fraction: float = 1.0
    extras: dict[str, Any] = field(default_factory=dict)

    def primary(self, key_hash: int) -> V:
        """The version that answers a request with this key hash."""
        if not self.candidates:
            return self.default
        if len(self.candidates) == 1:
            return self.candidates[0][0]
        return _choose(self.candidates, key_hash, self.premixed)

    def shadow_for(self, primary: V, key_hash: int) -> V | None:
        """The shadow version for this request, or None (no shadow, not sampled, or the shadow answers it)."""
        shadow = self.shadow
        if shadow is None or shadow is primary or not shadow_sampled(self.shadow_fraction, key_hash):
            return None
        return shadow


def compile_entry(routes: Routes | None, serving: Sequence[tuple[int, V]], extras: dict[str, Any] | None = None) -> RouteEntry[V] | None:
    """Compile routes against the serving versions (``(number, object)`` pairs, ascending).

    Weighted versions that are not serving are left out (their keys fall to each key's next choice, see
    the module docstring); when none is serving (or there are no weights), requests go to the highest
    serving version other than the shadow. Returns None
    when nothing is serving (the request path then reports the model as not ready, as without routes).
    """
    if not serving:
        return None
    by_number = dict(serving)
    routes = routes or Routes()
    candidates = tuple((by_number[v], w) for v, w in routes.weights if v in by_number)
    salts = tuple(v for v, _ in routes.weights if v in by_number)
    shadow = by_number.get(routes.shadow_version) if routes.shadow_version else None
    # the version that answers when no weighted version serves: the highest serving one, but not the shadow
    # (shadowing a freshly loaded highest version must not hand it the traffic)
    default = next((obj for _, obj in reversed(serving) if obj is not shadow), serving[-1][1])
    return RouteEntry(
        default=default, candidates=candidates, salts=salts, premixed=tuple((v * _GOLDEN) & _MASK64 for v in salts), shadow=shadow, shadow_fraction=routes.shadow_fraction, extras=dict(extras or {}),
    )
