"""The dashboard in a real browser (headless Chromium, the system's) against real
processes: the session's worker and beat and a uvicorn API with ``API_TOKEN``.

One browser for the module. Each page is saved as a screenshot under the test's
temporary directory.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_TOKEN, Api
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def _word(n: int = 10) -> str:
    """A unique lower-case word with no digits (fingerprints ignore numbers and hex ids)."""
    return uuid.uuid4().hex[:n].translate(str.maketrans("0123456789", "ghijklmnop"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (the system's; Playwright downloads nothing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture()
def page(browser: Any, api: Api) -> Iterator[Any]:
    """A fresh browser context and page; a dialog (alert) fails the test."""
    context = browser.new_context(base_url=api.base_url)
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield tab
    finally:
        context.close()
    assert not dialogs, f"a script ran in the page: {dialogs}"


def _login(page: Any, token: str = API_TOKEN) -> None:
    page.goto("/dashboard/")
    assert "/dashboard/login" in page.url
    page.fill("input[name=token]", token)
    page.click("form.login button[type=submit]")


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def _dead_letters_of(client: Any, task: str, marker: str) -> list[dict[str, Any]]:
    _, entries = client.dead_letters(limit=1000)
    return [e for e in entries if e.get("task") == task and marker in str(e.get("args"))]


def test_pages_and_actions_need_a_session(api: Api) -> None:
    """Without the login cookie: pages redirect to the login form, actions are refused;
    the API keeps asking for its bearer token, and a bearer token opens no dashboard page."""
    with httpx.Client(base_url=api.base_url, timeout=10, follow_redirects=False) as anonymous:
        for path in ("/dashboard/", "/dashboard/tasks", "/dashboard/failures", "/dashboard/schedules"):
            response = anonymous.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/dashboard/login?next=")
        for path in (
            "/dashboard/schedules/toggle",
            "/dashboard/failures/resubmit-group",
            "/dashboard/logout",
        ):
            response = anonymous.post(path, data={"name": "task_heartbeat_30s", "enabled": "0", "csrf": "x"})
            assert response.status_code == 401, path
        assert anonymous.get("/api/v1/queues").status_code == 401
        login = anonymous.get("/dashboard/login")
        assert login.status_code == 200
        assert "script-src" not in login.headers["content-security-policy"]  # default-src 'none' covers it
        assert "default-src 'none'" in login.headers["content-security-policy"]
        wrong = anonymous.post("/dashboard/login", data={"token": "wrong", "next": "/dashboard/"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    bearer = api.http.get("/dashboard/failures", follow_redirects=False)
    assert bearer.status_code == 303


def test_login_sets_a_strict_cookie_and_actions_need_the_csrf_token(
    page: Any, api: Api, client: Any, tmp_path: Path
) -> None:
    """The session cookie is Secure, HttpOnly and SameSite=Strict (Chromium keeps it over
    http://127.0.0.1); POSTs without the form's CSRF token, with a wrong one, or from another
    origin are refused and change nothing."""
    _login(page, "not-the-token")
    assert "wrong token" in page.content()
    _login(page)
    page.wait_for_url(re.compile(r"/dashboard/$"))
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "tasksys_dashboard"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard"
    _shot(page, tmp_path, "overview")

    name = f"dash-csrf-{_word()}"
    client.add_periodic_task("tests.record", "interval", 3600, name=name, args=[name])
    try:
        form = {"name": name, "enabled": "0"}
        request = page.context.request
        assert request.post("/dashboard/schedules/toggle", form=form).status == 403
        assert request.post("/dashboard/schedules/toggle", form={**form, "csrf": "forged"}).status == 403
        page.goto("/dashboard/schedules")
        token = page.get_attribute("input[name=csrf]", "value")
        foreign = request.post(
            "/dashboard/schedules/toggle",
            form={**form, "csrf": token},
            headers={"Origin": "http://evil.test"},
        )
        assert foreign.status == 403
        assert client.get_periodic_task(name)["enabled"] is True
        ok = request.post("/dashboard/schedules/toggle", form={**form, "csrf": token}, max_redirects=0)
        assert ok.status == 303
        assert client.get_periodic_task(name)["enabled"] is False
    finally:
        client.remove_periodic_task(name)


def test_failures_are_grouped_resubmitted_and_edited(
    page: Any, api: Api, client: Any, stack: Any, tmp_path: Path
) -> None:
    """Failures differing only by numbers form one group; re-submitting the group sends
    each again; an entry's arguments can be edited and sent as a new task."""
    word = _word()
    ids = [client.submit("tests.always_fails", [f"{word} order {n}"]).id for n in (1, 22, 333)]
    other = client.submit("tests.always_fails", [f"{word} quota exceeded"]).id
    broken = client.submit("tests.total", [["a", word]]).id  # TypeError: int + str
    wait_for(
        lambda: (
            len(_dead_letters_of(client, "tests.always_fails", word)) == 4
            and _dead_letters_of(client, "tests.total", word)
        ),
        timeout=30,
        what="the dead letters",
    )
    _login(page)
    page.goto("/dashboard/failures")
    _shot(page, tmp_path, "failures")
    groups = page.locator(".group", has_text=f"{word} order")
    assert groups.count() == 1
    group = groups.first
    assert group.locator(".badge").first.inner_text() == "3"
    assert group.locator(".message").inner_text().strip() == f"still failing: {word} order <n>"
    assert set(group.locator("tr.entry").evaluate_all("rows => rows.map(r => r.dataset.entry)")) == set(ids)
    assert page.locator(".group", has_text=f"{word} quota").count() == 1

    group.locator("button.resubmit-group").click()
    assert page.locator(".flash.ok").inner_text().startswith("re-submitted 3 task(s) of tests.always_fails")
    assert other in {e["task_id"] for e in _dead_letters_of(client, "tests.always_fails", word)}

    page.goto(f"/dashboard/failures/{broken}/edit")
    _shot(page, tmp_path, "failure-edit")
    page.fill("textarea[name=args]", "[[1, 2, 39]]")
    page.click("form.edit button[type=submit]")
    flash = page.locator(".flash.ok").inner_text()
    new_id = re.search(r"as (\S+) \(from", flash).group(1)  # type: ignore[union-attr]
    assert new_id != broken
    assert client.get_result(new_id, timeout=20) == 42
    assert client.get_task_metas([new_id])[new_id].get("parent_id") == broken  # linked to the failed one
    assert not _dead_letters_of(client, "tests.total", word)

    page.goto(f"/dashboard/failures/{ids[0]}/edit")  # gone from the list? it was re-submitted
    if page.locator("textarea[name=args]").count():  # it failed again already: edit it too
        page.fill("textarea[name=args]", "not json")
        page.click("form.edit button[type=submit]")
        assert "not valid JSON" in page.locator(".flash.error").inner_text()


def test_user_data_renders_as_text(page: Any, api: Api, client: Any, tmp_path: Path) -> None:
    """A task name and arguments holding ``<script>`` and an ``onerror`` image show as
    text on the failures and edit pages; no script runs."""
    from pkg.celery_task._deadletter import dead_letters_for

    word = _word()
    entry_id = dead_letters_for(client.app).record(
        {
            "task_id": f"xss-{word}",
            "task": f"{HOSTILE}{word}",
            "args": [HOSTILE],
            "kwargs": {"note": HOSTILE},
            "queue": "default",
            "reason": "unregistered",
            "error": {"type": "NotRegistered", "message": HOSTILE},
            "traceback": HOSTILE,
            "retries": 0,
            "resubmittable": True,
        }
    )
    try:
        _login(page)
        for path in ("/dashboard/failures", f"/dashboard/failures/{entry_id}/edit"):
            page.goto(path)
            assert HOSTILE in page.locator("main").inner_text()
            assert page.evaluate("window.__xss") is None
            assert page.locator("main script").count() == 0
            assert page.locator("main img").count() == 0
        _shot(page, tmp_path, "failures-hostile")
    finally:
        client.delete_dead_letter(entry_id)


def test_schedules_show_next_fires_and_can_be_disabled(
    page: Any, api: Api, client: Any, tmp_path: Path
) -> None:
    """Every entry is listed with its description and next five fires; Disable works."""
    name = f"dash-cron-{_word()}"
    client.add_periodic_task("tests.record", "cron", "*/15 * * * *", name=name, args=[name])
    try:
        _login(page)
        page.goto("/dashboard/schedules")
        _shot(page, tmp_path, "schedules")
        for static in ("task_sum_every_15_min", "task_daily_report_morning", "task_heartbeat_30s"):
            assert page.locator(f'tr.schedule[data-name="{static}"]').count() == 1
        row = page.locator(f'tr.schedule[data-name="{name}"]')
        assert "every 15 minutes" in row.inner_text().lower()
        times = re.findall(r"\d{4}-\d\d-\d\d (\d\d):(\d\d):00", row.locator("td").nth(3).inner_text())
        assert len(times) == 5 and all(int(minute) % 15 == 0 for _, minute in times)
        row.locator("button", has_text="Disable").click()
        assert page.locator(".flash.ok").inner_text() == f"disabled {name}"
        assert client.get_periodic_task(name)["enabled"] is False
        assert "disabled" in page.locator(f'tr.schedule[data-name="{name}"]').inner_text()
    finally:
        client.remove_periodic_task(name)


def _add_queue_samples(database_url: str, queue: str) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime, timedelta

    from internal.infra.database import open_engine
    from internal.models import QueueLengthSample

    async def insert() -> None:
        engine = await open_engine(database_url)
        try:
            async with engine.begin() as conn:
                now = datetime.now(UTC)
                rows = [
                    {"queue": queue, "length": n, "sampled_at": now - timedelta(minutes=n)} for n in (1, 5, 9)
                ]
                await conn.execute(QueueLengthSample.__table__.insert(), rows)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's loop
        pool.submit(asyncio.run, insert()).result()


def test_overview_and_tasks_pages_load(page: Any, api: Api, client: Any, stack: Any, tmp_path: Path) -> None:
    """The overview lists the workers online and charts the recorded queue lengths; the
    tasks page loads."""
    queue = f"dash-{_word()}"
    _add_queue_samples(stack.database_url, queue)
    _login(page)
    page.goto("/dashboard/")
    assert int(page.locator("#workers-online").inner_text()) >= 1
    assert "stack-worker@" in page.locator("main").inner_text()
    assert page.locator(".legend", has_text=queue).count() == 1
    assert page.locator("svg.chart polyline").count() >= 1
    _shot(page, tmp_path, "overview-samples")
    page.goto("/dashboard/tasks")
    _shot(page, tmp_path, "tasks")
    assert page.locator("h1").inner_text() == "Tasks"


def test_tasks_pages_find_real_tasks_through_the_recorder(
    page: Any, api: Api, stack: Any, tmp_path: Path
) -> None:
    """Against the real API, worker and a recorder: tasks submitted over HTTP appear on
    the tasks page (search by id, filter by status) and on their own page with their
    timeline and arguments."""
    from tests.support.procs import service_env, start_history_recorder

    marker = f"dash-real-{_word()}"
    recorder = start_history_recorder(
        service_env(stack.db, database_url=stack.database_url), stack.log_dir, f"dash-rec-{_word()}"
    )
    try:
        ok = api.http.post("/api/v1/tasks?wait=20", json={"task": "tests.record", "args": [marker]})
        bad = api.http.post("/api/v1/tasks?wait=20", json={"task": "math.number_sum", "args": [marker, 1]})
        assert ok.json()["status"] == "SUCCESS" and bad.json()["status"] == "FAILURE", (ok.text, bad.text)
        ok_id, bad_id = ok.json()["task_id"], bad.json()["task_id"]
        _login(page)

        def listed(query: str) -> list[str]:
            page.goto(f"/dashboard/tasks?{query}")
            return page.locator("tr.task-row").evaluate_all("rows => rows.map(r => r.dataset.taskId)")

        # A recorder new to the session reads the stream from its start: every record the
        # session's worker wrote before this test comes first (thousands on a full run).
        wait_for(lambda: _recorder_caught_up(stack.db.client), timeout=240, interval=0.5, what="the backlog")
        wait_for(lambda: listed(f"q={bad_id}") == [bad_id], timeout=30, interval=0.5, what="the row")
        assert listed(f"q={ok_id}") == [ok_id]
        assert bad_id in listed("status=FAILURE&task=math.number_sum")
        assert ok_id not in listed("status=FAILURE")
        _shot(page, tmp_path, "tasks-real")
        page.goto(f"/dashboard/tasks/{bad_id}")
        text = page.locator("main").inner_text()
        for part in (marker, "sent", "received", "started", "failed", "x must be a number"):
            assert part in text, (part, text[:2000])
        _shot(page, tmp_path, "task-real")
    finally:
        recorder.stop()


def _recorder_caught_up(db: Any) -> bool:
    """The recorders' group has read up to the history stream's last entry and acked
    every entry it read."""
    key = "tasksys:history"
    last = db.xinfo_stream(key)["last-generated-id"]
    groups = [g for g in db.xinfo_groups(key) if g["name"] in ("history-recorder", b"history-recorder")]
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last


def test_flower_runs_next_to_the_dashboard(api: Api, stack: Any, tmp_path: Path) -> None:
    """``./scripts/run --flower`` adds Flower on its own port; it answers while the
    dashboard serves, and sees the same worker."""
    import sys

    from scripts.run_system import children
    from tests.support.procs import ManagedProcess
    from tests.support.services import free_port

    port = free_port()
    (flower,) = [c for c in children(stack.env, "127.0.0.1", 8000, "default", port) if c.name == "flower"]
    assert flower.argv[0] == sys.executable
    env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    proc = ManagedProcess("flower", flower.argv, env, tmp_path).start()
    try:

        def workers() -> Any:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=5)
            except httpx.HTTPError:
                assert proc.alive(), proc.log()[-3000:]
                return None
            return answer.status_code == 200 and any(
                name.startswith("stack-worker@") for name in answer.json()
            )

        wait_for(workers, timeout=30, interval=0.5, what="Flower to list the worker")
        assert api.http.get("/dashboard/login").status_code == 200
    finally:
        proc.stop()


def test_without_api_token_the_dashboard_is_open_but_actions_still_need_csrf(client: Any, stack: Any) -> None:
    """Like the API, no ``API_TOKEN`` means no login; a session (and its CSRF token) is
    issued on the first page, and actions without that token are still refused."""
    from starlette.testclient import TestClient

    from internal.api.app import create_app
    from internal.config.setting import load_settings

    settings = load_settings()
    assert settings.api.token is None
    with TestClient(create_app(settings, client), base_url="https://testserver") as http:
        assert http.get("/dashboard/login", follow_redirects=False).headers["location"] == "/dashboard/"
        page = http.get("/dashboard/schedules")
        assert page.status_code == 200 and "tasksys_dashboard" in http.cookies
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        form = {"name": "no-such-entry", "enabled": "1"}
        assert http.post("/dashboard/schedules/toggle", data=form).status_code == 403
        done = http.post("/dashboard/schedules/toggle", data={**form, "csrf": csrf}, follow_redirects=False)
        assert done.status_code == 303
        assert "no periodic entry" in http.get("/dashboard/schedules").text
        # The worst inputs: refused with a message, nothing changes, never a 500.
        for name in ("x" * 10_000, ":lock", "a\nb", ""):
            form = {"name": name, "enabled": "0", "csrf": csrf}
            answer = http.post("/dashboard/schedules/toggle", data=form, follow_redirects=False)
            assert answer.status_code == 303, (name[:20], answer.status_code)
            assert "flash error" in http.get("/dashboard/schedules").text
        assert http.get("/dashboard/tasks/" + "t" * 300).status_code == 404
        newline = http.post("/dashboard/tasks/a%0Ab/revoke", data={"csrf": csrf}, follow_redirects=False)
        assert newline.status_code == 404
        revoke = http.post("/dashboard/tasks/a%20b/revoke", data={"csrf": csrf}, follow_redirects=False)
        assert revoke.status_code == 303
        assert "flash error" in http.get("/dashboard/schedules").text
        huge = http.post("/dashboard/schedules/toggle", data={"name": "n" * 300_000, "csrf": csrf})
        assert huge.status_code == 400
        bad_edit = http.post(
            "/dashboard/failures/nope/edit", data={"args": "[", "csrf": csrf}, follow_redirects=False
        )
        assert bad_edit.status_code == 303
        assert "not valid JSON" in http.get("/dashboard/failures").text


class FakeHistory:
    """An in-memory history in the shapes of ``/api/v1/history`` and ``/stats/*``."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def page(self, filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
        def keep(row: dict[str, Any]) -> bool:
            q = filters.get("q")
            if q and q not in row["task_id"] and q not in row["task"]:
                return False
            return all(
                row.get(k) == v for k, v in filters.items() if k in ("task", "status", "queue", "worker")
            )

        items = [r for r in self.rows if keep(r)]
        start = int(cursor or 0)
        more = start + limit < len(items)
        return {"items": items[start : start + limit], "next_cursor": str(start + limit) if more else None}

    async def get(self, task_id: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["task_id"] == task_id), None)

    async def task_stats(self, since: Any, until: Any) -> dict[str, dict[str, Any]]:
        return {"tests.record": {"total": 4, "succeeded": 3, "failed": 1, "retried": 0, "revoked": 0}}

    async def throughput(self, since: Any, until: Any, bucket: int) -> list[dict[str, Any]]:
        return [{"start": "2026-12-01T22:00:00+00:00", "counts": {"SUCCESS": 3, "FAILURE": 1}}]

    async def runs(self, task: str, since: Any, limit: int) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["task"] == task][:limit]


def _row(task_id: str, task: str, status: str, **extra: Any) -> dict[str, Any]:
    row = {
        "task_id": task_id,
        "task": task,
        "status": status,
        "queue": "default",
        "worker": "w@h",
        "args": [HOSTILE],
        "kwargs": {"note": HOSTILE},
        "result": None,
        "error": None,
        "traceback": None,
        "retries": 0,
        "parent_id": None,
        "root_id": task_id,
        "sent_at": "2026-12-01T22:00:00+00:00",
        "received_at": None,
        "started_at": None,
        "finished_at": None,
        "runtime_ms": 12.5,
        "events": [{"type": "SENT", "at": "2026-12-01T22:00:00+00:00", "worker": None, "detail": None}],
        "children": [],
    }
    return {**row, **extra}


def test_task_pages_on_a_history_reader(browser: Any, client: Any, stack: Any) -> None:
    """With a history reader on the app state, the tasks page lists, searches and filters
    its rows, a task page shows timeline, arguments, error and children, the overview
    its failure rate; hostile names and arguments stay text in Chromium."""
    from starlette.testclient import TestClient

    from internal.api.app import create_app
    from internal.config.setting import load_settings

    rows = [
        _row("t-1", "tests.record", "SUCCESS", result=HOSTILE),
        _row(
            "t-2",
            f"{HOSTILE}.name",
            "FAILURE",
            error={"type": "ValueError", "message": HOSTILE},
            traceback=HOSTILE,
            children=[{"task_id": "t-3", "task": "tests.record", "status": "SUCCESS"}],
        ),
        _row("t-3", "tests.record", "SUCCESS", parent_id="t-2"),
    ]
    app = create_app(load_settings(), client)
    app.state.dashboard_history = FakeHistory(rows)
    tab = browser.new_page()
    try:
        with TestClient(app, base_url="https://testserver") as http:

            def show(path: str) -> str:
                response = http.get(path)
                assert response.status_code == 200, response.text[:500]
                tab.set_content(response.text)
                assert tab.evaluate("window.__xss") is None
                assert tab.locator("main script").count() == 0
                return str(tab.locator("main").inner_text())

            listed = show("/dashboard/tasks")
            assert f"{HOSTILE}.name" in listed and "t-1" in listed and "t-3" in listed
            assert listed.count("<script>window.__xss = 1</script>") == 4  # a name, three args
            assert tab.locator("tr.task-row").count() == 3
            show("/dashboard/tasks?status=FAILURE")
            assert tab.locator("tr.task-row").evaluate_all("r => r.map(x => x.dataset.taskId)") == ["t-2"]
            show("/dashboard/tasks?q=t-3")
            assert tab.locator("tr.task-row").count() == 1
            show("/dashboard/tasks?limit=2")
            assert tab.locator("tr.task-row").count() == 2 and tab.locator("a", has_text="Older").count() == 1
            detail = show("/dashboard/tasks/t-2")
            assert f"ValueError: {HOSTILE}" in detail and "SENT" in detail and "t-3" in detail
            assert tab.locator("form[action$='/revoke']").count() == 1
            assert "25.0 %" in show("/dashboard/")
            assert http.get("/dashboard/tasks/unknown").status_code == 404
    finally:
        tab.close()
