"""The versioned model repository: scan, load, unload, reload while serving, and look versions up.

Layout (Triton's)::

    <repository>/<model>/config.toml        optional; see config.py
    <repository>/<model>/<n>/model.onnx     numbered version folders (model.py for the python backend)

Control modes (Triton's names):

- ``none``: load every model at start; RepositoryModelLoad/Unload answer UNAVAILABLE in Triton's words (model_analyzer
  recognises them) with Surge's hint.
- ``explicit``: load only what ``--load-model`` names at start, then only through RepositoryModelLoad /
  RepositoryModelUnload (and ``surge`` CLI calls of them).
- ``poll``: like ``none`` at start, then every ``poll_interval_s`` the repository is re-read and changed,
  new or removed models are reloaded, loaded or unloaded.

A reload loads the new versions beside the old ones, warms them, swaps the model's version table in one
assignment (requests see the old table or the new, never a mix), then drains and frees the old versions.
A version that fails to reload keeps its old, working instance serving. A model that fails to load is
UNAVAILABLE with its reason and never takes the server down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig, load_model_config
from .errors import ConfigError, InvalidInput, ModelNotFound, ModelNotReady, RepositoryFixed, VersionNotFound, without_root
from .execution.model import ModelVersion, State

__all__ = ["CONTROL_MODES", "IndexEntry", "ModelRepository", "layout_warnings", "parse_version"]

log = logging.getLogger("surge.repository")

CONTROL_MODES = ("none", "explicit", "poll")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of RepositoryIndex: a model version (or a model with no version loaded: version "")."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(slots=True)
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    serving: tuple[ModelVersion, ...] = ()  # READY versions, ascending; swapped in one assignment
    reason: str = ""  # why the model as a whole is unavailable (config error, no versions, unloaded)
    fingerprint: tuple[Any, ...] = ()
    wanted: bool = False  # the control mode wants it loaded
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelRepository:
    """Owns every model of one repository folder. All methods run on the event loop."""

    def __init__(
        self, root: Path, *, control_mode: str = "none", load_models: tuple[str, ...] = (), poll_interval_s: float = 15.0,
        drain_timeout_s: float = 30.0, metrics: bool = False, owns: Callable[[str], bool] | None = None,
    ) -> None:
        """``metrics``: versions keep Prometheus histograms and counters (``surge serve --metrics-port -1`` turns them off);
        ``owns``: serve only the models it accepts (an engine process serves its device's models, ``engine/devices.py``)."""
        if control_mode not in CONTROL_MODES:
            raise ConfigError(f"model control mode must be one of {', '.join(CONTROL_MODES)}, got {control_mode!r}")
        self.root = root
        self.control_mode = control_mode
        self._load_models = load_models
        self._poll_interval_s = poll_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._metrics = metrics
        self._owns = owns
        self._models: dict[str, _Model] = {}
        self.on_serving_change: Callable[[str, tuple[ModelVersion, ...]], None] | None = None
        """Called (on the loop, in the same step) whenever a model's serving versions are swapped: the router's hook."""
        self._poll_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Scan the repository and load what the control mode asks for; starts polling in ``poll`` mode."""
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")
        names = await asyncio.to_thread(self._scan_names)
        for name in names:
            self._models[name] = _Model(name)
        if self.control_mode == "explicit":
            unknown = sorted(set(self._load_models) - set(names))
            if unknown:
                raise ConfigError(f"--load-model names {unknown} that are not in {self.root} (it has {names})")
            targets = list(self._load_models)
        else:
            targets = names
        await asyncio.gather(*(self._load_logged(name) for name in targets))
        if self.control_mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_forever(), name="surge-repository-poll")

    async def aclose(self) -> None:
        """Stop polling, drain and free every version."""
        if self._poll_task is not None:
            self._poll_task.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(v.aclose(self._drain_timeout_s) for m in self._models.values() for v in m.versions.values()), return_exceptions=True)

    # -- queries (hot path: dictionary lookups only) ---------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version that serves ``(name, version)``; "" means the highest READY version.

        Raises ModelNotFound, InvalidInput (non-numeric version), VersionNotFound or ModelNotReady.
        """
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' is not in the repository" + (f"; models: {sorted(self._models)}" if len(self._models) < 20 else ""))
        if not version:
            if model.serving:
                return model.serving[-1]
            raise ModelNotReady(f"model '{name}' is not ready: {self._why_not_ready(model)}")
        number = parse_version(version)
        for candidate in model.serving:
            if candidate.version == number:
                return candidate
        loaded = model.versions.get(number)
        if loaded is None:
            served = sorted(model.versions)
            raise VersionNotFound(f"model '{name}' has no version {number}" + (f"; versions: {served}" if served else f" ({self._why_not_ready(model)})"))
        raise ModelNotReady(f"model '{name}' version {number} is {loaded.state.lower()}" + (f": {loaded.reason}" if loaded.reason else ""))

    def model_names(self) -> list[str]:
        """Every model in the repository, loaded or not, sorted."""
        return sorted(self._models)

    def versions_of(self, name: str) -> list[ModelVersion]:
        """Every version object of a model (any state), ascending; raises ModelNotFound."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return [model.versions[v] for v in sorted(model.versions)]

    def all_versions(self) -> list[ModelVersion]:
        """Every version object in the models' tables (any state), by model name then version."""
        return [m.versions[v] for name in sorted(self._models) for m in (self._models[name],) for v in sorted(m.versions)]

    def ready(self) -> bool:
        """True when every model the control mode wants is serving at least one version."""
        return all(m.serving for m in self._models.values() if m.wanted)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """RepositoryIndex rows: one per version of loaded models, one per model otherwise."""
        rows: list[IndexEntry] = []
        for name in sorted(self._models):
            model = self._models[name]
            if model.versions:  # a failed reload (a broken config edit) shows on the versions that keep serving
                failed = f"the last load failed, this version keeps serving: {model.reason}" if model.reason else ""
                rows += [IndexEntry(name, v.version_str, v.state, v.reason or failed) for v in (model.versions[k] for k in sorted(model.versions))]
            else:
                rows.append(IndexEntry(name, "", State.UNAVAILABLE, model.reason or "not loaded"))
        return [r for r in rows if r.state == State.READY] if ready_only else rows

    @staticmethod
    def _why_not_ready(model: _Model) -> str:
        reasons = [f"version {v.version} {v.state.lower()}" + (f" ({v.reason})" if v.reason else "") for v in model.versions.values()]
        return "; ".join(reasons) or model.reason or "not loaded"

    # -- changes ---------------------------------------------------------------------------------

    async def load(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) a model: new versions beside old, swap, then drain and free the replaced ones.

        Raises ModelNotFound for a name with no folder, ConfigError for an invalid config; a version that
        fails to load is reported through ``index`` and ``get``, not raised, unless no version loaded.
        """
        check_model_name(name)  # confined to the repository root: no separators, '..', absolute paths
        check_load_overrides(overrides)
        path = self.root / name
        if not await asyncio.to_thread(path.is_dir):
            raise ModelNotFound(f"model '{name}' has no folder in the repository")
        model = self._models.setdefault(name, _Model(name))
        async with model.lock:
            model.wanted = True
            fingerprint = await asyncio.to_thread(_fingerprint, path)  # first: a change made while reading is seen by the next poll
            try:
                config, on_disk = await asyncio.to_thread(self._read_model, path, overrides)
            except Exception as exc:
                model.fingerprint = fingerprint  # poll mode tries (and logs) a broken edit once, until the files change again
                model.reason = without_root(str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}", self.root)
                if isinstance(exc, ConfigError):
                    raise ConfigError(model.reason) from None
                raise
            model.fingerprint = fingerprint
            selected = config.version_policy.select(on_disk)
            if not selected:
                model.reason = f"no version folders (numbered sub-folders holding {config.model_filename}) match the version policy; found {on_disk}"
                log.error("model %s: %s", name, model.reason)
                raise ConfigError(f"model '{name}': {model.reason}")
            fresh = {v: ModelVersion(config, v, path / str(v) / config.model_filename, metrics=self._metrics) for v in selected}
            await asyncio.gather(*(version.load() for version in fresh.values()))
            old = model.versions
            table: dict[int, ModelVersion] = {}
            kept: list[ModelVersion] = []  # versions whose reload failed: the old instance keeps serving
            for number, version in fresh.items():
                previous = old.get(number)
                if version.state != State.READY and previous is not None and previous.state == State.READY:
                    log.error("model %s version %d: reload failed (%s); the previous instance keeps serving", name, number, version.reason)
                    table[number] = previous
                    kept.append(version)
                else:
                    table[number] = version
            model.versions = table
            model.serving = tuple(table[v] for v in sorted(table) if table[v].state == State.READY)
            self._notify(name, model.serving)
            model.reason = ""
            retired = [v for v in old.values() if table.get(v.version) is not v]
            for version in retired:
                self._spawn(version.aclose(self._drain_timeout_s))
            if kept:  # the caller asked for new versions and did not get them: say so (Triton does too), and in the index
                failed = kept[0]
                model.reason = f"version {failed.version}: {failed.reason}"
                message = f"model '{name}' version {failed.version} failed to reload ({failed.reason}); the previous version keeps serving"
                raise ConfigError(message) if isinstance(failed.error, ConfigError) else ModelNotReady(message)
            if not model.serving:
                raise ModelNotReady(f"model '{name}' failed to load: {self._why_not_ready(model)}")

    async def unload(self, name: str) -> None:
        """Stop serving a model: new requests get UNAVAILABLE at once, in-flight ones finish, then it is freed."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        async with model.lock:
            model.wanted = False
            old, model.versions, model.serving = model.versions, {}, ()
            self._notify(name, model.serving)
            model.reason = "unloaded"
            await asyncio.gather(*(v.aclose(self._drain_timeout_s) for v in old.values()))
        log.info("model %s unloaded", name)

    async def refresh_statistics(self) -> None:
        """Bring the versions' statistics up to date before a ModelStatistics answer: in process they always are (a
        front end's repository, ``engine/remote.py``, copies its engines' counters in here)."""

    def check_mutable(self, what: str) -> None:
        """Raise RepositoryFixed (UNAVAILABLE, Triton's message) unless the control mode allows repository changes."""
        if self.control_mode == "none":
            raise RepositoryFixed(
                f"explicit model load / unload is not allowed if polling is enabled: {what} needs --model-control-mode explicit "
                "or poll (this server runs with 'none')"
            )

    def _notify(self, name: str, serving: tuple[ModelVersion, ...]) -> None:
        if self.on_serving_change is not None:
            self.on_serving_change(name, serving)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- filesystem (run in a thread) ------------------------------------------------------------

    def _scan_names(self) -> list[str]:
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [n for n in names if self._owns(n)] if self._owns is not None else names

    def _read_model(self, path: Path, overrides: Mapping[str, Any] | None) -> tuple[ModelConfig, list[int]]:
        confine(self.root, path, f"model folder '{path.name}'")
        config = load_model_config(path, overrides)
        versions = _versions_on_disk(path)
        for v in versions:  # no symlink (or default_model_filename) may lead a version's file outside the root
            confine(self.root, path / str(v) / config.model_filename, f"model '{path.name}' version {v}'s {config.model_filename}")
        return config, versions

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.poll_once()
            except Exception:  # keep polling whatever one round hit
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Apply repository changes: load new models, reload changed ones, unload removed ones."""
        names = set(await asyncio.to_thread(self._scan_names))
        for name in sorted(names - self._models.keys()):
            log.info("poll: new model %s", name)
            await self._load_logged(name)
        for name in sorted(self._models.keys() - names):
            log.info("poll: model %s removed from the repository", name)
            await self.unload(name)
            self._models.pop(name, None)
        for name in sorted(names & self._models.keys()):
            model = self._models[name]
            fingerprint = await asyncio.to_thread(_fingerprint, self.root / name)
            if fingerprint != model.fingerprint:
                log.info("poll: model %s changed; reloading", name)
                await self._load_logged(name)

    async def _load_logged(self, name: str) -> None:
        try:
            await self.load(name)
        except Exception as exc:  # reported through index/get; polling goes on
            log.error("model %s did not load: %s", name, exc)


def parse_version(text: str) -> int:
    """A model version as a request names it: ASCII digits only ("²" and "١" are digits to ``str.isdigit``, not
    versions); raises InvalidInput. The one parser for every entry point (gRPC and REST)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInput(f"model version must be a positive integer, got {shown!r} (ASCII digits only)")
    return int(text)


def _versions_on_disk(path: Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def _fingerprint(path: Path) -> tuple[Any, ...]:
    """What poll mode compares: names, sizes and mtimes of the config and version folders' files."""
    items: list[tuple[str, int, int]] = []
    for entry in sorted(path.rglob("*")):
        if entry.is_file() and "__pycache__" not in entry.parts:
            stat = entry.stat()
            items.append((str(entry.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(items)


#: File names a runtime serves from a version folder (``default_model_filename`` may name others).
_MODEL_SUFFIXES = (".onnx", ".pt", ".pt2", ".plan")


def _is_version_folder(path: Path) -> bool:
    return path.is_dir() and path.name.isascii() and path.name.isdigit()


def _looks_like_model_file(path: Path) -> bool:
    return path.is_file() and (path.suffix in _MODEL_SUFFIXES or path.name == "model.py")


def layout_warnings(root: Path) -> list[str]:
    """Mistakes in a repository's layout that loading would only report as missing models, one sentence each.

    Raises ConfigError when ``root`` is not a folder. Reads names only, never a model file.
    """
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a directory" if root.exists() else f"model repository {root} does not exist")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if (root / "config.toml").is_file() or any(_is_version_folder(p) for p in entries):
        return [f"{root} looks like a model folder (it holds config.toml or numbered version folders): "
                f"the repository is the folder above it (--model-repository {root.parent})"]
    models = [p for p in entries if p.is_dir()]
    if not models:
        return [f"model repository {root} has no model folders: nothing will be served until one is added (layout: MODEL/1/model.onnx)"]
    warnings = [f"{p.name} sits in the repository root, outside any model folder: move it to MODEL/1/{p.name}"
                for p in entries if _looks_like_model_file(p)]
    for model in models:
        for path in sorted(model.iterdir()):
            if _looks_like_model_file(path):
                warnings.append(f"model {model.name}: {path.name} is outside a version folder: move it to {model.name}/1/{path.name}")
    return warnings


# -- confinement: names and paths from requests stay inside the repository -----------------------------------------


def check_model_name(name: str) -> None:
    """A model name from a request must be one plain folder name; raises InvalidInput otherwise."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in ("/", "\\", "\0"))
        or len(name.encode("utf-8", "replace")) > 255
    ):
        raise InvalidInput(
            f"model name {name!r} is not a folder name of the repository (no path separators, no leading '.', no NUL, at most 255 bytes)"
        )


def confine(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved (symlinks followed); raises ConfigError when it lies outside ``root`` resolved."""
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and not resolved.is_relative_to(resolved_root):
        raise ConfigError(f"{what} resolves outside the model repository; refused")
    return resolved


def check_load_overrides(overrides: Mapping[str, Any] | None) -> None:
    """A load request may not opt into pickle loading or point the model file elsewhere; raises InvalidInput."""
    if not overrides:
        return
    parameters = overrides.get("parameters") or {}
    if isinstance(parameters, Mapping) and "allow_pickle" in parameters:
        raise InvalidInput("allow_pickle can only be set in the model's config.toml on the server, not in a load request")
    filename = overrides.get("default_model_filename")
    if isinstance(filename, str) and (filename in (".", "..") or any(c in filename for c in ("/", "\\", "\0"))):
        raise InvalidInput(f"default_model_filename {filename!r} must be a file name inside the version folder")
