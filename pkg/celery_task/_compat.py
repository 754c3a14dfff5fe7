"""Every private Celery, kombu, billiard and RedBeat name this package relies on, in one
place, each behind a small function.

A private name is used only where no public extension point reaches the same point;
each section says why. ``tests/unit/test_compat*.py`` pin every one against the
installed versions (signature, attribute or behaviour), so an upgrade that renames or
changes one fails a test naming it instead of a worker in production.

Sections: publishing (the fast path), worker (consumer, transport, pool), results
backend, beat (RedBeat). Nothing else in the package touches a private name of those
libraries.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.worker import state as worker_state
from kombu import connection as kombu_connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

# == Redis clients (RedBeat) ===========================================================
#
# - RedBeat keeps its client on the app (``redbeat.schedulers.REDBEAT_REDIS_KEY``) and
#   wraps it for beat's retry period with the private ``_set_redbeat_connect``; there is
#   no public way to hand it a client. :func:`use_redbeat_client` does both, so a
#   caller's client serves the schedule store as RedBeat's own would.


def use_redbeat_client(app: Any, client: Any, retry_period: float | None) -> None:
    """Make RedBeat (and so every part using the state Redis) use ``client`` for ``app``."""
    from redbeat import schedulers

    schedulers._set_redbeat_connect(app, schedulers.REDBEAT_REDIS_KEY, client, retry_period)


# == Worker: consumer, transport, pool ================================================
#
# - kombu's Redis channel ``_brpop_read`` parses the popped message (``loads``) before
#   any hook can see it; a body that is not JSON raises out of the worker's event loop
#   and the popped message is lost. :func:`brpop_reply` and :func:`brpop_done` are the
#   two halves of that method around the parse, so the channel can parse it safely.
#   BRPOP itself pops a message the worker has not recorded yet: killed between the
#   pop and the record, the message was gone. ``_brpop_start`` (kombu's sender of
#   BRPOP) is replaced by a script that pops and records in one step.
# - Celery's ``WorkController._process_task`` hands a request to the pool, inside the
#   pool-slot semaphore (``_process_task_sem`` / ``_quick_release``); an error there
#   escapes the event loop and stops the worker. :func:`guard_process_task` wraps it,
#   releasing the slot on error exactly as Celery does for a revoked task.
# - kombu's Redis channel ``_do_restore_message`` knows where a held message goes back
#   to (exchange lookup, priority sub-queue, redelivered flags); :func:`restore_targets`
#   asks it, so the transport can requeue in one script that works when Redis is full.
# - billiard's pool registers a job in ``_cache`` before it pickles it; when pickling
#   fails (a message nested too deep), :func:`forget_unsent_job` drops that entry.
# - kombu's ``Connection.as_uri`` (what Flower, the worker banner and every tool read)
#   names the transport through ``kombu.connection.resolve_aliases``; without an entry a
#   custom transport class reports ``pkg...:PriorityRedisTransport://``, which Flower
#   refuses. :func:`report_transport_as` adds one for our class path only.
# - Celery has no signal for an incoming remote-control command. Its worker mailbox
#   dispatches from the global registry ``celery.worker.control.Panel.data`` (the public
#   ``@control_command`` writes there) at each call; :func:`wrap_control_command` puts a
#   wrapper around a registered handler (``revoke``), keeping its registered metadata.
# - The transport's QoS (``worker.qos``) writes kombu's unacked keys itself, one script
#   per delivery and per ack, so it cannot call kombu's Redis ``QoS.append``/``ack``
#   (they would write the same keys again in a MULTI/EXEC, which also fails while Redis
#   is out of memory). It calls the in-process bookkeeping one layer down, kombu's
#   public virtual ``QoS.append``/``ack`` (:func:`hold_in_memory`,
#   :func:`release_in_memory`); what that skips in kombu's Redis QoS is pinned. It
#   stores kombu's own payload, ``Message._raw`` (:func:`raw_payload`), and reads the
#   held messages from ``QoS._delivered`` (:func:`held_message`, :func:`held_tags`):
#   neither has a public accessor.
# - The channel's clients: kombu's ``Channel._create_client`` (:func:`channel_client`)
#   also passes the pool's credential provider on, which ``Client(connection_pool=)``
#   would drop; ``Channel._pool`` (:func:`channel_pool`) is read without building a
#   pool, which the public ``pool`` property would do on a closed channel.
# - The channel overrides three private kombu methods: ``_brpop_start`` and
#   ``_brpop_read`` (see above), and ``_get_message_priority``, the one place kombu
#   maps a priority to a sub-queue, for both publish and restore
#   (:func:`stock_message_priority` is kombu's mapping). A read message reaches the
#   consumer through ``Transport._deliver`` (:func:`deliver`). In place of BRPOP the
#   poll connection sends a fetch script (:func:`send_poll_command`) on the keys BRPOP
#   would wait on (:func:`poll_queue_keys`), and its reply is read as kombu reads
#   BRPOP's (:func:`poll_reply`, :func:`rotate_queue`, :func:`brpop_done`).
# - Celery's revoke list is the module-global ``celery.worker.state.revoked``; its expiry
#   (:func:`set_revoke_expiry`) has no setting; :func:`merge_revoked` and
#   :func:`task_ready` are the worker-state calls Celery's own consumer makes.
# - kombu's ``Timer`` keeps cancelled entries in its heap ``_queue`` until they come
#   due and has no public way to drop them: :func:`compact_timer`.
# - Flushing buffered task events goes through the public ``EventDispatcher.flush``
#   (Celery's own ``Consumer._flush_events`` does only that), and the backend is chosen
#   through the loader's public ``override_backends``: no private name there.

#: The statements of kombu's ``Channel._brpop_read`` that :func:`brpop_reply` and
#: :func:`brpop_done` reproduce (the pinning test checks kombu still has them).
KOMBU_BRPOP_READ_STEPS: tuple[str, ...] = (
    "self.client.parse_response(self.client.connection,",
    "self.client.connection.disconnect()",
    "dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]",
    "self._queue_cycle.rotate(dest)",
    "self.connection._deliver(loads(bytes_to_str(item)), dest)",
    "self._in_poll = None",
    "self._flush_brpop_reauth()",
)


def poll_reply(channel: Any, command: str, **options: Any) -> Any:
    """Read the reply of the command the channel's poll connection sent. On a
    connection error the connection is dropped so the next poll reconnects, as kombu
    does."""
    client = channel.client
    try:
        return client.parse_response(client.connection, command, **options)
    except channel.connection_errors:
        client.connection.disconnect()
        raise


def rotate_queue(channel: Any, queue: str) -> None:
    """Move ``queue`` to the end of the channel's round robin (it was just served)."""
    channel._queue_cycle.rotate(queue)


def brpop_reply(channel: Any, **options: Any) -> tuple[str, bytes] | None:
    """Read the reply of the BRPOP the channel sent: ``(queue, raw message)`` or
    ``None`` (timed out)."""
    reply = poll_reply(channel, "BRPOP", **options)
    if not reply:
        return None
    dest, item = reply
    if isinstance(dest, bytes):
        dest = dest.decode(errors="replace")
    queue = str(dest).rsplit(channel.sep, 1)[0]
    rotate_queue(channel, queue)
    return queue, item


def poll_queue_keys(channel: Any) -> list[tuple[str, str]]:
    """``(queue, list key)`` pairs of the keys kombu's BRPOP would wait on next, in its
    order (priority steps first, queues in round robin); ``[]`` when it consumes none."""
    queues = channel._queue_cycle.consume(len(channel.active_queues))
    steps = channel.priority_steps
    return [(queue, channel._q_for_pri(queue, pri)) for pri in steps for queue in queues or ()]


def kombu_brpop_start(channel: Any, timeout: float | None = None) -> None:
    """kombu's own ``_brpop_start``: send BRPOP on the channel's poll connection."""
    kombu_redis.Channel._brpop_start(channel, timeout)  # type: ignore[no-untyped-call]


#: The statements of kombu's ``Channel._brpop_start`` that :func:`poll_queue_keys` and
#: :func:`send_poll_command` reproduce (the pinning test checks kombu still has them).
KOMBU_BRPOP_START_STEPS: tuple[str, ...] = (
    "queues = self._queue_cycle.consume(len(self.active_queues))",
    "keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps",
    "self._in_poll = self.client.connection",
    "self._brpop_sent_at = monotonic()",
    "self.client.connection.send_command(*command_args)",
)


def send_poll_command(channel: Any, *args: Any) -> None:
    """Send ``args`` on the channel's poll connection in place of kombu's BRPOP; its
    reply is read by ``_brpop_read`` when the socket is readable, and the BRPOP health
    check times it from now."""
    connection = channel.client.connection
    channel._in_poll = connection
    channel._brpop_sent_at = time.monotonic()
    connection.send_command(*args)


def brpop_done(channel: Any) -> None:
    """After a BRPOP reply was consumed: mark the channel idle, flush a pending re-auth."""
    channel._in_poll = None
    flush = getattr(channel, "_flush_brpop_reauth", None)
    if flush is not None:
        flush()


def forget_unsent_job(pool: Any) -> bool:
    """Drop the job a failed ``apply_async`` left in a billiard pool's cache (the most
    recent one, never sent to a process). ``True`` if one was dropped."""
    cache = getattr(getattr(pool, "_pool", None), "_cache", None)
    if not cache:
        return False
    job_id = max(cache)
    job = cache[job_id]
    if getattr(job, "_accepted", False) or getattr(job, "_write_to", None) is not None:
        return False
    if getattr(job, "_payload", None) is not None:
        return False
    cache.pop(job_id, None)
    return True


def guard_process_task(
    controller: Any,
    on_task_request: Callable[[Any], Any],
    on_error: Callable[[Any, Exception], None],
    check: Callable[[Any], None] | None = None,
) -> Callable[[Any], Any]:
    """Make the worker's hand-off of a request to its pool call ``on_error(request,
    exc)`` instead of raising (``check(request)`` runs first and may raise too);
    returns the ``on_task_request`` the consumer should use.

    ``_process_task_sem`` looks ``_process_task`` up at each call (also when a queued
    request gets a free slot later), so the guarded one replaces it on the instance.
    """
    original = getattr(controller, "_process_task", None)
    if original is None:
        return on_task_request

    def process_task(request: Any) -> None:
        try:
            if check is not None:
                check(request)
            original(request)
        except Exception as exc:  # a loop boundary: the worker must keep consuming
            forget_unsent_job(getattr(controller, "pool", None))
            with contextlib.suppress(AttributeError):  # no semaphore: nothing to release
                controller._quick_release()
            on_error(request, exc)

    controller._process_task = process_task
    return process_task if on_task_request == original else on_task_request


class _PushRecorder:
    """Stands in for the pipeline ``_do_restore_message`` writes to."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str]] = []

    def lpush(self, key: str, value: str) -> None:
        self.pushes.append((key, value))

    rpush = lpush


def restore_targets(channel: Any, payload: Any, exchange: Any, routing_key: Any) -> list[tuple[str, str]]:
    """``(list key, encoded message)`` pairs kombu would push to restore ``payload``
    (marked redelivered, filed by priority, one per bound queue)."""
    recorder = _PushRecorder()
    channel._do_restore_message(payload, exchange, routing_key, recorder, leftmost=True)
    return recorder.pushes


def report_transport_as(transport: str, scheme: str) -> None:
    """Make kombu connections whose transport is the class path ``transport`` report
    their URL with ``scheme`` (``redis://...``); the class in use does not change."""
    kombu_connection.resolve_aliases[transport] = scheme


#: Marks a handler :func:`wrap_control_command` installed, so it is wrapped only once.
_WRAPPED_ATTR = "__tasksys_wrapped__"


def wrap_control_command(name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Replace the worker's remote-control handler ``name`` by ``wrap(handler)``, once per
    process (it is global, like Celery's registry). ``False`` if there is no such command."""
    from celery.worker.control import Panel

    handler = Panel.data.get(name)
    if handler is None:
        return False
    if getattr(handler, _WRAPPED_ATTR, False):
        return True
    wrapped = wrap(handler)
    setattr(wrapped, _WRAPPED_ATTR, True)
    Panel.data[name] = wrapped
    return True


def raw_payload(message: Any) -> Any:
    """The payload kombu read from Redis for ``message`` (what its unacked hash holds)."""
    return message._raw


def held_message(qos: Any, delivery_tag: str) -> Any:
    """The message ``qos`` holds (delivered, not yet acknowledged) under ``delivery_tag``."""
    return qos._delivered[delivery_tag]


def held_tags(qos: Any) -> list[str]:
    """The delivery tags of the messages ``qos`` holds, a copy safe to take from another
    thread (kombu forgets acknowledged ones lazily, so it may still list those)."""
    return list(qos._delivered)


def hold_in_memory(qos: Any, message: Any, delivery_tag: str) -> None:
    """kombu's in-process bookkeeping of a delivery, without its Redis writes (done)."""
    kombu_virtual.QoS.append(qos, message, delivery_tag)  # type: ignore[no-untyped-call]


def release_in_memory(qos: Any, delivery_tag: str) -> None:
    """kombu's in-process bookkeeping of an ack, without its Redis writes (done)."""
    kombu_virtual.QoS.ack(qos, delivery_tag)  # type: ignore[no-untyped-call]


def channel_client(channel: Any) -> Any:
    """A new synchronous ``redis.Redis`` on the channel's connection pool, as kombu makes
    for each command (with the pool's credential provider)."""
    return channel._create_client(asynchronous=False)


def channel_pool(channel: Any) -> Any:
    """The channel's connection pool, or ``None`` when it has none (closed, or not yet
    used); unlike ``channel.pool`` this never builds one."""
    return channel._pool


def deliver(channel: Any, payload: Any, queue: str) -> None:
    """Hand a message read from ``queue`` to the consumer callback of its channel."""
    channel.connection._deliver(payload, queue)


def stock_message_priority(channel: Any, message: Any, reverse: bool = False) -> int:
    """kombu's sub-queue step for ``message`` (its 0-9 priority, ``9 - p`` if ``reverse``)."""
    return int(kombu_redis.Channel._get_message_priority(channel, message, reverse=reverse))  # type: ignore[no-untyped-call]


def set_revoke_expiry(seconds: float) -> None:
    """Make this worker forget a revoked id after ``seconds`` (Celery's default: 3 h)."""
    worker_state.revoked.expires = seconds


def merge_revoked(task_ids: Iterable[str]) -> None:
    """Add ids to this worker's revoke list, as a ``revoke`` command does."""
    worker_state.merge_revoked(list(task_ids))


def task_ready(request: Any) -> None:
    """Tell the worker's state a request is done (it leaves active/reserved counts)."""
    worker_state.task_ready(request)


def compact_timer(timer: Any) -> int:
    """Drop cancelled entries from a kombu ``Timer``'s heap; how many were dropped."""
    queue = timer._queue
    live = [item for item in queue if not item.entry.canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live
    return dropped


# == Publishing: the fast path (kombu Producer, Celery amqp) ==========================
#
# ``_fastpath`` builds the messages of ``Celery.send_task`` with Celery's own code and
# writes them pipelined. Public names it uses instead of private ones: kombu's
# ``Producer.publish`` (no more copy of it calling ``Producer._delivery_details`` and
# ``_prepare``), ``Router.routes`` / ``MapRoute``, ``Backend.on_task_call``.
#
# - ``send_task`` reads the task registry as ``app._tasks``: ``app.tasks`` finalizes the
#   app. :func:`registered_task` reads it the same way.
# - ``send_task`` takes a task's defaults (queue, priority, expires, time limits, ...)
#   from ``Task._get_exec_options``: :func:`task_exec_defaults`.
# - ``AMQP.create_task_message`` is public, but ``send_task`` passes it 21 positional
#   arguments. :func:`create_task_message` passes every field by name, and the pinning
#   test checks its parameters are still exactly :data:`CREATE_TASK_MESSAGE_PARAMETERS`,
#   so a parameter added upstream fails a test instead of shifting values.
# - kombu's Redis channel turns a message into its Redis commands (queue key, priority
#   sub-queue, fanout topics, queue expiry) in ``basic_publish``; given
#   ``_publish_batch=``, the protocol of kombu's own ``PublishBatch``, it hands each one
#   to ``batch.add(name, *args)`` instead of sending it: :func:`publish_to_batch`. The
#   public way, ``Producer.batch()`` / ``Channel.create_publish_batch`` (kombu 5.7),
#   runs those commands itself, on a non-transactional redis-py pipeline. It cannot give
#   ``submit_many`` one MULTI/EXEC per chunk (the ``sent_ids`` contract), cannot hand
#   the commands to redis.asyncio (``submit_async``), and cannot capture the first
#   message of a shape as a template. The templates give the measured figures: ``submit``
#   at 0.43-0.48 of ``send_task``'s cost, ``submit_many`` at 10x a ``send_task`` loop
#   (README, Performance).
# - ``RedisBackend.on_task_call`` only subscribes this process to the result channel of
#   the task. The ``AsyncResult`` unsubscribes when it is collected (``__del__`` ->
#   ``remove_pending_result`` -> ``cancel_for``), and ``get()`` subscribes again by
#   itself. :func:`task_call_hook_skippable` lets the fast path leave out that hook and
#   Celery's base no-op, and nothing else. Doing that subscribe and unsubscribe for
#   every task costs about a fifth of ``send_task``'s time (PERF-NOTES), and
#   ``submit_many`` and ``submit_async`` return ids, so for them it is only that cost.

#: Steps of ``Celery.send_task`` (Celery 5.7, whitespace collapsed) that
#: ``_fastpath.prepare_task`` and :func:`create_task_message` reproduce, and the side
#: effects after them that ``_fastpath.fast_path_supports`` leaves to ``send_task``
#: (the pinning test checks Celery still has each).
SEND_TASK_STEPS: tuple[str, ...] = (
    "registry = self._tasks",
    "task_exec_options = get_exec_options()",
    "options = dict(filtered_opts, **options)",
    "if expires is _OMITTED: expires = options.pop('expires', None) else: options.pop('expires', None)",
    "ignore_result = options.pop('ignore_result', None)",
    "options = router.route( options, route_name or name, args, kwargs, task_type)",
    'options["expiration"] = expires_s',
    "root_id = parent.request.root_id or parent.request.id",
    "message = amqp.create_task_message( task_id, name, args, kwargs, countdown, eta, group_id, group_index,"
    " expires, retries, chord, maybe_list(link), maybe_list(link_error), reply_to or self.thread_oid,"
    " time_limit, soft_time_limit, self.conf.task_send_sent_event, root_id, parent_id, shadow, chain,"
    " ignore_result=ignore_result, replaced_task_nesting=replaced_task_nesting, **options )",
    "self.backend.on_task_call(P, task_id)",
    "amqp.send_task_message(P, name, message, **options)",
    "parent.add_trail(result)",
)

#: ``AMQP.create_task_message`` (``as_task_v2``) parameters in Celery 5.7, in order.
#: ``send_task`` passes the first 21 positionally.
CREATE_TASK_MESSAGE_PARAMETERS: tuple[str, ...] = (
    "task_id",
    "name",
    "args",
    "kwargs",
    "countdown",
    "eta",
    "group_id",
    "group_index",
    "expires",
    "retries",
    "chord",
    "callbacks",
    "errbacks",
    "reply_to",
    "time_limit",
    "soft_time_limit",
    "create_sent_event",
    "root_id",
    "parent_id",
    "shadow",
    "chain",
    "now",
    "timezone",
    "origin",
    "ignore_result",
    "argsrepr",
    "kwargsrepr",
    "stamped_headers",
    "replaced_task_nesting",
    "options",
)


def registered_task(app: Any, name: str) -> Any:
    """The registered task ``name`` or ``None``, read as ``send_task`` reads it (without
    finalizing the app)."""
    registry = app._tasks
    get = getattr(registry, "get", None)
    if callable(get):
        return get(name)
    try:
        return registry[name]
    except KeyError:
        return None


def task_exec_defaults(task: Any) -> dict[str, Any]:
    """The task's execution options that are set, as ``send_task`` merges them under
    the caller's options."""
    get_exec_options = getattr(task, "_get_exec_options", None)
    if not inspect.ismethod(get_exec_options):
        return {}
    return {k: v for k, v in (get_exec_options() or {}).items() if v is not None}


def create_task_message(
    app: Any,
    *,
    task_id: str,
    name: str,
    args: Any,
    kwargs: Any,
    countdown: Any,
    eta: Any,
    expires: Any,
    reply_to: str,
    time_limit: Any,
    soft_time_limit: Any,
    create_sent_event: bool,
    root_id: str | None,
    parent_id: str | None,
    ignore_result: Any,
    options: dict[str, Any],
) -> Any:
    """``app.amqp.create_task_message`` as ``send_task`` calls it for a task without
    group, chord, links, shadow or chain, every field passed by name."""
    return app.amqp.create_task_message(
        task_id=task_id,
        name=name,
        args=args,
        kwargs=kwargs,
        countdown=countdown,
        eta=eta,
        group_id=None,
        group_index=None,
        expires=expires,
        retries=0,
        chord=None,
        callbacks=None,  # maybe_list(None), as send_task passes them
        errbacks=None,
        reply_to=reply_to,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        create_sent_event=create_sent_event,
        root_id=root_id,
        parent_id=parent_id,
        shadow=None,
        chain=None,
        ignore_result=ignore_result,
        replaced_task_nesting=0,
        **options,
    )


def publish_to_batch(channel: Any, message: Any, batch: Any, **publish_kwargs: Any) -> None:
    """Route ``message`` as ``channel.basic_publish`` does, handing each Redis command it
    would send to ``batch.add(name, *args)`` instead (no I/O)."""
    channel.basic_publish(message, _publish_batch=batch, **publish_kwargs)


#: The ``on_task_call`` functions :func:`task_call_hook_skippable` accepts, once imported.
_SKIPPABLE_HOOKS: tuple[Any, ...] = ()


def task_call_hook_skippable(backend: Any) -> bool:
    """True if the backend's ``on_task_call`` is Celery's no-op or its Redis backend's
    result subscription, which leaves nothing behind once the result is collected."""
    global _SKIPPABLE_HOOKS
    if not _SKIPPABLE_HOOKS:
        from celery.backends.base import BaseBackend
        from celery.backends.redis import RedisBackend

        _SKIPPABLE_HOOKS = (BaseBackend.on_task_call, RedisBackend.on_task_call)
    return getattr(type(backend), "on_task_call", None) in _SKIPPABLE_HOOKS


# == Results backend (Celery's Redis backend) =========================================
#
# - ``TimedRedisBackend`` overrides two private methods of Celery's backends: Celery
#   has no public hook to add fields to a result (``_get_result_meta`` builds every
#   stored meta, also for Celery's own non-JSON path) nor to choose how one state is
#   written (``store_result`` retries around ``_store_result``; the public ``set`` gets
#   neither the state nor the task id). :func:`celery_result_meta` and
#   :func:`celery_store_result` are Celery's own versions, called from the overrides;
#   the pinning test checks their signatures and that Celery still calls them.
# - ``RedisBackend._MAX_STR_VALUE_SIZE`` is Redis's largest value, which Celery checks
#   before a store (:func:`max_result_size`).
# - The backend copies ``result_backend_transport_options`` into a cached private
#   property when it is built and caches ``retry_policy`` from it; a worker that changes
#   the option afterwards updates both (:func:`set_backend_transport_options`).


def celery_result_meta(
    backend: Any,
    result: Any,
    state: str,
    traceback: Any,
    request: Any,
    format_date: bool = True,
    encode: bool = False,
) -> dict[str, Any]:
    """The result meta Celery's Redis backend would store for this state."""
    meta: dict[str, Any] = CeleryRedisBackend._get_result_meta(
        backend, result, state, traceback, request, format_date=format_date, encode=encode
    )
    return meta


def celery_store_result(
    backend: Any,
    task_id: Any,
    result: Any,
    state: str,
    traceback: Any = None,
    request: Any = None,
    **kwargs: Any,
) -> Any:
    """Store a state as Celery's Redis backend does."""
    return CeleryRedisBackend._store_result(
        backend, task_id, result, state, traceback=traceback, request=request, **kwargs
    )


def max_result_size(backend: Any) -> int:
    """The largest encoded result Celery's Redis backend stores."""
    return int(backend._MAX_STR_VALUE_SIZE)


def set_backend_transport_options(backend: Any, options: dict[str, Any]) -> bool:
    """Give a built Redis backend new ``result_backend_transport_options`` (its retry
    policy is recomputed from them); ``False`` if the backend does not read them."""
    if not hasattr(backend, "_transport_options"):
        return False
    backend._transport_options = options
    backend.__dict__.pop("retry_policy", None)  # a cached_property
    return True


# == Beat (RedBeat, Celery schedules) =================================================
#
# Everything else beat needs goes through public points: ``ScheduleEntry.default_now``,
# ``next``/``__next__`` (what ``Scheduler.reserve`` calls), RedBeat's ``save``,
# ``update_from_dict``, ``from_key`` and ``score``, ``celery.schedules.crontab_parser``
# for cron fields, and ``RedBeatJSONEncoder`` for a crontab's fields as written.
# Two private points stay, because nothing public reaches them:
# - Celery's ``Scheduler._maybe_entry`` turns one ``beat_schedule`` value (a mapping or
#   an entry) into an entry exactly as ``update_from_dict`` will; the public ``add``
#   also stores it in ``self.schedule``, which for RedBeat is a read of Redis, and
#   ``update_from_dict`` gives no way to check one static entry before storing the rest.
#   :func:`schedule_entry` calls it.
# - RedBeat's ``get_redis`` builds its client once and caches it on the app under
#   ``REDBEAT_REDIS_KEY``; there is no call to rebuild it after ``redbeat_redis_options``
#   changed. :func:`forget_redbeat_client` clears the cache (the name is public, what it
#   caches is not documented).


def schedule_entry(scheduler: Any, name: str, definition: Any) -> Any:
    """The entry ``scheduler.update_from_dict`` would make of ``beat_schedule[name]``
    (raises what the entry class raises for an invalid definition)."""
    return scheduler._maybe_entry(name, definition)


def forget_redbeat_client(app: Any) -> None:
    """Make RedBeat's ``get_redis(app)`` build a new client, from the options set now."""
    from redbeat.schedulers import REDBEAT_REDIS_KEY

    setattr(app, REDBEAT_REDIS_KEY, None)


# == Asyncio pool ======================================================================
#
# ``celery inspect stats`` reads a pool's ``info`` property, which returns
# ``BasePool._get_info()``: the method a pool overrides to add its own fields (the
# threads pool does the same). :func:`base_pool_info` calls the base implementation.
#
# - The consumer's hub runs on the pool's asyncio loop (``worker/hubloop.py``), which
#   waits on the hub's epoll set for it; kombu's poller exposes no descriptor, so
#   :func:`hub_poll_fd` reads the ``select.epoll`` it keeps in ``_epoll``.


def hub_poll_fd(hub: Any) -> int:
    """The descriptor of the epoll set under kombu's hub poller (``_epoll._epoll``):
    readable when the hub has events, so an asyncio loop can wait on it for the hub.
    The asyncio pool's poller wrapper (``YieldingPoller``) is looked through."""
    poller = hub.poller
    poller = getattr(poller, "_poller", poller)
    return int(poller._epoll.fileno())


def base_pool_info(pool: Any) -> dict[str, Any]:
    """What ``celery.concurrency.base.BasePool`` reports for ``pool`` in ``inspect stats``."""
    from celery.concurrency.base import BasePool

    return dict(BasePool._get_info(pool))


# == Flow control ======================================================================
#
# - A task waiting for a flow-control permit must not hold a pool slot, so the gate sits
#   where the worker hands a request to its pool: ``WorkController._process_task``
#   (looked up on the instance by ``_process_task_sem`` at each call, as the dead-letter
#   guard above relies on too). A request the gate holds gives back the semaphore slot
#   ``_process_task_sem`` took for it (``_quick_release``), only when that path took one.


def gate_process_task(
    controller: Any, on_task_request: Callable[[Any], Any], admit: Callable[[Any], bool]
) -> Callable[[Any], Any]:
    """Make the controller's hand-off to its pool run ``admit(request)`` first and pass
    on only admitted requests; returns the ``on_task_request`` the consumer should use."""
    inner = getattr(controller, "_process_task", None)
    if inner is None:
        return on_task_request

    def gated(request: Any) -> None:
        if admit(request):
            inner(request)
        elif getattr(controller, "process_task", None) == getattr(controller, "_process_task_sem", None):
            with contextlib.suppress(AttributeError):  # no semaphore: nothing to give back
                controller._quick_release()

    controller._process_task = gated
    return gated if on_task_request == inner else on_task_request


# == Async task requests ===============================================================
#
# - Celery keeps the running task's request on a thread-local stack and exposes it as the
#   property ``Task.request`` built on the private ``Task._get_request``. An ``async def``
#   body runs on the process loop's thread, among other bodies, so ``BaseTask`` overrides
#   that method to return the request its coroutine carries, else Celery's own
#   (:func:`thread_request`).


def thread_request(task: Any) -> Any:
    """The request Celery's ``Task.request`` returns for ``task`` in this thread."""
    from celery import Task

    return Task._get_request(task)
