"""The delivery process: takes jobs from the queue manager, delivers, reports results.

It owns no scheduling decision: it reads the message (in ``active/`` or a segment), groups
the recipients it was given by next hop, delivers every group concurrently and sends back
one result per recipient.  A small message is read whole; a large one is sent from its file
in chunks (:mod:`mta.delivery.stored`), so memory does not grow with message size.  If the
queue manager goes away it reconnects; jobs it was doing are rescheduled by the queue
manager, which owns them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import uvloop

from mta import metrics
from mta.config import Config
from mta.delivery import mime_7bit, requiretls
from mta.delivery.deliver import Deliverer
from mta.delivery.dns import Resolver
from mta.delivery.dsn_success import mark_success, transaction_dsn
from mta.delivery.routing import NextHop, Router
from mta.delivery.sign_thread import SigningThread
from mta.delivery.signing import Signer, load_signer
from mta.delivery.smtp_client import Transaction
from mta.delivery.stored import (
    STREAM_THRESHOLD,
    MessageReadError,
    PrefixedMessage,
    message_to_send,
)
from mta.protocol.client_events import StoredMessage
from mta.protocol.printable import for_log
from mta.queue.envelope import Envelope
from mta.queue.ipc import FrameReader, Job, Result, SlotGrant, agent_address, encode_frame
from mta.queue.msgfile import CorruptMessageFile
from mta.queue.results import RecipientResult
from mta.queue.segment import read_record
from mta.queue.spool import Spool

__all__ = ["run_delivery"]

log = logging.getLogger("mta.delivery")

Heartbeat = Callable[[], None]

RECONNECT_SECONDS = 0.2  # between attempts to reach a queue manager that is (re)starting
# Messages in files larger than this are sent from the file in chunks; at most LARGE_JOBS
# of them are in flight at once, each holding about three chunks (mta/delivery/stored.py).
LARGE_MESSAGE = STREAM_THRESHOLD
LARGE_JOBS = 16


def run_delivery(config: Config, heartbeat: Heartbeat | None = None) -> None:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(DeliveryAgent(config).run(heartbeat))
    finally:
        loop.close()


class DeliveryAgent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.queue.path)
        self.router = Router(config)
        delivery = config.delivery
        resolver = Resolver(delivery.dns_servers, preference=delivery.address_preference)
        self.deliverer = Deliverer(config, resolver)
        self.signer = load_signer(config)  # keys were checked at start: serve, reload
        self.signing = SigningThread(self.signer.sign) if self.signer is not None else None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writer: asyncio.StreamWriter | None = None
        self.large_jobs = asyncio.Semaphore(LARGE_JOBS)
        self.attempts: dict[tuple[str, str], int] = {}  # (domain label, status) → count
        self.domain_labels = DomainLabels(config.metrics.top_domains)
        self._results: list[bytes] = []  # encoded, to go out together
        self.stopping = False

    async def run(self, heartbeat: Heartbeat | None) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        background = [loop.create_task(self._serve_jobs())]
        background.append(loop.create_task(self._housekeeping(heartbeat)))
        await stop.wait()
        self.stopping = True
        await self._drain()
        for task in background:
            task.cancel()
        self.publish_stats()
        await self.deliverer.close_idle(0)
        if self.signing is not None:
            self.signing.close()

    async def _drain(self) -> None:
        """Let deliveries in flight finish (the master KILLs us after its graceful timeout)."""
        if self.tasks:
            await asyncio.wait(self.tasks)

    async def _housekeeping(self, heartbeat: Heartbeat | None) -> None:
        while True:
            if heartbeat is not None:
                heartbeat()
            self.publish_stats()
            await self.deliverer.close_idle()
            await asyncio.sleep(1.0)

    async def _serve_jobs(self) -> None:
        """Take jobs from the queue manager; when it goes away (killed, reloaded), connect
        to its successor, quietly: that is supervision at work, not an error here."""
        while not self.stopping:
            try:
                reader, writer = await self._connect()
            except OSError:
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            self.writer = writer
            self.deliverer.slots.attach(writer)
            log.debug("connected to the queue manager")
            try:
                await self._read_jobs(reader)
            except OSError as exc:  # reset by a queue manager that was killed
                log.info("lost the queue manager (%s); reconnecting", exc.strerror or exc)
            except ValueError as exc:  # a frame we cannot read: a bug on one side
                log.error("queue manager sent a malformed frame (%s); reconnecting", exc)
            else:
                if not self.stopping:
                    log.info("the queue manager went away; reconnecting")
            self.writer = None
            self.deliverer.slots.detach()
            writer.close()
            await asyncio.sleep(RECONNECT_SECONDS / 2)

    async def _read_jobs(self, reader: asyncio.StreamReader) -> None:
        """Start a delivery for every job that comes, until the connection ends."""
        frames = FrameReader()
        loop = asyncio.get_running_loop()
        while data := await reader.read(1 << 16):
            for frame in frames.feed(data):
                if isinstance(frame, Job) and not self.stopping:
                    task = loop.create_task(self._do(frame))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif isinstance(frame, SlotGrant):
                    self.deliverer.slots.granted(frame)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, agent_address(self.spool.path))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_unix_connection(sock=sock, limit=16 << 20)

    async def _do(self, job: Job) -> None:
        try:
            if not job.segment and self._is_large(job.queue_id):  # segments hold small ones
                async with self.large_jobs:  # bounds the memory of big messages in flight
                    result = await self._deliver(job)
            else:
                result = await self._deliver(job)
        except Exception:  # a bug here must defer the message, not lose it
            log.exception("%s: delivery failed with an internal error; deferring", job.queue_id)
            result = Result(queue_id=job.queue_id, problem="internal")
        self._results.append(encode_frame(result))
        if len(self._results) == 1:  # the first of this loop iteration: send them all after
            asyncio.get_running_loop().call_soon(self._send_results)

    def _send_results(self) -> None:
        results, self._results = self._results, []
        writer = self.writer
        # A queue manager that died may not have been noticed by the reader yet, but its
        # transport is closed already (writing to it raised a RuntimeError).  Its jobs are
        # handed out again by its successor: these results are dropped (agents.py).
        if writer is None or writer.is_closing():
            log.debug("queue manager gone: %d results dropped", len(results))
            return
        writer.write(b"".join(results))

    async def _deliver(self, job: Job) -> Result:
        started = time.time()
        try:
            if job.segment:
                path = self.spool.segment(job.segment)
                message_file = read_record(path, job.offset, job.length)
            else:
                message_file = self.spool.read("active", job.queue_id)
            message = message_to_send(message_file)  # page cache: cheaper than a thread hop
        except CorruptMessageFile as exc:
            log.error("%s: %s", job.queue_id, exc)
            return Result(queue_id=job.queue_id, problem="corrupt")
        except FileNotFoundError:
            return Result(queue_id=job.queue_id, problem="missing")
        envelope = message_file.envelope
        recipients = job.recipients or [r.address for r in envelope.recipients]
        log_active(envelope)
        header = message_file.read_headers()
        eight_bit = envelope.body_type == "8BITMIME"
        signature, new_signature = b"", False
        if self.signer is not None and self.signing is not None:
            # RFC 6376 §5.3: 7-bit before signing, so no hop's conversion breaks the signature
            if isinstance(message, bytes) and (eight_bit or not message.isascii()):
                converted = mime_7bit.to_7bit(message)
                if converted is not None:
                    message, eight_bit = converted, False
            signature, new_signature = await self._signature(
                self.signer, self.signing, job, message
            )
            if signature:
                message = (
                    signature + message
                    if isinstance(message, bytes)
                    else PrefixedMessage(signature, message)
                )
        tx_base = dict(
            sender=envelope.sender,
            message=message,
            eight_bit=eight_bit,
            smtputf8=requiretls.needs_smtputf8(envelope, header),
            tls_optional=requiretls.tls_optional(envelope, header),
            **transaction_dsn(envelope),
        )
        limit = self.config.delivery.max_recipients_per_transaction
        # REQUIRETLS binds message transfer (SMTP), not final delivery (LMTP, a mailbox):
        # RFC 8689 §4.4
        tls = requiretls.requires_tls(envelope)
        deliveries = [
            self._deliver_to(
                hop,
                Transaction(
                    recipients=rcpts[i : i + limit],
                    require_tls=tls and hop.kind == "smtp",
                    **tx_base,  # type: ignore[arg-type]
                ),
                envelope,
            )
            for hop, rcpts in self.router.group(recipients).items()
            for i in range(0, len(rcpts), limit)
        ]
        try:
            if len(deliveries) == 1:  # the common case: no task per destination needed
                results = await deliveries[0]
            else:
                outcomes = await asyncio.gather(*deliveries)
                results = [r for group in outcomes for r in group]
        except MessageReadError as exc:  # the file went bad after it was verified
            log.error("%s: %s", job.queue_id, exc)
            return Result(queue_id=job.queue_id, problem="corrupt")
        self._log(envelope, results, started)
        if new_signature and any(r.status == "deferred" for r in results):
            self.signer.save(job.queue_id, signature)  # type: ignore[union-attr]
        return Result(queue_id=job.queue_id, results=results)

    async def _deliver_to(
        self, hop: NextHop, tx: Transaction, envelope: Envelope
    ) -> list[RecipientResult]:
        results = await self.deliverer.deliver(hop, tx)
        return mark_success(envelope, results, hop.kind)  # RFC 3461 NOTIFY=SUCCESS

    async def _signature(
        self, signer: Signer, signing: SigningThread, job: Job, message: bytes | StoredMessage
    ) -> tuple[bytes, bool]:
        """(the DKIM-Signature header, whether it was made now): the one saved at an
        earlier attempt, else a new one made off the loop (b"" when the message is not to
        be signed).  A large message is read whole for it, in a thread (dkimpy signs
        bytes)."""
        saved = signer.saved(job.queue_id)
        if saved is not None:
            return saved, False
        if not isinstance(message, bytes):
            message = await asyncio.to_thread(_read_whole, message)
        header = await signing.sign(message)
        return header or b"", header is not None

    def _is_large(self, queue_id: str) -> bool:
        try:
            return os.stat(self.spool.file("active", queue_id)).st_size > LARGE_MESSAGE
        except FileNotFoundError:
            return False

    def _log(self, envelope: Envelope, results: list[RecipientResult], started: float) -> None:
        now = time.time()
        delay = now - envelope.received_at
        delays = postfix_delays(envelope.received_at, started, now)
        label = self.domain_labels.label
        for r in results:
            status = _LOGGED_STATUS.get(r.status, r.status)
            log.info(
                "%s: to=<%s>, relay=%s, delay=%.2f, delays=%s, dsn=%s, status=%s (%s), tls=%s",
                envelope.queue_id,
                r.address,
                r.relay,
                delay,
                delays,
                r.dsn,
                status,
                r.reply,
                r.tls or "none",
                extra={
                    "service": _SERVICE_OF_RELAY.get(r.relay, "smtp"),
                    "queue_id": envelope.queue_id,
                    "to": r.address,
                    "relay": r.relay,
                    "delay": round(delay, 3),
                    "delays": delays,
                    "dsn": r.dsn,
                    "status": status,
                    "tls": r.tls or "none",
                },
            )
            key = (label(r.address), r.status)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if r.status == "sent":
                metrics.DELIVERY_LATENCY.observe(delay)

    def publish_stats(self) -> None:
        """Add the attempts counted since the last call to the Prometheus counters (once a
        second: a multiprocess increment costs more than the delivery's own bookkeeping)."""
        attempts, self.attempts = self.attempts, {}
        by_status: dict[str, int] = {}
        for (domain, status), n in attempts.items():
            metrics.DELIVERY_BY_DOMAIN.labels(domain, status).inc(n)
            by_status[status] = by_status.get(status, 0) + n
        for status, n in by_status.items():
            metrics.DELIVERY_ATTEMPTS.labels(status).inc(n)


def _read_whole(message: StoredMessage) -> bytes:
    try:
        return b"".join(message.iter_message(1 << 20))
    except (OSError, ValueError) as exc:
        raise MessageReadError(exc) from exc


# Postfix's words in the log, which log tools and people already read: a permanent failure
# is "bounced" (whether the sender gets the bounce is the queue manager's business).
_LOGGED_STATUS = {"failed": "bounced"}
_SERVICE_OF_RELAY = {"local": "local", "discard": "discard"}  # Postfix's delivery agents


def log_active(envelope: Envelope) -> None:
    """``QID: from=<>, size=N, nrcpt=N (queue active)``: Postfix's qmgr line, logged here
    at each attempt because the delivery agent is the process that reads the envelope."""
    log.info(
        "%s: from=<%s>, size=%d, nrcpt=%d (queue active)",
        envelope.queue_id,
        for_log(envelope.sender),
        envelope.size,
        len(envelope.recipients),
        extra={
            "queue_id": envelope.queue_id,
            "from": for_log(envelope.sender),
            "size": envelope.size,
            "nrcpt": len(envelope.recipients),
        },
    )


def postfix_delays(received_at: float, started: float, now: float) -> str:
    """Postfix's ``delays=a/b/c/d``, approximated: ``a`` is everything before this delivery
    agent took the message (Postfix's a and b: receipt, the queue, the queue manager), ``b``
    is 0, ``c`` (connection setup) is 0 because it is not measured apart from ``d``, and
    ``d`` is this agent's whole time with the message (reading it, DNS, connecting, TLS,
    transmission)."""
    parts = (max(0.0, started - received_at), 0.0, 0.0, max(0.0, now - started))
    return "/".join(_seconds(part) for part in parts)


def _seconds(value: float) -> str:
    """Postfix's way with delays: "0" when nothing was measured, two decimals below 10 s."""
    if value == 0:
        return "0"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


class DomainLabels:
    """The domain label of the per-domain delivery metrics, with bounded cardinality: the
    first ``top`` domains this process sees are named, all later ones are 'other'."""

    def __init__(self, top: int) -> None:
        self.top = top
        self._seen: set[str] = set()

    def label(self, address: str) -> str:
        domain = address.rpartition("@")[2].lower()
        seen = self._seen
        if domain in seen:
            return domain
        if len(seen) < self.top:
            seen.add(domain)
            return domain
        return "other"
