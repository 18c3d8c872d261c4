"""Progressive rollouts run by the server: advance step by step while every gate holds, roll back at once on a breach.

A rollout (``rollout_plan.Plan``) moves the requests of a model that name no version from the version
answering them now (``from``) to a new one (``to``) through declared steps: ``shadow`` (every routed
request is mirrored to the new version and compared; it answers nothing) and rising percentages of a
weighted, sticky split, ending at 100. At each step the controller looks at the window's figures every
``tick`` and decides (``rollout_plan.check_gates``/``verdict``):

- a gate **breached** with significance at every look for ``window / 10`` seconds (at least two looks:
  observations close in time are not independent, and one stalled process would otherwise look like a
  significant difference), or the new version **not serving** any more (unloaded, failed, drained):
  **roll back** at once: every request goes to ``from`` again, the shadow is removed;
- every gate **holds** and the step's window has passed: **advance** (after the 100% step: **complete**);
- otherwise keep looking (``waiting for data`` while gates lack samples; ``unsure`` while a gate is
  beyond its bound without significance).

A step change is one route-table swap (``Traffic.set_routes``): requests in flight finish on the version
that took them, new ones see the new table; no request fails for it.

Figures: the controller reads the server's own metrics page (the families ``surge ab`` reads, filtered to
the model), keeps the page of the step's start and analyses the difference with ``ab.analyse``: in split
steps each version's answered requests (``surge_requests_total``, ``surge_request_duration_seconds``,
feedback counters), in shadow steps the pair's comparison counters and execution-time histograms
(``surge_shadow_*``), and the drift gauges. The 100% step checks the absolute gates only: with no request
left to the current version there is nothing to compare with under the same load (figures of an earlier
window would compare two different moments of a shared machine).

Persistence: the state of every rollout is written atomically to ``rollouts.json`` in the state folder
(the model repository's ``.surge/``) at every decision, and every decision is appended to
``rollout-audit.jsonl`` there (one JSON object per line, never rewritten). A restarted server resumes a
running or paused rollout at the step it had reached, with a fresh window (the routes themselves are
restored by ``Traffic`` from ``routes.json``). Every decision is also one log line with its reasons
(logger ``surge.rollout``) and a counter; the step, the new version's share and each gate's value are
gauges (``RolloutCollector``).

Under ``--workers`` the first worker runs the controller (``owner``); the others forward the rollout
calls to it, and its route changes are applied by every worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..errors import InvalidInput, ModelNotFound
from .ab import Samples, Variant, analyse, difference, parse_samples
from .routing import Routes
from .rollout_plan import Figures, GateResult, Plan, check_gates, parse_duration, parse_gate, parse_steps, verdict
from ..files import write_atomic
from .traffic import Traffic

__all__ = ["ACTIVE", "Rollout", "RolloutCollector", "Rollouts", "filter_page", "merge_samples"]

log = logging.getLogger("surge.rollout")

#: States in which the controller keeps the rollout's routes and looks at it.
ACTIVE = ("running", "paused")
#: The metric families the gates read (every line of the page not starting with one is dropped before parsing).
_FAMILIES = ("surge_requests_total", "surge_request_duration_seconds_bucket", "surge_shadow_", "surge_feedback_", "surge_drift_psi", "surge_drift_windows_total")
#: Finished rollouts kept in the state file and the status (the audit file keeps everything).
MAX_FINISHED = 64


def filter_page(text: str, models: set[str]) -> str:
    """The lines of a metrics page the gates of ``models``' rollouts read (parsing the rest would cost for nothing)."""
    wanted = tuple(f'model="{m}"' for m in models)
    return "".join(line + "\n" for line in text.splitlines() if line.startswith(_FAMILIES) and any(w in line for w in wanted))


#: Gauges of several workers combine by their largest value (counters and histogram buckets add up).
_MAX_GAUGES = ("surge_shadow_max_abs_difference", "surge_drift_psi")


def merge_samples(pages: list[Samples]) -> Samples:
    """The samples of several workers' pages as one server's."""
    if len(pages) == 1:
        return pages[0]
    out: Samples = {}
    for samples in pages:
        for key, value in samples.items():
            if key in out:
                out[key] = max(out[key], value) if key[0] in _MAX_GAUGES else out[key] + value
            else:
                out[key] = value
    return out


@dataclass(slots=True)
class Rollout:
    """One rollout's state (what ``rollouts.json`` keeps, plus the window being observed)."""

    plan: Plan
    source: str  # "admin" or "config"
    state: str = "running"  # running, paused, completed, rolled_back, aborted
    step: int = 0
    status: str = "starting"
    reason: str = ""
    started_unix_s: float = field(default_factory=time.time)
    updated_unix_s: float = field(default_factory=time.time)
    decisions: int = 0
    gates: list[GateResult] = field(default_factory=list)
    # the window (not persisted: a resumed rollout starts its step's window again)
    window_start: Samples | None = None
    window_started: float = 0.0
    breach_since: float | None = None

    @property
    def step_name(self) -> str:
        return self.plan.steps[self.step]

    def new_share(self) -> float:
        """The new version's share of the requests naming no version now (0 in a shadow step and when finished back)."""
        if self.state in ("rolled_back", "aborted"):
            return 0.0
        if self.state == "completed":
            return 1.0
        return 0.0 if self.step_name == "shadow" else float(self.step_name) / 100.0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.window_started if self.window_start is not None and self.state == "running" else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "source": self.source, "state": self.state, "step": self.step, "status": self.status, "reason": self.reason,
                "started_unix_s": self.started_unix_s, "updated_unix_s": self.updated_unix_s, "decisions": self.decisions}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        r = cls(Plan.from_json(data["plan"]), str(data["source"]), str(data["state"]), int(data["step"]), str(data["status"]), str(data["reason"]),
                float(data["started_unix_s"]), float(data["updated_unix_s"]), int(data["decisions"]))
        if not 0 <= r.step < len(r.plan.steps):
            raise ValueError(f"step {r.step} outside the plan's {len(r.plan.steps)} steps")
        return r


class Rollouts:
    """Every model's rollout; the controller task. Event loop only.

    ``page``: returns the server's metrics pages (Prometheus text), e.g. rendered in a thread; under
    ``--workers`` one per worker (summed here: ``merge_samples``). ``broadcast(name, routes)``: applies a route change made
    here to the other workers (None: one process). ``state_dir`` None: nothing is persisted.
    """

    def __init__(
        self, traffic: Traffic, page: Callable[[], Awaitable[list[str]]] | None, state_dir: Path | None, *,
        broadcast: Callable[[str, Routes], Coroutine[Any, Any, None]] | None = None, tick_s: float | None = None,
    ) -> None:
        self._traffic = traffic
        self._page = page
        self._state_dir = state_dir
        self._broadcast = broadcast
        self._tick_s = tick_s
        self._rollouts: dict[str, Rollout] = {}
        self._finished: list[Rollout] = []
        self.decisions: dict[tuple[str, str], int] = {}
        """(model, decision) -> count since start (the ``surge_rollout_decisions_total`` counter)."""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pending: set[asyncio.Task[Any]] = set()
        traffic.listeners.append(self._serving_changed)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume the saved rollouts and start the controller task (on the loop, after the repository loaded)."""
        for r in self._load():
            if r.state in ACTIVE:
                self._rollouts[r.plan.model] = r
                self._decide(r, "resume", f"server restarted: resuming at step {r.step + 1}/{len(r.plan.steps)} ({r.step_name}) with a fresh window")
                if r.state == "running":
                    self._apply_step(r)
            else:
                self._finished.append(r)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="surge-rollout")
        for name, numbers in self._traffic_serving().items():  # config.toml [rollout]s of the models loaded at start
            self._serving_changed(name, numbers)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- admin operations (each raises ModelNotFound or InvalidInput) ------------------------------

    def begin(self, model: str, to_version: int, steps: Any, window: Any, gates: list[str], *, min_samples: int = 0, alpha: float = 0.0,
              source: str = "admin") -> Rollout:
        """Start rolling ``model`` out to ``to_version`` (which must be serving) from the version answering now."""
        state = self._traffic.state(model)  # raises ModelNotFound
        current = self._rollouts.get(model)
        if current is not None:
            raise InvalidInput(f"model '{model}': a rollout to version {current.plan.to_version} is {current.state}; abort it or let it finish first")
        if to_version not in state.serving:
            raise InvalidInput(f"model '{model}': version {to_version} is not serving (serving: {list(state.serving)}); load it before rolling it out")
        from_version = self._answering(state.routes, state.serving, to_version)
        if from_version is None:
            raise InvalidInput(f"model '{model}': no other version answers its requests now (serving: {list(state.serving)}); nothing to roll out from")
        try:
            plan = Plan(model, from_version, to_version, parse_steps(steps), window if isinstance(window, float) else parse_duration(window),
                        tuple(parse_gate(g) for g in gates), min_samples or 100, alpha or 0.01)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if self._page is None and plan.gates:
            raise InvalidInput("rollout gates read the server's metrics, which are off (--metrics-port -1); start the server with metrics")
        r = self._rollouts[model] = Rollout(plan, source)
        gates_text = ", ".join(g.text for g in plan.gates) or "none"
        self._decide(r, "start", f"v{from_version} -> v{to_version}, steps {','.join(plan.steps)}, window {plan.window_s:g} s, gates {gates_text}, "
                                 f"min {plan.min_samples} samples, alpha {plan.alpha:g} ({source})")
        self._apply_step(r)
        return r

    def status(self, model: str) -> Rollout:
        """The model's rollout: the active one, else the last finished one."""
        self._traffic.state(model)  # raises ModelNotFound
        r = self._rollouts.get(model) or next((f for f in reversed(self._finished) if f.plan.model == model), None)
        if r is None:
            raise InvalidInput(f"model '{model}' has no rollout; start one with surge rollout start {model} --to VERSION")
        return r

    def pause(self, model: str) -> Rollout:
        r = self._active(model)
        if r.state == "paused":
            return r
        r.state = "paused"
        self._decide(r, "pause", f"paused at step {r.step + 1}/{len(r.plan.steps)} ({r.step_name}): the routes stay, nothing is decided")
        return r

    def resume(self, model: str) -> Rollout:
        r = self._active(model)
        if r.state == "running":
            return r
        r.state = "running"
        r.window_start = None
        self._decide(r, "resume", f"resumed at step {r.step + 1}/{len(r.plan.steps)} ({r.step_name}) with a fresh window")
        self._apply_step(r)
        return r

    def abort(self, model: str) -> Rollout:
        r = self._active(model)
        self._finish(r, "aborted", "abort", f"aborted by an admin at step {r.step + 1} ({r.step_name}): every request to v{r.plan.from_version}")
        return r

    def promote(self, model: str) -> Rollout:
        r = self._active(model)
        self._finish(r, "completed", "promote", f"promoted by an admin at step {r.step + 1} ({r.step_name}): every request to v{r.plan.to_version}")
        return r

    def rollouts(self) -> list[Rollout]:
        """Active rollouts, then the finished ones kept, oldest first (any thread reads a copy)."""
        return [*list(self._rollouts.values()), *list(self._finished)]

    def current(self) -> list[Rollout]:
        """Per model, its active rollout, else its latest finished one (any thread)."""
        out: dict[str, Rollout] = {}
        for r in [*list(self._finished), *list(self._rollouts.values())]:  # later entries win
            out[r.plan.model] = r
        return list(out.values())

    # -- the controller ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            running = [r for r in self._rollouts.values() if r.state == "running"]
            if running and self._page is not None:
                try:
                    models = {r.plan.model for r in running}
                    samples = merge_samples([parse_samples(filter_page(text, models)) for text in await self._page()])
                except Exception:  # noqa: BLE001 - a failed look is logged and retried; the rollout holds meanwhile
                    log.exception("rollout: cannot read the metrics")
                    samples = None
                if samples is not None:
                    now = time.monotonic()
                    for r in running:
                        if r.state == "running" and self._rollouts.get(r.plan.model) is r:
                            self._look(r, samples, now)
            elif running:  # no metrics: gates cannot be read; a plan without gates advances on its windows
                now = time.monotonic()
                for r in running:
                    self._look(r, {}, now)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._tick(running))
            except TimeoutError:
                pass

    def _tick(self, running: list[Rollout]) -> float:
        if self._tick_s is not None:
            return self._tick_s
        return min([max(0.2, min(2.0, r.plan.window_s / 20)) for r in running] or [1.0])

    def _look(self, r: Rollout, samples: Samples, now: float) -> None:
        if r.window_start is None:
            r.window_start, r.window_started = samples, now
            r.status = "observing"
            return
        fig = self._figures(r, difference(samples, r.window_start), samples)
        r.gates = check_gates(r.plan.gates, r.step_name, fig, min_samples=r.plan.min_samples, alpha=r.plan.alpha)
        decision, reasons = verdict(r.gates)
        elapsed = now - r.window_started
        if decision == "breach":
            if r.breach_since is None:
                r.breach_since = now
            if now - r.breach_since < r.plan.window_s / 10 or r.breach_since == now:
                r.status, r.reason = f"breach seen, confirming ({elapsed:.0f}/{r.plan.window_s:g} s)", reasons
                return
            self._finish(r, "rolled_back", "rollback", f"step {r.step + 1} ({r.step_name}) after {elapsed:.1f} s: {reasons}")
            return
        r.breach_since = None
        if decision == "hold" and elapsed >= r.plan.window_s:
            if r.step + 1 == len(r.plan.steps):
                self._finish(r, "completed", "complete", f"step {r.step + 1} ({r.step_name}) held {elapsed:.1f} s: {reasons}")
                return
            r.step += 1
            r.window_start = None
            self._decide(r, "advance", f"to step {r.step + 1}/{len(r.plan.steps)} ({r.step_name}) after {elapsed:.1f} s: {reasons}")
            self._apply_step(r)
            return
        r.status = ("waiting for data" if decision == "waiting" else "unsure" if decision == "unsure" else "holding") + f" ({elapsed:.0f}/{r.plan.window_s:g} s)"
        r.reason = reasons if decision != "hold" else r.reason

    def _figures(self, r: Rollout, window: Samples, now: Samples) -> Figures:
        plan = r.plan
        base_v, new_v = str(plan.from_version), str(plan.to_version)
        fig = Figures(Variant(base_v), Variant(new_v))
        if r.step_name == "shadow":
            for s in analyse(window, plan.model).shadows:
                if s.primary == base_v and s.shadow == new_v:
                    fig.shadow_compared, fig.shadow_agreed = s.compared, s.agreed
                    fig.new.requests, fig.new.errors = s.compared + s.failed, s.failed
                    fig.base.requests = s.compared + s.failed
            for (name, labels), value in now.items():  # a gauge: the largest difference seen by the pair
                d = dict(labels)
                if name == "surge_shadow_max_abs_difference" and d.get("primary") == base_v and d.get("shadow") == new_v:
                    fig.max_diff = max(fig.max_diff or 0.0, value)
            latency: dict[str, list[tuple[float, float]]] = {"primary": [], "shadow": []}
            for (name, labels), value in window.items():
                d = dict(labels)
                if name == "surge_shadow_latency_seconds_bucket" and d.get("model") == plan.model and d.get("primary") == base_v and d.get("shadow") == new_v:
                    latency[d["role"]].append((float(d["le"]), value))
            for variant, role in ((fig.base, "primary"), (fig.new, "shadow")):
                _set_histogram(variant, latency[role])
        else:
            report = analyse(window, plan.model, baseline=base_v)
            by_version = {v.version: v for v in report.variants}
            fig.base = by_version.get(base_v, fig.base)
            fig.new = by_version.get(new_v, fig.new)
        psi: dict[str, float] = {}
        for (name, labels), value in now.items():
            d = dict(labels)
            if name == "surge_drift_psi" and d.get("model") == plan.model:
                psi[d["version"]] = max(psi.get(d["version"], 0.0), value)
            elif name == "surge_drift_windows_total" and d.get("model") == plan.model and d.get("version") == new_v:
                fig.drift_windows = int(window.get((name, labels), 0.0))
        fig.psi, fig.base_psi = psi.get(new_v), psi.get(base_v)
        return fig

    # -- decisions -------------------------------------------------------------------------------

    def _serving_changed(self, name: str, serving: tuple[int, ...]) -> None:
        """A version of ``name`` started or stopped serving (Traffic's listener, on the loop)."""
        r = self._rollouts.get(name)
        if r is not None and r.state in ACTIVE and r.plan.to_version not in serving:
            self._finish(r, "rolled_back", "rollback", f"version {r.plan.to_version} stopped serving (unloaded, failed or drained) at step "
                                                       f"{r.step + 1} ({r.step_name})")
        elif r is None and serving and self._task is not None:
            config = self._traffic.config_of(name)
            rc = config.rollout if config is not None else None
            if rc is not None and rc.to_version in serving and not any(f.plan.model == name and f.plan.to_version == rc.to_version for f in self._finished):
                try:
                    self.begin(name, rc.to_version, rc.steps, rc.window_s, list(rc.gates), min_samples=rc.min_samples, alpha=rc.alpha, source="config")
                except InvalidInput as exc:
                    log.warning("model %s: config.toml's [rollout] to version %d cannot start: %s", name, rc.to_version, exc)

    def _finish(self, r: Rollout, state: str, decision: str, reasons: str) -> None:
        r.state = state
        self._rollouts.pop(r.plan.model, None)
        self._finished.append(r)
        del self._finished[:-MAX_FINISHED]
        self._decide(r, decision, reasons)
        version = r.plan.to_version if state == "completed" else r.plan.from_version
        self._set_routes(r, Routes(weights=((version, 1.0),)))

    def _apply_step(self, r: Rollout) -> None:
        p = r.plan
        step = r.step_name
        if step == "shadow":
            routes = Routes(weights=((p.from_version, 1.0),), shadow_version=p.to_version)
        elif step == "100":
            routes = Routes(weights=((p.to_version, 1.0),))
        else:
            share = float(step)
            routes = Routes(weights=tuple(sorted(((p.from_version, 100.0 - share), (p.to_version, share)))))
        r.window_start, r.breach_since = None, None
        r.status = "observing"
        self._set_routes(r, routes)
        self._wake.set()

    def _set_routes(self, r: Rollout, routes: Routes) -> None:
        try:
            self._traffic.set_routes(r.plan.model, routes)
        except InvalidInput as exc:  # a version stopped serving meanwhile: the listener decides what follows
            log.warning("model %s: rollout cannot set the routes %s: %s", r.plan.model, routes, exc)
            return
        if self._broadcast is not None:
            task = asyncio.get_running_loop().create_task(self._broadcast(r.plan.model, routes))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _decide(self, r: Rollout, decision: str, reasons: str) -> None:
        """Record a decision: log line, counter, audit line, state file."""
        r.decisions += 1
        r.reason = reasons
        r.status = {"rollback": "rolled back", "abort": "aborted", "complete": "completed", "promote": "completed", "pause": "paused"}.get(decision, "observing")
        r.updated_unix_s = time.time()
        key = (r.plan.model, decision)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        (log.warning if decision == "rollback" else log.info)(
            "rollout %s v%d -> v%d: %s at step %d/%d (%s): %s", r.plan.model, r.plan.from_version, r.plan.to_version, decision.upper(),
            r.step + 1, len(r.plan.steps), r.step_name, reasons)
        if self._state_dir is None:
            return
        entry = {"time": r.updated_unix_s, "model": r.plan.model, "from_version": r.plan.from_version, "to_version": r.plan.to_version,
                 "decision": decision, "step": r.step, "step_name": r.step_name, "state": r.state, "reasons": reasons,
                 "gates": [g.to_json() for g in r.gates]}
        try:
            self._state_dir.mkdir(parents=True, exist_ok=True)
            with open(self._state_dir / "rollout-audit.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            write_atomic(self._state_dir / "rollouts.json", json.dumps({"rollouts": [x.to_json() for x in self.rollouts()]}, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("rollout %s: cannot write the state folder %s (%s); the rollout goes on in memory", r.plan.model, self._state_dir, exc)

    # -- helpers ---------------------------------------------------------------------------------

    def _active(self, model: str) -> Rollout:
        self._traffic.state(model)  # raises ModelNotFound
        r = self._rollouts.get(model)
        if r is None:
            raise InvalidInput(f"model '{model}' has no running or paused rollout")
        return r

    @staticmethod
    def _answering(routes: Routes, serving: tuple[int, ...], to_version: int) -> int | None:
        """The version answering the model's requests now (the one that is rolled back to)."""
        weighted = [v for v, _ in routes.weights if v in serving and v != to_version]
        if len(weighted) == 1 and to_version not in (v for v, _ in routes.weights):
            return weighted[0]
        if weighted:
            return max(weighted, key=lambda v: dict(routes.weights)[v])
        others = [v for v in serving if v != to_version]
        return others[-1] if others else None

    def _traffic_serving(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for name in self._traffic.model_names():
            try:
                serving = self._traffic.state(name).serving
            except ModelNotFound:  # removed from the repository
                continue
            if serving:
                out[name] = serving
        return out

    def _load(self) -> list[Rollout]:
        if self._state_dir is None:
            return []
        path = self._state_dir / "rollouts.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("cannot read the rollout state %s (%s): no rollout resumed", path, exc)
            return []
        out = []
        for item in data.get("rollouts", []):
            try:
                out.append(Rollout.from_json(item))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring a saved rollout in %s (%s)", path, exc)
        return out


def _set_histogram(v: Variant, points: list[tuple[float, float]]) -> None:
    points.sort()
    v.latency_les = [le for le, _ in points]
    v.latency_counts, previous = [], 0.0
    for _, c in points:
        v.latency_counts.append(max(int(round(c - previous)), 0))
        previous = c


_STATES = ("running", "paused", "completed", "rolled_back", "aborted")


class RolloutCollector:
    """The ``surge_rollout_*`` metric families, read from a ``Rollouts`` at scrape time."""

    def __init__(self, rollouts: Rollouts) -> None:
        self._rollouts = rollouts

    def collect(self) -> Iterator[Any]:
        step = GaugeMetricFamily("surge_rollout_step", "The rollout's current step (1-based; the last one once finished).", labels=["model", "from_version", "to_version"])
        share = GaugeMetricFamily("surge_rollout_new_version_share", "Share of the requests naming no version routed to the new version (0 in shadow steps).",
                                  labels=["model", "to_version"])
        state = GaugeMetricFamily("surge_rollout_state", "1 for the rollout's state (running, paused, completed, rolled_back, aborted).",
                                  labels=["model", "to_version", "state"])
        value = GaugeMetricFamily("surge_rollout_gate_value", "The gate's value over the current window (NaN before any data).", labels=["model", "gate"])
        holds = GaugeMetricFamily("surge_rollout_gate_holds", "1 when the gate holds over the current window, 0 otherwise.", labels=["model", "gate"])
        decisions = CounterMetricFamily("surge_rollout_decisions", "Rollout decisions (start, advance, complete, rollback, pause, resume, abort, promote).",
                                        labels=["model", "decision"])
        for r in self._rollouts.current():
            model = r.plan.model
            step.add_metric([model, str(r.plan.from_version), str(r.plan.to_version)], r.step + 1)
            share.add_metric([model, str(r.plan.to_version)], r.new_share())
            for s in _STATES:
                state.add_metric([model, str(r.plan.to_version), s], 1.0 if r.state == s else 0.0)
            for g in list(r.gates):
                value.add_metric([model, g.gate], float("nan") if g.value is None else g.value)
                holds.add_metric([model, g.gate], 1.0 if g.state == "holds" else 0.0)
        for (model, decision), n in list(self._rollouts.decisions.items()):
            decisions.add_metric([model, decision], n)
        yield from (step, share, state, value, holds, decisions)
