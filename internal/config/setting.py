"""Application settings, read from the environment and ``.env``, grouped by concern.

``setting`` is the one settings object. Secrets are ``SecretStr`` (``**********`` in
``repr``); URLs that embed them are computed on demand, and their ``safe_*`` variants
mask the password for logs, errors and health output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kombu.utils.url import maybe_sanitize_url
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ApiSettings",
    "AppSettings",
    "CelerySettings",
    "DatabaseSettings",
    "RedisSettings",
    "Settings",
    "load_settings",
    "setting",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SQLITE_PATH = REPO_ROOT / "var" / "app.db"

Port = Annotated[int, Field(ge=1, le=65535)]


def _config(prefix: str = "") -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


class AppSettings(BaseSettings):
    """Identity and locale: ``APP_NAME``, ``TIMEZONE``."""

    model_config = _config()

    app_name: str = Field("my_fastapi_server", min_length=1)
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"TIMEZONE {value!r} is not an IANA time zone such as 'Asia/Shanghai'") from exc
        return value


class RedisSettings(BaseSettings):
    """``REDIS_HOST``/``PORT``/``DB``/``PASSWORD``, or a whole ``REDIS_URL``; and
    ``REDIS_HEALTH_CHECK_INTERVAL`` for the API's pooled connections."""

    model_config = _config("REDIS_")

    host: str = "127.0.0.1"
    port: Port = 6379
    db: int = Field(0, ge=0, le=15)
    password: SecretStr = SecretStr("")
    url: SecretStr | None = None
    #: The API's Redis client PINGs a pooled connection idle this many seconds before
    #: using it, so one that died while idle (a Redis restart) is replaced, not used.
    health_check_interval: int = Field(10, ge=0, le=3600)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value


class DatabaseSettings(BaseSettings):
    """``DATABASE_URL``, or ``MYSQL_HOST``/``PORT``/``USER``/``PASSWORD``/``DB``; else SQLite."""

    model_config = _config("MYSQL_")

    url: SecretStr | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"))
    echo: bool = Field(False, validation_alias=AliasChoices("DATABASE_ECHO"))
    host: str | None = None
    port: Port = 3306
    user: str = "root"
    password: SecretStr = SecretStr("")
    db: str = "app"


class CelerySettings(BaseSettings):
    """Broker/backend overrides, worker defaults and task limits (``CELERY_*``)."""

    model_config = _config("CELERY_")

    broker_url: SecretStr | None = None
    result_backend: SecretStr | None = None
    default_queue: str = Field("default", min_length=1)
    pool: str = "prefork"
    concurrency: int = Field(4, ge=1, le=4096)  # > 256 only with the asyncio pool (issue 10)
    loglevel: str = "info"
    queues: str | None = None
    extra_queues: str = ""
    extra_include: str = ""
    task_soft_time_limit: float = Field(300.0, gt=0)
    task_time_limit: float = Field(360.0, gt=0)
    result_expires: int = Field(86400, gt=0)
    revoke_expires: int = Field(3 * 86400, gt=0)
    visibility_timeout: int = Field(30, ge=5)
    soft_shutdown_timeout: float = Field(0.0, ge=0)
    #: Asyncio pool: loop lag (s) above which a worker takes no more messages than it
    #: runs (0: up to the prefetch limit at once, as Celery does).
    asyncio_lag_target: float = Field(0.05, ge=0, le=10)
    profile: Literal["default", "throughput"] = "default"
    #: ``stock``: file priorities on stock kombu's four steps, so plain Celery workers
    #: sharing the Redis consume every priority (see the README's mixed deployments).
    priority_compat: Literal["off", "stock"] = "off"

    @field_validator("pool")
    @classmethod
    def _known_pool(cls, value: str) -> str:
        pools = ("prefork", "solo", "threads", "gevent", "eventlet", "asyncio")  # asyncio: issue 10
        if value not in pools:
            raise ValueError(f"CELERY_POOL {value!r} is not one of {', '.join(pools)}")
        return value

    @model_validator(mode="after")
    def _concurrency_for_pool(self) -> CelerySettings:
        # issue 10: thousands of slots only make sense when they are coroutines.
        if self.pool != "asyncio" and self.concurrency > 256:
            raise ValueError(
                f"CELERY_CONCURRENCY {self.concurrency} is over 256; only the asyncio pool takes up to 4096"
            )
        return self

    @field_validator("loglevel")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = ("debug", "info", "warning", "error", "critical")
        if value.lower() not in levels:
            raise ValueError(f"CELERY_LOGLEVEL {value!r} is not one of {', '.join(levels)}")
        return value.lower()

    @model_validator(mode="after")
    def _soft_before_hard(self) -> CelerySettings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                "CELERY_TASK_SOFT_TIME_LIMIT must be smaller than CELERY_TASK_TIME_LIMIT "
                f"({self.task_soft_time_limit} >= {self.task_time_limit})"
            )
        return self

    @property
    def queue_list(self) -> list[str]:
        """``CELERY_QUEUES`` split on commas, or the default queue."""
        names = [q.strip() for q in (self.queues or "").split(",") if q.strip()]
        return names or [self.default_queue]

    @property
    def extra_queue_list(self) -> list[str]:
        """More queues HTTP callers may name, from ``CELERY_EXTRA_QUEUES`` (comma separated)."""
        return [q.strip() for q in self.extra_queues.split(",") if q.strip()]

    @property
    def known_queue_list(self) -> list[str]:
        """Queues beyond the routes and the default one that callers may name:
        ``CELERY_QUEUES`` and ``CELERY_EXTRA_QUEUES``."""
        return list(dict.fromkeys([*self.queue_list, *self.extra_queue_list]))

    @property
    def extra_include_list(self) -> list[str]:
        """Additional task modules from ``CELERY_EXTRA_INCLUDE`` (comma separated)."""
        return [m.strip() for m in self.extra_include.split(",") if m.strip()]


class ApiSettings(BaseSettings):
    """HTTP API: ``API_TOKEN`` (bearer auth when set), ``API_HOST``/``API_PORT`` for the
    local runner, request limits, and the HTTP server's connection limits (applied by
    ``python -m internal.api.server``, see ``internal/api/server.py``)."""

    model_config = _config("API_")

    token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: Port = 8000
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    #: Request line + headers larger than this are refused (431/400) and the connection closed.
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: A connection must deliver a request's complete headers within this many seconds
    #: of opening (or of the request's first byte), else it is closed.
    header_timeout: float = Field(10.0, gt=0, le=600)
    #: An idle keep-alive connection is closed after this many seconds.
    keepalive_timeout: int = Field(5, ge=1, le=3600)
    #: Connections (or running requests) beyond this answer 503.
    max_connections: int = Field(1000, ge=1)
    #: Connections the kernel queues before the server accepts them.
    backlog: int = Field(2048, ge=1)
    #: HTTP/1.1 parser: httptools (fast, C), h11 (pure Python), auto (httptools if installed).
    http: Literal["auto", "httptools", "h11"] = "auto"

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None


# -- Task history (issue 11): what workers record and how long the database keeps it.
class HistorySettings(BaseSettings):
    """Task history: ``HISTORY_ENABLED``, ``HISTORY_RETENTION_DAYS``,
    ``HISTORY_MAX_VALUE_BYTES`` (args/kwargs/result kept per record) and
    ``HISTORY_MASK_KEYS`` (comma-separated kwarg names stored masked)."""

    model_config = _config("HISTORY_")

    enabled: bool = True  # HISTORY_ENABLED=false: workers record nothing
    retention_days: int = Field(14, ge=1, le=3650)
    max_value_bytes: int = Field(4096, ge=64, le=1024 * 1024)
    mask_keys: str = Field("password,token,secret,api_key,authorization", max_length=4096)

    @property
    def mask_key_list(self) -> list[str]:
        """The masked kwarg names, lower case (at most 100)."""
        return [k.strip().lower() for k in self.mask_keys.split(",") if k.strip()][:100]


class Settings:
    """Every setting, grouped: ``app``, ``redis``, ``database``, ``celery``, ``api``."""

    def __init__(self, *, env_file: str | Path | None = ".env") -> None:
        self.app = AppSettings(_env_file=env_file)
        self.redis = RedisSettings(_env_file=env_file)
        self.database = DatabaseSettings(_env_file=env_file)
        self.celery = CelerySettings(_env_file=env_file)
        self.api = ApiSettings(_env_file=env_file)
        self.history = HistorySettings(_env_file=env_file)

    def __repr__(self) -> str:
        names = ("app", "redis", "database", "celery", "api")
        groups = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"Settings({groups})"

    @property
    def redis_url(self) -> str:
        """Redis URL with the password URL-escaped (``REDIS_URL`` wins if set)."""
        if self.redis.url is not None:
            return self.redis.url.get_secret_value()
        password = _secret(self.redis.password)
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{self.redis.host}:{self.redis.port}/{self.redis.db}"

    @property
    def broker_url(self) -> str:
        """``CELERY_BROKER_URL`` or the Redis URL."""
        return _secret(self.celery.broker_url) or self.redis_url

    @property
    def result_backend(self) -> str:
        """``CELERY_RESULT_BACKEND`` or the Redis URL."""
        return _secret(self.celery.result_backend) or self.redis_url

    @property
    def database_url(self) -> str:
        """Async SQLAlchemy URL: ``DATABASE_URL``, MySQL from ``MYSQL_*``, else SQLite."""
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        db = self.database
        if db.host:
            password = quote(_secret(db.password), safe="")
            auth = f"{quote(db.user, safe='')}:{password}" if password else quote(db.user, safe="")
            return f"mysql+asyncmy://{auth}@{db.host}:{db.port}/{db.db}?charset=utf8mb4"
        return f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"

    @property
    def safe_redis_url(self) -> str:
        """The Redis URL with its password masked, for logs and errors."""
        return str(maybe_sanitize_url(self.redis_url))

    @property
    def safe_broker_url(self) -> str:
        """The broker URL with its password masked."""
        return str(maybe_sanitize_url(self.broker_url))

    @property
    def safe_database_url(self) -> str:
        """The database URL with its password masked."""
        return str(maybe_sanitize_url(self.database_url))


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read settings from the environment and ``env_file``."""
    return Settings(env_file=env_file)


setting = load_settings()
