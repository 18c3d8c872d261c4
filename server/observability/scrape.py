"""Surge's one HTTP client: GET a metrics page (aiohttp's client), with one-line errors that say what to try.

Used by the ``--workers`` supervisor (every worker's page, per scrape), by a worker reading its siblings' pages (the
rollout controller's whole-server figures), and by the commands that read a server's ``/metrics`` (``surge top``,
``surge ab``, ``surge drift``: ``fetch_page_sync`` runs the same coroutine with ``asyncio.run``).

``Credentials``: what a page protected by ``--metrics-tls`` and ``--metrics-token-file`` asks of its client.
``worker_credentials`` gives the supervisor and the workers what reads their siblings' pages: the scrape token,
and TLS that presents the server's own certificate (for a client CA) and does not check the worker's (a child of
this server on an address it reported itself).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["Credentials", "ScrapeError", "fetch_page", "fetch_page_sync", "worker_credentials"]


class ScrapeError(Exception):
    """A page could not be read; the message says why (and what to check) in one line."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to reach a protected metrics endpoint: its bearer token and a TLS client context (None: plain HTTP)."""

    token: str | None = None
    ssl: ssl.SSLContext | None = None


def worker_credentials(config: Any) -> Credentials:
    """What reads the pages of the workers of a server with ``config`` (a ``ServerConfig``): its own scrape token
    and, under ``--metrics-tls``, a client context with its certificate. Raises ConfigError like the server would."""
    from .metrics_http import read_scrape_token

    token = None
    if config.metrics_token_file is not None:
        read_scrape_token(config.metrics_token_file)  # the same checks and messages as the endpoint's
        token = config.metrics_token_file.read_text(encoding="utf-8").strip()
    context = None
    if config.metrics_tls:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # our own child on the address it reported; the token still applies
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)  # for a client CA (mutual TLS)
    return Credentials(token, context)


async def fetch_page(
    address: str, *, path: str = "/metrics", accept: str = "", timeout_s: float = 10.0, credentials: Credentials | None = None,
    session: aiohttp.ClientSession | None = None,
) -> str:  # fmt: skip
    """The text of ``GET http(s)://address/path``; raises ScrapeError (refused, timed out, not HTTP/1.1, not 200, not UTF-8).

    ``session``: reuse its connections (else one session for this call)."""
    credentials = credentials or Credentials()
    where = f"{'https' if credentials.ssl is not None else 'http'}://{address}{path}"
    headers = {"Accept": accept} if accept else {}
    if credentials.token is not None:
        headers["Authorization"] = f"Bearer {credentials.token}"
    owned = session is None
    client = aiohttp.ClientSession() if session is None else session
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with client.get(where, headers=headers, timeout=timeout, ssl=credentials.ssl or True) as response:
            if response.status != 200:
                raise ScrapeError(f"{where} answered HTTP {response.status} {response.reason}: not a Surge metrics endpoint?")
            return (await response.read()).decode("utf-8")
    except ScrapeError:
        raise
    except aiohttp.ClientConnectorError as exc:
        raise ScrapeError(f"cannot reach {where}: {exc.os_error.strerror or exc.os_error}; is the server running?") from None
    except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        # e.g. a gRPC port: HTTP/2 only, no HTTP/1.1 answer
        raise ScrapeError(f"{address} did not answer HTTP/1.1 ({type(exc).__name__}): is it the gRPC port?") from None
    except TimeoutError:
        raise ScrapeError(f"cannot read {where}: no answer within {timeout_s:g} s.") from None
    except (aiohttp.ClientError, OSError, UnicodeDecodeError, ValueError) as exc:  # a reset, a non-UTF-8 body, a malformed address
        raise ScrapeError(f"cannot read {where}: {exc}.") from None
    finally:
        if owned:
            await client.close()


def fetch_page_sync(address: str, **kwargs: Any) -> str:
    """``fetch_page`` for synchronous callers (the command line); not from a running event loop."""
    return asyncio.run(fetch_page(address, **kwargs))
