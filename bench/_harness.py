"""Shared pieces of the benchmarks: a private Redis, project processes, timing, results.

Every figure is a ratio against a baseline measured in the same run, on the same
private ``redis-server`` (started here, stopped here); absolute numbers are printed for
context only. Results go to ``bench/results/<name>.json``; ``bench/run_all.py`` turns
them into ``bench/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.support.procs import REPO_ROOT, ManagedProcess, migrate, service_env, wait_for
from tests.support.services import PrivateRedis, private_redis, redis_server_binary

__all__ = [
    "REPO_ROOT",
    "Figure",
    "ManagedProcess",
    "PrivateRedis",
    "Report",
    "bench_env",
    "best_of",
    "percentile",
    "private_redis",
    "wait_for",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("celery", "kombu", "redis", "hiredis", "celery-redbeat", "fastapi", "uvicorn")


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``, by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def best_of(runs: int, measure: Callable[[], float]) -> float:
    """The median of ``runs`` measurements (noise on a 2-core box is one-sided)."""
    return statistics.median(measure() for _ in range(runs))


@contextmanager
def bench_env(redis: PrivateRedis, **extra: str) -> Iterator[dict[str, str]]:
    """Environment for project processes on ``redis``: SQLite in a temp dir, bench tasks."""
    with tempfile.TemporaryDirectory(prefix="tasksys-bench-") as tmp:
        database_url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        migrate(database_url)
        yield service_env(
            redis.url,
            database_url=database_url,
            extra={"CELERY_EXTRA_INCLUDE": "bench.tasks", "BENCH_REDIS_URL": redis.url, **extra},
        )


@dataclass
class Figure:
    """One measured ratio with its baseline, target and the absolute numbers behind it."""

    name: str
    ratio: float
    target: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """The figures of one benchmark script, written to ``bench/results/<script>.json``."""

    script: str
    command: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        ratio: float,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        **detail: Any,
    ) -> Figure:
        """Record a ratio and whether it meets its target; print it."""
        if at_least is not None:
            target, passed = f">= {at_least}", ratio >= at_least
        elif at_most is not None:
            target, passed = f"<= {at_most}", ratio <= at_most
        else:
            target, passed = "context", True
        figure = Figure(name, round(ratio, 3), target, passed, detail)
        self.figures.append(figure)
        mark = "ok  " if passed else "MISS"
        shown = ", ".join(f"{k}={v}" for k, v in detail.items())
        print(f"[{mark}] {name}: {ratio:.2f} (target {target})  {shown}", flush=True)
        return figure

    def save(self) -> Path:
        """Write the JSON result with date, machine and versions."""
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{self.script}.json"
        data = {
            "script": self.script,
            "command": self.command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "figures": [asdict(f) for f in self.figures],
            "notes": self.notes,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def machine() -> dict[str, Any]:
    """CPU, memory, OS and the versions that matter, for the record."""
    server = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True)
    redis_version = server.stdout.split()
    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "redis_server": next((w.split("=")[1] for w in redis_version if w.startswith("v=")), "?"),
        **{name: version(name) for name in PACKAGES},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def elapsed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
