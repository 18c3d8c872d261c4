"""``SurgeClient``: a blocking client for Surge's own API (``surge.v1.Admin`` and ``surge.v1.Feedback``).

    from surge.clients import SurgeClient

    with SurgeClient("127.0.0.1:8001", metadata={"authorization": "Bearer ..."}) as surge:
        surge.set_weights("mlp", {1: 90, 2: 10})
        surge.set_shadow("mlp", 3, fraction=0.5)
        surge.promote("mlp", 2)
        surge.start_rollout("mlp", 3, steps="shadow,5,25,50,100", window="5m", gates=["p99<1.2x", "errors<0.5%"])
        surge.report_outcome("mlp", "request-42", labels=[3])

Route methods return the model's routes after the change (a ``surge_service_pb2.Routes``); rollout methods
the model's rollout (a ``surge_service_pb2.Rollout``). Errors are the
same ``InferenceServerError`` subclasses as ``InferenceClient``'s (``surge.clients.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

import grpc

from surge.clients import _common
from surge.clients.errors import map_rpc_error
from surge.protos import surge_service_pb2 as spb
from surge.protos import surge_service_pb2_grpc as spb_grpc

_Reply = TypeVar("_Reply")

__all__ = ["SurgeClient"]


class SurgeClient:
    """A blocking gRPC client for ``surge.v1.Admin`` and ``surge.v1.Feedback``; thread-safe.

    Args: as ``InferenceClient`` (``address``, ``timeout_s``, ``metadata``, ``channel_options``); no retries
    (route changes are not blindly repeated).
    """

    def __init__(
        self, address: str, *, timeout_s: float | None = 10.0, channel_options: _common.ChannelOptions | None = None,
        metadata: _common.Metadata | None = None,
    ) -> None:
        self._settings = _common.ClientSettings.build(timeout_s=timeout_s, retries=0, backoff_s=0.0, channel_options=channel_options, metadata=metadata)
        self.address = address
        self._channel = grpc.insecure_channel(address, options=self._settings.channel_options)
        self._admin = spb_grpc.AdminStub(self._channel)
        self._feedback = spb_grpc.FeedbackStub(self._channel)

    def __enter__(self) -> SurgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def get_routes(self, model: str) -> spb.Routes:
        """The model's routes now."""
        return self._call(self._admin.GetRoutes, spb.GetRoutesRequest(model=model), spb.Routes)

    def set_weights(self, model: str, weights: Mapping[int, float]) -> spb.Routes:
        """Split requests naming no version across versions by relative weight (``{}``: no split)."""
        request = spb.SetWeightsRequest(model=model, weights=[spb.VersionWeight(version=int(v), weight=float(w)) for v, w in weights.items()])
        return self._call(self._admin.SetWeights, request, spb.Routes)

    def set_shadow(self, model: str, version: int, *, fraction: float = 1.0) -> spb.Routes:
        """Mirror ``fraction`` of the routed requests to ``version`` and compare its outputs."""
        return self._call(self._admin.SetShadow, spb.SetShadowRequest(model=model, shadow=spb.Shadow(version=version, fraction=fraction)), spb.Routes)

    def remove_shadow(self, model: str) -> spb.Routes:
        """Stop mirroring."""
        return self._call(self._admin.RemoveShadow, spb.RemoveShadowRequest(model=model), spb.Routes)

    def promote(self, model: str, version: int) -> spb.Routes:
        """Send every request naming no version to ``version``; removes the shadow."""
        return self._call(self._admin.Promote, spb.PromoteRequest(model=model, version=version), spb.Routes)

    def rollback(self, model: str) -> spb.Routes:
        """Undo the last route change."""
        return self._call(self._admin.Rollback, spb.RollbackRequest(model=model), spb.Routes)

    def reset_routes(self, model: str) -> spb.Routes:
        """Drop the changes made through the admin API: the config's ``[routing]`` applies again."""
        return self._call(self._admin.ResetRoutes, spb.ResetRoutesRequest(model=model), spb.Routes)

    def set_routes(self, model: str, weights: Mapping[int, float], *, shadow: int = 0, fraction: float = 1.0) -> spb.Routes:
        """Replace the split and the shadow in one change (``shadow`` 0: none)."""
        request = spb.SetRoutesRequest(model=model, weights=[spb.VersionWeight(version=int(v), weight=float(w)) for v, w in weights.items()])
        if shadow:
            request.shadow.CopyFrom(spb.Shadow(version=shadow, fraction=fraction))
        return self._call(self._admin.SetRoutes, request, spb.Routes)

    def start_rollout(
        self, model: str, to_version: int, *, steps: str | Sequence[str] = "shadow,5,25,50,100", window: str = "5m",
        gates: Sequence[str] = (), min_samples: int = 0, alpha: float = 0.0,
    ) -> spb.Rollout:
        """Roll ``model`` out to ``to_version`` step by step; the server advances while every gate holds and rolls back on a breach."""
        step_list = [s.strip() for s in steps.split(",")] if isinstance(steps, str) else list(steps)
        request = spb.StartRolloutRequest(model=model, to_version=to_version, steps=step_list, window=window, gates=list(gates),
                                          min_samples=min_samples, alpha=alpha)
        return self._call(self._admin.StartRollout, request, spb.Rollout)

    def rollout(self, model: str) -> spb.Rollout:
        """The model's rollout now (the running one, else the last finished one)."""
        return self._call(self._admin.GetRollout, spb.RolloutRequest(model=model), spb.Rollout)

    def pause_rollout(self, model: str) -> spb.Rollout:
        """Hold the rollout at its step: the routes stay, nothing is decided until ``resume_rollout``."""
        return self._call(self._admin.PauseRollout, spb.RolloutRequest(model=model), spb.Rollout)

    def resume_rollout(self, model: str) -> spb.Rollout:
        """Go on from the step it was paused at, with a fresh window."""
        return self._call(self._admin.ResumeRollout, spb.RolloutRequest(model=model), spb.Rollout)

    def abort_rollout(self, model: str) -> spb.Rollout:
        """Stop it: every request goes back to the version the rollout started from."""
        return self._call(self._admin.AbortRollout, spb.RolloutRequest(model=model), spb.Rollout)

    def promote_rollout(self, model: str) -> spb.Rollout:
        """Finish it now: every request goes to the new version."""
        return self._call(self._admin.PromoteRollout, spb.RolloutRequest(model=model), spb.Rollout)

    def report_outcome(
        self, model: str, request_id: str, *, labels: Sequence[int] | None = None, values: Sequence[float] | None = None,
        success: bool | None = None,
    ) -> spb.OutcomeResponse:
        """Report the outcome of an answered request (exactly one of ``labels``, ``values``, ``success``)."""
        request = spb.OutcomeRequest(model=model, request_id=request_id)
        if labels is not None:
            request.labels.SetInParent()
            request.labels.values.extend(int(v) for v in labels)
        if values is not None:
            request.values.SetInParent()
            request.values.values.extend(float(v) for v in values)
        if success is not None:
            request.success = bool(success)
        return self._call(self._feedback.ReportOutcome, request, spb.OutcomeResponse)

    def _call(self, method: Any, request: Any, reply: type[_Reply]) -> _Reply:
        try:
            return cast(_Reply, method(request, timeout=self._settings.call_timeout_s(None), metadata=self._settings.metadata))
        except grpc.RpcError as exc:
            raise map_rpc_error(exc) from exc
