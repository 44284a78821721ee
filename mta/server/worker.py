"""The smtpd worker process: a uvloop event loop serving inherited listening sockets.

It stops on SIGTERM/SIGINT gracefully: stop accepting, give sessions a moment
(:data:`SESSION_GRACE`) to end on their own, tell the idle ones ``421``, let transactions
in flight finish (up to ``master.graceful_timeout``), then drop the rest and let the
committer finish the flushes it has.  Nothing that got ``250`` is lost either way:
the ``250`` is only sent after the flush.

Each socket is served with the listener it was bound for (listeners.py).  A parser backend
that cannot be used (``MTA_PARSER=c`` without the compiled module, or a value that names no
backend), a certificate or key that cannot be loaded, and an access, recipient or AUTH table
that cannot be read (mta/policy) are configuration errors: the worker exits with
:data:`~mta.exitcodes.EXIT_CONFIG`, which stops a master that is starting instead of a restart
loop (a serving one throttles the slot and keeps the other workers: arbiter.py).  The
worker reads them once, at start, so the workers a HUP starts read them again.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
from collections.abc import Callable
from functools import partial

import uvloop

from mta import metrics, parser_backend
from mta.config import Config, ConfigError
from mta.exitcodes import EXIT_CONFIG
from mta.policy import anvil_wire
from mta.policy.anvil_client import AnvilStore
from mta.policy.auth import Authenticator, SenderLogins, load_auth_tables
from mta.policy.limits import Limiter, limiter_for
from mta.policy.tables import PolicyTables, load_tables
from mta.protocol.session import ParserBackend
from mta.queue.commit import GroupCommitter
from mta.queue.spool import Spool
from mta.server.connections import LocalCounter, NodeCounter, open_table
from mta.server.context import WorkerContext, fd_ceiling
from mta.server.listen import BACKLOG
from mta.server.listeners import pair_sockets
from mta.server.smtpd import SMTPProtocol

__all__ = ["run_smtpd"]

log = logging.getLogger("mta.smtpd")

Heartbeat = Callable[[], None]

# A session accepted just before the stop is in flight too: the client was greeted and is
# about to send MAIL.  A 421 right away fails it for nothing; a rolling reload (HUP) stops
# workers while clients keep connecting, so without this moment some of them would see it.
# Two seconds cover the round trips of EHLO and MAIL from a distant or busy client.
SESSION_GRACE = 2.0  # seconds


def run_smtpd(
    config: Config, sockets: list[socket.socket], heartbeat: Heartbeat | None = None
) -> None:
    """Serve until SIGTERM; ``heartbeat`` is called from the loop once a second."""
    try:
        parser = parser_backend.select()
    except (ValueError, ImportError) as exc:
        log.error("configuration error: parser backend (MTA_PARSER): %s", exc)
        raise SystemExit(EXIT_CONFIG) from None
    try:
        # read once per worker, at start: a HUP replaces the workers
        auth_tables = load_auth_tables(config)
        tables = load_tables(config)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        raise SystemExit(EXIT_CONFIG) from None
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            _serve(config, sockets, loop, parser, tables, heartbeat, auth_tables)
        )
    finally:
        loop.close()


async def _serve(
    config: Config,
    sockets: list[socket.socket],
    loop: asyncio.AbstractEventLoop,
    parser: ParserBackend,
    tables: PolicyTables,
    heartbeat: Heartbeat | None,
    auth_tables: tuple[Authenticator | None, SenderLogins | None] = (None, None),
) -> None:
    spool = Spool(config.queue.path)
    spool.create()
    metrics.PARSER_BACKEND.labels(parser_backend.backend_name(parser)).set(1)
    batch = 1024 if config.queue.group_commit else 1
    committer = GroupCommitter(spool, loop, max_batch=batch)
    anvil = AnvilStore(anvil_wire.address(spool.path), loop) if config.limits.any_on else None
    limiter: Limiter | None = None
    if anvil is not None:
        anvil.start()
        limiter = limiter_for(config, anvil)
    counter = _node_counter(spool)
    try:
        ctx = WorkerContext(
            config,
            spool,
            committer,
            loop,
            parser,
            counter=counter,
            preloaded=tables,
            limiter=limiter,
        )
    except ConfigError as exc:  # a certificate that cannot be loaded: restarting won't help
        log.error("configuration error: %s", exc)
        committer.stop()
        counter.close()
        if anvil is not None:
            anvil.close()
        raise SystemExit(EXIT_CONFIG) from None
    ctx.authenticator, ctx.sender_logins = auth_tables
    ctx.max_fd = fd_ceiling(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    _warn_unusable_listeners(config, ctx)
    servers = [
        await loop.create_server(partial(SMTPProtocol, ctx, state), sock=sock, backlog=BACKLOG)
        for sock, state in pair_sockets(ctx.listeners, sockets)
    ]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    beat = loop.create_task(_housekeeping(ctx, heartbeat))
    log.info("smtpd ready on %s", ", ".join(_names(sockets, ctx)))
    await stop.wait()
    for server in servers:
        server.close()
    await _drain(ctx, config.master.graceful_timeout)
    committer.stop()
    beat.cancel()
    if ctx.authenticator is not None:
        ctx.authenticator.close()
    ctx.publish_stats()
    ctx.counter.close()
    if anvil is not None:
        anvil.close()


def _warn_unusable_listeners(config: Config, ctx: WorkerContext) -> None:
    """A listener that requires AUTH while no passwords are configured refuses every MAIL
    (530): legal, and safe, but surely not meant."""
    if ctx.authenticator is not None:
        return
    for listener in config.resolved_listeners():
        if listener.require_auth:
            log.warning(
                "listener %s requires AUTH but auth.passwords is not set: it refuses all mail",
                listener.name,
            )


def _node_counter(spool: Spool) -> NodeCounter:
    """The table the node's workers share; counting alone if it cannot be had."""
    try:
        return open_table(spool.path)
    except OSError as exc:
        log.error("connection table: %s; smtp.max_connections holds per worker only", exc)
        return LocalCounter()


async def _housekeeping(ctx: WorkerContext, heartbeat: Heartbeat | None) -> None:
    """Once a second: prove liveness from the event loop itself (a wedged loop stops
    beating), publish the counters of the hot path, forget the connections of workers that
    died and enter or leave stress mode."""
    while True:
        if heartbeat is not None:
            heartbeat()
        ctx.publish_stats()
        ctx.check_stress()
        await asyncio.sleep(1.0)


async def _drain(ctx: WorkerContext, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    grace = loop.time() + min(SESSION_GRACE, timeout)
    while ctx.connections and loop.time() < grace:
        await asyncio.sleep(0.05)
    ctx.begin_shutdown()
    while ctx.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for protocol in list(ctx.connections):
        if protocol.transport is not None:
            protocol.transport.abort()
    if ctx.connections:
        await asyncio.sleep(0)
    log.info("smtpd stopped")


def _names(sockets: list[socket.socket], ctx: WorkerContext) -> list[str]:
    names = []
    for sock, state in pair_sockets(ctx.listeners, sockets):
        host, port = sock.getsockname()[:2]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        names.append(f"{address} ({state.name})")
    return names
