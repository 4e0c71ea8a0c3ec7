import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitBacktestRequest(_message.Message):
    __slots__ = ("strategy", "symbols", "start_date", "end_date", "params", "latency_ms", "slippage_bps", "commission", "initial_cash", "seed", "mode", "job_id", "checkpoint_every_s", "allow_missing", "idempotency_key", "stall_timeout_s", "deadline_s", "strategy_image", "fill_model", "max_participation", "cancel_latency", "events")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SLIPPAGE_BPS_FIELD_NUMBER: _ClassVar[int]
    COMMISSION_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CASH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_S_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STALL_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILL_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPATION_FIELD_NUMBER: _ClassVar[int]
    CANCEL_LATENCY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    start_date: str
    end_date: str
    params: _struct_pb2.Struct
    latency_ms: float
    slippage_bps: float
    commission: str
    initial_cash: float
    seed: int
    mode: str
    job_id: str
    checkpoint_every_s: float
    allow_missing: bool
    idempotency_key: str
    stall_timeout_s: float
    deadline_s: float
    strategy_image: str
    fill_model: str
    max_participation: float
    cancel_latency: bool
    events: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, strategy: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., latency_ms: _Optional[float] = ..., slippage_bps: _Optional[float] = ..., commission: _Optional[str] = ..., initial_cash: _Optional[float] = ..., seed: _Optional[int] = ..., mode: _Optional[str] = ..., job_id: _Optional[str] = ..., checkpoint_every_s: _Optional[float] = ..., allow_missing: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., stall_timeout_s: _Optional[float] = ..., deadline_s: _Optional[float] = ..., strategy_image: _Optional[str] = ..., fill_model: _Optional[str] = ..., max_participation: _Optional[float] = ..., cancel_latency: _Optional[bool] = ..., events: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitBacktestResponse(_message.Message):
    __slots__ = ("job_id", "status", "created")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    created: bool
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "user", "status", "stage", "ticks_done", "ticks_total", "sim_time", "strategy_digest", "image_digest", "data_fingerprint", "symbols", "start_date", "end_date", "params", "spec", "result_hash", "results_path", "metrics", "error", "submitted_at", "started_at", "finished_at", "idempotency_key", "sweep_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TICKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TICKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SIM_TIME_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RESULT_HASH_FIELD_NUMBER: _ClassVar[int]
    RESULTS_PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    user: str
    status: str
    stage: str
    ticks_done: int
    ticks_total: int
    sim_time: _timestamp_pb2.Timestamp
    strategy_digest: str
    image_digest: str
    data_fingerprint: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    start_date: str
    end_date: str
    params: _struct_pb2.Struct
    spec: _struct_pb2.Struct
    result_hash: str
    results_path: str
    metrics: _struct_pb2.Struct
    error: str
    submitted_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    sweep_id: str
    def __init__(self, job_id: _Optional[str] = ..., user: _Optional[str] = ..., status: _Optional[str] = ..., stage: _Optional[str] = ..., ticks_done: _Optional[int] = ..., ticks_total: _Optional[int] = ..., sim_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., strategy_digest: _Optional[str] = ..., image_digest: _Optional[str] = ..., data_fingerprint: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result_hash: _Optional[str] = ..., results_path: _Optional[str] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., sweep_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("status", "limit", "cursor")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    status: str
    limit: int
    cursor: str
    def __init__(self, status: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_cursor")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_cursor: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job_id", "status")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...
