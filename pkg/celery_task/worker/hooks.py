"""Worker lifecycle hooks: startup and shutdown hooks in every process that runs tasks,
the worker's own checks when it starts, and escaped log formatting."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery import signals as celery_signals
from celery.app import app_or_default
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from kombu.utils.url import maybe_sanitize_url

from .._compat import set_backend_transport_options
from .._loop import process_loop
from .._options import configure, options_of
from .._redis import clients_for, is_redis_url
from .logs import EscapingFormatter

__all__ = ["BAD_CREDENTIALS_EXIT", "HOOK_FAILED_EXIT", "Hook", "WorkerHooks"]

logger = logging.getLogger(__name__)

Hook = Callable[[], Any]

#: Exit status of a pool process whose startup hook failed (EX_SOFTWARE).
HOOK_FAILED_EXIT = 70


def _call_hook(hook: Hook) -> None:
    """Call a sync hook, or run an async one on this process's long-lived loop."""
    if inspect.iscoroutinefunction(hook):
        process_loop().run(hook())
        return
    result = hook()
    if inspect.isawaitable(result):
        process_loop().run(_awaitable(result))


async def _awaitable(awaitable: Any) -> Any:
    return await awaitable


class WorkerHooks:
    """Runs startup hooks once in every process that executes tasks (each prefork child,
    or the main process of solo/threads pools) before its first task, and shutdown hooks
    once in each such process on warm shutdown."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.on_startup: list[Hook] = []
        self.on_shutdown: list[Hook] = []
        self._started_pid: int | None = None
        self._history: Any = None
        self._dedupe: Any = None
        _attach(self)

    def attach_history(self, history: Any) -> None:
        """Keep the task-history recorder of this app, disconnected with the hooks."""
        self._history = history

    def attach_dedupe(self, dedupe: Any) -> None:
        """Keep the dedupe-key releaser of this app, connected when its worker starts."""
        self._dedupe = dedupe

    def disconnect(self) -> None:
        """Stop receiving Celery's signals (safe twice); the client's ``close()`` calls it."""
        _detach(self)
        if self._history is not None:
            self._history.disconnect()
        if self._dedupe is not None:
            self._dedupe.disconnect()

    def _on_setup_logger(self, logger: logging.Logger | None = None, **_: Any) -> None:
        """Worker and beat logs escape control characters (see :class:`EscapingFormatter`)."""
        if logger is None or not self._is_ours(app_or_default()):
            return
        for handler in logger.handlers:
            if not isinstance(handler.formatter, EscapingFormatter):
                handler.setFormatter(EscapingFormatter(handler.formatter))

    def register(self, on_startup: Hook | None, on_shutdown: Hook | None) -> None:
        """Add hooks; each list runs in registration order."""
        for hook in (on_startup, on_shutdown):
            if hook is not None and not callable(hook):
                raise TypeError(f"worker hook must be callable, got {hook!r}")
        if on_startup is not None:
            self.on_startup.append(on_startup)
        if on_shutdown is not None:
            self.on_shutdown.append(on_shutdown)

    def _is_ours(self, app: Celery | None) -> bool:
        return app is self.app

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if not self._is_ours(getattr(sender, "app", None)):
            return
        _refuse_wrong_credentials(self.app)
        _use_worker_backend_retries(self.app)
        if self._history is not None:
            self._history.start_if_enabled()
        if self._dedupe is not None:
            self._dedupe.connect()
        pool_cls = get_implementation(sender.pool_cls)
        if isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
            return  # the children run the hooks (worker_process_init)
        if not self._run_startup():
            raise SystemExit(HOOK_FAILED_EXIT)

    def _on_process_init(self, **_: Any) -> None:
        if not self._is_ours(app_or_default()):
            return
        if not self._run_startup():
            # Stop the whole worker: a pool that respawns a child whose startup keeps
            # failing would loop forever and never take a task anyway.
            os.kill(os.getppid(), signal.SIGTERM)
            os._exit(HOOK_FAILED_EXIT)

    def _run_startup(self) -> bool:
        pid = os.getpid()
        for hook in self.on_startup:
            try:
                _call_hook(hook)
            except Exception:
                logger.critical(
                    "worker startup hook %s failed in process %d; this process will not "
                    "take tasks and the worker is stopping",
                    _hook_name(hook),
                    pid,
                    exc_info=True,
                )
                return False
        self._started_pid = pid
        return True

    def _on_process_shutdown(self, **_: Any) -> None:
        self._run_shutdown()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if self._is_ours(getattr(sender, "app", None)):
            self._run_shutdown()

    def _run_shutdown(self) -> None:
        if self._started_pid != os.getpid():
            return
        self._started_pid = None
        for hook in self.on_shutdown:
            try:
                _call_hook(hook)
            except Exception:
                logger.error(
                    "worker shutdown hook %s failed in process %d",
                    _hook_name(hook),
                    os.getpid(),
                    exc_info=True,
                )
        process_loop().stop()


#: Exit status of a worker whose Redis credentials are refused (EX_CONFIG).
BAD_CREDENTIALS_EXIT = 78


def _refuse_wrong_credentials(app: Celery) -> None:
    """Stop at once, saying so, if Redis refuses the worker's password: Celery would
    retry forever, since redis-py reports it as a connection error."""
    urls = {options_of(app).redis_url, app.conf.broker_url, app.conf.result_backend}
    for url in sorted(u for u in urls if isinstance(u, str) and is_redis_url(u)):
        client = clients_for(app).sync_client(url)
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            logger.critical(
                "Redis at %s refused the credentials (%s); check REDIS_PASSWORD or the URL",
                maybe_sanitize_url(url),
                exc,
            )
            raise SystemExit(BAD_CREDENTIALS_EXIT) from None
        except (redis.RedisError, OSError):
            pass  # not reachable yet: Celery keeps retrying the connection
        finally:
            client.close()


def _use_worker_backend_retries(app: Celery) -> None:
    """In a worker, result stores retry long enough to ride out a Redis restart, and
    through an out-of-memory Redis (producers and the API fail fast instead)."""
    configure(app, store_oom_retry=True)
    options = dict(app.conf.result_backend_transport_options or {})
    options["retry_policy"] = dict(options_of(app).worker_backend_retry_policy)
    app.conf.result_backend_transport_options = options
    set_backend_transport_options(app.backend, options)  # the Redis backend read it when built


def _hook_name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


# Celery's signals hold their receivers for good (``weak=False``). One receiver per
# signal is connected for the whole process, while some WorkerHooks exists, and passes
# each signal on to every attached one: clients made and closed in one process (tests,
# embedders) neither pile up receivers nor keep hooks of closed clients running.
_attached: list[WorkerHooks] = []
_attached_lock = threading.Lock()


def _receiver(method: str) -> Callable[..., None]:
    def receive(**kwargs: Any) -> None:
        for hooks in tuple(_attached):
            try:
                getattr(hooks, method)(**kwargs)
            except Exception:  # one client's receiver failing must not skip the others
                logger.exception("worker hook receiver %s failed", method)

    receive.__qualname__ = receive.__name__ = f"WorkerHooks.{method}"
    return receive


_RECEIVERS: tuple[tuple[Any, Callable[..., None]], ...] = (
    (celery_signals.worker_init, _receiver("_on_worker_init")),
    (celery_signals.worker_process_init, _receiver("_on_process_init")),
    (celery_signals.worker_process_shutdown, _receiver("_on_process_shutdown")),
    (celery_signals.worker_shutdown, _receiver("_on_worker_shutdown")),
    (celery_signals.after_setup_logger, _receiver("_on_setup_logger")),
    (celery_signals.after_setup_task_logger, _receiver("_on_setup_logger")),
)
#: Marks our receivers, so connecting again replaces rather than adds.
_DISPATCH_UID = "pkg.celery_task.worker.hooks"


def _attach(hooks: WorkerHooks) -> None:
    with _attached_lock:
        if not _attached:
            for sig, receive in _RECEIVERS:
                sig.connect(receive, weak=False, dispatch_uid=(_DISPATCH_UID, receive.__name__))
        _attached.append(hooks)


def _detach(hooks: WorkerHooks) -> None:
    with _attached_lock:
        if hooks not in _attached:
            return
        _attached.remove(hooks)
        if not _attached:
            for sig, receive in _RECEIVERS:
                sig.disconnect(receive, dispatch_uid=(_DISPATCH_UID, receive.__name__))
