"""How the API is served: the ``API_*`` limits become uvicorn options, and
``./scripts/run`` serves through them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from internal.api.server import H11Protocol, HttpToolsProtocol, protocol_path, uvicorn_flags, uvicorn_options
from internal.config.setting import ApiSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [k for k in os.environ if k.startswith("API_")]:
        monkeypatch.delenv(name)


def test_defaults_are_bounded() -> None:
    api = ApiSettings(_env_file=None)
    assert uvicorn_options(api) == {
        "http": "internal.api.server:HttpToolsProtocol",
        "h11_max_incomplete_event_size": 65536,
        "timeout_keep_alive": 5,
        "limit_concurrency": 1000,
        "backlog": 2048,
    }
    assert api.header_timeout == 10.0


def test_environment_sets_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_MAX_HEADER_BYTES", "32768")
    monkeypatch.setenv("API_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("API_KEEPALIVE_TIMEOUT", "7")
    monkeypatch.setenv("API_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("API_BACKLOG", "128")
    monkeypatch.setenv("API_HTTP", "h11")
    api = ApiSettings(_env_file=None)
    assert api.header_timeout == 2.5
    assert uvicorn_flags(api) == [
        "--http=internal.api.server:H11Protocol",
        "--h11-max-incomplete-event-size=32768",
        "--timeout-keep-alive=7",
        "--limit-concurrency=50",
        "--backlog=128",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_MAX_HEADER_BYTES", "100"),
        ("API_HEADER_TIMEOUT", "0"),
        ("API_KEEPALIVE_TIMEOUT", "0"),
        ("API_MAX_CONNECTIONS", "0"),
        ("API_HTTP", "http2"),
    ],
)
def test_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        ApiSettings(_env_file=None)


def test_protocol_paths_name_the_guarded_classes() -> None:
    assert protocol_path("h11").endswith(":" + H11Protocol.__name__)
    assert protocol_path("httptools").endswith(":" + HttpToolsProtocol.__name__)
    assert protocol_path("auto") == protocol_path("httptools")


def test_run_serves_the_api_through_the_limited_server() -> None:
    from scripts.run_system import children

    (api, *_) = children({}, "127.0.0.1", 8000, "default")
    assert api.argv[1:] == ["-m", "internal.api.server", "--host", "127.0.0.1", "--port", "8000"]
