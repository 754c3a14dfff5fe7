"""The ``async`` side of the client, one instance per event loop: publishing the same
messages as ``send_task`` with redis.asyncio, and reading or waiting for results.

Blocking work (kombu connects when a channel is made, and declares queues) runs in a
thread; everything on the hot path is non-blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from celery import Celery, states
from kombu.common import maybe_declare
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._fastpath import MessageFactory
from ._options import options_of
from ._request import TaskRequest

if TYPE_CHECKING:
    from ._client import CeleryClient

__all__ = ["AsyncPublisher", "AsyncResults", "SyncPublisher"]

logger = logging.getLogger(__name__)


def _pool(client: CeleryClient, url: str) -> redis.asyncio.BlockingConnectionPool:
    """Bounded, and a burst waits (up to 2 s) for a free connection instead of failing.

    Pooled connections go stale when Redis restarts (or kills clients, or a proxy drops
    idle ones): a command that meets a dead connection is retried once, at once, on a
    fresh one. Only connection errors are retried: a timeout means Redis is slow, and
    waiting twice would double the wait. So a stale connection costs a reconnect, not a
    503, and a Redis that is really down still fails within a connect attempt or two.
    (No ``health_check_interval`` here: its per-command bookkeeping cost the API about
    a tenth of its submit throughput, and the retry already covers a dead connection.)
    """
    transport = client.app.conf.broker_transport_options or {}
    return redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=options_of(client.app).async_max_connections,
        timeout=2,
        socket_connect_timeout=transport.get("socket_connect_timeout", 2),
        socket_timeout=transport.get("socket_timeout", 10),
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        retry_on_error=[redis.exceptions.ConnectionError],
    )


class SyncPublisher:
    """A long-lived kombu connection and channel plus the message templates built on
    it; ``lock`` guards building, the channel's client is thread-safe for writing."""

    def __init__(self, app: Celery) -> None:
        self.connection = app.connection_for_write()
        self.producer = app.amqp.Producer(self.connection)
        self.factory = MessageFactory(app, self.producer)
        self.channel = self.producer.channel
        self.lock = threading.Lock()

    def close(self) -> None:
        """Release the connection."""
        self.connection.release()


class AsyncPublisher(SyncPublisher):
    """A :class:`SyncPublisher` (made in a thread, as it connects) plus a redis.asyncio
    client to write the messages with."""

    def __init__(self, client: CeleryClient) -> None:
        super().__init__(client.app)
        self.client = client
        self._declared_queues: set[str] = set()
        self.redis = redis.asyncio.Redis(connection_pool=_pool(client, client.broker_url))
        self.declare(client.app.amqp.default_queue)

    def declare(self, queue: Any) -> None:
        """Declare a queue once, through kombu's declared-entities cache, so building
        its messages later does no I/O (blocking: call it from a thread)."""
        with self.lock:
            if queue.name not in self._declared_queues:
                maybe_declare(queue, self.channel)  # type: ignore[no-untyped-call]
                self._declared_queues.add(queue.name)

    async def send(self, request: TaskRequest) -> str:
        """Publish one validated request (one MULTI/EXEC); its task id."""
        queue_name = self.client.resolve_queue(request.task_name, request.options.get("queue"))
        if queue_name not in self._declared_queues:
            await asyncio.to_thread(self.declare, self.client.app.amqp.queues[queue_name])
        with self.lock:
            task_id, commands = self.factory.build(request)
        with self.client._unreachable(f"could not send task {request.task_name!r}"):
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, args in commands:
                    getattr(pipe, name)(*args)
                await pipe.execute()
        return task_id

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

    def __init__(self, client: CeleryClient) -> None:
        self.client = client
        self.backend = client.app.backend
        self.redis = redis.asyncio.Redis(
            connection_pool=_pool(client, client.backend_url or client.broker_url)
        )
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, set[asyncio.Future[dict[str, Any]]]] = {}
        self._acks: dict[bytes, asyncio.Future[None]] = {}

    async def metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored metadata per id, ``{"status": "PENDING"}`` when none (one MGET)."""
        keys = [self.backend.get_key_for_task(task_id) for task_id in task_ids]
        with self.client._unreachable("could not read task states"):
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
        if ack is not None:  # another waiter subscribed (or is subscribing) this channel
            await asyncio.wait_for(asyncio.shield(ack), 2.0)
            return
        # Registered before SUBSCRIBE is sent: the listener may see the confirmation first.
        ack = self._acks[key] = asyncio.get_running_loop().create_future()
        try:
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub()
            await self._pubsub.subscribe(key)  # the first one also connects the listener's socket
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="tasksys-result-listener")
            await asyncio.wait_for(asyncio.shield(ack), 2.0)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            # Waiting still works by re-reading the state; it is only slower.
            logger.warning("result listener unavailable (%s); waiting by polling", exc)

    async def _unsubscribe(self, key: bytes) -> None:
        self._acks.pop(key, None)
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(key)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                logger.warning("result listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(redis.RedisError, OSError):
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
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.aclose()
        await self.redis.aclose()
