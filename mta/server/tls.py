"""Server-side TLS for smtpd: a listener's ``ssl.SSLContext``, and starting TLS on a
connection whose first bytes were already read.

A context is made from the listener's certificate chain and key (``tls_cert``,
``tls_key``) with its ``tls_min_version``; a file that cannot be loaded is a
:class:`~mta.config.ConfigError` naming the key and the file, raised before anything is
served (the worker then exits with ``EXIT_CONFIG``; the master checks at start and on HUP).
Certificates are read when the context is made: a worker that starts after a HUP serves
the new ones.

:func:`start_tls` is ``loop.start_tls`` for a connection that has already received some of
the client's TLS bytes: behind a PROXY header the balancer often sends the header and the
ClientHello in one packet, and once the header is parsed what follows it has been read
from the socket.  Those octets are handed to the TLS protocol before anything else it
reads (both asyncio and uvloop install it and schedule its ``connection_made`` in the same
step, so a callback scheduled after that step sees it connected and runs before the
transport is read again).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import cast

from mta.config import Config, ConfigError, Listener

__all__ = ["check_certificates", "server_context", "start_tls"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(config: Config, listener: Listener) -> ssl.SSLContext | None:
    """The listener's TLS context, None when it has no TLS; ConfigError if the certificate
    or key cannot be loaded."""
    if listener.tls == "off":
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[listener.tls_min_version]
    try:
        context.load_cert_chain(listener.tls_cert, listener.tls_key)
    except (OSError, ssl.SSLError) as exc:
        key = _cert_key(config, listener)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{key}: cannot load {listener.tls_cert} with {listener.tls_key}: {detail}"
        ) from None
    return context


def check_certificates(config: Config) -> None:
    """Load every listener's certificate once, for an error before anything is served (the
    master at start and on HUP, ``mta check-config``); ConfigError names the first failure."""
    for listener in config.resolved_listeners():
        server_context(config, listener)


def _cert_key(config: Config, listener: Listener) -> str:
    """Which key named the files: the listener's own, or [smtp]'s that it inherited."""
    entry = config.listeners.get(listener.name)
    if entry is not None and entry.tls_cert:
        return f"listeners.{listener.name}.tls_cert"
    return "smtp.tls_cert"


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    early: bytes,
    timeout: float,
) -> asyncio.Transport:
    """The server side of a TLS handshake on ``transport``, ``early`` being the client's
    first octets already read; raises what ``loop.start_tls`` raises.

    Reading stops at once (no byte may reach ``protocol`` in the clear meanwhile) and
    resumes when the TLS protocol is in place."""
    transport.pause_reading()
    if not early:
        return await _checked(
            loop.start_tls(
                transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
            )
        )
    handshake = loop.create_task(
        loop.start_tls(
            transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
        )
    )
    # One turn: the task's first step (installing the TLS protocol and scheduling its
    # connection_made and resume_reading) ran before this one, so _feed runs after them,
    # in the same turn, before the transport is read again.
    await asyncio.sleep(0)
    while transport.get_protocol() is protocol and not handshake.done():
        await asyncio.sleep(0)  # a loop that needs more turns to get there
    if not handshake.done():
        loop.call_soon(_feed, transport, early)
    return await _checked(handshake)


async def _checked(handshake: Awaitable[asyncio.BaseTransport | None]) -> asyncio.Transport:
    tls_transport = await handshake
    if tls_transport is None:  # the connection closed meanwhile
        raise ConnectionError("connection closed during the TLS handshake")
    return cast(asyncio.Transport, tls_transport)


def _feed(transport: asyncio.Transport, data: bytes) -> None:
    """Give ``data`` to the TLS protocol as if it had just been read from ``transport``."""
    if transport.is_closing():
        return
    tls = cast(asyncio.BufferedProtocol, transport.get_protocol())
    view = memoryview(data)
    while view:
        buffer = memoryview(tls.get_buffer(len(view))).cast("B")
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]
