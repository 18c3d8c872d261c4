"""The gRPC edge of Surge's own API (``protos/surge_service.proto``, package ``surge.v1``).

``AdminServicer`` (``surge.v1.Admin``) changes a model's routes while it serves; ``FeedbackServicer``
(``surge.v1.Feedback``) joins outcomes with the version that answered. Both are thin: each RPC calls one
``Traffic`` method and converts the result; errors are mapped to status codes by ``grpc_servicer``'s
single table (``_edge``). Who may call them is the auth configuration's business: every method under
``/surge.v1.Admin/`` is an admin call, ``/surge.v1.Feedback/`` has inference scope.

Under ``--workers`` (``peers``; ``workers.py``): a route change that succeeded on the worker that took the call
is sent, as the same request, to every live sibling (as repository Load/Unload are), so one call governs the
whole server's traffic. A ReportOutcome whose request id this worker's index does not hold (the request was
answered by another worker) is asked of the siblings, once each, in parallel; the one that joins it answers.
Only when none does is it counted here as unknown (a sibling asked on another's behalf counts nothing for a miss).
The rollout RPCs are answered by the first worker, which runs the controller (``traffic/rollout.py``): another
worker forwards them to it.
"""

from __future__ import annotations

from typing import Any, cast

import grpc

from surge.protos import surge_service_pb2 as spb
from surge.protos import surge_service_pb2_grpc as spb_grpc

from .. import errors
from .grpc_servicer import _edge, add_tolerant
from ..traffic.rollout import Rollout, Rollouts
from ..traffic.routing import Routes
from ..traffic.traffic import RouteState, Traffic
from ..peers import WorkerPeers, is_local_call

__all__ = ["AdminServicer", "FeedbackServicer", "add_surge_services", "rollout_message", "routes_message"]


def routes_message(state: RouteState) -> spb.Routes:
    """The wire form of a model's routes."""
    r = state.routes
    message = spb.Routes(
        model=state.model, source=state.source, serving_versions=list(state.serving), generation=state.generation, history=state.history,
    )
    message.weights.extend(spb.VersionWeight(version=v, weight=w) for v, w in r.weights)
    if r.shadow_version:
        message.shadow.CopyFrom(spb.Shadow(version=r.shadow_version, fraction=r.shadow_fraction))
    return message


def rollout_message(r: Rollout) -> spb.Rollout:
    """The wire form of a rollout."""
    p = r.plan
    message = spb.Rollout(
        model=p.model, from_version=p.from_version, to_version=p.to_version, steps=list(p.steps), step=r.step, state=r.state, status=r.status,
        reason=r.reason, window_s=p.window_s, elapsed_s=r.elapsed_s(), gates=[g.text for g in p.gates], source=r.source, decisions=r.decisions,
        started_unix_s=r.started_unix_s, updated_unix_s=r.updated_unix_s, min_samples=p.min_samples, alpha=p.alpha,
    )
    for g in list(r.gates):
        status = message.gate_status.add(gate=g.gate, state=g.state, samples=g.samples, detail=g.detail)
        for name in ("value", "baseline", "p"):
            if getattr(g, name) is not None:
                setattr(status, name, getattr(g, name))
    return message


def _model(name: str) -> str:
    if not name:
        raise errors.InvalidInput("model is required")
    return name


class AdminServicer(spb_grpc.AdminServicer):
    """``surge.v1.Admin`` over a ``Traffic``."""

    def __init__(self, traffic: Traffic, peers: WorkerPeers | None = None, rollouts: Rollouts | None = None) -> None:
        self._traffic = traffic
        self._peers = peers
        self._rollouts = rollouts

    async def _everywhere(self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any], state: RouteState) -> spb.Routes:
        """The change (applied here as ``state``) applied by every sibling worker too; answers this worker's routes."""
        if self._peers is not None and not is_local_call(metadata := context.invocation_metadata()):
            await self._peers.call_siblings(spb_grpc.AdminStub, method, request, metadata)
        return routes_message(state)

    @_edge
    async def GetRoutes(self, request: spb.GetRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        return routes_message(self._traffic.state(_model(request.model)))

    @_edge
    async def SetWeights(self, request: spb.SetWeightsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        weights = [(w.version, w.weight) for w in request.weights]
        return await self._everywhere("SetWeights", request, context, self._traffic.set_weights(_model(request.model), weights))

    @_edge
    async def SetShadow(self, request: spb.SetShadowRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        if not request.HasField("shadow") or request.shadow.version < 1:
            raise errors.InvalidInput("SetShadow: give shadow.version (>= 1) and optionally shadow.fraction (0 < f <= 1, default 1)")
        return await self._everywhere("SetShadow", request, context, self._traffic.set_shadow(_model(request.model), request.shadow.version, request.shadow.fraction))

    @_edge
    async def RemoveShadow(self, request: spb.RemoveShadowRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        return await self._everywhere("RemoveShadow", request, context, self._traffic.remove_shadow(_model(request.model)))

    @_edge
    async def Promote(self, request: spb.PromoteRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        return await self._everywhere("Promote", request, context, self._traffic.promote(_model(request.model), request.version))

    @_edge
    async def Rollback(self, request: spb.RollbackRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        return await self._everywhere("Rollback", request, context, self._traffic.rollback(_model(request.model)))

    @_edge
    async def ResetRoutes(self, request: spb.ResetRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        return await self._everywhere("ResetRoutes", request, context, self._traffic.reset(_model(request.model)))

    @_edge
    async def SetRoutes(self, request: spb.SetRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Routes:
        shadow = request.shadow if request.HasField("shadow") else None
        try:
            routes = Routes(weights=tuple(sorted((w.version, w.weight) for w in request.weights)), shadow_version=shadow.version if shadow else 0,
                            shadow_fraction=(shadow.fraction or 1.0) if shadow else 1.0)
        except ValueError as exc:
            raise errors.InvalidInput(f"SetRoutes: {exc}") from None
        return await self._everywhere("SetRoutes", request, context, self._traffic.set_routes(_model(request.model), routes))

    async def _rollout(self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout | None:
        """Under --workers on a worker other than the first: the first worker's answer (None: answer here)."""
        if self._rollouts is None:
            raise errors.Unsupported("this server runs no rollout controller")
        if self._peers is None:
            return None
        return await self._peers.call_owner(spb_grpc.AdminStub, method, request, context.invocation_metadata())

    @_edge
    async def StartRollout(self, request: spb.StartRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        if (forwarded := await self._rollout("StartRollout", request, context)) is not None:
            return forwarded
        if request.to_version < 1 or not request.steps:
            raise errors.InvalidInput("StartRollout: give to_version (>= 1) and steps, e.g. shadow,5,25,50,100")
        assert self._rollouts is not None
        r = self._rollouts.begin(_model(request.model), request.to_version, list(request.steps), request.window or "5m", list(request.gates),
                                 min_samples=request.min_samples, alpha=request.alpha)
        return rollout_message(r)

    @_edge
    async def GetRollout(self, request: spb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        if (forwarded := await self._rollout("GetRollout", request, context)) is not None:
            return forwarded
        assert self._rollouts is not None
        return rollout_message(self._rollouts.status(_model(request.model)))

    async def _act(self, method: str, request: spb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        if (forwarded := await self._rollout(method, request, context)) is not None:
            return forwarded
        assert self._rollouts is not None
        action = {"PauseRollout": self._rollouts.pause, "ResumeRollout": self._rollouts.resume, "AbortRollout": self._rollouts.abort,
                  "PromoteRollout": self._rollouts.promote}[method]
        return rollout_message(action(_model(request.model)))

    @_edge
    async def PauseRollout(self, request: spb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        return await self._act("PauseRollout", request, context)

    @_edge
    async def ResumeRollout(self, request: spb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        return await self._act("ResumeRollout", request, context)

    @_edge
    async def AbortRollout(self, request: spb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        return await self._act("AbortRollout", request, context)

    @_edge
    async def PromoteRollout(self, request: spb.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.Rollout:
        return await self._act("PromoteRollout", request, context)


class FeedbackServicer(spb_grpc.FeedbackServicer):
    """``surge.v1.Feedback`` over a ``Traffic``."""

    def __init__(self, traffic: Traffic, peers: WorkerPeers | None = None) -> None:
        self._traffic = traffic
        self._peers = peers

    @_edge
    async def ReportOutcome(self, request: spb.OutcomeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.OutcomeResponse:
        which = request.WhichOneof("outcome")
        if which is None:
            raise errors.InvalidInput("ReportOutcome: set one of labels, values, success")
        if self._peers is not None and not self._traffic.knows(_model(request.model), request.request_id):
            metadata = context.invocation_metadata()
            if is_local_call(metadata):
                return spb.OutcomeResponse()  # asked by a sibling that missed it too: it counts the miss, once
            for answer in await self._peers.call_siblings(spb_grpc.FeedbackStub, "ReportOutcome", request, metadata):
                if answer.joined:
                    return cast(spb.OutcomeResponse, answer)  # at most one worker holds the id: an id is indexed by the worker that answered it
        outcome = {"labels": list(request.labels.values)} if which == "labels" else {"values": list(request.values.values)} if which == "values" else {"success": request.success}
        version = self._traffic.report(_model(request.model), request.request_id, **outcome)
        return spb.OutcomeResponse(joined=bool(version), model_version=version)


def add_surge_services(traffic: Traffic, server: grpc.aio.Server, peers: WorkerPeers | None = None, *, rollouts: Rollouts | None = None) -> None:
    """Register ``surge.v1.Admin`` and ``surge.v1.Feedback`` on a grpc.aio server (``peers``: in a ``--workers`` worker);
    an undecodable request answers INVALID_ARGUMENT (``add_tolerant``)."""
    add_tolerant(spb_grpc.add_AdminServicer_to_server, AdminServicer(traffic, peers, rollouts), server)
    add_tolerant(spb_grpc.add_FeedbackServicer_to_server, FeedbackServicer(traffic, peers), server)
