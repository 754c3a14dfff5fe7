"""Request and response bodies of the HTTP API, shared by the routes (which parse and
return them) and the services (which take and build them). Field names are a contract
with clients. The error body lives with its handlers in ``internal/api/errors.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

from pkg.celery_task import ENTRY_NAME_PATTERN, ID_PATTERN, MAX_DEDUPE_TTL, MAX_DELAY

__all__ = [
    "CheckOut",
    "DeadLetter",
    "DeadLetterList",
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
    "TaskSubmitted",
    "WorkerInfo",
    "WorkerList",
    "WorkflowAccepted",
    "WorkflowStep",
    "WorkflowSubmit",
]

#: Task names, task ids, queue names and dead-letter ids: ``A-Z a-z 0-9 _ . : -``.
IDENTIFIER = f"^{ID_PATTERN}$"
TaskName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=IDENTIFIER)]
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=IDENTIFIER)]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=IDENTIFIER)]
#: Letters, digits, ``_ . : - * / , +`` and inner spaces; never a leading ``:``.
ENTRY_NAME = f"^{ENTRY_NAME_PATTERN}$"
EntryName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=ENTRY_NAME)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_STATUS_IDS = 1000
#: Page size of list endpoints: default and largest.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 10**9
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
    countdown: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY.total_seconds(),
        allow_inf_nan=False,
        description="seconds to wait before running (a finite number, at most 30 days)",
    )
    eta: IsoDatetime | None = Field(
        None, description="earliest time to run (ISO 8601; naive = server timezone; at most 30 days ahead)"
    )
    expires: FiniteFloat | IsoDatetime | None = Field(
        None, description="seconds from now (at most 366 days), or a time, after which the task is dropped"
    )
    task_id: TaskId | None = Field(
        None, description="your id for the task; an id already known is refused (409 task_id_in_use)"
    )
    flow_key: EntryName | None = Field(
        None, description="the key per-key rate and concurrency limits count this task under (a tenant id)"
    )
    dedupe_key: EntryName | None = Field(
        None,
        description=(
            "while a task sent with this key is queued or running, answer 200 with that task "
            "and send nothing (letters, digits, _ . : - * / , + and inner spaces; at most 200)"
        ),
    )
    dedupe_ttl: float | None = Field(
        None,
        ge=1,
        le=MAX_DEDUPE_TTL,
        allow_inf_nan=False,
        description="seconds the dedupe_key is held at most (1 s to 30 days; default 3600)",
    )


class TaskAccepted(BaseModel):
    """``202`` answer to a submitted task."""

    task_id: str
    status: str


class TaskSubmitted(TaskAccepted):
    """``POST /tasks``: ``202`` with a new task, or ``200`` with the task already holding
    the ``dedupe_key`` (``deduplicated``: nothing was sent)."""

    deduplicated: bool = False


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
    description: str | None = Field(None, description="read-only (as GET shows it); ignored")


class ScheduleOut(BaseModel):
    """A schedule with a human-readable description."""

    type: str
    value: Any
    description: str


class PeriodicTaskPut(_Request):
    """``PUT /periodic-tasks/{name}``: the whole entry (``name``, if given, must equal
    the path's, so an entry read with ``GET`` can be sent back as it is)."""

    name: EntryName | None = None
    task: TaskName
    schedule: ScheduleIn
    args: list[Any] = Field(default_factory=list, max_length=1000)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: QueueName | None = None
    enabled: bool = True
    # Read-only fields of an entry as GET shows it, accepted so it can be sent back.
    last_run_at: str | None = Field(None, description="read-only; ignored")
    next_run_at: str | None = Field(None, description="read-only; ignored")
    total_run_count: int | None = Field(None, description="read-only; ignored")
    static: bool | None = Field(None, description="read-only; ignored")


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
    """A page of periodic tasks, static and dynamic, sorted by name."""

    total: int
    limit: int
    offset: int
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


# --- Task history and statistics (issue 11) ---


class HistoryError(BaseModel):
    """The exception a failed task raised."""

    type: str | None = None
    message: str | None = None


class HistoryItem(BaseModel):
    """One task as the history recorded it; args, kwargs and result are JSON text,
    truncated to ``HISTORY_MAX_VALUE_BYTES`` and with masked kwargs."""

    task_id: str
    task: str | None
    status: str
    queue: str | None
    worker: str | None
    args: str | None
    kwargs: str | None
    result: str | None
    error: HistoryError | None
    traceback: str | None
    retries: int
    parent_id: str | None
    root_id: str | None
    sent_at: datetime | None
    received_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    runtime_ms: float | None


class HistoryPage(BaseModel):
    """A page of history, newest first; pass ``next_cursor`` back as ``cursor``."""

    items: list[HistoryItem]
    next_cursor: str | None


class HistoryEvent(BaseModel):
    """One state transition of a task."""

    type: str
    at: datetime
    worker: str | None
    detail: str | None


class HistoryDetail(HistoryItem):
    """A task's row, its transitions (oldest first) and the tasks it started."""

    events: list[HistoryEvent]
    children: list[HistoryItem]


class RuntimePercentiles(BaseModel):
    """Runtime of finished runs, in milliseconds."""

    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class TaskStats(BaseModel):
    """Counts and runtimes of one task name over a time range."""

    total: int
    succeeded: int
    failed: int
    retried: int
    revoked: int
    failure_rate: float
    runtime_ms: RuntimePercentiles


class TaskStatsOut(BaseModel):
    """Per task name statistics of tasks first seen in ``[since, until)``."""

    since: datetime
    until: datetime
    tasks: dict[str, TaskStats]


class ThroughputBucket(BaseModel):
    """Tasks that finished in ``[start, start + bucket)``, by final status."""

    start: datetime
    counts: dict[str, int]


class ThroughputOut(BaseModel):
    """Finished tasks per time bucket."""

    since: datetime
    until: datetime
    bucket: int
    buckets: list[ThroughputBucket]


class QueueSamplePoint(BaseModel):
    """A queue's length at a moment."""

    at: datetime
    length: int


class QueueStatsOut(BaseModel):
    """Queue lengths over time, per queue, oldest first."""

    since: datetime
    until: datetime
    queues: dict[str, list[QueueSamplePoint]]


#: A rate limit as text: a count per second, minute or hour.
RateText = Annotated[str, StringConstraints(max_length=20, pattern=r"^\s*\d{1,7}\s*/\s*[smh]\s*$")]
#: A concurrency limit.
SlotCount = Annotated[int, Field(ge=1, le=100_000)]


class FlowLimitsIn(_Request):
    """``PUT /limits/{task}``: the task's limits from now on, on every worker (an
    omitted or null limit is off)."""

    global_rate_limit: RateText | None = Field(
        None, description="starts per window over all workers: 10/s, 600/m, 5/h"
    )
    rate_limit_per_key: RateText | None = Field(None, description="starts per window for each flow_key")
    concurrency_limit: SlotCount | None = Field(None, description="at most this many running at once")
    concurrency_limit_per_key: SlotCount | None = Field(None, description="at most this many per flow_key")


class FlowLimitsOut(BaseModel):
    """One task's flow limits in force."""

    task: str
    global_rate_limit: str | None
    rate_limit_per_key: str | None
    concurrency_limit: int | None
    concurrency_limit_per_key: int | None
    source: Literal["declared", "runtime"]
    throttled: int = Field(description="starts that had to wait for a permit (each waiting task once)")


class FlowLimitList(BaseModel):
    """``GET /limits``: every task with limits."""

    items: list[FlowLimitsOut]
