"""Surge's one HTTP client: GET a metrics page (aiohttp's client), with one-line errors that say what to try.

Used by the ``--workers`` supervisor (every worker's page, per scrape), by a worker reading its siblings' pages (the
rollout controller's whole-server figures), and by the commands that read a server's ``/metrics`` (``surge top``,
``surge ab``, ``surge drift``: ``fetch_page_sync`` runs the same coroutine with ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

__all__ = ["ScrapeError", "fetch_page", "fetch_page_sync"]


class ScrapeError(Exception):
    """A page could not be read; the message says why (and what to check) in one line."""


async def fetch_page(
    address: str, *, path: str = "/metrics", accept: str = "", timeout_s: float = 10.0, session: aiohttp.ClientSession | None = None
) -> str:
    """The text of ``GET http://address/path``; raises ScrapeError (refused, timed out, not HTTP/1.1, not 200, not UTF-8).

    ``session``: reuse its connections (else one session for this call)."""
    where = f"http://{address}{path}"
    headers = {"Accept": accept} if accept else {}
    owned = session is None
    client = aiohttp.ClientSession() if session is None else session
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with client.get(where, headers=headers, timeout=timeout) as response:
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
