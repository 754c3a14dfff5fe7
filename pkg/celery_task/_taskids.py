"""Caller-supplied task ids are idempotency keys: claimed atomically before a send.

One Lua script per id checks that the id is unknown (no stored result, not revoked, not
claimed by another submit) and claims it, for as long as the task and its result can
live. A send that fails gives its claims back, so the caller can retry with the ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import redis
import redis.asyncio
from celery import Celery, states

from ._errors import InvalidRequestError, TaskIdInUseError, unreachable
from ._fastpath import RUN_COMMANDS_LUA, script_args
from ._options import options_of
from ._redis import RedisClients
from ._request import TaskRequest

__all__ = ["TaskIdClaims"]

logger = logging.getLogger(__name__)

# Refuse a caller-supplied task id that is known (its result is stored, it is revoked,
# or another submit claimed it), else claim it for ``ARGV[2]`` seconds. KEYS: claim,
# result, revoked set; ARGV: id, ttl (0 = no expiry), oldest live revoke time,
# "1" to look at the result key (it lives on this server).
_CLAIM_CHECKS = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local revoked = redis.call('ZSCORE', KEYS[3], ARGV[1])
if revoked and tonumber(revoked) > tonumber(ARGV[3]) then return 3 end
local claimed
if tonumber(ARGV[2]) > 0 then
  claimed = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2])
else
  claimed = redis.call('SET', KEYS[1], '1', 'NX')
end
"""
_CLAIM_SCRIPT = _CLAIM_CHECKS + "if claimed then return 1 end\nreturn 4\n"
# The claim script, then (only when the id was claimed) the publish commands of the
# task's message, so a claim never exists without its message: a caller retrying after
# a crash, and the outbox relay, can trust a claim to mean "sent". KEYS and ARGV[1..4]
# as the claim script; then per command: name, argument count, arguments.
_CLAIM_AND_PUBLISH_SCRIPT = (
    _CLAIM_CHECKS + "if not claimed then return 4 end\nlocal i = 5\n" + RUN_COMMANDS_LUA + "return 1\n"
)
_REFUSALS = {
    2: "it has a stored result",
    3: "it was revoked",
    4: "a task with that id was already submitted",
}


class TaskIdClaims:
    """Claims on caller-supplied task ids, kept on the state Redis."""

    def __init__(self, app: Celery, redis_clients: RedisClients, *, backend_url: str | None) -> None:
        self.app = app
        self.redis = redis_clients
        self.backend_url = backend_url

    def key(self, task_id: str) -> str:
        """The claim key of one id."""
        return f"{options_of(self.app).key_prefix}task_id:{task_id}"

    @cached_property
    def results_on_state_redis(self) -> bool:
        """Results live on the Redis that holds the claims, so one script checks both."""
        return bool(
            hasattr(self.app.backend, "get_key_for_task")
            and self.backend_url
            and options_of(self.app).redis_url == self.backend_url
        )

    def ttl(self, options: Mapping[str, Any]) -> int:
        """How long a claim outlives the submit: the task's delay plus the result TTL
        (with a day of slack for queueing), or 0 (forever) if results never expire."""
        expires = self.app.conf.result_expires
        keep = expires.total_seconds() if isinstance(expires, timedelta) else float(expires or 0)
        if keep <= 0:
            return 0
        delay = float(options.get("countdown") or 0)
        eta = options.get("eta")
        if isinstance(eta, datetime):
            delay = max(delay, (eta - datetime.now(UTC)).total_seconds())
        return int(delay + max(keep, 86400) + 86400)

    def _call(self, request: TaskRequest) -> tuple[list[Any], list[Any]]:
        task_id = request.options["task_id"]
        on_state = self.results_on_state_redis
        result_key = self.app.backend.get_key_for_task(task_id) if on_state else ""
        options = options_of(self.app)
        floor = time.time() - options.revoke_expires
        keys = [self.key(task_id), result_key, f"{options.key_prefix}revoked"]
        return keys, [task_id, self.ttl(request.options), floor, "1" if on_state else "0"]

    @staticmethod
    def _claiming(requests: Sequence[TaskRequest]) -> list[TaskRequest]:
        claiming = [r for r in requests if r.options.get("task_id")]
        ids = [r.options["task_id"] for r in claiming]
        if len(set(ids)) != len(ids):
            raise InvalidRequestError("task ids must be unique within one call", field="task_id")
        return claiming

    @cached_property
    def _script(self) -> Any:
        """The claim script, registered once (each call names the client it runs on)."""
        return self.redis.state().register_script(_CLAIM_SCRIPT)

    def claim(self, requests: Sequence[TaskRequest]) -> list[str]:
        """Claim the caller-supplied id of every request, atomically per id, or none of
        them (:class:`TaskIdInUseError` for the first that is known); the claimed ids."""
        claiming = self._claiming(requests)
        if not claiming:
            return []
        with unreachable("could not check task ids", self.app.conf.broker_url):
            if not self.results_on_state_redis:
                for request in claiming:
                    self._refuse_if_stored(request.options["task_id"])
            with self.redis.state().pipeline(transaction=False) as pipe:
                for request in claiming:
                    keys, args = self._call(request)
                    self._script(keys=keys, args=args, client=pipe)
                answers = pipe.execute()
        return self._settle([r.options["task_id"] for r in claiming], answers)

    async def claim_async(self, requests: Sequence[TaskRequest], client: redis.asyncio.Redis) -> list[str]:
        """:meth:`claim` on redis.asyncio (in a thread when the claims live elsewhere
        than the results, as the results must be read through the backend then)."""
        claiming = self._claiming(requests)
        if not claiming:
            return []
        if not self.results_on_state_redis:
            return await asyncio.to_thread(self.claim, claiming)
        script = client.register_script(_CLAIM_SCRIPT)
        answers = []
        with unreachable("could not check task ids", self.app.conf.broker_url):
            for request in claiming:
                keys, args = self._call(request)
                answers.append(await script(keys=keys, args=args))
        return self._settle([r.options["task_id"] for r in claiming], answers)

    def _refuse_if_stored(self, task_id: str) -> None:
        if self.app.backend.get_task_meta(task_id).get("status", states.PENDING) != states.PENDING:
            raise TaskIdInUseError(task_id, _REFUSALS[2])

    def _settle(self, ids: list[str], answers: Sequence[Any]) -> list[str]:
        claimed = [task_id for task_id, answer in zip(ids, answers, strict=True) if int(answer) == 1]
        refused = [(task_id, int(a)) for task_id, a in zip(ids, answers, strict=True) if int(a) != 1]
        if refused:
            self.release(claimed)
            task_id, answer = refused[0]
            raise TaskIdInUseError(task_id, _REFUSALS.get(answer, "it is known"))
        return claimed

    def claims_with_broker(self, broker_url: str) -> bool:
        """Claims, results and queues share one Redis: a claim and its message can be
        written by one script."""
        return self.results_on_state_redis and options_of(self.app).redis_url == broker_url

    def claim_and_publish(
        self, request: TaskRequest, commands: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> None:
        """Claim the request's caller-supplied id and run its publish ``commands`` in
        one script (:meth:`claims_with_broker` must hold); :class:`TaskIdInUseError`
        if the id is known, and then nothing is sent."""
        keys, args = self._call(request)
        answer = self._publish_script(keys=keys, args=args + script_args(commands), client=self.redis.state())
        self._settle([request.options["task_id"]], [answer])

    @cached_property
    def _publish_script(self) -> Any:
        return self.redis.state().register_script(_CLAIM_AND_PUBLISH_SCRIPT)

    def release(self, task_ids: Sequence[str]) -> None:
        """Give claims back after a send failed, so the caller can retry with the id."""
        if not task_ids:
            return
        try:
            self.redis.state().delete(*(self.key(task_id) for task_id in task_ids))
        except redis.RedisError as exc:
            logger.error(
                "could not release the claim on task id(s) %s after a failed send (%s); "
                "they stay refused until the claim expires",
                ", ".join(task_ids[:10]),
                exc,
            )

    @contextmanager
    def held(self, requests: Sequence[TaskRequest]) -> Iterator[list[str]]:
        """Claim the requests' caller-supplied ids for the block; released if it fails."""
        claimed = self.claim(requests)
        try:
            yield claimed
        except BaseException:
            self.release(claimed)
            raise

    def renew(self, task_id: str, options: Mapping[str, Any]) -> None:
        """Claim an id the system itself sends again (a dead-letter resubmit), whatever
        claim it had, and drop its old result so the status reads PENDING meanwhile."""
        with unreachable(f"could not re-submit {task_id}", self.app.conf.broker_url):
            try:
                self.app.backend.forget(task_id)
            except NotImplementedError:
                return
            ttl = self.ttl(options)
            self.redis.state().set(self.key(task_id), "1", ex=ttl or None)
