"""Settings: environment parsing, URL building with escaped passwords, redaction."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from internal.config.setting import DEFAULT_SQLITE_PATH, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("REDIS_", "CELERY_", "MYSQL_", "API_")) or name in (
            "DATABASE_URL",
            "TIMEZONE",
            "APP_NAME",
        ):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings(env_file=None)
    assert s.app.app_name == "my_fastapi_server"
    assert s.app.timezone == "Asia/Shanghai"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.broker_url == s.result_backend == s.redis_url
    assert s.database_url == f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    assert (s.celery.pool, s.celery.concurrency, s.celery.queue_list) == ("prefork", 4, ["default"])
    assert s.api.token is None


def test_environment_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "10.0.0.5")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_DB", "3")
    monkeypatch.setenv("TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("CELERY_CONCURRENCY", "8")
    monkeypatch.setenv("CELERY_QUEUES", "default, cron_queue ,video_queue")
    monkeypatch.setenv("CELERY_EXTRA_INCLUDE", "a.tasks,b.tasks")
    monkeypatch.setenv("MYSQL_HOST", "db.internal")
    monkeypatch.setenv("MYSQL_USER", "app")
    monkeypatch.setenv("MYSQL_PASSWORD", "s3cret")
    monkeypatch.setenv("MYSQL_DB", "tasks")
    s = load_settings(env_file=None)
    assert s.redis_url == "redis://10.0.0.5:6380/3"
    assert s.app.timezone == "Europe/Berlin"
    assert s.celery.concurrency == 8
    assert s.celery.queue_list == ["default", "cron_queue", "video_queue"]
    assert s.celery.extra_include_list == ["a.tasks", "b.tasks"]
    assert s.database_url == "mysql+asyncmy://app:s3cret@db.internal:3306/tasks?charset=utf8mb4"


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_PORT=7000\nAPI_TOKEN=abc\n")
    s = Settings(env_file=env_file)
    assert s.redis.port == 7000
    assert s.api.token is not None and s.api.token.get_secret_value() == "abc"


def test_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:////tmp/x.db")
    s = load_settings(env_file=None)
    assert s.redis_url == "redis://cache:6379/2"
    assert s.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert s.result_backend == "redis://cache:6379/2"
    assert s.database_url == "sqlite+aiosqlite:////tmp/x.db"


def test_password_is_url_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss:w/rd#1%")
    s = load_settings(env_file=None)
    assert s.redis_url == "redis://:p%40ss%3Aw%2Frd%231%25@127.0.0.1:6379/0"
    import redis

    pool = redis.ConnectionPool.from_url(s.redis_url)
    assert pool.connection_kwargs["password"] == "p@ss:w/rd#1%"


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2-redis")
    monkeypatch.setenv("MYSQL_HOST", "db")
    monkeypatch.setenv("MYSQL_PASSWORD", "hunter2-mysql")
    monkeypatch.setenv("API_TOKEN", "hunter2-token")
    s = load_settings(env_file=None)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %r %s", s, s.redis)
    shown = repr(s) + str(s.redis) + caplog.text + s.safe_redis_url + s.safe_broker_url + s.safe_database_url
    assert "hunter2" not in shown
    assert "**" in s.safe_redis_url


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("REDIS_PORT", "70000", "less than or equal to 65535"),
        ("REDIS_DB", "-1", "greater than or equal to 0"),
        ("CELERY_POOL", "fibers", "CELERY_POOL 'fibers' is not one of"),
        ("CELERY_CONCURRENCY", "0", "greater than or equal to 1"),
        ("CELERY_LOGLEVEL", "loud", "CELERY_LOGLEVEL 'loud' is not one of"),
        ("TIMEZONE", "Mars/Olympus", "is not an IANA time zone"),
        ("REDIS_URL", "http://x", "REDIS_URL must start with redis://"),
    ],
)
def test_nonsense_is_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        load_settings(env_file=None)
    assert message in str(info.value)


def test_invalid_url_error_does_not_echo_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:topsecret@host")
    with pytest.raises(ValidationError) as info:
        load_settings(env_file=None)
    assert "topsecret" not in str(info.value)


def test_soft_time_limit_must_be_below_hard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_TASK_SOFT_TIME_LIMIT", "60")
    monkeypatch.setenv("CELERY_TASK_TIME_LIMIT", "30")
    with pytest.raises(ValidationError, match="CELERY_TASK_SOFT_TIME_LIMIT must be smaller"):
        load_settings(env_file=None)


def test_known_queues_and_priority_compat_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from internal.infra.celery import build_celery_client
    from pkg.celery_task import STOCK_PRIORITY_STEPS

    monkeypatch.setenv("CELERY_QUEUES", "default,reports")
    monkeypatch.setenv("CELERY_EXTRA_QUEUES", " exports , reports")
    monkeypatch.setenv("CELERY_PRIORITY_COMPAT", "stock")
    settings = load_settings(env_file=None)
    assert settings.celery.known_queue_list == ["default", "reports", "exports"]
    client = build_celery_client(settings)
    assert set(client.known_queues()) >= {"default", "reports", "exports", "cron_queue", "video_queue"}
    assert client.app.conf.broker_transport_options["priority_filing_steps"] == STOCK_PRIORITY_STEPS
    monkeypatch.delenv("CELERY_PRIORITY_COMPAT")
    plain = build_celery_client(load_settings(env_file=None))
    assert "priority_filing_steps" not in plain.app.conf.broker_transport_options
    monkeypatch.setenv("CELERY_PRIORITY_COMPAT", "sideways")
    with pytest.raises(ValidationError, match="priority_compat"):
        load_settings(env_file=None)
