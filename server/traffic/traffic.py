"""Routes, shadows and feedback of every model: the state behind the route table, and the admin operations.

``Traffic.table`` maps a model name to its compiled ``routing.RouteEntry``; only models with a split, a
shadow or ``[feedback]`` have one, so the request path of every other model pays one dict lookup. The
table is never changed in place: every change builds a new dict and assigns it in one statement, so a
request sees the old table or the new one, never a mix, and nothing locks per request.

Where a model's routes come from, in order: the changes made through the admin service
(``surge.v1.Admin``, ``surge route``), else the ``[routing]`` table of its config.toml. A reload whose
config changes ``[routing]`` (the file was edited: poll mode, or a RepositoryModelLoad) drops the admin
changes, since the file is then the newer intent; a reload that leaves ``[routing]`` as it was keeps them.
Every change is kept in a bounded history that ``rollback`` walks back.

The repository calls ``serving_changed`` (on the loop, in the same step that swaps its own version
table), so the route table never names a version that stopped serving: a weighted version that is not
serving is left out of the split and its keys go to their second choice (``routing.py``).

With a state folder (``state_dir``: the model repository's ``.surge/`` by default) every admin change is
written to ``routes.json`` there (atomically: a temporary file renamed over it) and read back at start,
so a restarted server routes as it did before; a model whose config.toml ``[routing]`` changed meanwhile
follows the file, as at a reload.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import ModelConfig, ShadowConfig
from ..errors import InvalidInput
from ..files import write_atomic
from .feedback import FeedbackIndex
from ..repository import ModelRepository
from .routing import RouteEntry, Routes, compile_entry
from .shadow import PairStats, ShadowSender

__all__ = ["MAX_HISTORY", "RouteState", "Traffic", "routes_of_config"]

log = logging.getLogger("surge.routing")

#: Route changes ``rollback`` can undo, per model.
MAX_HISTORY = 32


def routes_of_config(config: ModelConfig | None) -> Routes | None:
    """The routes a config's ``[routing]`` table sets (None: no table)."""
    if config is None or config.routing is None:
        return None
    r = config.routing
    return Routes(weights=r.weights, shadow_version=r.shadow.version, shadow_fraction=r.shadow.fraction)


def _routes_json(routes: Routes | None) -> dict[str, Any] | None:
    if routes is None:
        return None
    return {"weights": [[v, w] for v, w in routes.weights], "shadow_version": routes.shadow_version, "shadow_fraction": routes.shadow_fraction}


def _routes_of_json(data: Any) -> Routes | None:
    if data is None:
        return None
    return Routes(weights=tuple((int(v), float(w)) for v, w in data["weights"]), shadow_version=int(data["shadow_version"]), shadow_fraction=float(data["shadow_fraction"]))


@dataclass(frozen=True, slots=True)
class RouteState:
    """A model's routes as the admin API reports them."""

    model: str
    routes: Routes
    source: str  # "admin", "config" or "none"
    serving: tuple[int, ...]
    generation: int
    history: int


@dataclass(slots=True)
class _Model:
    name: str
    serving: tuple[Any, ...] = ()
    config: ModelConfig | None = None
    config_routes: Routes | None = None
    override: Routes | None = None
    history: list[Routes | None] = field(default_factory=list)
    generation: int = 0
    sender: ShadowSender | None = None
    pairs: dict[tuple[str, str], PairStats] = field(default_factory=dict)
    feedback: FeedbackIndex | None = None

    @property
    def effective(self) -> Routes | None:
        return self.override if self.override is not None else self.config_routes


class Traffic:
    """Every model's routes, shadow sender and feedback index. Event loop only (the collector reads copies)."""

    def __init__(self, repository: ModelRepository, state_dir: Path | None = None) -> None:
        """``state_dir``: where admin route changes are kept across restarts (None: in memory only)."""
        self._repo = repository
        self.state_dir = state_dir
        self._saved: dict[str, Any] = self._load_saved()
        self.listeners: list[Any] = []
        """Called as ``listener(name, serving_numbers)`` after every serving change (the rollout controller)."""
        self.table: dict[str, RouteEntry[Any]] = {}
        """Model name -> compiled routes; read per request, replaced whole on every change."""
        self._models: dict[str, _Model] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- from the repository ---------------------------------------------------------------------

    def serving_changed(self, name: str, serving: Sequence[Any]) -> None:
        """The repository swapped a model's serving versions (ascending ``ModelVersion``s). Synchronous, on the loop."""
        m = self._models.get(name)
        if m is None:
            m = self._models[name] = self._new_model(name)
        m.serving = tuple(serving)
        if serving:
            config = serving[-1].config
            baseline = routes_of_config(config)
            if m.config is not None and baseline != m.config_routes and m.override is not None:
                log.warning("model %s: config.toml's [routing] changed; it replaces the routes set through the admin API", name)
                m.history.append(m.override)
                del m.history[:-MAX_HISTORY]
                m.override = None
                self._save(m)
            m.config, m.config_routes = config, baseline
            m.feedback = self._feedback_for(m, config)
        self._rebuild(m)
        for listener in self.listeners:
            listener(name, self._serving_numbers(m))

    def _feedback_for(self, m: _Model, config: ModelConfig) -> FeedbackIndex | None:
        f = config.feedback
        if f is None:
            return None
        output = f.output or (config.outputs[0].name if config.outputs else "")
        old = m.feedback
        if old is not None and old.output == output and old.max_requests == f.max_requests:
            return old  # keep the index (and its counters) across reloads
        index = FeedbackIndex(m.name, output, f.max_requests)
        if old is not None:
            index.quality, index.received, index.joined, index.unknown, index.evicted = old.quality, old.received, old.joined, old.unknown, old.evicted
        return index

    # -- admin operations (each raises ModelNotFound or InvalidInput) ------------------------------

    def state(self, name: str) -> RouteState:
        """The model's routes now."""
        m = self._model(name)
        effective = m.effective
        source = "admin" if m.override is not None else "config" if m.config_routes is not None else "none"
        return RouteState(name, effective or Routes(), source, tuple(v.version for v in m.serving), m.generation, len(m.history))

    def model_names(self) -> list[str]:
        """The models seen so far (serving or not)."""
        return list(self._models)

    def config_of(self, name: str) -> ModelConfig | None:
        """The config of the model's highest serving version (None before one served)."""
        m = self._models.get(name)
        return m.config if m is not None else None

    def set_weights(self, name: str, weights: Sequence[tuple[int, float]]) -> RouteState:
        """Replace the split (the shadow is kept); an empty list removes it."""
        m = self._model(name)
        routes = self._routes(m.effective, weights=tuple(sorted(weights)))
        if routes.weights and not any(v in self._serving_numbers(m) for v, _ in routes.weights):
            raise InvalidInput(f"model '{name}': none of versions {[v for v, _ in routes.weights]} is serving (serving: {list(self._serving_numbers(m))}); load one first")
        return self._change(m, routes)

    def set_shadow(self, name: str, version: int, fraction: float) -> RouteState:
        """Mirror ``fraction`` of the routed traffic to ``version`` (which must be serving)."""
        m = self._model(name)
        if version not in self._serving_numbers(m):
            raise InvalidInput(f"model '{name}': version {version} is not serving (serving: {list(self._serving_numbers(m))}); load it before shadowing it")
        return self._change(m, self._routes(m.effective, shadow_version=version, shadow_fraction=fraction or 1.0))

    def remove_shadow(self, name: str) -> RouteState:
        """Stop mirroring (the split is kept)."""
        m = self._model(name)
        return self._change(m, self._routes(m.effective, shadow_version=0, shadow_fraction=1.0))

    def promote(self, name: str, version: int) -> RouteState:
        """Every request naming no version goes to ``version`` (which must be serving); the shadow is removed."""
        m = self._model(name)
        if version not in self._serving_numbers(m):
            raise InvalidInput(f"model '{name}': version {version} is not serving (serving: {list(self._serving_numbers(m))}); load it before promoting it")
        return self._change(m, Routes(weights=((version, 1.0),)))

    def set_routes(self, name: str, routes: Routes) -> RouteState:
        """Replace the split and the shadow in one change (the rollout controller's steps); the versions must be serving."""
        m = self._model(name)
        serving = self._serving_numbers(m)
        missing = [v for v in (*(v for v, _ in routes.weights), routes.shadow_version) if v and v not in serving]
        if missing:
            raise InvalidInput(f"model '{name}': version(s) {missing} not serving (serving: {list(serving)})")
        if routes == m.effective:
            return self.state(name)
        return self._change(m, routes)

    def rollback(self, name: str) -> RouteState:
        """Undo the last change."""
        m = self._model(name)
        if not m.history:
            raise InvalidInput(f"model '{name}': no earlier routes to roll back to")
        m.override = m.history.pop()
        m.generation += 1
        self._rebuild(m)
        self._save(m)
        log.info("model %s: routes rolled back to %s", name, self.state(name).routes)
        return self.state(name)

    def reset(self, name: str) -> RouteState:
        """Drop the admin changes: the config's ``[routing]`` applies again."""
        m = self._model(name)
        m.history.append(m.override)
        del m.history[:-MAX_HISTORY]
        m.override = None
        m.generation += 1
        self._rebuild(m)
        self._save(m)
        return self.state(name)

    def report(self, name: str, request_id: str, **outcome: Any) -> str:
        """Join an outcome with the version that answered; returns it ("" when the id is unknown)."""
        return self._feedback(name, request_id).report(request_id, **outcome)

    def knows(self, name: str, request_id: str) -> bool:
        """Whether ``request_id`` is in the model's feedback index now (counts nothing; raises as ``report`` does)."""
        return request_id in self._feedback(name, request_id)

    def _feedback(self, name: str, request_id: str) -> FeedbackIndex:
        m = self._model(name)
        if m.feedback is None:
            raise InvalidInput(f"model '{name}' does not index requests for feedback; add a [feedback] table to its config.toml")
        if not request_id:
            raise InvalidInput("ReportOutcome: request_id is required (the id of the answered ModelInferRequest)")
        return m.feedback

    async def aclose(self) -> None:
        """Stop every shadow sender and the comparison thread."""
        for m in self._models.values():
            if m.sender is not None:
                await m.sender.aclose()
                m.sender = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- internals -------------------------------------------------------------------------------

    def _model(self, name: str) -> _Model:
        self._repo.versions_of(name)  # raises ModelNotFound
        m = self._models.get(name)
        if m is None:
            m = self._models[name] = self._new_model(name)
        return m

    def _new_model(self, name: str) -> _Model:
        m = _Model(name)
        if name in self._saved:
            try:
                m.override = _routes_of_json(self._saved[name])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("model %s: ignoring the saved routes in %s (%s)", name, self.state_dir, exc)
        return m

    def _load_saved(self) -> dict[str, Any]:
        if self.state_dir is None:
            return {}
        path = self.state_dir / "routes.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read the saved routes %s (%s): starting from the config's routes", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, m: _Model) -> None:
        """Write every model's admin routes to the state folder (a failure is logged: the change holds in memory)."""
        if self.state_dir is None:
            return
        self._saved[m.name] = _routes_json(m.override)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_dir / "routes.json", json.dumps(self._saved, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("model %s: cannot save the routes to %s (%s); they hold until the server restarts", m.name, self.state_dir, exc)

    @staticmethod
    def _serving_numbers(m: _Model) -> tuple[int, ...]:
        return tuple(v.version for v in m.serving)

    @staticmethod
    def _routes(base: Routes | None, **changes: Any) -> Routes:
        """``base`` (or no routes) with ``changes``; InvalidInput when they are not valid routes."""
        try:
            return replace(base or Routes(), **changes)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    def _change(self, m: _Model, routes: Routes) -> RouteState:
        m.history.append(m.override)
        del m.history[:-MAX_HISTORY]
        m.override = routes
        m.generation += 1
        self._rebuild(m)
        self._save(m)
        log.info("model %s: routes set to %s", m.name, routes)
        return self.state(m.name)

    def _rebuild(self, m: _Model) -> None:
        """Compile the model's routes and swap the table (one assignment)."""
        routes = m.effective
        shadow_config = m.config.routing.shadow if m.config is not None and m.config.routing is not None else ShadowConfig()
        shadow = next((v for v in m.serving if routes is not None and v.version == routes.shadow_version), None)
        sender = m.sender
        if sender is not None and (shadow is None or sender.shadow is not shadow or sender.config != shadow_config):
            self._retire(sender)
            sender = None
        if shadow is not None and sender is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="surge-shadow-compare")
            log_dir = shadow.model_path.parent.parent if hasattr(shadow, "model_path") else None
            sender = ShadowSender(m.name, shadow, shadow_config, self._pool, pairs=m.pairs, log_dir=log_dir)
        m.sender = sender
        wanted = (routes is not None and (routes.weights or routes.shadow_version)) or m.feedback is not None
        entry = compile_entry(routes, [(v.version, v) for v in m.serving], {"sender": sender, "feedback": m.feedback}) if wanted else None
        table = dict(self.table)
        if entry is None:
            table.pop(m.name, None)
        else:
            table[m.name] = entry
        self.table = table

    def _retire(self, sender: ShadowSender) -> None:
        try:
            task = asyncio.get_running_loop().create_task(sender.aclose())
        except RuntimeError:  # no loop (tests building tables by hand): nothing is running either
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def snapshot(self) -> list[tuple[str, Routes | None, int, int, ShadowSender | None, list[PairStats], FeedbackIndex | None]]:
        """Per model: name, routes, generation, pending shadow requests, sender, pair counters, feedback (any thread)."""
        out = []
        for m in list(self._models.values()):
            sender = m.sender
            out.append((m.name, m.effective, m.generation, sender.pending() if sender is not None else 0, sender, list(m.pairs.values()), m.feedback))
        return out
