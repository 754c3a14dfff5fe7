"""End-to-end latency of ``math.number_sum(1, 2)``, against ``send_task(...).get()``.

6. Submit and wait for the result, on one project worker (prefork, 2 processes):
   raw ``app.send_task(...).get()``, ``CeleryClient.submit`` + ``get_result``, and the
   HTTP API: ``POST /api/v1/tasks?wait=`` (submit and long-poll in one request), and for
   context ``POST`` then long-poll ``GET /api/v1/tasks/{id}?wait=``. p50 <= 1.2x raw;
   p99 reported. The paths are interleaved.

Run: ``.venv/bin/python -m bench.bench_latency``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from bench._harness import ManagedProcess, Report, bench_env, percentile, private_redis, wait_for
from bench.bench_api import start
from bench.bench_submit import make_client

ROUNDS = 300
BODY = b'{"task": "math.number_sum", "args": [1, 2]}'


def main() -> int:
    report = Report("bench_latency", "python -m bench.bench_latency")
    with private_redis() as server, bench_env(server) as env, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        worker = ManagedProcess(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "internal.infra.celery.celery_app",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "-l",
                "warning",
            ],
            env,
            tmp,
        ).start()
        api, api_url = start([sys.executable, "-m", "uvicorn", "main:app"], env, tmp, "api")
        client = make_client(server.url)
        client.load_tasks()
        http = HTTPConnection("127.0.0.1", int(api_url.rsplit(":", 1)[1]), timeout=30)

        def call(method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
            headers = {"Content-Type": "application/json"} if body else {}
            http.request(method, path, body=body, headers=headers)
            return json.loads(http.getresponse().read())  # type: ignore[no-any-return]

        try:
            wait_for(lambda: client.ping(timeout=1)["workers"], timeout=60, what="the worker")

            def raw() -> None:
                assert client.app.send_task("math.number_sum", (1, 2)).get(timeout=10) == 3

            def ours() -> None:
                assert client.get_result(client.submit("math.number_sum", (1, 2)).id, timeout=10) == 3

            def submit_and_wait() -> None:
                assert call("POST", "/api/v1/tasks?wait=10", BODY)["result"] == 3

            def submit_then_poll() -> None:
                task_id = call("POST", "/api/v1/tasks", BODY)["task_id"]
                assert call("GET", f"/api/v1/tasks/{task_id}?wait=10")["result"] == 3

            paths: dict[str, Callable[[], None]] = {
                "raw": raw,
                "client": ours,
                "http": submit_and_wait,
                "http_poll": submit_then_poll,
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(50):  # warm up
                for run in paths.values():
                    run()
            for _ in range(ROUNDS):
                for name, run in paths.items():
                    started = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - started) * 1000)
            stats = {
                name: {"p50_ms": round(percentile(t, 50), 2), "p99_ms": round(percentile(t, 99), 2)}
                for name, t in times.items()
            }
            for name, label, target in (
                ("client", "CeleryClient submit + get_result", 1.2),
                ("http_poll", "HTTP POST, then long-poll GET /tasks/{id}?wait", 1.2),
                ("http", "HTTP POST /tasks?wait (submit + long-poll in one request)", None),
            ):
                report.add(
                    f"latency p50: {label} / send_task().get()",
                    stats[name]["p50_ms"] / stats["raw"]["p50_ms"],
                    at_most=target,
                    **{f"{name}_p50_ms": stats[name]["p50_ms"], f"{name}_p99_ms": stats[name]["p99_ms"]},
                    raw_p50_ms=stats["raw"]["p50_ms"],
                    raw_p99_ms=stats["raw"]["p99_ms"],
                )
        finally:
            http.close()
            client.close()
            api.stop()
            worker.stop()
    report.notes.append(
        f"{ROUNDS} rounds, paths interleaved, one worker and one uvicorn process. The HTTP paths use the "
        "standard library's http.client with keep-alive, so the figure is the API's, not an HTTP library's."
    )
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
