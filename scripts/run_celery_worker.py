"""Start a Celery worker for this project, configured from the environment.

``CELERY_POOL`` (prefork), ``CELERY_CONCURRENCY`` (4), ``CELERY_LOGLEVEL`` (info) and
``CELERY_QUEUES`` (the default queue) set the defaults; ``--pool``, ``--concurrency``,
``--loglevel`` and ``--queues`` override them; any other argument goes to
``celery worker`` unchanged. ``--pool asyncio`` (or ``CELERY_POOL=asyncio``) selects
``pkg.celery_task.worker.pool:AsyncioPool`` through Celery's ``--pool custom``;
``--processes M`` starts M such workers (one event loop each) and forwards signals.
Usage: ``python scripts/run_celery_worker.py [options]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASYNCIO = "asyncio"
#: What ``--pool asyncio`` puts in ``CELERY_CUSTOM_WORKER_POOL`` (Celery's out-of-tree pool).
ASYNCIO_POOL_PATH = "pkg.celery_task.worker.pool:AsyncioPool"
MAX_PROCESSES = 64


def build_parser(defaults: dict[str, object]) -> argparse.ArgumentParser:
    """Flags that override the environment; unknown ones pass through to Celery."""
    parser = argparse.ArgumentParser(
        description="Run a Celery worker (environment: CELERY_POOL, CELERY_CONCURRENCY, "
        "CELERY_LOGLEVEL, CELERY_QUEUES). Unknown options are passed to `celery worker`.",
    )
    parser.add_argument("-P", "--pool", default=defaults["pool"])
    parser.add_argument("-c", "--concurrency", type=int, default=defaults["concurrency"])
    parser.add_argument("-l", "--loglevel", default=defaults["loglevel"])
    parser.add_argument("-Q", "--queues", default=defaults["queues"], help="comma-separated queue names")
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes to start (each with its own pool); 1..64"
    )
    return parser


def worker_argv(argv: list[str]) -> list[str]:
    """The ``celery worker`` argument list for this command line and environment."""
    from internal.config.setting import CelerySettings

    env = CelerySettings()
    defaults: dict[str, object] = {
        "pool": env.pool,
        "concurrency": env.concurrency,
        "loglevel": env.loglevel,
        "queues": ",".join(env.queue_list),
    }
    args, passthrough = build_parser(defaults).parse_known_args(argv)
    CelerySettings(pool=args.pool, concurrency=args.concurrency, loglevel=args.loglevel)
    return [
        "worker",
        f"--pool={'custom' if args.pool == ASYNCIO else args.pool}",
        f"--concurrency={args.concurrency}",
        f"--loglevel={args.loglevel}",
        f"--queues={args.queues}",
        *passthrough,
    ]


def bounded_sigterm() -> None:
    """With ``CELERY_SOFT_SHUTDOWN_TIMEOUT`` set, SIGTERM waits that long for running
    tasks, then stops them and returns their messages to the queue (Celery applies the
    soft timeout to its cold shutdown; billiard's ``REMAP_SIGTERM`` makes SIGTERM one).
    Must run before Celery is imported."""
    from internal.config.setting import CelerySettings

    if CelerySettings().soft_shutdown_timeout > 0:
        os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")


def processes_of(argv: list[str]) -> tuple[int, list[str]]:
    """``--processes M`` (or ``--processes=M``) and the command line without it."""
    count, rest, items = 1, [], iter(argv)
    for item in items:
        if item == "--processes":
            value = next(items, "")
        elif item.startswith("--processes="):
            value = item.split("=", 1)[1]
        else:
            rest.append(item)
            continue
        if not value.isdigit() or not 1 <= int(value) <= MAX_PROCESSES:
            sys.exit(
                f"run_celery_worker: --processes must be a whole number from 1 to {MAX_PROCESSES}, "
                f"got {value!r}"
            )
        count = int(value)
    return count, rest


def run_processes(count: int, argv: list[str]) -> int:
    """Start ``count`` workers (this script, each named ``w<i>@%h``), forward SIGTERM,
    SIGINT and SIGQUIT to them, and return the first non-zero exit status."""
    import signal
    import subprocess

    children = [
        subprocess.Popen([sys.executable, __file__, *argv, f"--hostname=w{index}-{os.getpid()}@%h"])
        for index in range(count)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)


def main(argv: list[str] | None = None) -> None:
    """Refuse Windows, then run the worker in this process."""
    if sys.platform.startswith("win"):
        sys.exit(
            "run_celery_worker: Windows is not supported (Celery's prefork pool needs fork); "
            "run the worker on Linux or macOS, or in WSL/a container."
        )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from pydantic import ValidationError

    processes, argv = processes_of(sys.argv[1:] if argv is None else argv)
    if processes > 1:
        sys.exit(run_processes(processes, argv))
    try:
        celery_argv = worker_argv(argv)
    except ValidationError as exc:
        sys.exit(f"run_celery_worker: invalid worker option: {exc}")
    bounded_sigterm()
    if "--pool=custom" in celery_argv:
        os.environ["CELERY_CUSTOM_WORKER_POOL"] = ASYNCIO_POOL_PATH  # read when Celery is imported

    from internal.infra.celery import celery_app

    celery_app.worker_main(argv=celery_argv)


if __name__ == "__main__":
    main()
