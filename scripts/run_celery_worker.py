"""Start a Celery worker for this project, configured from the environment.

``CELERY_POOL`` (prefork), ``CELERY_CONCURRENCY`` (4), ``CELERY_LOGLEVEL`` (info) and
``CELERY_QUEUES`` (the default queue) set the defaults; ``--pool``, ``--concurrency``,
``--loglevel`` and ``--queues`` override them; any other argument goes to
``celery worker`` unchanged. Usage: ``python scripts/run_celery_worker.py [options]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


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
        f"--pool={args.pool}",
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

    try:
        celery_argv = worker_argv(sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        sys.exit(f"run_celery_worker: invalid worker option: {exc}")
    bounded_sigterm()

    from internal.infra.celery import celery_app

    celery_app.worker_main(argv=celery_argv)


if __name__ == "__main__":
    main()
