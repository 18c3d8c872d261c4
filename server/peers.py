"""Sibling front ends under ``surge serve --workers`` (see workers.py): the gRPC client a front end uses to ask the
others (``WorkerPeers``: admin route changes applied to every front end, feedback looked up across them; statistics and
repository calls go to the engines instead, ``engine/remote.py``), the metadata that marks such a call, and the front
ends' state files. Imported by the edges and the app; it starts no process."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from surge.protos import grpc_service_pb2_grpc as pb_grpc

from . import errors
from .edge.scrape import ScrapeError, fetch_page

__all__ = ["LOCAL_METADATA", "PEER_TIMEOUT_S", "WorkerPeers", "is_local_call", "read_worker_states"]

log = logging.getLogger("surge.workers")

#: Metadata a worker sends to its siblings: "answer for yourself only" (no fan-out, no broadcast).
LOCAL_METADATA = (("x-surge-worker-local", "1"),)
#: How long a worker waits for a sibling's statistics or repository call (seconds).
PEER_TIMEOUT_S = 30.0

class WorkerPeers:
    """What one worker knows of its siblings: the state folder where each writes ``worker-<i>.json``.

    Used by the servicer for ModelStatistics (sum over live workers) and the repository RPCs (applied to all).
    """

    def __init__(self, state_dir: Path, index: int) -> None:
        self.state_dir = state_dir
        self.index = index
        self.socket_path = state_dir / f"worker-{index}.sock"
        #: The private gRPC address this worker listens on (besides the shared port).
        self.private_target = f"unix:{self.socket_path}"
        self._channels: dict[str, grpc.aio.Channel] = {}

    def siblings(self) -> list[str]:
        """Private targets of the other workers that are up now (their state files)."""
        targets = []
        for info in read_worker_states(self.state_dir):
            if info.get("index") != self.index and info.get("private"):
                targets.append(info["private"])
        return targets

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target)
        return channel

    async def call_siblings(self, stub: Any, method: str, request: Any, caller: Iterable[tuple[str, Any]] | None = ()) -> list[Any]:
        """Call ``stub(channel).method`` on every sibling; UNAVAILABLE ones (restarting, stopping) are left out and logged.

        ``caller``: the metadata of the call being answered; its ``authorization`` is forwarded, so a sibling checks
        the caller's own token (the private socket has no privilege of its own: see the module docstring)."""
        metadata = LOCAL_METADATA + tuple((k, v) for k, v in caller or () if k == "authorization")
        targets = self.siblings()
        calls = [getattr(stub(self._channel(t)), method)(request, metadata=metadata, timeout=PEER_TIMEOUT_S) for t in targets]
        results = await asyncio.gather(*calls, return_exceptions=True)
        answers = []
        for target, result in zip(targets, results):
            if isinstance(result, grpc.aio.AioRpcError) and result.code() == grpc.StatusCode.UNAVAILABLE:
                log.warning("%s: worker at %s is unavailable (restarting or stopping): left out", method, target)
                continue
            if isinstance(result, BaseException):
                raise result
            answers.append(result)
        return answers

    @staticmethod
    def is_local(metadata: Iterable[tuple[str, Any]] | None) -> bool:
        """Whether a call came from a sibling front end (apply it here only)."""
        return is_local_call(metadata)

    async def shared_memory_call(self, method: str, request: Any, caller: Iterable[tuple[str, Any]] | None = ()) -> None:
        """Apply a shared-memory register or unregister that succeeded here to every live sibling front end, so a request
        that names the region reads it whichever front end its connection reached. A refusal: ``errors.Relayed``."""
        try:
            await self.call_siblings(pb_grpc.GRPCInferenceServiceStub, method, request, caller)
        except grpc.aio.AioRpcError as exc:
            raise errors.Relayed(exc.code().name, exc.details() or "") from None

    async def call_owner(self, stub: Any, method: str, request: Any, caller: Iterable[tuple[str, Any]] | None = ()) -> Any | None:
        """Call ``method`` on the first worker (which runs the rollout controller); None when this is it.

        Raises ModelNotReady while the first worker is not up (it is being restarted)."""
        if self.index == 0:
            return None
        target = next((str(i["private"]) for i in read_worker_states(self.state_dir) if i.get("index") == 0 and i.get("private")), None)
        if target is None:
            raise errors.ModelNotReady("the worker that runs rollouts is restarting; try again in a few seconds")
        metadata = LOCAL_METADATA + tuple((k, v) for k, v in caller or () if k == "authorization")
        return await getattr(stub(self._channel(target)), method)(request, metadata=metadata, timeout=PEER_TIMEOUT_S)

    async def broadcast_routes(self, name: str, routes: Any) -> None:
        """Apply a route change this worker made by itself (its rollout controller) to every sibling (``SetRoutes``).

        The call carries no caller token: under token auth the siblings refuse it (logged), so rollouts under
        ``--workers`` need auth off on the private sockets' callers' side; see docs/pages/routing-and-rollouts.md."""
        from surge.protos import surge_service_pb2 as spb
        from surge.protos import surge_service_pb2_grpc as spb_grpc

        request = spb.SetRoutesRequest(model=name, weights=[spb.VersionWeight(version=v, weight=w) for v, w in routes.weights])
        if routes.shadow_version:
            request.shadow.CopyFrom(spb.Shadow(version=routes.shadow_version, fraction=routes.shadow_fraction))
        try:
            await self.call_siblings(spb_grpc.AdminStub, "SetRoutes", request)
        except grpc.aio.AioRpcError as exc:
            log.error("model %s: a sibling worker refused the rollout's route change: %s %s", name, exc.code().name, exc.details())

    async def sibling_pages(self) -> list[str]:
        """The metrics pages of the other live workers (Prometheus text); a worker that does not answer is left out."""
        addresses = [str(i["metrics"]) for i in read_worker_states(self.state_dir) if i.get("index") != self.index and i.get("metrics")]
        answers = await asyncio.gather(
            *(fetch_page(a, timeout_s=PEER_TIMEOUT_S) for a in addresses), return_exceptions=True
        )
        pages = []
        for address, answer in zip(addresses, answers):
            if isinstance(answer, ScrapeError):
                log.warning("metrics of the worker at %s: %s (left out of the rollout's figures)", address, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                pages.append(answer)
        return pages

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def is_local_call(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    """Whether a call came from a sibling worker (answer for this worker only)."""
    return any(k == LOCAL_METADATA[0][0] for k, _ in metadata or ())


def read_worker_states(state_dir: Path) -> list[dict[str, Any]]:
    """The ``worker-<i>.json`` files of the workers that are up (written once ready, removed on stop)."""
    states = []
    for path in sorted(state_dir.glob("worker-*.json")):
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced or removed right now
    return states
