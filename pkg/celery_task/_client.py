"""``CeleryClient``: the façade. It builds a Celery app configured for at-least-once
delivery on Redis (``_conf``), then hands each job to a part that declares what it needs:
validation, publishing (sync and ``async``), workflows, results, the periodic store,
dead letters and operations. Its methods only check that the client is open and
delegate; the behaviour lives in the parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.canvas import Signature
from celery.result import AsyncResult, GroupResult
from kombu.utils.url import maybe_sanitize_url
from redbeat.schedulers import ensure_conf

from ._async import AsyncClient
from ._canvas import Canvas
from ._conf import THROUGHPUT_PROFILE, available_modules, default_conf, normalise_routes, state_redis_url
from ._deadletter import DeadLetterQueue, connect_failure_recorder
from ._dedupe import check_dedupe
from ._errors import ClientClosedError, InvalidRequestError, unreachable
from ._flow import FlowLimitStore
from ._limits import MAX_PRIORITY, MIN_PRIORITY
from ._operations import Operations
from ._options import Options, configure
from ._outbox import Outbox
from ._periodic import PeriodicStore
from ._publish import Publisher
from ._redis import clients_for
from ._request import TaskRequest
from ._results import TASK_STATES, Results, public_state
from ._taskids import TaskIdClaims
from ._validation import Validator, check_json_arguments, check_page
from .worker import install

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "TASK_STATES",
    "THROUGHPUT_PROFILE",
    "CeleryClient",
    "public_state",
]


#: The options :class:`TaskRequest` has fields for (the rest go in its ``options``).
_REQUEST_FIELDS = ("queue", "priority", "countdown", "eta", "expires")


@dataclass(frozen=True, slots=True)
class _Parts:
    """What the façade delegates to; out of reach once the client is closed."""

    validator: Validator
    publisher: Publisher
    aio: AsyncClient
    canvas: Canvas
    results: Results
    periodic: PeriodicStore
    dead_letters: DeadLetterQueue
    operations: Operations
    flow: FlowLimitStore


class CeleryClient:
    """A configured Celery app plus the operations a service needs around it.

    ``redis_client`` (a ``redis.Redis`` made with ``decode_responses=True``, or a
    connection pool) replaces the client the package would make for its state Redis
    (schedule, revokes, dead letters, task-id claims)."""

    def __init__(
        self,
        app_name: str,
        broker_url: str,
        backend_url: str | None = None,
        include: Sequence[str] = (),
        task_routes: Mapping[str, Any] | None = None,
        task_default_queue: str = "default",
        timezone: str = "Asia/Shanghai",
        beat_schedule: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        app: Celery | None = None,
        redis_client: redis.Redis | redis.ConnectionPool | None = None,
        **extra_conf: Any,
    ) -> None:
        self.app_name = app_name
        self.broker_url = broker_url
        self.backend_url = backend_url
        self.include: tuple[str, ...] = tuple(available_modules(include))
        self.task_routes = normalise_routes(task_routes)
        self.task_default_queue = task_default_queue
        self.timezone = timezone
        self.beat_schedule: dict[str, dict[str, Any]] = {
            name: dict(entry) for name, entry in (beat_schedule or {}).items()
        }
        for name, entry in self.beat_schedule.items():
            check_json_arguments(entry.get("args", ()), entry.get("kwargs", {}))
            if not entry.get("task"):
                raise InvalidRequestError(f"static entry {name!r} has no task", field="beat_schedule")
        ours, extra_conf = Options.split(extra_conf)
        state_url = ours.pop("redis_url", None) or state_redis_url(broker_url, backend_url)
        options = Options(redis_url=state_url, **ours)
        self.app: Celery = self._build_app(app, options, extra_conf)
        self._closed = False
        self.__parts = self._build_parts(redis_client)  # before any receiver is connected
        self._hooks = install(self.app)  # bootsteps, TimedRedisBackend for Redis results, hooks
        self._disconnect_recorder = connect_failure_recorder(self.app)

    def _build_app(self, app: Celery | None, options: Options, extra_conf: dict[str, Any]) -> Celery:
        conf = default_conf(
            broker_url=self.broker_url,
            state_url=options.redis_url,
            task_default_queue=self.task_default_queue,
            timezone=self.timezone,
        )
        conf.update(task_routes=self.task_routes, beat_schedule=self.beat_schedule)
        transport_options = extra_conf.pop("broker_transport_options", None) or {}
        conf["broker_transport_options"] = {**conf.get("broker_transport_options", {}), **transport_options}
        conf.update(extra_conf)
        if app is None:
            app = Celery(
                self.app_name,
                broker=self.broker_url,
                backend=self.backend_url,
                include=list(self.include),
                task_cls="pkg.celery_task._task:BaseTask",
            )
        else:
            app.conf.update(
                broker_url=self.broker_url, result_backend=self.backend_url, include=list(self.include)
            )
        app.conf.update(conf)
        configure(app, options)
        ensure_conf(app)  # RedBeat's key names, read once from the conf above
        return app

    def _build_parts(self, redis_client: redis.Redis | redis.ConnectionPool | None) -> _Parts:
        app = self.app
        clients = clients_for(app, redis_client)
        validator = Validator(app, default_queue=self.task_default_queue)
        publisher = Publisher(app, validator, TaskIdClaims(app, clients, backend_url=self.backend_url))
        results = Results(app, clients)
        return _Parts(
            validator=validator,
            publisher=publisher,
            aio=AsyncClient(app, publisher, results, clients),
            canvas=Canvas(app, validator),
            results=results,
            periodic=PeriodicStore(
                app, validator, clients, timezone=self.timezone, beat_schedule=self.beat_schedule
            ),
            dead_letters=DeadLetterQueue(app, publisher),
            operations=Operations(app, default_queue=self.task_default_queue, task_routes=self.task_routes),
            flow=FlowLimitStore(app),
        )

    def _require_open(self) -> None:
        if self._closed:
            raise ClientClosedError(repr(self))

    @property
    def _parts(self) -> _Parts:
        self._require_open()
        return self.__parts

    def __repr__(self) -> str:
        return f"CeleryClient(app_name={self.app_name!r}, broker_url={maybe_sanitize_url(self.broker_url)!r})"

    # -- task registry ---------------------------------------------------------------

    def load_tasks(self) -> list[str]:
        """Import the ``include`` modules so task names can be checked before sending.
        A module that fails to import raises; returns the registered task names."""
        return self._parts.validator.load_tasks()

    def public_tasks(self) -> list[str]:
        """Tasks marked ``public=True`` in code: the ones outside callers (the HTTP API)
        may submit or schedule. Celery's own ``celery.*`` tasks never are."""
        return self._parts.validator.public_tasks()

    def is_public(self, task_name: str) -> bool:
        """True if ``task_name`` is registered and marked public."""
        return self._parts.validator.is_public(task_name)

    def resolve_queue(self, task_name: str, queue: str | None = None) -> str:
        """The queue a task would be sent to: ``queue`` if given, else its route
        (remembered per task name: the client's routes are a fixed mapping)."""
        return self._parts.validator.resolve_queue(task_name, queue)

    def check_queue(self, queue: Any, *, field: str = "queue") -> str:
        """A queue name this client will send to: 1-200 of ``A-Z a-z 0-9 _ . : -``, and
        never a name the system's own Redis keys start with."""
        return self._parts.validator.check_queue(queue, field=field)

    # -- sending ---------------------------------------------------------------------

    def submit(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        dedupe_key: str | None = None,
        dedupe_ttl: float | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send a task by name and return at once. Routes apply unless ``queue`` is
        given; ``priority`` is 0 (lowest) to 9 (highest) on every broker. A caller's
        ``task_id`` is an idempotency key (:class:`TaskIdInUseError` if known).

        While a task sent with ``dedupe_key`` is queued or running (``dedupe_ttl`` s at
        most, default 3600), this sends nothing and returns that task; the result's
        ``deduplicated`` says which happened."""
        dedupe = check_dedupe(dedupe_key, dedupe_ttl)
        request = TaskRequest(
            task_name, args or (), kwargs or {}, task_id, queue, priority, countdown, eta, expires, options
        )
        publisher = self._parts.publisher
        if dedupe is None:
            result = self.app.AsyncResult(publisher.submit(request))
            result.deduplicated = False
            return result
        sent_id, deduplicated = publisher.submit_deduplicated(request, dedupe)
        result = self.app.AsyncResult(sent_id)
        result.deduplicated = deduplicated
        return result

    def submit_many(
        self, requests: Iterable[TaskRequest | Mapping[str, Any]], *, chunk_size: int = 1000
    ) -> list[str]:
        """Send many tasks at once: the same messages as :meth:`submit`, written in one
        pipelined MULTI/EXEC per ``chunk_size`` tasks. Every request is validated
        before anything is sent. Returns the task ids in request order.

        On a broker error, :class:`BrokerUnavailableError` has ``sent_ids``: the tasks
        of the chunks that were written (the failing chunk's tasks were not)."""
        return self._parts.publisher.submit_many(requests, chunk_size)

    async def submit_async(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        dedupe_key: str | None = None,
        dedupe_ttl: float | None = None,
        **options: Any,
    ) -> str:
        """:meth:`submit` for ``async`` code: the same message, written with redis.asyncio
        (one MULTI/EXEC) so the event loop never blocks. Returns the task id, a ``str``
        whose ``deduplicated`` is True when ``dedupe_key`` matched a task (nothing sent)."""
        dedupe = check_dedupe(dedupe_key, dedupe_ttl)
        request = TaskRequest(
            task_name, args or (), kwargs or {}, task_id, queue, priority, countdown, eta, expires, options
        )
        return await self._parts.aio.submit(request, dedupe)

    async def submit_and_wait_async(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        task_id: str | None = None,
        **options: Any,
    ) -> tuple[str, dict[str, Any]]:
        """Send a task and wait up to ``timeout`` s for it, listening for its result
        before it is sent; its id and stored metadata (whatever the state then)."""
        fields = {name: options.pop(name) for name in _REQUEST_FIELDS if name in options}
        request = TaskRequest(task_name, args or (), kwargs or {}, task_id, **fields, options=options)
        return await self._parts.aio.submit_and_wait(request, timeout, claim=task_id is not None)

    async def get_task_metas_async(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`get_task_metas` for ``async`` code (one MGET on redis.asyncio)."""
        return await self._parts.aio.get_task_metas(task_ids)

    async def get_statuses_async(self, task_ids: Iterable[str]) -> dict[str, str]:
        """:meth:`get_statuses` for ``async`` code."""
        return await self._parts.aio.get_statuses(task_ids)

    async def wait_async(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` s for the task to finish without blocking the loop;
        its stored metadata (whatever the state is when the time is up)."""
        return await self._parts.aio.wait(task_id, timeout)

    # -- submit on commit (outbox) ---------------------------------------------------

    @cached_property
    def _outbox(self) -> Outbox:
        return Outbox(self._parts.validator, self._parts.publisher)

    def submit_on_commit(
        self,
        session: Session | AsyncSession,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        **options: Any,
    ) -> str:
        """Validate as :meth:`submit` does and store the task as an outbox row in
        ``session``'s transaction: sent after the commit, never on rollback; the id."""
        request = TaskRequest(
            task_name, args or (), kwargs or {}, task_id, queue, priority, countdown, eta, expires, options
        )
        self._require_open()
        return self._outbox.add(session, request)

    def relay_outbox(self, engine: Engine, *, grace: float = 2.0, limit: int = 500) -> dict[str, int]:
        """Publish outbox rows older than ``grace`` s whose publish did not happen and
        delete the sent ones (one pass); counts ``sent``, ``already_sent``, ``left``."""
        self._require_open()
        return self._outbox.relay(engine, grace=grace, limit=limit)

    async def relay_outbox_async(
        self, engine: AsyncEngine, *, grace: float = 2.0, limit: int = 500
    ) -> dict[str, int]:
        """:meth:`relay_outbox` on an async engine (Redis work in a thread)."""
        self._require_open()
        return await self._outbox.relay_async(engine, grace=grace, limit=limit)

    # -- workflows -------------------------------------------------------------------

    def signature(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Build a signature by name for :meth:`chain`, :meth:`group` and :meth:`chord`."""
        return self._parts.canvas.signature(task_name, args, kwargs, options)

    def chain(self, *signatures: Signature | str, **options: Any) -> AsyncResult:
        """Run tasks one after another, each getting the previous result; returns the last."""
        return self._parts.canvas.chain(signatures, options)

    def group(self, *signatures: Signature | str, **options: Any) -> GroupResult:
        """Run tasks in parallel; the group result is saved so it can be restored by id."""
        return self._parts.canvas.group(signatures, options)

    def chord(self, header: Iterable[Signature | str], body: Signature | str, **options: Any) -> AsyncResult:
        """Run ``header`` in parallel, then ``body`` with the list of their results."""
        return self._parts.canvas.chord(header, body, options)

    # -- results ---------------------------------------------------------------------

    def get_result(self, task_id: str, timeout: float | None = None, propagate: bool = True) -> Any:
        """Block until the task is ready (or ``timeout`` s pass: :class:`ResultTimeoutError`).
        With ``propagate=False`` a failed task's exception is returned, not raised."""
        return self._parts.results.get_result(task_id, timeout, propagate)

    def get_status(self, task_id: str) -> str:
        """PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE or REVOKED."""
        return self._parts.results.get_status(task_id)

    def get_statuses(self, task_ids: Iterable[str]) -> dict[str, str]:
        """Statuses of many tasks in one round trip to Redis (one MGET); only the
        ``status`` field of each stored result is decoded."""
        return self._parts.results.get_statuses(task_ids)

    def get_task_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored result metadata per id (``{"status": "PENDING"}`` when nothing is stored)."""
        return self._parts.results.get_task_metas(task_ids)

    def revoke(self, task_id: str, terminate: bool = False, signal: str = "SIGTERM") -> None:
        """Revoke a task: a queued (or countdown/ETA) task never runs; with
        ``terminate=True`` a running one is stopped. The revoke is kept in Redis, so
        workers that start later honour it too."""
        self._parts.results.revoke(task_id, terminate, signal)
        with unreachable(f"could not release the dedupe key of {task_id}", self.broker_url):
            self._parts.publisher.dedupe.release(task_id)

    def deduplicated_counts(self) -> dict[str, int]:
        """Submits answered with an existing task per task name, counted in Redis by
        every process (``dedupe_key``)."""
        with unreachable("could not read dedupe counts", self.broker_url):
            return self._parts.publisher.dedupe.counts()

    # -- periodic tasks --------------------------------------------------------------

    def add_periodic_task(
        self,
        task_name: str,
        schedule_type: str,
        schedule_value: Any,
        *,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
        replace: bool = True,
    ) -> str:
        """Create or replace a schedule entry in Redis; a running beat picks it up within
        about a second. With ``replace=False`` an existing entry is a conflict. Returns
        the entry name; the run history of a replaced entry is kept."""
        spec = {
            "task_name": task_name,
            "schedule_type": schedule_type,
            "schedule_value": schedule_value,
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "queue": queue,
            "options": options,
            "enabled": enabled,
        }
        return self._parts.periodic.add_many([spec], replace=replace)[0]

    def add_periodic_tasks(self, entries: Iterable[Mapping[str, Any]], *, replace: bool = True) -> list[str]:
        """Create or replace many entries (each a mapping of :meth:`add_periodic_task`'s
        arguments), all validated first and written in pipelined batches."""
        return self._parts.periodic.add_many(entries, replace=replace)

    def remove_periodic_task(self, name: str) -> bool:
        """Delete an entry; ``False`` if there was none. It never fires again."""
        return self._parts.periodic.remove(name)

    def enable_periodic_task(self, name: str) -> dict[str, Any]:
        """Turn an entry back on; it resumes on its schedule."""
        return self._parts.periodic.enable(name)

    def disable_periodic_task(self, name: str) -> dict[str, Any]:
        """Turn an entry off without deleting it; beat stops sending it."""
        return self._parts.periodic.disable(name)

    def get_periodic_task(self, name: str) -> dict[str, Any]:
        """One entry (see :meth:`list_periodic_tasks`), or :class:`PeriodicTaskNotFoundError`."""
        return self._parts.periodic.get(name)

    def list_periodic_tasks(self) -> list[dict[str, Any]]:
        """Every entry, static and dynamic, sorted by name: name, task, schedule (type,
        value, description), args, kwargs, queue, options, enabled, last_run_at,
        next_run_at, total_run_count, static. See :meth:`periodic_tasks_page` for pages."""
        return self._parts.periodic.list_all()

    def periodic_tasks_page(self, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """One page of :meth:`list_periodic_tasks` (sorted by name) and the total count;
        only the page's entries are read and decoded."""
        check_page(limit, offset)
        return self._parts.periodic.page(limit, offset)

    # -- dead letters ----------------------------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Tasks that failed for good and messages workers refused, newest first: the
        total and one page. Each entry has id, task_id, task, args, kwargs, queue,
        reason, error, traceback, recorded_at and whether it can be re-submitted."""
        return self._parts.dead_letters.page(limit, offset)

    def get_dead_letter(self, entry_id: str) -> dict[str, Any]:
        """One entry, or :class:`DeadLetterNotFoundError`."""
        return self._parts.dead_letters.get(entry_id)

    def resubmit_dead_letter(self, entry_id: str) -> str:
        """Send the entry's task again (same id, args, kwargs and queue; the old result
        is replaced) and remove the entry; the task id. The entry is claimed atomically:
        of concurrent calls exactly one sends, the others get
        :class:`DeadLetterNotFoundError`."""
        return self._parts.dead_letters.resubmit(entry_id)

    def delete_dead_letter(self, entry_id: str) -> bool:
        """Remove an entry; ``False`` if there was none."""
        return self._parts.dead_letters.delete(entry_id)

    # -- workers and queues ----------------------------------------------------------

    # -- flow control ----------------------------------------------------------------

    def limits(self) -> list[dict[str, Any]]:
        """Every task with flow limits: the limits in force, ``source`` (``declared`` by
        its code or ``runtime`` from :meth:`set_limits`) and how many starts waited."""
        self.load_tasks()
        return self._parts.flow.listing()

    def set_limits(self, task_name: str, **limits: Any) -> dict[str, Any]:
        """Replace a task's flow limits on every worker within about a second (limits
        not given are off): ``global_rate_limit``, ``rate_limit_per_key`` ("10/s",
        "600/m", "5/h"), ``concurrency_limit``, ``concurrency_limit_per_key``."""
        self.load_tasks()
        return self._parts.flow.set(task_name, limits).as_dict()

    def throttled_counts(self) -> dict[str, int]:
        """Per task, how many starts had to wait for a flow permit (each waiting task once)."""
        return self._parts.flow.throttled_counts()

    def reset_limits(self, task_name: str) -> dict[str, Any]:
        """Drop a task's runtime limits: the ones its code declares apply again."""
        self.load_tasks()
        return self._parts.flow.reset(task_name).as_dict()

    def register_worker_hooks(self, on_startup: Any = None, on_shutdown: Any = None) -> None:
        """Register sync or ``async`` callables run in each task-executing worker
        process: ``on_startup`` before its first task, ``on_shutdown`` on warm shutdown."""
        self._require_open()
        self._hooks.register(on_startup, on_shutdown)

    def known_queues(self) -> list[str]:
        """The default queue, every queue named by a route, and those configured in
        ``tasksys_known_queues``: the queues outside callers (the HTTP API) may name."""
        return self._parts.operations.known_queues()

    def queue_lengths(self, queues: Iterable[str] | None = None) -> dict[str, int]:
        """Messages waiting per queue (priority sub-queues summed), not counting
        messages workers have already reserved."""
        return self._parts.operations.queue_lengths(queues)

    def ping(self, timeout: float = 1.0, *, workers: bool = True) -> dict[str, Any]:
        """Reachability of broker and result backend (``{ok, latency_ms, error}`` each),
        and the names of the workers that answered within ``timeout``."""
        return self._parts.operations.ping(timeout, workers=workers)

    # -- lifecycle -------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the redis.asyncio connections the async methods opened in this loop;
        safe to call twice, also after :meth:`close`."""
        await self.__parts.aio.aclose()

    def close(self) -> None:
        """Release connections and disconnect this client's signal receivers; any later
        call raises :class:`ClientClosedError`. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._disconnect_recorder()
        self._hooks.disconnect()
        self.__parts.publisher.close()
        self.app.close()
