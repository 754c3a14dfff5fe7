"""Sending tasks from synchronous code: one validation path for ``submit`` and
``submit_many``, the Redis fast path (the messages ``send_task`` would publish, written
in one MULTI/EXEC per call or chunk), ``send_task`` for everything else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery

from ._dedupe import Dedupe, Deduplicator, refuse_dedupe_options
from ._errors import BrokerUnavailableError, InvalidRequestError, unreachable
from ._fastpath import MessageFactory, fast_path_supports, pipeline_commands
from ._redis import is_redis_url
from ._request import TaskRequest
from ._sent import run_commands, sent_after, sent_commands
from ._taskids import TaskIdClaims
from ._validation import Validator

__all__ = ["ChannelPublisher", "Publisher"]


class ChannelPublisher:
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


class Publisher:
    """Validates, claims caller ids and sends, for synchronous callers."""

    def __init__(self, app: Celery, validator: Validator, claims: TaskIdClaims) -> None:
        self.app = app
        self.validator = validator
        self.claims = claims
        self.url = str(app.conf.broker_url)
        transport_options = app.conf.broker_transport_options or {}
        #: Redis broker without a global key prefix: the fast paths apply.
        self.redis_broker = is_redis_url(self.url) and not transport_options.get("global_keyprefix")
        self._lock = threading.Lock()
        self._channel: ChannelPublisher | None = None
        self.dedupe = Deduplicator(app)

    def fast_path_ok(self, requests: Iterable[TaskRequest]) -> bool:
        """Whether the fast path builds these requests exactly as ``send_task`` would."""
        return self.redis_broker and fast_path_supports(self.app, requests)

    def submit(self, request: TaskRequest) -> str:
        """Validate, claim the caller's id, send; the task id."""
        return self.claim_and_publish(self.validator.validated(request))

    def claim_and_publish(self, validated: TaskRequest) -> str:
        """Claim a validated request's caller id and send it; the task id. Where claims
        and queues share one Redis, one script does both, so a crash in between can
        never leave the id claimed with nothing sent."""
        task_id = validated.options.get("task_id")
        if not task_id or not self.claims.claims_with_broker(self.url) or not self.fast_path_ok([validated]):
            with self.claims.held([validated]):
                return self.publish(validated)
        with unreachable(f"could not send task {validated.task_name!r}", self.url):
            _, task_id, commands = self._build(validated)
            sent = [(task_id, validated.task_name)]
            self.claims.claim_and_publish(
                validated, pipeline_commands(commands) + sent_commands(self.app, self.url, sent)
            )
        sent_after(self.app, self.url, sent, by_celery=False)
        return str(task_id)

    def submit_deduplicated(self, request: TaskRequest, dedupe: Dedupe) -> tuple[str, bool]:
        """Validate, claim the caller's id, then check the key and send in one script:
        the id sent, or the id of the task holding the key, and whether it was deduplicated."""
        validated = self.validator.validated(request)
        self.dedupe.check_supported(validated, redis_broker=self.redis_broker)
        with (
            self.claims.held([validated]) as claimed,
            unreachable(f"could not send task {request.task_name!r}", self.url),
        ):
            _, task_id, commands = self._build(validated)
            record = sent_commands(self.app, self.url, [(task_id, validated.task_name)])
            task_id, sent = self.dedupe.send(
                self.dedupe.client(), task_id, validated.task_name, dedupe, commands + record
            )
        if not sent:
            self.claims.release(claimed)  # the caller's id was not used
        else:
            sent_after(self.app, self.url, [(task_id, validated.task_name)], by_celery=False)
        return task_id, not sent

    def publish(self, request: TaskRequest) -> str:
        """Send one validated request (fast path on Redis, else ``send_task``); its id."""
        if not self.fast_path_ok([request]):
            return self.send_task(request)
        with unreachable(f"could not send task {request.task_name!r}", self.url):
            channel, task_id, commands = self._build(request)
            sent = [(task_id, request.task_name)]
            with channel.channel.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
                run_commands(pipe, commands + sent_commands(self.app, self.url, sent))
                pipe.execute()
        sent_after(self.app, self.url, sent, by_celery=False)
        return task_id

    def send_task(self, request: TaskRequest) -> str:
        """Send one validated request through Celery's ``send_task``; its id."""
        with unreachable(f"could not send task {request.task_name!r}", self.url):
            result = self.app.send_task(request.task_name, request.args, request.kwargs, **request.options)
        sent_after(self.app, self.url, [(str(result.id), request.task_name)], by_celery=True)
        return str(result.id)

    def republish(self, request: TaskRequest) -> str:
        """Send a task again under its own id: the system's re-publish, not a caller's
        new submit, so the id is not refused; its old result is dropped first."""
        task_id = request.options.get("task_id")
        if task_id:
            self.claims.renew(task_id, request.options)
        return self.publish(request)

    def submit_many(self, requests: Iterable[TaskRequest | Mapping[str, Any]], chunk_size: int) -> list[str]:
        """Validate every request, claim caller ids, then send in pipelined chunks; on
        a broker error :class:`BrokerUnavailableError` lists the ``sent_ids``."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidRequestError("chunk_size must be at least 1", field="chunk_size")
        validated = [
            self.validator.validated(r if isinstance(r, TaskRequest) else TaskRequest(**r)) for r in requests
        ]
        refuse_dedupe_options(validated, "submit_many")
        claimed = self.claims.claim(validated)
        sent_ids: list[str] = []
        try:
            return self._send_many(validated, chunk_size, sent_ids)
        except BaseException:
            sent = set(sent_ids)
            self.claims.release([task_id for task_id in claimed if task_id not in sent])
            raise

    def _send_many(self, validated: list[TaskRequest], chunk_size: int, sent_ids: list[str]) -> list[str]:
        if not self.fast_path_ok(validated):
            for request in validated:
                sent_ids.append(self.send_task(request))
            return sent_ids
        try:
            with unreachable("could not send tasks", self.url), self.app.producer_or_acquire() as producer:
                factory = MessageFactory(self.app, producer)
                for start in range(0, len(validated), chunk_size):
                    chunk = validated[start : start + chunk_size]
                    chunk_ids: list[str] = []
                    commands: list[tuple[str, tuple[Any, ...]]] = []
                    for request in chunk:
                        task_id, task_commands = factory.build(request)
                        chunk_ids.append(task_id)
                        commands += task_commands
                    sent = [(task_id, r.task_name) for task_id, r in zip(chunk_ids, chunk, strict=True)]
                    with (
                        producer.channel.conn_or_acquire() as client,
                        client.pipeline(transaction=True) as pipe,
                    ):
                        run_commands(
                            pipe, pipeline_commands(commands) + sent_commands(self.app, self.url, sent)
                        )
                        pipe.execute()
                    sent_ids.extend(chunk_ids)
                    sent_after(self.app, self.url, sent, by_celery=False)
        except BrokerUnavailableError as exc:
            exc.sent_ids = sent_ids
            raise
        return sent_ids

    def _build(self, request: TaskRequest) -> tuple[ChannelPublisher, str, list[tuple[str, tuple[Any, ...]]]]:
        """The long-lived channel, and the task id and Redis commands of ``request``."""
        channel = self._channel_publisher()
        with channel.lock:
            task_id, commands = channel.factory.build(request)
        return channel, task_id, commands

    def _channel_publisher(self) -> ChannelPublisher:
        with self._lock:
            if self._channel is None:
                self._channel = ChannelPublisher(self.app)
            return self._channel

    def close(self) -> None:
        """Release the long-lived channel (a later send would open a new one)."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        self.dedupe.close()
