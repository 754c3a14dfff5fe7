"""HTTP API throughput and memory, against a bare FastAPI endpoint in the same run.

3. ``POST /api/v1/tasks`` (our API, async submit path, auth and metrics on) vs a bare
   FastAPI endpoint calling ``send_task``: uvicorn, 1 process, wrk with 32 connections
   (>= 2x); p50/p99 reported.
8. API resident memory after ~100k requests within 10% of after ~1k.

Needs ``wrk`` (``apt-get install wrk``). Run: ``.venv/bin/python -m bench.bench_api``
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis

from bench._harness import ManagedProcess, Report, bench_env, private_redis, wait_for
from tests.support.services import free_port

TOKEN = "bench-token"  # noqa: S105 - a throwaway token for the benchmark's own API
BODY = '{"task": "math.number_sum", "args": [1, 2]}'
DURATION = 8


def start(argv: list[str], env: dict[str, str], log_dir: Path, name: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = ManagedProcess(
        name,
        [*argv, "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"],
        env,
        log_dir,
    ).start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return (
                httpx.get(base + "/healthz", timeout=1).status_code < 500
                if name == "api"
                else (httpx.post(base + "/noop", timeout=1).status_code == 200)
            )
        except httpx.HTTPError:
            assert proc.alive(), proc.log()[-3000:]
            return False

    wait_for(up, timeout=60, what=f"{name} to answer")
    return proc, base


def wrk(url: str, duration: int, script: Path) -> dict[str, float]:
    """requests/s and latency percentiles (ms) from wrk with 32 connections."""
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {
        "rps": rate,
        "requests": requests,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def lua(tmp: Path, headers: dict[str, str]) -> Path:
    script = tmp / f"post-{len(headers)}.lua"
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = '{BODY}'",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    return script


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    if shutil.which("wrk") is None:
        sys.exit("bench_api needs wrk: apt-get install -y wrk")
    report = Report("bench_api", "python -m bench.bench_api")
    with (
        private_redis() as server,
        bench_env(server, API_TOKEN=TOKEN) as env,
        tempfile.TemporaryDirectory() as tmp_name,
    ):
        tmp = Path(tmp_name)
        db = redis.Redis.from_url(server.url)
        ours_script = lua(tmp, {"Authorization": f"Bearer {TOKEN}"})
        bare_script = lua(tmp, {})
        api, api_url = start([sys.executable, "-m", "uvicorn", "main:app"], env, tmp, "api")
        bare, bare_url = start([sys.executable, "-m", "uvicorn", "bench.bare_api:app"], env, tmp, "bare")
        try:
            results: dict[str, list[dict[str, float]]] = {"ours": [], "bare_send": [], "bare_noop": []}
            for url, script in (
                (api_url + "/api/v1/tasks", ours_script),
                (bare_url + "/send", bare_script),
                (bare_url + "/noop", bare_script),
            ):
                wrk(url, 2, script)  # warm up
            for _ in range(2):  # alternate, so drift hits both
                for target, url, script in (
                    ("ours", api_url + "/api/v1/tasks", ours_script),
                    ("bare_send", bare_url + "/send", bare_script),
                    ("bare_noop", bare_url + "/noop", bare_script),
                ):
                    results[target].append(wrk(url, DURATION, script))
                    db.flushdb()
            best = {k: max(v, key=lambda r: r["rps"]) for k, v in results.items()}
            if best["ours"]["non_2xx"] or best["bare_send"]["non_2xx"]:
                raise AssertionError(f"errors under load: {best}")
            report.add(
                "API throughput: POST /api/v1/tasks vs bare FastAPI + send_task (32 connections)",
                best["ours"]["rps"] / best["bare_send"]["rps"],
                at_least=2.0,
                ours_rps=round(best["ours"]["rps"]),
                ours_p50_ms=best["ours"]["p50_ms"],
                ours_p99_ms=best["ours"]["p99_ms"],
                bare_send_rps=round(best["bare_send"]["rps"]),
                bare_send_p99_ms=best["bare_send"]["p99_ms"],
                bare_noop_rps=round(best["bare_noop"]["rps"]),
            )
            memory(report, api, api_url, ours_script, db)
        finally:
            api.stop()
            bare.stop()
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


def memory(report: Report, api: ManagedProcess, url: str, script: Path, db: redis.Redis) -> None:
    """RSS after ~1k requests and after ~100k more (no worker: messages pile up in
    Redis, flushed as we go; the API process is what is measured)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        for _ in range(1000):
            http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 2]})
    time.sleep(1)
    after_1k = rss_mib(api.pid)
    done = 1000
    while done < 100_000:
        done += int(wrk(url + "/api/v1/tasks", 10, script)["requests"])
        db.flushdb()
    time.sleep(1)
    after_100k = rss_mib(api.pid)
    report.add(
        "API memory: RSS after ~100k requests / after 1k",
        after_100k / after_1k,
        at_most=1.10,
        rss_1k_mib=round(after_1k, 1),
        rss_100k_mib=round(after_100k, 1),
        requests=done,
    )


if __name__ == "__main__":
    sys.exit(main())
