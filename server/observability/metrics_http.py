"""The metrics endpoint: a tiny HTTP/1.1 server on the event loop that answers ``GET /metrics``.

Why asyncio-native rather than prometheus_client's ``start_http_server`` thread: it lives and dies with
the server (started and stopped by ``Server``, no daemon thread left behind), it binds port 0 and
reports the bound port synchronously like the gRPC port, and connection handling costs the loop almost
nothing (a scrape every few seconds). What would block the loop is formatting thousands of series, so
that part runs in a one-thread executor: the loop only copies the counters (``ServerMetrics.snapshot``,
microseconds per version, which also gives one consistent instant per scrape) and writes the bytes.

Protection (both optional, as Prometheus scrapes with them: ``tls_config`` and ``authorization``): TLS with the
server's certificate (and client CA: mutual TLS), and a bearer token every request must carry (``Authorization:
Bearer <token>``; compared by digest in constant time, ``security.TokenAuth``); a request without it, or with
another, gets 401 with ``WWW-Authenticate: Bearer`` before anything is rendered.

Supported: ``GET``/``HEAD`` of ``/metrics`` (Prometheus text 0.0.4, or OpenMetrics when the Accept
header asks for ``application/openmetrics-text``; gzip when Accept-Encoding lists it), ``/`` (a pointer
to /metrics); 404 elsewhere, 405 for other methods. Keep-alive as HTTP/1.1 says; requests with a body
are answered, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import errors
from ..edge.security import TokenAuth
from .metrics import ServerMetrics, render

__all__ = ["MetricsEndpoint", "read_scrape_token"]

log = logging.getLogger("surge.metrics")

#: Largest request head (request line + headers) accepted, in bytes.
MAX_HEAD_BYTES = 16 * 1024
#: A keep-alive connection idle this long is closed (seconds).
IDLE_TIMEOUT_S = 120.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}
_INDEX = b"Surge metrics: GET /metrics (Prometheus text, or OpenMetrics with Accept: application/openmetrics-text)\n"
_SCOPE = "metrics"


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
        self, metrics: ServerMetrics | None, host: str, port: int, *,
        source: Callable[[str, str], Awaitable[tuple[bytes, dict[str, str]]]] | None = None,
        ssl_context: ssl.SSLContext | None = None, token: TokenAuth | None = None,
    ) -> None:
        """``source(accept, accept_encoding) -> (body, headers)``: another page than ``metrics``' (the
        ``--workers`` supervisor's merged page). ``ssl_context``: serve HTTPS; ``token``: every request needs it."""
        self._metrics = metrics
        self._ssl_context = ssl_context
        self._token = token
        self._source = source
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="surge-metrics")
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
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_HEAD_BYTES, ssl=self._ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"[{self._host}]:{port}" if ":" in self._host else f"{self._host}:{port}"
        return self.address

    async def aclose(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:  # never let one scrape take anything else down
            log.exception("metrics endpoint: request failed")
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True to keep the connection open."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._reply(writer, 431, b"request head too large\n", {}, head_only=False)
            return False
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._reply(writer, 400, b"bad request line\n", {}, head_only=False)
            return False
        method, target, protocol = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = ("close" not in connection) if protocol == "HTTP/1.1" else ("keep-alive" in connection)
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            keep_alive = False  # we read no bodies: answer, then close rather than misread the next request
        path = target.split("?", 1)[0]
        if self._token is not None:
            try:
                self._token.check(headers.get("authorization"), _SCOPE, "a scrape")
            except errors.InferenceServerError as exc:
                await self._reply(writer, 401, f"{exc}\n".encode(), {"WWW-Authenticate": 'Bearer realm="surge-metrics"'}, head_only=method == "HEAD", keep_alive=keep_alive)
                return keep_alive
        if method not in ("GET", "HEAD"):
            await self._reply(writer, 405, b"only GET and HEAD\n", {"Allow": "GET, HEAD"}, head_only=False)
        elif path == "/metrics" and self._source is not None:
            body, extra = await self._source(headers.get("accept", ""), headers.get("accept-encoding", ""))
            await self._reply(writer, 200, body, extra, head_only=method == "HEAD", keep_alive=keep_alive)
        elif path == "/metrics" and self._metrics is not None:
            metrics = self._metrics
            snapshot = metrics.snapshot()  # on the loop: a consistent copy, microseconds
            loop = asyncio.get_running_loop()
            body, extra = await loop.run_in_executor(
                self._executor, lambda: render(snapshot, metrics.collectors, accept=headers.get("accept", ""),
                                               accept_encoding=headers.get("accept-encoding", ""))  # fmt: skip
            )
            await self._reply(writer, 200, body, extra, head_only=method == "HEAD", keep_alive=keep_alive)
        elif path == "/":
            await self._reply(writer, 200, _INDEX, {"Content-Type": "text/plain; charset=utf-8"}, head_only=method == "HEAD", keep_alive=keep_alive)
        else:
            await self._reply(writer, 404, b"not found; try /metrics\n", {}, head_only=method == "HEAD", keep_alive=keep_alive)
        return keep_alive

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str], *, head_only: bool, keep_alive: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {len(body)}", "Connection: " + ("keep-alive" if keep_alive else "close")]
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body))
        await writer.drain()
