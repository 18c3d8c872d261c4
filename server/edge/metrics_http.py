"""The metrics endpoint: an aiohttp server on the event loop that answers ``GET /metrics``.

Why on the event loop rather than prometheus_client's ``start_http_server`` thread: it lives and dies with the
server (started and stopped by ``Server``, no daemon thread left behind), it binds port 0 and reports the bound
port like the gRPC port, and connection handling costs the loop almost nothing (a scrape every few seconds).
What would block the loop is formatting thousands of series, so that part runs in a one-thread executor: the
loop only copies the counters (``ServerMetrics.snapshot``, microseconds per version, which also gives one
consistent instant per scrape) and writes the bytes.

Protection (both optional, as Prometheus scrapes with them: ``tls_config`` and ``authorization``): TLS with the
server's certificate (and client CA: mutual TLS), and a bearer token every request must carry (``Authorization:
Bearer <token>``; compared by digest in constant time, ``security.TokenAuth``); a request without it, or with
another, gets 401 with ``WWW-Authenticate: Bearer`` before anything is rendered.

Supported: ``GET``/``HEAD`` of ``/metrics`` (Prometheus text 0.0.4, or OpenMetrics when the Accept header asks
for ``application/openmetrics-text``; gzip when Accept-Encoding lists it), ``/`` (a pointer to /metrics); 404
elsewhere, 405 for other methods. Bounds: a request line or header line longer than ``MAX_HEAD_LINE_BYTES``, or
more than ``MAX_HEADERS`` headers, is refused by aiohttp's parser (400 or 431) and the connection closed; a
connection must send a whole request head within ``IDLE_TIMEOUT_S`` of connecting or of its last answer.
Request bodies are never read.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from .. import errors
from .security import TokenAuth
from ..observability.metrics import ServerMetrics, render

__all__ = ["MetricsEndpoint", "read_scrape_token"]

log = logging.getLogger("surge.metrics")

#: Longest request line or header line accepted, in bytes.
MAX_HEAD_LINE_BYTES = 8190
#: Most header lines accepted in one request.
MAX_HEADERS = 64
#: A connection idle this long (before its first request head is complete, or after an answer) is closed (seconds).
IDLE_TIMEOUT_S = 120.0
_INDEX = "Surge metrics: GET /metrics (Prometheus text, or OpenMetrics with Accept: application/openmetrics-text)\n"
_SCOPE = "metrics"
_ALLOW = {"Allow": "GET, HEAD"}

#: ``source(accept, accept_encoding) -> (body, headers)``: a page to serve.
PageSource = Callable[[str, str], Awaitable[tuple[bytes, dict[str, str]]]]


def read_scrape_token(path: Path) -> TokenAuth:
    """The scrape token in ``path`` (the whole file, surrounding whitespace stripped: Prometheus' ``credentials_file``
    format), as a ``TokenAuth``. Raises ConfigError naming the file (never the token)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ConfigError(f"cannot read the metrics token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise errors.ConfigError(f"the metrics token file {path} must hold one token of at least 16 characters, without spaces")
    return TokenAuth([(token, (_SCOPE,))])


class MetricsEndpoint:
    """Serves ``ServerMetrics`` over HTTP. ``start``/``aclose`` on the event loop."""

    def __init__(
        self, metrics: ServerMetrics | None, host: str, port: int, *, source: PageSource | None = None,
        ssl_context: ssl.SSLContext | None = None, token: TokenAuth | None = None,
    ) -> None:
        """``source``: another page than ``metrics``' (the ``--workers`` supervisor's merged page).
        ``ssl_context``: serve HTTPS; ``token``: every request needs it."""
        self._metrics = metrics
        self._ssl_context = ssl_context
        self._token = token
        self._source = source
        self._host = host
        self._port = port
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="surge-metrics")
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/metrics", self._page)  # and HEAD: aiohttp answers it with the headers alone
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.01, keepalive_timeout=IDLE_TIMEOUT_S, lingering_time=0,
            max_line_size=MAX_HEAD_LINE_BYTES, max_field_size=MAX_HEAD_LINE_BYTES, max_headers=MAX_HEADERS,
        )  # fmt: skip
        self.address = ""

    @property
    def tls(self) -> bool:
        """Whether it serves HTTPS."""
        return self._ssl_context is not None

    @property
    def token_required(self) -> bool:
        """Whether every request needs the scrape token."""
        return self._token is not None

    async def start(self) -> str:
        """Bind and listen; returns the bound ``host:port`` (port 0 picks a free one). Raises OSError."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        port = self._runner.addresses[0][1]
        self.address = f"[{self._host}]:{port}" if ":" in self._host else f"{self._host}:{port}"
        return self.address

    async def aclose(self) -> None:
        """Stop listening and close open connections."""
        await self._runner.cleanup()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """The scrape token before anything else (every path), then: GET and HEAD only, a pointer to /metrics on 404.
        A request with a body is answered, then the connection is closed (the body is never read)."""
        if self._token is not None:
            try:
                self._token.check(request.headers.get("Authorization"), _SCOPE, "a scrape")
            except errors.InferenceServerError as exc:
                return self._closing(request, web.Response(status=401, text=f"{exc}\n", headers={"WWW-Authenticate": 'Bearer realm="surge-metrics"'}))
        if request.method not in ("GET", "HEAD"):
            return self._closing(request, web.Response(status=405, text="only GET and HEAD\n", headers=_ALLOW))
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = web.Response(status=404, text="not found; try /metrics\n")
        return self._closing(request, response)

    @staticmethod
    def _closing(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        if request.body_exists:  # never read: close rather than misread what follows as the next request
            response.force_close()
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=_INDEX)

    async def _page(self, request: web.Request) -> web.Response:
        accept, accept_encoding = request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        if self._source is not None:
            body, headers = await self._source(accept, accept_encoding)
        elif self._metrics is not None:
            metrics = self._metrics
            snapshot = metrics.snapshot()  # on the loop: a consistent copy, microseconds
            body, headers = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: render(snapshot, metrics.collectors, accept=accept, accept_encoding=accept_encoding)
            )
        else:
            raise web.HTTPNotFound()
        return web.Response(body=body, headers=headers)
