"""Fetching an MTA-STS policy file over HTTPS (RFC 8461 §3.3), with aiohttp.

``GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt``, where every rule of §3.3 is kept:

- the name is resolved by the relay's own :class:`~mta.delivery.dns.Resolver` (configured
  nameservers, TTL cache), through aiohttp's public ``AbstractResolver`` seam;
- the certificate must verify against ``delivery.tls_ca_file`` (else the system store) for
  the name ``mta-sts.DOMAIN``, TLS 1.2 at least;
- only a ``200`` counts; redirects are not followed (§3.3); the media type must be
  ``text/plain`` (parameters allowed); the body is at most :data:`MAX_BODY` octets;
- the whole fetch, connection included, is bounded by ``mta_sts.fetch_timeout``.

Every failure is a :class:`StsFetchError` whose ``kind`` is a bounded metric label
(``http``, ``network``, ``timeout``, ``tls``) and whose text is for the log.  One fetch
makes one short-lived session: fetches are rare (one per domain per policy lifetime).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from mta.delivery.dns import Resolver
from mta.delivery.results import DeliveryError

__all__ = ["MAX_BODY", "StsFetchError", "fetch_policy", "https_context", "policy_url"]

MAX_BODY = 65_536  # RFC 8461 §3.3: senders may limit policy bodies to 64 KiB
CLOSE_SECONDS = 1.0  # for a connection to finish closing after the fetch


class StsFetchError(Exception):
    """The policy could not be fetched; ``kind`` is one of http, network, timeout, tls."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


def policy_url(domain: str) -> str:
    return f"https://mta-sts.{domain}/.well-known/mta-sts.txt"


class _RelayResolver(AbstractResolver):
    """aiohttp's name lookups answered by the relay's resolver (A, then AAAA)."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self._resolver.addresses(host)
        except DeliveryError as exc:
            raise OSError(exc.reply) from None  # aiohttp reports OSError as a DNS failure
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


async def fetch_policy(
    domain: str, resolver: Resolver, context: ssl.SSLContext, timeout: float
) -> str:
    """The policy text of ``domain``; raises :class:`StsFetchError`.  ``context`` must
    verify certificates and host names (see :func:`https_context`)."""
    connector = aiohttp.TCPConnector(resolver=_RelayResolver(resolver), ssl=context)
    limits = aiohttp.ClientTimeout(total=timeout)
    url = policy_url(domain)
    closing: list[asyncio.Future[None]] = []
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=limits) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            protocol = response.connection.protocol if response.connection else None
            closed = protocol.closed if protocol is not None else None
            if closed is not None:
                closing.append(closed)
            return await _body(url, response)
    except TimeoutError:
        raise StsFetchError("timeout", f"{url}: timed out after {timeout:g}s") from None
    except aiohttp.ClientSSLError as exc:
        raise StsFetchError("tls", f"{url}: {_reason(exc)}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise StsFetchError("network", f"{url}: {_reason(exc)}") from None
    finally:
        await _wait_closed(closing)


async def _wait_closed(closing: list[asyncio.Future[None]]) -> None:
    """Wait a moment for the connection to be closed: a connection dropped with its body
    unread (refused above) is closed by aiohttp in the background, and a TLS close takes
    some loop turns; a fetch should leave nothing behind."""
    for closed in closing:
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await asyncio.shield(closed)
        except (TimeoutError, OSError, aiohttp.ClientError):
            pass  # closing in the background, or it closed with an error (the server reset
            # a connection whose body we did not read): nothing to do


async def _body(url: str, response: aiohttp.ClientResponse) -> str:
    if response.status != 200:  # RFC 8461 §3.3: a redirect is not followed either
        raise StsFetchError("http", f"{url}: HTTP status {response.status}")
    if response.content_type != "text/plain":
        raise StsFetchError("http", f"{url}: media type {response.content_type!r}")
    if (response.content_length or 0) > MAX_BODY:
        raise StsFetchError("http", f"{url}: body over {MAX_BODY} octets")
    body = bytearray()
    async for chunk in response.content.iter_chunked(16_384):
        body += chunk
        if len(body) > MAX_BODY:
            raise StsFetchError("http", f"{url}: body over {MAX_BODY} octets")
    try:
        return body.decode("ascii")  # the policy grammar is ASCII (RFC 8461 §3.2)
    except UnicodeDecodeError:
        raise StsFetchError("http", f"{url}: body is not ASCII text") from None


def _reason(exc: BaseException) -> str:
    """The innermost useful text of an aiohttp error (its str() repeats the URL)."""
    cause: Any = getattr(exc, "os_error", None) or exc.__cause__ or exc
    return str(cause) or type(exc).__name__


def https_context(ca_file: str = "") -> ssl.SSLContext:
    """A context that verifies the chain against ``ca_file`` (else the system store) and
    the host name (``mta-sts.DOMAIN``, aiohttp passes it), TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
