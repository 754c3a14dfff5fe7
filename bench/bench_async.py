"""I/O-bound ``async def`` tasks (each awaits 50 ms: ``asyncio.sleep``, then an httpx GET
to a local server answering after 50 ms) on our asyncio pool vs our prefork (4
processes) vs threads (100) vs Taskiq (``max_async_tasks`` = our concurrency); one
worker process each, then one per core. Then memory: RSS of an asyncio worker after 1k
and after 100k tasks. Run: ``python -m bench.bench_async [--quick]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

from bench._harness import REPO_ROOT, ManagedProcess, Report, bench_env, percentile, private_redis
from pkg.celery_task import TaskRequest

CONCURRENCY = 500
CORES = os.cpu_count() or 1

SERVER = """
import asyncio, sys
async def handle(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        while (await reader.readline()) not in (b"\\r\\n", b""):
            pass
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("listening", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enqueue_ours(url: str, total: int, http: str | None) -> None:
    from pydantic import SecretStr

    from internal.config.setting import RedisSettings, load_settings
    from internal.infra.celery import build_celery_client

    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(url=SecretStr(url))
    client = build_celery_client(settings)
    now = time.time()
    client.submit_many(
        [TaskRequest("bench.aio_wait", (now, 50.0, http)) for _ in range(total)], chunk_size=5000
    )
    client.close()


def enqueue_taskiq(url: str, total: int, http: str | None) -> None:
    os.environ["BENCH_REDIS_URL"] = url
    from bench.async_tasks import broker, taskiq_wait

    async def send() -> None:
        await broker.startup()
        now = time.time()
        for _ in range(total):
            await taskiq_wait.kiq(now, 50.0, http)
        await broker.shutdown()

    asyncio.run(send())


def tree(proc: ManagedProcess) -> list[psutil.Process]:
    parent = psutil.Process(proc.pid)
    return [parent, *parent.children(recursive=True)]


def open_http_connections(procs: list[psutil.Process], port: int) -> int:
    """Established TCP connections of the worker tree to the local HTTP server."""
    count = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            count += sum(
                1
                for conn in proc.net_connections(kind="tcp")
                if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
            )
    return count


def run_one(
    db: redis.Redis,
    start: Callable[[], ManagedProcess],
    enqueue: Callable[[], None],
    total: int,
    http_port: int | None = None,
) -> dict[str, float]:
    """Start the worker, wait until it is idle-ready, enqueue, time the drain. For HTTP
    runs also the peak of open connections to the server: httpx's pool grows with the
    requests in flight, and each request then pays for a pass over all of them."""
    db.delete("bench:done", "bench:latency")
    worker = start()
    try:
        wait_ready(worker)
        began = time.perf_counter()
        enqueue()
        cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in tree(worker))
        deadline = time.monotonic() + 900
        peak, conns, polls = 0.0, 0, 0
        while int(db.get("bench:done") or 0) < total:
            if not worker.alive() or time.monotonic() > deadline:
                raise AssertionError(f"worker stopped or too slow:\n{worker.log()[-3000:]}")
            procs = tree(worker)
            peak = max(peak, sum(p.memory_info().rss for p in procs) / 2**20)
            if http_port is not None and polls % 10 == 0:
                conns = max(conns, open_http_connections(procs, http_port))
            polls += 1
            time.sleep(0.05)
        took = time.perf_counter() - began
        cpu = sum(p.cpu_times().user + p.cpu_times().system for p in tree(worker)) - cpu0
        lat = [float(x) for x in db.lrange("bench:latency", 0, -1)]
        figures = {
            "per_s": round(total / took, 1),
            "p50_start_s": round(percentile(lat, 50), 3),
            "p99_start_s": round(percentile(lat, 99), 3),
            "cpu_s": round(cpu, 1),
            "rss_mib": round(peak, 1),
        }
        if http_port is not None:
            figures["peak_http_conns"] = conns
        return figures
    finally:
        worker.stop()


def wait_ready(worker: ManagedProcess) -> None:
    """Celery logs ``ready.`` (at warning level nothing: wait for the pool's threads); Taskiq
    logs its startup; give either a moment past the log line."""
    time.sleep(4)


def celery_argv(pool: str, concurrency: int, name: str, processes: int) -> list[str]:
    if pool == "asyncio":
        argv = [sys.executable, str(REPO_ROOT / "scripts" / "run_celery_worker.py"), "--pool", "asyncio"]
        argv += ["-c", str(concurrency), "--processes", str(processes), "-l", "warning"]
        return [*argv, "--without-mingle", "--without-gossip"]
    argv = [sys.executable, "-m", "celery", "-A", "internal.infra.celery.celery_app", "worker", "-P", pool]
    return [
        *argv,
        "-c",
        str(concurrency),
        "-l",
        "warning",
        "-n",
        f"{name}@%h",
        "--without-mingle",
        "--without-gossip",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--http-keepalive",
        type=int,
        default=2000,
        help="httpx max_keepalive_connections of the task bodies (default 2000: never closes one)",
    )
    parser.add_argument(
        "--lag-target",
        type=float,
        default=None,
        help="CELERY_ASYNCIO_LAG_TARGET of our asyncio workers (default: the setting's; 0: no fetch window)",
    )
    args = parser.parse_args()
    total = 2000 if args.quick else 10_000
    slow_total = 200 if args.quick else 1000  # prefork at 4 x 20/s: its rate, not its full drain
    command = "python -m bench.bench_async" + (" --quick" if args.quick else "")
    if args.http_keepalive != 2000:
        command += f" --http-keepalive {args.http_keepalive}"
    lag = {} if args.lag_target is None else {"CELERY_ASYNCIO_LAG_TARGET": str(args.lag_target)}
    if args.lag_target is not None:
        command += f" --lag-target {args.lag_target}"
    report = Report("bench_async", command)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-async-{os.getpid()}"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().startswith(b"listening")
    http_url = f"http://127.0.0.1:{port}/"
    try:
        with (
            private_redis() as redis_server,
            bench_env(
                redis_server,
                CELERY_EXTRA_INCLUDE="bench.tasks,bench.async_tasks",
                BENCH_HTTP_KEEPALIVE=str(args.http_keepalive),
                **lag,
            ) as env,
        ):
            db = redis.Redis.from_url(redis_server.url)
            for kind, http in (("sleep", None), ("http", http_url)):
                for processes in sorted({1, CORES}):
                    rates: dict[str, dict[str, float]] = {}
                    setups: dict[str, tuple[Callable[[], ManagedProcess], Callable[[], None], int]] = {}
                    per = f"{kind}-{processes}p"

                    def ours(
                        pool: str, c: int, n: int, tag: str, p: int = processes, per: str = per
                    ) -> Callable[[], ManagedProcess]:
                        procs = p if pool == "asyncio" else 1
                        conc = c if pool == "asyncio" else c * p if pool == "prefork" else c
                        return lambda: ManagedProcess(
                            f"{tag}-{per}", celery_argv(pool, conc, f"{tag}-{per}", procs), env, tmp
                        ).start()

                    def send_ours(n: int, h: str | None = http) -> Callable[[], None]:
                        return lambda: enqueue_ours(redis_server.url, n, h)

                    setups["asyncio"] = (ours("asyncio", CONCURRENCY, total, "aio"), send_ours(total), total)
                    setups["prefork"] = (
                        ours("prefork", 4, slow_total, "prefork"),
                        send_ours(slow_total),
                        slow_total,
                    )
                    setups["threads"] = (
                        ours("threads", 100, total // 2, "threads"),
                        send_ours(total // 2),
                        total // 2,
                    )
                    taskiq_argv = [sys.executable, "-m", "taskiq", "worker", "bench.async_tasks:broker"]
                    taskiq_argv += ["--workers", str(processes), "--max-async-tasks", str(CONCURRENCY)]
                    setups["taskiq"] = (
                        lambda a=taskiq_argv, per=per: ManagedProcess(f"taskiq-{per}", a, env, tmp).start(),
                        lambda n=total, h=http: enqueue_taskiq(redis_server.url, n, h),
                        total,
                    )
                    for name, (start, enqueue, n) in setups.items():
                        rates[name] = run_one(db, start, enqueue, n, port if http else None)
                        print(f"  {per} {name}: {rates[name]}", flush=True)
                    a = rates["asyncio"]
                    report.add(
                        f"{per}: asyncio pool vs prefork (4 procs)",
                        a["per_s"] / rates["prefork"]["per_s"],
                        at_least=20,
                        asyncio=a,
                        prefork=rates["prefork"],
                    )
                    report.add(
                        f"{per}: asyncio pool vs threads (100)",
                        a["per_s"] / rates["threads"]["per_s"],
                        threads=rates["threads"],
                    )
                    report.add(
                        f"{per}: asyncio pool vs Taskiq",
                        a["per_s"] / rates["taskiq"]["per_s"],
                        at_least=1.0,
                        taskiq=rates["taskiq"],
                    )
            memory(report, db, env, tmp, redis_server.url, 10_000 if args.quick else 100_000)
    finally:
        server.terminate()
        server.wait(10)
    report.notes.append("The machine (2 cores) was shared with other work while this ran; rates are noisy.")
    print(f"wrote {report.save()}")
    return 0


def memory(report: Report, db: redis.Redis, env: dict[str, str], tmp: Path, url: str, big: int) -> None:
    """RSS of one asyncio worker after 1k tasks and after ``big`` more (no wait in the body)."""
    db.delete("bench:done", "bench:latency")
    worker = ManagedProcess("aio-mem", celery_argv("asyncio", CONCURRENCY, "aio-mem", 1), env, tmp).start()

    def drain(n: int) -> None:
        target = int(db.get("bench:done") or 0) + n
        from pydantic import SecretStr

        from internal.config.setting import RedisSettings, load_settings
        from internal.infra.celery import build_celery_client

        settings = load_settings(env_file=None)
        settings.redis = RedisSettings(url=SecretStr(url))
        client = build_celery_client(settings)
        for start in range(0, n, 10_000):
            client.submit_many(
                [
                    TaskRequest("bench.aio_wait", (time.time(), 0.0, None))
                    for _ in range(min(10_000, n - start))
                ],
                chunk_size=5000,
            )
            while int(db.get("bench:done") or 0) < target - n + start + min(10_000, n - start):
                time.sleep(0.05)
            db.delete("bench:latency")
        client.close()

    try:
        drain(1000)
        after_1k = sum(p.memory_info().rss for p in tree(worker)) / 2**20
        drain(big)
        after_big = sum(p.memory_info().rss for p in tree(worker)) / 2**20
    finally:
        worker.stop()
    report.add(
        f"RSS after {big} tasks / after 1k",
        after_big / after_1k,
        at_most=1.10,
        after_1k_mib=round(after_1k, 1),
        after_big_mib=round(after_big, 1),
    )


if __name__ == "__main__":
    sys.exit(main())
