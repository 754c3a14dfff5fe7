"""The ``async`` side of the client: publishing the same messages as ``send_task`` with
redis.asyncio, and reading or waiting for results, one set of connections per event
loop. It is built from the client's parts (validation, claims, the sync publisher, the
Redis factory) and never imports the client.

Blocking work (kombu connects when a channel is made, and declares queues) runs in a
thread; everything on the hot path is non-blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio
from celery import Celery, states
from kombu.common import maybe_declare
from kombu.utils.uuid import uuid

from ._dedupe import Dedupe, Deduplicator, SubmittedId, refuse_dedupe_options
from ._errors import unreachable
from ._fastpath import Command
from ._publish import ChannelPublisher, Publisher
from ._redis import RedisClients, is_redis_url
from ._request import TaskRequest
from ._results import Results, public_state
from ._sent import run_commands, sent_after, sent_after_needed, sent_commands

__all__ = ["AsyncClient", "AsyncPublisher", "AsyncResults"]

logger = logging.getLogger(__name__)

#: What the shared pub/sub connection raises when Redis goes away; RuntimeError is
#: asyncio's "read() called while another coroutine is already waiting" when a
#: subscribe reconnects while the listener is reading. Waiting then falls back to
#: re-reading the state, so none of these may reach a caller.
#: What the shared pub/sub connection may raise while Redis restarts. AttributeError too:
#: redis-py's asyncio PubSub reconnects its one connection from whichever coroutine meets
#: it dead, and a SUBSCRIBE sent meanwhile from another finds no writer
#: (``'NoneType' object has no attribute 'writelines'``, seen once in a restart test).
_PUBSUB_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, RuntimeError, AttributeError)
_WAIT_ERRORS: tuple[type[BaseException], ...] = (*_PUBSUB_ERRORS, TimeoutError)


class AsyncPublisher(ChannelPublisher):
    """A :class:`ChannelPublisher` (made in a thread, as it connects) plus a
    redis.asyncio client to write the messages with."""

    def __init__(
        self, app: Celery, resolve_queue: Callable[[str, str | None], str], client: redis.asyncio.Redis
    ) -> None:
        super().__init__(app)
        self.app = app
        self.resolve_queue = resolve_queue
        self.url = str(app.conf.broker_url)
        self.redis = client
        self._declared_queues: set[str] = set()
        self.declare(app.amqp.default_queue)

    def declare(self, queue: Any) -> None:
        """Declare a queue once, through kombu's declared-entities cache, so building
        its messages later does no I/O (blocking: call it from a thread, never the loop)."""
        with self.lock:
            if queue.name not in self._declared_queues:
                maybe_declare(queue, self.channel)  # type: ignore[no-untyped-call]
                self._declared_queues.add(queue.name)

    async def send(self, request: TaskRequest) -> str:
        """Publish one validated request (one MULTI/EXEC); its task id. Building takes
        no lock: only this loop builds with this publisher, and only after its queue is
        declared, so building does no I/O."""
        task_id, commands = await self.build(request)
        sent = [(task_id, request.task_name)]
        with unreachable(f"could not send task {request.task_name!r}", self.url):
            async with self.redis.pipeline(transaction=True) as pipe:
                run_commands(pipe, commands + sent_commands(self.app, self.url, sent))
                await pipe.execute()
        if sent_after_needed(self.app, self.url, by_celery=False):
            await asyncio.to_thread(sent_after, self.app, self.url, sent, by_celery=False)
        return task_id

    async def build(self, request: TaskRequest) -> tuple[str, list[Command]]:
        """The task id and Redis commands of one validated request (its queue declared
        first, in a thread, so building does no I/O)."""
        queue_name = self.resolve_queue(request.task_name, request.options.get("queue"))
        if queue_name not in self._declared_queues:
            await asyncio.to_thread(self.declare, self.app.amqp.queues[queue_name])
        return self.factory.build(request)

    async def send_deduplicated(
        self, request: TaskRequest, dedupe: Dedupe, via: Deduplicator
    ) -> tuple[str, bool]:
        """Check the key and publish in one script (see :meth:`Deduplicator.send`)."""
        task_id, commands = await self.build(request)
        sent = [(task_id, request.task_name)]
        with unreachable(f"could not send task {request.task_name!r}", self.url):
            answer = await via.send_async(
                self.redis,
                task_id,
                request.task_name,
                dedupe,
                commands + sent_commands(self.app, self.url, sent),
            )
        if answer[1] and sent_after_needed(self.app, self.url, by_celery=False):
            await asyncio.to_thread(sent_after, self.app, self.url, sent, by_celery=False)
        return answer

    async def aclose(self) -> None:
        """Close the Redis connections and the kombu connection."""
        await self.redis.aclose()
        await asyncio.to_thread(self.connection.release)


class AsyncResults:
    """Reads result metadata with redis.asyncio and waits for tasks to finish.

    Celery's Redis backend publishes every state it stores on the task's key as a
    channel; one shared pub/sub connection listens to the channels of the tasks being
    waited for. The stored state is re-read after subscribing and every second, so a
    missed message only costs that second.
    """

    recheck_interval = 1.0

    def __init__(self, app: Celery, client: redis.asyncio.Redis) -> None:
        self.backend = app.backend
        self.url = str(app.conf.broker_url)
        self.redis = client
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, set[asyncio.Future[dict[str, Any]]]] = {}
        self._acks: dict[bytes, asyncio.Future[None]] = {}

    async def metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored metadata per id, ``{"status": "PENDING"}`` when none (one MGET)."""
        keys = [self.backend.get_key_for_task(task_id) for task_id in task_ids]
        with unreachable("could not read task states", self.url):
            values = await self.redis.mget(keys)
        return {
            task_id: self.backend.decode_result(raw) if raw else {"status": states.PENDING}
            for task_id, raw in zip(task_ids, values, strict=True)
        }

    async def wait(
        self, task_id: str, timeout: float, submit: Callable[[], Awaitable[Any]] | None = None
    ) -> dict[str, Any]:
        """The task's metadata once it is ready, or as it stands after ``timeout`` s.
        With ``submit``, the waiter listens first and then calls it to send the task."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if submit is None:
            meta = (await self.metas([task_id]))[task_id]
            if meta.get("status") in states.READY_STATES or timeout <= 0:
                return meta
        key = bytes(self.backend.get_key_for_task(task_id))
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiters.setdefault(key, set()).add(future)
        try:
            if submit is None:
                await self._subscribe(key)
            else:
                # Send while subscribing; the state read below (after both) catches a
                # result stored before the subscription was active.
                await asyncio.gather(self._subscribe(key), submit())
            while True:
                meta = (await self.metas([task_id]))[task_id]
                remaining = deadline - loop.time()
                if meta.get("status") in states.READY_STATES or remaining <= 0:
                    return meta
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(future), min(remaining, self.recheck_interval)
                    )
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[key]
                    await self._unsubscribe(key)

    async def _subscribe(self, key: bytes) -> None:
        ack = self._acks.get(key)
        try:
            if ack is not None:  # another waiter subscribed (or is subscribing) this channel
                await asyncio.wait_for(asyncio.shield(ack), 2.0)
                return
            # Registered before SUBSCRIBE is sent: the listener may see the confirmation first.
            ack = self._acks[key] = asyncio.get_running_loop().create_future()
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub()
            await self._pubsub.subscribe(key)  # the first one also connects the listener's socket
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="tasksys-result-listener")
            await asyncio.wait_for(asyncio.shield(ack), 2.0)
        except _WAIT_ERRORS as exc:
            # Waiting still works by re-reading the state; it is only slower.
            logger.warning("result listener unavailable (%s); waiting by polling", exc)

    async def _unsubscribe(self, key: bytes) -> None:
        self._acks.pop(key, None)
        if self._pubsub is not None:
            with contextlib.suppress(*_PUBSUB_ERRORS):
                await self._pubsub.unsubscribe(key)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except _PUBSUB_ERRORS as exc:
                logger.warning("result listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(*_PUBSUB_ERRORS):
                    if self._waiters:
                        await self._pubsub.subscribe(*self._waiters)
                continue
            if message is None:
                continue
            channel = message.get("channel")
            if message["type"] == "subscribe":
                ack = self._acks.get(channel)
                if ack is not None and not ack.done():
                    ack.set_result(None)
            elif message["type"] == "message":
                meta = self.backend.decode_result(message["data"])
                if meta.get("status") in states.READY_STATES:
                    for future in self._waiters.get(channel, ()):
                        if not future.done():
                            future.set_result(meta)

    async def aclose(self) -> None:
        """Stop listening and close the connections."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(*_PUBSUB_ERRORS):
                await self._pubsub.aclose()
        await self.redis.aclose()


class AsyncClient:
    """The ``async`` methods of :class:`CeleryClient`, one publisher and one result
    reader per event loop (made on first use, closed by :meth:`aclose`)."""

    def __init__(
        self, app: Celery, publisher: Publisher, results: Results, redis_clients: RedisClients
    ) -> None:
        self.app = app
        self.publisher = publisher
        self.results = results
        self.redis = redis_clients
        self.broker_url = str(app.conf.broker_url)
        self.backend_url: str | None = app.conf.result_backend
        self._publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPublisher] = (
            weakref.WeakKeyDictionary()
        )
        self._readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncResults] = (
            weakref.WeakKeyDictionary()
        )
        self._making: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, request: TaskRequest, dedupe: Dedupe | None = None) -> SubmittedId:
        """Validate, claim the caller's id, send without blocking the loop; the task id
        (with ``dedupe``: possibly the id of the task already holding the key)."""
        validated = self.publisher.validator.validated(request)
        if dedupe is not None:
            return await self._send_deduplicated(validated, dedupe)
        return SubmittedId(await self._send(validated, claim=True))

    async def _send_deduplicated(self, request: TaskRequest, dedupe: Dedupe) -> SubmittedId:
        publisher = self.publisher
        publisher.dedupe.check_supported(request, redis_broker=publisher.redis_broker)
        claimed = await publisher.claims.claim_async([request], self._reader().redis)
        try:
            loop = asyncio.get_running_loop()
            sender = self._publishers.get(loop) or await self._first_publisher(loop, request.task_name)
            task_id, sent = await sender.send_deduplicated(request, dedupe, publisher.dedupe)
        except BaseException:
            if claimed:
                await asyncio.to_thread(publisher.claims.release, claimed)
            raise
        if claimed and not sent:
            await asyncio.to_thread(publisher.claims.release, claimed)  # the caller's id was not used
        return SubmittedId(task_id, deduplicated=not sent)

    async def _send(self, request: TaskRequest, *, claim: bool) -> str:
        claims = self.publisher.claims
        claimed = await claims.claim_async([request], self._reader().redis) if claim else []
        try:
            return await self._publish(request)
        except BaseException:
            if claimed:
                await asyncio.to_thread(claims.release, claimed)
            raise

    async def _publish(self, request: TaskRequest) -> str:
        if not self.publisher.fast_path_ok([request]):
            return await asyncio.to_thread(self.publisher.send_task, request)
        loop = asyncio.get_running_loop()
        publisher = self._publishers.get(loop)
        if publisher is None:
            publisher = await self._first_publisher(loop, request.task_name)
        return await publisher.send(request)

    async def _first_publisher(self, loop: asyncio.AbstractEventLoop, task_name: str) -> AsyncPublisher:
        """Make this loop's publisher once: concurrent first sends wait for the one
        being made instead of each making (and leaking) their own."""
        lock = self._making.setdefault(loop, asyncio.Lock())
        async with lock:
            publisher = self._publishers.get(loop)
            if publisher is None:
                client = self.redis.async_client(self.broker_url)
                try:
                    with unreachable(f"could not send task {task_name!r}", self.broker_url):
                        publisher = await asyncio.to_thread(
                            AsyncPublisher, self.app, self.publisher.validator.resolve_queue, client
                        )
                except BaseException:
                    await client.aclose()
                    raise
                self._publishers[loop] = publisher
        return publisher

    async def submit_and_wait(
        self, request: TaskRequest, timeout: float, *, claim: bool
    ) -> tuple[str, dict[str, Any]]:
        """Send and wait up to ``timeout`` s, listening before sending; id and metadata."""
        validated = self.publisher.validator.validated(request)
        refuse_dedupe_options([validated], "submit_and_wait_async")
        task_id = validated.options.get("task_id") or uuid()
        validated = TaskRequest(
            validated.task_name,
            validated.args,
            validated.kwargs,
            options={**validated.options, "task_id": task_id},
        )
        if not is_redis_url(self.backend_url):
            await self._send(validated, claim=claim)
            return task_id, await self.wait(task_id, timeout)
        meta = await self._reader().wait(task_id, timeout, submit=lambda: self._send(validated, claim=claim))
        return task_id, meta

    def _reader(self) -> AsyncResults:
        loop = asyncio.get_running_loop()
        reader = self._readers.get(loop)
        if reader is None:
            url = self.backend_url if is_redis_url(self.backend_url) else self.broker_url
            reader = self._readers[loop] = AsyncResults(self.app, self.redis.async_client(str(url)))
        return reader

    async def get_task_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored metadata per id; one MGET on redis.asyncio when results are on Redis."""
        if not task_ids:
            return {}
        if not hasattr(self.app.backend, "get_key_for_task") or not is_redis_url(self.backend_url):
            return await asyncio.to_thread(self.results.get_task_metas, task_ids)
        return await self._reader().metas(task_ids)

    async def get_statuses(self, task_ids: Iterable[str]) -> dict[str, str]:
        """Public statuses per id."""
        metas = await self.get_task_metas(list(dict.fromkeys(task_ids)))
        return {task_id: public_state(meta.get("status")) for task_id, meta in metas.items()}

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` s for the task without blocking the loop; its metadata."""
        if not is_redis_url(self.backend_url):
            return (await asyncio.to_thread(self.results.get_task_metas, [task_id]))[task_id]
        return await self._reader().wait(task_id, timeout)

    async def aclose(self) -> None:
        """Close this loop's publisher and result reader."""
        loop = asyncio.get_running_loop()
        self._making.pop(loop, None)
        for registry in (self._publishers, self._readers):
            side = registry.pop(loop, None)
            if side is not None:
                await side.aclose()
