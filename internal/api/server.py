"""Serving the API with bounded connections: ``python -m internal.api.server``.

Stock uvicorn leaves two doors open. Its default parser (httptools) has no limit on the
size of a request's headers, and neither parser times out a connection before its
first request: the keep-alive timer starts only after a response. So a client could
hold connections open for ever by sending nothing, or dribble an endless header into
memory. The protocol classes here add both bounds to uvicorn's own classes (through
its public ``--http module:Class`` extension point):

- the request line and headers may be at most ``API_MAX_HEADER_BYTES``; beyond that the
  answer is 431 (httptools) or 400 (h11) and the connection is closed;
- a connection must deliver a request's complete headers within ``API_HEADER_TIMEOUT``
  seconds of opening (or of that request's first byte on a kept-alive connection),
  otherwise it is closed.

The rest are uvicorn settings: idle keep-alive connections close after
``API_KEEPALIVE_TIMEOUT``; beyond ``API_MAX_CONNECTIONS`` connections (or running
requests) new requests get 503; ``API_BACKLOG`` bounds the kernel's accept queue.
:func:`uvicorn_options` turns the settings into uvicorn's keyword arguments; ``main``
runs ``main:app`` with them (``./scripts/run`` uses it too). Running uvicorn by hand
gives the same limits with ``--http internal.api.server:HttpProtocol`` plus the flags
:func:`uvicorn_flags` prints.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from typing import Any

import h11
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol as _StockH11Protocol
from uvicorn.server import ServerState

from internal.config.setting import ApiSettings, setting

__all__ = [
    "H11Protocol",
    "HttpProtocol",
    "HttpToolsProtocol",
    "main",
    "protocol_path",
    "uvicorn_flags",
    "uvicorn_options",
]

logger = logging.getLogger("uvicorn.error")

HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
#: This module's import path (not ``__name__``: that is ``__main__`` under ``python -m``).
MODULE = "internal.api.server"


class _HeadDeadline:
    """Closes a connection whose request head (line and headers) is not complete in time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock unless it already runs (it measures the whole head)."""
        if self._timer is None and not transport.is_closing():
            self._timer = self.loop.call_later(self.timeout, self._expired, transport)

    def cancel(self) -> None:
        """Stop the clock: the head is complete, or the connection is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        if not transport.is_closing():
            # Debug only: a flood of idle connections must not become a flood of log lines.
            logger.debug("closing a connection that sent no complete request head in %s s", self.timeout)
            transport.close()


class H11Protocol(_StockH11Protocol):
    """uvicorn's h11 protocol with a head deadline; h11 itself bounds the head size
    (``h11_max_incomplete_event_size``, ``API_MAX_HEADER_BYTES`` when not given)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if config.h11_max_incomplete_event_size is None:
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=setting.api.max_header_bytes)
        self._head = _HeadDeadline(self.loop, setting.api.header_timeout)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accepted: the first request's head must arrive within the deadline."""
        super().connection_made(transport)
        self._head.arm(transport)

    def data_received(self, data: bytes) -> None:
        """Feed h11; keep the deadline while a request head is still incomplete."""
        super().data_received(data)
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._head.cancel()
        else:  # bytes of a next request arrived, its head not complete yet
            self._head.arm(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: no deadline to keep."""
        self._head.cancel()
        super().connection_lost(exc)


if HAVE_HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _StockHttpToolsProtocol

    class HttpToolsProtocol(_StockHttpToolsProtocol):
        """uvicorn's httptools protocol with a head deadline and a head size limit
        (httptools has none): past ``API_MAX_HEADER_BYTES``, 431 and close."""

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._head = _HeadDeadline(self.loop, setting.api.header_timeout)
            self._max_head_bytes = config.h11_max_incomplete_event_size or setting.api.max_header_bytes
            self._head_bytes = 0
            self._in_head = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Accepted: the first request's head must arrive within the deadline."""
            super().connection_made(transport)
            self._head.arm(transport)

        def data_received(self, data: bytes) -> None:
            """Feed the parser; count the bytes of an incomplete head and refuse it
            once it is too large (memory per connection stays bounded by the limit
            plus one read)."""
            super().data_received(data)
            if self.transport.is_closing():
                self._head.cancel()
                return
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head_bytes:
                    self._refuse_head()
                    return
                self._head.arm(self.transport)

        def on_message_begin(self) -> None:
            """A request's first byte: its head is being read."""
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            """The head is complete: no deadline or size count until the next one."""
            self._in_head = False
            self._head.cancel()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            """Gone: no deadline to keep."""
            self._head.cancel()
            super().connection_lost(exc)

        def _refuse_head(self) -> None:
            self._head.cancel()
            message = f"request line and headers exceed {self._max_head_bytes} bytes"
            self.logger.warning("Refused a request: %s.", message)
            body = message.encode("ascii")
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
            self.transport.close()

    #: The protocol ``--http auto`` would pick, with the limits added.
    HttpProtocol: type[asyncio.Protocol] = HttpToolsProtocol
else:  # pragma: no cover - uvicorn[standard] ships httptools
    HttpProtocol = H11Protocol


def protocol_path(http: str) -> str:
    """The ``module:Class`` uvicorn imports for ``API_HTTP`` (auto, httptools or h11)."""
    if http == "h11" or (http == "auto" and not HAVE_HTTPTOOLS):
        return f"{MODULE}:H11Protocol"
    if not HAVE_HTTPTOOLS:
        raise SystemExit("API_HTTP=httptools but httptools is not installed (pip install httptools)")
    return f"{MODULE}:HttpToolsProtocol"


def uvicorn_options(api: ApiSettings) -> dict[str, Any]:
    """uvicorn keyword arguments that apply the ``API_*`` connection limits."""
    return {
        "http": protocol_path(api.http),
        "h11_max_incomplete_event_size": api.max_header_bytes,
        "timeout_keep_alive": api.keepalive_timeout,
        "limit_concurrency": api.max_connections,
        "backlog": api.backlog,
    }


def uvicorn_flags(api: ApiSettings) -> list[str]:
    """The same limits as ``uvicorn`` command-line flags (for the README and for
    deployments that run uvicorn themselves; the head deadline is read from
    ``API_HEADER_TIMEOUT`` by the protocol class)."""
    options = uvicorn_options(api)
    return [
        f"--http={options['http']}",
        f"--h11-max-incomplete-event-size={options['h11_max_incomplete_event_size']}",
        f"--timeout-keep-alive={options['timeout_keep_alive']}",
        f"--limit-concurrency={options['limit_concurrency']}",
        f"--backlog={options['backlog']}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Serve ``main:app`` with uvicorn and the ``API_*`` limits until SIGINT/SIGTERM."""
    api = setting.api
    parser = argparse.ArgumentParser(
        prog="python -m internal.api.server",
        description="Serve the HTTP API (main:app) with header, timeout and connection limits from API_*.",
    )
    parser.add_argument("--host", default=api.host, help="bind address (API_HOST)")
    parser.add_argument("--port", type=int, default=api.port, help="port (API_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.add_argument(
        "--print-flags", action="store_true", help="print the equivalent uvicorn command and exit"
    )
    args = parser.parse_args(argv)
    if args.print_flags:
        where = [f"--host={args.host}", f"--port={args.port}"]
        print(" ".join(["uvicorn", "main:app", *where, *uvicorn_flags(api)]))
        return 0
    uvicorn.run(
        "main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        **uvicorn_options(api),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
