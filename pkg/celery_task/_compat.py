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
import inspect
from collections.abc import Callable
from typing import Any

from kombu import connection as kombu_connection

# == Worker: consumer, transport, pool ================================================
#
# - kombu's Redis channel ``_brpop_read`` parses the popped message (``loads``) before
#   any hook can see it; a body that is not JSON raises out of the worker's event loop
#   and the popped message is lost. :func:`brpop_reply` and :func:`brpop_done` are the
#   two halves of that method around the parse, so the channel can parse it safely.
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


def brpop_reply(channel: Any, **options: Any) -> tuple[str, bytes] | None:
    """Read the reply of the BRPOP the channel sent: ``(queue, raw message)`` or
    ``None`` (timed out). On a connection error the connection is dropped so the next
    poll reconnects, as kombu does."""
    client = channel.client
    try:
        reply = client.parse_response(client.connection, "BRPOP", **options)
    except channel.connection_errors:
        client.connection.disconnect()
        raise
    if not reply:
        return None
    dest, item = reply
    if isinstance(dest, bytes):
        dest = dest.decode(errors="replace")
    queue = str(dest).rsplit(channel.sep, 1)[0]
    channel._queue_cycle.rotate(queue)
    return queue, item


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


# == Beat (RedBeat, Celery schedules) =================================================
