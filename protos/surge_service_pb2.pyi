from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionWeight(_message.Message):
    __slots__ = ("version", "weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight: float
    def __init__(self, version: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("version", "fraction")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    version: int
    fraction: float
    def __init__(self, version: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class Routes(_message.Message):
    __slots__ = ("model", "weights", "shadow", "source", "serving_versions", "generation", "history")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.RepeatedCompositeFieldContainer[VersionWeight]
    shadow: Shadow
    source: str
    serving_versions: _containers.RepeatedScalarFieldContainer[int]
    generation: int
    history: int
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[VersionWeight, _Mapping]]] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., source: _Optional[str] = ..., serving_versions: _Optional[_Iterable[int]] = ..., generation: _Optional[int] = ..., history: _Optional[int] = ...) -> None: ...

class GetRoutesRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetWeightsRequest(_message.Message):
    __slots__ = ("model", "weights")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.RepeatedCompositeFieldContainer[VersionWeight]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[VersionWeight, _Mapping]]] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model", "shadow")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    shadow: Shadow
    def __init__(self, model: _Optional[str] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ...) -> None: ...

class RemoveShadowRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ResetRoutesRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetRoutesRequest(_message.Message):
    __slots__ = ("model", "weights", "shadow")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.RepeatedCompositeFieldContainer[VersionWeight]
    shadow: Shadow
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[VersionWeight, _Mapping]]] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "to_version", "steps", "window", "gates", "min_samples", "alpha")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    model: str
    to_version: int
    steps: _containers.RepeatedScalarFieldContainer[str]
    window: str
    gates: _containers.RepeatedScalarFieldContainer[str]
    min_samples: int
    alpha: float
    def __init__(self, model: _Optional[str] = ..., to_version: _Optional[int] = ..., steps: _Optional[_Iterable[str]] = ..., window: _Optional[str] = ..., gates: _Optional[_Iterable[str]] = ..., min_samples: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GateStatus(_message.Message):
    __slots__ = ("gate", "state", "value", "baseline", "samples", "p", "detail")
    GATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    gate: str
    state: str
    value: float
    baseline: float
    samples: int
    p: float
    detail: str
    def __init__(self, gate: _Optional[str] = ..., state: _Optional[str] = ..., value: _Optional[float] = ..., baseline: _Optional[float] = ..., samples: _Optional[int] = ..., p: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("model", "from_version", "to_version", "steps", "step", "state", "status", "reason", "window_s", "elapsed_s", "gates", "gate_status", "source", "decisions", "started_unix_s", "updated_unix_s", "min_samples", "alpha")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    GATE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    model: str
    from_version: int
    to_version: int
    steps: _containers.RepeatedScalarFieldContainer[str]
    step: int
    state: str
    status: str
    reason: str
    window_s: float
    elapsed_s: float
    gates: _containers.RepeatedScalarFieldContainer[str]
    gate_status: _containers.RepeatedCompositeFieldContainer[GateStatus]
    source: str
    decisions: int
    started_unix_s: float
    updated_unix_s: float
    min_samples: int
    alpha: float
    def __init__(self, model: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., steps: _Optional[_Iterable[str]] = ..., step: _Optional[int] = ..., state: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., window_s: _Optional[float] = ..., elapsed_s: _Optional[float] = ..., gates: _Optional[_Iterable[str]] = ..., gate_status: _Optional[_Iterable[_Union[GateStatus, _Mapping]]] = ..., source: _Optional[str] = ..., decisions: _Optional[int] = ..., started_unix_s: _Optional[float] = ..., updated_unix_s: _Optional[float] = ..., min_samples: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...

class Labels(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class OutcomeRequest(_message.Message):
    __slots__ = ("model", "request_id", "labels", "values", "success")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    labels: Labels
    values: Values
    success: bool
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Union[Labels, _Mapping]] = ..., values: _Optional[_Union[Values, _Mapping]] = ..., success: bool = ...) -> None: ...

class OutcomeResponse(_message.Message):
    __slots__ = ("joined", "model_version")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    joined: bool
    model_version: str
    def __init__(self, joined: bool = ..., model_version: _Optional[str] = ...) -> None: ...
