"""Request and response bodies of the HTTP API. Field names are a contract with clients."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

__all__ = [
    "DeadLetter",
    "DeadLetterList",
    "ErrorBody",
    "PeriodicTask",
    "PeriodicTaskCreate",
    "PeriodicTaskList",
    "PeriodicTaskPatch",
    "PeriodicTaskPut",
    "QueueLengths",
    "Readiness",
    "ScheduleIn",
    "ScheduleOut",
    "StatusesOut",
    "StatusesQuery",
    "TaskAccepted",
    "TaskError",
    "TaskInfo",
    "TaskProgress",
    "TaskSubmit",
    "WorkerInfo",
    "WorkerList",
    "WorkflowAccepted",
    "WorkflowStep",
    "WorkflowSubmit",
]

_NAME = r"^[A-Za-z0-9_.:\-]+$"
TaskName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NAME)]
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NAME)]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NAME)]
EntryName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\- ]+$")]
MAX_STATUS_IDS = 1000
#: Datetimes arrive as ISO 8601 strings in the parsed JSON, which strict mode would refuse.
IsoDatetime = Annotated[datetime, Strict(False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TaskSubmit(_Request):
    """``POST /tasks``: what to run, with optional routing and timing."""

    task: TaskName
    args: list[Any] = Field(default_factory=list, max_length=1000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: QueueName | None = None
    priority: int | None = Field(None, ge=0, le=9, description="0 (lowest) .. 9 (highest)")
    countdown: float | None = Field(None, ge=0, le=30 * 86400, description="seconds to wait before running")
    eta: IsoDatetime | None = Field(
        None, description="earliest time to run (ISO 8601; naive = server timezone)"
    )
    expires: float | IsoDatetime | None = Field(
        None, description="seconds from now, or a time, after which the task is dropped"
    )
    task_id: TaskId | None = None


class TaskAccepted(BaseModel):
    """``202`` answer to a submitted task."""

    task_id: str
    status: str


class TaskError(BaseModel):
    """Why a task failed."""

    type: str
    message: str


class TaskProgress(BaseModel):
    """Last progress a running task reported."""

    current: float | None = None
    total: float | None = None
    message: str | None = None


class TaskInfo(BaseModel):
    """``GET /tasks/{task_id}``. An id never seen reads as ``PENDING``."""

    task_id: str
    task: str | None
    status: str
    result: Any = None
    error: TaskError | None = None
    progress: TaskProgress | None = None
    retries: int | None = None
    queue: str | None = None
    worker: str | None = None
    date_done: str | None = None
    runtime_ms: float | None = None


class StatusesQuery(_Request):
    """``POST /tasks/status``: up to 1000 ids."""

    task_ids: list[TaskId] = Field(min_length=1, max_length=MAX_STATUS_IDS)


class StatusesOut(BaseModel):
    """Status per id."""

    statuses: dict[str, str]


class WorkflowStep(_Request):
    """One task of a workflow."""

    task: TaskName
    args: list[Any] = Field(default_factory=list, max_length=1000)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class WorkflowSubmit(_Request):
    """``POST /workflows``: chain (each step gets the previous result), group (in
    parallel) or chord (a group, then ``callback`` with the list of results)."""

    type: Literal["chain", "group", "chord"]
    steps: list[WorkflowStep] = Field(min_length=1, max_length=100)
    callback: WorkflowStep | None = None


class WorkflowAccepted(BaseModel):
    """``202`` answer: read the whole workflow's result at ``GET /tasks/{workflow_id}``."""

    workflow_id: str
    task_ids: list[str]


class ScheduleIn(_Request):
    """``cron``: 5-field string; ``interval``: seconds > 0; ``once``: ISO 8601 time."""

    type: Literal["cron", "interval", "once"]
    value: str | float | int


class ScheduleOut(BaseModel):
    """A schedule with a human-readable description."""

    type: str
    value: Any
    description: str


class PeriodicTaskPut(_Request):
    """``PUT /periodic-tasks/{name}``: the whole entry."""

    task: TaskName
    schedule: ScheduleIn
    args: list[Any] = Field(default_factory=list, max_length=1000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: QueueName | None = None
    enabled: bool = True


class PeriodicTaskCreate(PeriodicTaskPut):
    """``POST /periodic-tasks``: a new entry."""

    name: EntryName


class PeriodicTaskPatch(_Request):
    """``PATCH /periodic-tasks/{name}``: only the fields given change."""

    task: TaskName | None = None
    schedule: ScheduleIn | None = None
    args: list[Any] | None = Field(None, max_length=1000)
    kwargs: dict[str, Any] | None = None
    queue: QueueName | None = None
    enabled: bool | None = None


class PeriodicTask(BaseModel):
    """A periodic task as stored in Redis."""

    name: str
    task: str
    schedule: ScheduleOut
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    enabled: bool
    last_run_at: str | None
    next_run_at: str | None
    total_run_count: int
    static: bool


class PeriodicTaskList(BaseModel):
    """Every periodic task, static and dynamic."""

    periodic_tasks: list[PeriodicTask]


class QueueLengths(BaseModel):
    """Messages waiting per queue."""

    queues: dict[str, int]


class WorkerInfo(BaseModel):
    """One worker as it answered the inspection."""

    name: str
    status: str
    active: list[dict[str, Any]]
    processed: dict[str, int]
    pool: dict[str, Any]
    queues: list[str]


class WorkerList(BaseModel):
    """Workers that answered within the timeout."""

    workers: list[WorkerInfo]


class CheckOut(BaseModel):
    """One dependency check."""

    ok: bool
    latency_ms: float | None
    error: str | None


class Readiness(BaseModel):
    """``GET /readyz``."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckOut]


class DeadLetter(BaseModel):
    """A task that failed for good, or a message no worker could run."""

    id: str
    task_id: str | None = None
    task: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    queue: str | None = None
    reason: str
    error: TaskError | None = None
    traceback: str | None = None
    retries: int | None = None
    content_type: str | None = None
    body: str | None = None
    resubmittable: bool
    recorded_at: str


class DeadLetterList(BaseModel):
    """A page of the dead-letter list."""

    total: int
    dead_letters: list[DeadLetter]


class ErrorDetail(BaseModel):
    """Error fields."""

    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorDetail
