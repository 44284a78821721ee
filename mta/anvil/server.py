"""The anvil process: counts per client address for every smtpd worker of the node.

It owns one :class:`~mta.policy.counters.ClientCounters` and answers the workers' requests
(mta/policy/anvil_wire.py) in the order they come, a frame of answers per frame of
requests.  It decides nothing: the workers compare the counts with their limits, so a
reload that changes a limit needs no anvil restart, and a cluster store can replace anvil.

Invariants and failures:

* each worker connection remembers the open connections it counted; when it closes (the
  worker exited or was killed), they are uncounted, so a dead worker's clients do not hold
  their limit;
* only peers of anvil's own user (or root) are served (SO_PEERCRED): the socket is in the
  abstract namespace, which has no file permissions;
* a peer that sends something undecodable is disconnected (its counts dropped), never
  answered with a guess;
* clients with nothing open and an expired window are swept every :data:`SWEEP` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

import uvloop

from mta.config import Config
from mta.policy import anvil_wire
from mta.policy.anvil_wire import Add, Connect, Counts, Disconnect, FrameReader, Hold, Request
from mta.policy.counters import ClientCounters

__all__ = ["AnvilServer", "run_anvil"]

log = logging.getLogger("mta.anvil")

SWEEP = 10.0  # seconds between sweeps of forgotten clients
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Heartbeat = Callable[[], None]


class _WorkerLink(asyncio.Protocol):
    """One smtpd worker's connection, and the open connections it counted."""

    def __init__(self, server: AnvilServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader: FrameReader[Request] = FrameReader(Request)
        self.held: dict[str, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and not _trusted_peer(sock):
            log.warning("refused a connection from a process of another user")
            self.transport.abort()
            return
        self.server.links.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            requests = self.reader.feed(data)
        except ValueError as exc:
            log.warning("dropping a worker connection: %s", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        answers = self.server.handle(self, requests)
        if answers and self.transport is not None:
            self.transport.write(anvil_wire.encode(answers))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.links.discard(self)
        self.server.forget(self)


class AnvilServer:
    """The counters and the requests' meaning; :meth:`listen` serves them on a socket."""

    def __init__(
        self, counters: ClientCounters | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counters = counters or ClientCounters()
        self.clock = clock
        self.links: set[_WorkerLink] = set()

    async def listen(self, address: str) -> asyncio.AbstractServer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        return await loop.create_unix_server(lambda: _WorkerLink(self), sock=sock, backlog=128)

    def handle(self, link: _WorkerLink, requests: list[Request]) -> list[Counts]:
        counters, held, now = self.counters, link.held, self.clock()
        answers: list[Counts] = []
        for request in requests:
            kind = type(request)
            if kind is Connect:
                client = request.client  # type: ignore[union-attr]
                open_now, rate = counters.connect(client, now)
                held[client] = held.get(client, 0) + 1
                answers.append(Counts(request.id, open_now, rate))  # type: ignore[union-attr]
            elif kind is Add:
                add: Add = request  # type: ignore[assignment]
                count = counters.add(add.kind, add.client, add.amount, now)
                answers.append(Counts(add.id, 0, count))
            elif kind is Disconnect:
                self._release(held, request.client, request.count)  # type: ignore[union-attr]
            else:
                hold: Hold = request  # type: ignore[assignment]
                for client, count in hold.clients.items():
                    counters.add_open(client, count, now)
                    held[client] = held.get(client, 0) + count
                if hold.id:
                    answers.append(Counts(hold.id, 0, 0))
        return answers

    def _release(self, held: dict[str, int], client: str, count: int) -> None:
        mine = held.get(client, 0)
        count = min(count, mine)  # never more than this worker counted
        if count <= 0:
            return
        self.counters.disconnect(client, count)
        if mine == count:
            del held[client]
        else:
            held[client] = mine - count

    def forget(self, link: _WorkerLink) -> None:
        """A worker's connection closed: its open connections no longer count."""
        for client, count in link.held.items():
            self.counters.disconnect(client, count)
        link.held.clear()

    def sweep(self) -> int:
        return self.counters.sweep(self.clock())


def _trusted_peer(sock: socket.socket) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _, uid, _ = _PEERCRED.unpack(creds)
    return uid in (0, os.geteuid())


def run_anvil(config: Config, heartbeat: Heartbeat | None = None) -> None:
    """Serve the node's workers until SIGTERM."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(config, heartbeat))
    finally:
        loop.close()


async def _serve(config: Config, heartbeat: Heartbeat | None) -> None:
    loop = asyncio.get_running_loop()
    anvil = AnvilServer()
    server = await anvil.listen(anvil_wire.address(config.queue.path))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    chores = loop.create_task(_housekeeping(anvil, heartbeat))
    log.info("anvil ready")
    await stop.wait()
    server.close()
    for link in list(anvil.links):
        if link.transport is not None:
            link.transport.close()
    chores.cancel()
    log.info("anvil stopped (%d clients tracked)", len(anvil.counters))


async def _housekeeping(anvil: AnvilServer, heartbeat: Heartbeat | None) -> None:
    """Prove liveness from the loop (twice a second); sweep forgotten clients."""
    last_sweep = time.monotonic()
    while True:
        if heartbeat is not None:
            heartbeat()
        if time.monotonic() - last_sweep >= SWEEP:
            last_sweep = time.monotonic()
            anvil.sweep()
        await asyncio.sleep(0.5)
