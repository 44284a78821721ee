"""The asyncio Protocol that connects one client transport to one ServerSession.

It is the policy and I/O half of the receive path: it feeds bytes to the sans-I/O session,
answers the session's decisions (relay control, opening the spool file, the durable commit)
and writes the replies of a pipelined batch with one ``write``.  DATA is streamed into the
spool file as it arrives; the ``250`` is sent only when the group committer reports the
message durable in ``incoming/``.

Flow control: reading pauses while the transport's write buffer is full or while unread
input piles up behind a pending decision (a client pipelining faster than we commit), and
resumes when the decision is made.

Deadlines: a client that trickles bytes must not keep a session forever, so besides the
idle timeout (no byte for ``idle_timeout``, Postfix's per-read ``smtpd_timeout``) there are
deadlines that bytes do not push back:

* a *request* (a command line, or the message content after ``354``) must be complete
  within ``command_timeout`` of its first byte, plus one second per ``min_data_rate``
  octets received for it.  This is Postfix 3.7's ``smtpd_per_request_deadline`` with
  ``smtpd_min_data_rate``: a command line (≤ 2 KiB) gets its 300 s, a big message the time
  a 500 B/s link needs, and a client sending one byte every 10 s is cut off either way.
  A request ends with the reply to it, which is how this layer sees where command lines end
  without looking into the session;
* a whole session must end within ``session_timeout``.

One timer per connection, re-armed lazily: a packet only records its time and length; the
timer, when it fires, works out the earliest deadline and sleeps again until then.  Only a
new request whose deadline comes before the armed time (a command timeout shorter than the
idle one) and a change of stress mode move the timer early.  While the session waits for
our own decision (the group commit) no deadline is held against the client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from mta.policy.limits import Refusal, Undecided
from mta.protocol import replies
from mta.protocol.events import (
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    MailFrom,
    RcptTo,
    StartTls,
    TransactionReset,
)
from mta.protocol.printable import for_log
from mta.protocol.session import ServerSession, State
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.spool import MessageWriter
from mta.server.policy import declared_size, storage_refusal
from mta.server.trace import protocol_name, received_header

if TYPE_CHECKING:
    from mta.server.context import WorkerContext

__all__ = ["ConnectCheck", "SMTPProtocol"]

log = logging.getLogger("mta.smtpd")

_MAX_UNREAD = 1 << 20  # pause reading beyond this much unprocessed input
_NEVER = float("inf")  # the request deadline while no request is in progress


# A check of the connect stage: None lets the client be greeted, bytes refuse it with them.
ConnectCheck = Callable[["SMTPProtocol"], Awaitable[bytes | None]]


class SMTPProtocol(asyncio.Protocol):
    """One inbound SMTP connection."""

    def __init__(self, ctx: WorkerContext) -> None:
        # per-connection state
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.session = ServerSession(ctx.limits, ctx.parser, greet=False)
        self.client_ip = ""
        self.limited_as: str | None = None  # the address its connection counts for (limits)
        self._deciding: asyncio.Task[None] | None = None  # a limit check in flight
        # before the greeting (see _open): input held back, and the task deciding it
        self._early: bytearray | None = None
        self._opening: asyncio.Task[None] | None = None
        # deadlines (loop time; see the module docstring)
        self.opened_at = 0.0
        self.last_activity = 0.0
        self.request_started: float | None = None  # first byte of the request in progress
        self._request_bytes = 0  # self._bytes_in when it started
        self._bytes_in = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._reading_paused = False
        self._writing_paused = False
        # per-message state
        self.writer: MessageWriter | None = None
        self._write_failed = False
        self._received_at = 0.0

    # ----- transport callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport reads and writes: an asyncio.Transport (uvloop's
        # TCPTransport has that interface without subclassing it, hence no isinstance).
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        ctx = self.ctx
        self.session.limits = ctx.leniency.limits_for(self.client_ip)
        sock = transport.get_extra_info("socket")
        refusal = ctx.admit(self, sock.fileno() if sock is not None else -1)
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self.opened_at = self.last_activity = now = ctx.loop.time()
        self._arm_timer(min(now + ctx.idle_timeout, self._session_deadline()))
        if ctx.connect_checks:
            self._early = bytearray()
            self._opening = ctx.loop.create_task(self._open())
        else:
            self._greet()

    def _greet(self) -> None:
        self.session.greet()
        if self.ctx.shutting_down:
            self.session.request_shutdown()
        early, self._early = self._early, None
        if early:  # pipelined before the greeting (a check that allows it let it stay)
            self.data_received(bytes(early))
        else:
            self._flush()

    async def _open(self) -> None:
        """The connect stage (DESIGN.md §7), before the greeting: each check in
        ``ctx.connect_checks`` may refuse the connection with a reply (``421``, ``554``)
        instead of the greeting.  Input that arrives meanwhile waits in ``_early``."""
        for check in self.ctx.connect_checks:
            refusal = await check(self)
            if self.transport is None:
                return
            if refusal is not None:
                self.session.refuse(refusal)
                self._flush()
                return
        self._opening = None
        self._greet()

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # not greeted yet: kept for the checks (see _open)
            self._early += data
            return
        self.last_activity = now = self.ctx.loop.time()
        if self.request_started is None:  # the first byte of a command line or message
            self._start_request(now)
        self._bytes_in += len(data)
        self.session.receive_data(data)
        self._drive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
        if self._opening is not None:
            self._opening.cancel()
        if self.writer is not None and not self.session.waiting:
            self._discard_message()  # a client that vanishes mid-DATA leaves nothing behind
        self.ctx.connection_closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # ----- driving the session ----------------------------------------------------------

    def _drive(self) -> None:
        session = self.session
        while (event := session.next_event()) is not None:
            kind = type(event)
            if kind is DataChunk:
                self._append(event.data)  # type: ignore[union-attr]
            elif kind is RcptTo:
                self._decide_recipient(event.recipient)  # type: ignore[union-attr]
            elif kind is MailFrom:
                self._decide_mail(event)  # type: ignore[arg-type]
            elif kind is DataStart:
                self._open_message()
            elif kind is DataEnd:
                self._commit_message()
            elif kind is DataAborted:
                self.ctx.count_reject(event.reason)  # type: ignore[union-attr]
                self._discard_message()
            elif kind is TransactionReset:
                self._discard_message()
            elif kind is StartTls:
                self._start_tls()
                return
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        out = self.session.data_to_send()
        if out:
            transport.write(out)
            # A reply ends the request it answers; what is left over starts the next one.
            self.request_started = None
            if self.session.buffered:
                self._start_request(self.ctx.loop.time())
        if self.session.closing:
            transport.close()
            return
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        pause = self._writing_paused or (
            self.session.waiting and self.session.buffered > _MAX_UNREAD
        )
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # ----- decisions --------------------------------------------------------------------

    def _start_tls(self) -> None:
        """Answer 220, then hand the connection to TLS; nothing is read until it is done."""
        ctx = self.ctx
        if ctx.tls is None or self.transport is None:
            self.session.reject(replies.TLS_UNAVAILABLE)
            self._drive()
            return
        self.session.accept()
        self._flush()
        ctx.loop.create_task(self._handshake(ctx.tls))

    async def _handshake(self, context: ssl.SSLContext) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            tls_transport = await self.ctx.loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.ctx.idle_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake with [%s] failed: %s", self.client_ip, exc)
            transport.abort()
            return
        if tls_transport is None:
            return
        self.transport = tls_transport
        self.ctx.stats.tls_sessions += 1
        self._drive()

    def _decide_mail(self, mail: MailFrom) -> None:
        """MAIL: 452 4.3.1 while the spool lacks room for the transaction (Postfix's
        queue_minfree, policy.py), so that a client is not sent to DATA only to get 451."""
        declared = declared_size(mail.params)
        refusal = storage_refusal(self.ctx.space, declared)
        if refusal is None:
            self._limit_mail(mail)
            return
        self.ctx.mail_refused_for_space(self.client_ip, mail.sender, declared)
        self.session.reject(refusal)

    def _decide_recipient(self, recipient: str) -> None:
        if self.ctx.policy.allows(self.client_ip, recipient):
            self._accept_recipient(recipient)
        else:
            self.ctx.count_reject("relay_denied")
            log.info(
                "reject: RCPT from [%s]: 554 5.7.1 <%s>: Relay access denied",
                self.client_ip,
                for_log(recipient),
            )
            self.session.reject(replies.RELAY_DENIED)

    # Per-client limits (mta/policy/limits.py): asked after the other checks said yes, so a
    # refused command costs no count; the session waits for the answer (never the loop).

    def _limit_mail(self, mail: MailFrom) -> None:
        """MAIL passed the other checks: the message rate decides."""
        limiter = self.ctx.client_limiter
        verdict = limiter.message_now(self.client_ip)
        if isinstance(verdict, Undecided):
            self._await_limit(limiter.message(self.client_ip), None)
        else:
            self._answer_now(verdict, None)

    def _accept_recipient(self, recipient: str) -> None:
        """RCPT passed the other checks: the recipient rate decides."""
        limiter = self.ctx.client_limiter
        verdict = limiter.recipient_now(self.client_ip)
        if isinstance(verdict, Undecided):
            self._await_limit(limiter.recipient(self.client_ip), recipient)
        else:
            self._answer_now(verdict, recipient)

    def _await_limit(self, verdict: Awaitable[Refusal | None], recipient: str | None) -> None:
        """Answer the pending MAIL (``recipient`` None) or RCPT once the limiter has."""
        self._deciding = self.ctx.loop.create_task(self._answer_limit(verdict, recipient))

    async def _answer_limit(self, asked: Awaitable[Refusal | None], recipient: str | None) -> None:
        verdict = await asked
        self._deciding = None
        if self.transport is None:
            return
        self._answer_now(verdict, recipient)
        self._drive()

    def _answer_now(self, verdict: Refusal | None, recipient: str | None) -> None:
        if verdict is None:
            self.session.accept()
        else:
            self._log_limit(verdict, recipient)
            self.session.reject(verdict.reply)

    def _log_limit(self, refusal: Refusal, recipient: str | None) -> None:
        session = self.session
        detail = f"from=<{for_log(session.sender or '')}>"
        if recipient is not None:
            detail += f" to=<{for_log(recipient)}>"
        proto = "ESMTP" if session.esmtp else "SMTP"
        detail += f" proto={proto} helo=<{for_log(session.helo)}>"
        stage = "MAIL" if recipient is None else "RCPT"
        self.ctx.limit_refused(refusal, self.client_ip, stage, detail)

    def _open_message(self) -> None:
        ctx = self.ctx
        queue_id = new_queue_id()
        self._received_at = time.time()
        session = self.session
        header = received_header(
            helo=session.helo,
            client_ip=self.client_ip,
            hostname=ctx.limits.hostname,
            protocol=protocol_name(session.esmtp, session.tls, "SMTPUTF8" in session.mail_params),
            queue_id=queue_id,
            recipients=[address for address, _ in session.recipients],
            date=ctx.dates(self._received_at),
        )
        try:
            self.writer = ctx.spool.new_message(queue_id)
            self.writer.write(header)
        except OSError as exc:
            log.error("cannot create queue file %s: %s", queue_id, exc)
            self._discard_message()
            session.reject(replies.LOCAL_ERROR)
            return
        self._write_failed = False
        session.accept()

    def _append(self, data: bytes) -> None:
        writer = self.writer
        if writer is None or self._write_failed:
            return
        try:
            writer.write(data)
        except OSError as exc:  # disk full: keep reading to the end, then answer 451
            log.error("%s: queue file write error: %s", writer.queue_id, exc)
            self._write_failed = True

    def _commit_message(self) -> None:
        writer = self.writer
        if writer is None or self._write_failed:
            self._discard_message()
            self.session.reject(replies.LOCAL_ERROR)
            return
        envelope = self._envelope(writer)
        try:
            writer.finish(envelope)
        except OSError as exc:
            log.error("%s: queue file write error: %s", writer.queue_id, exc)
            self._discard_message()
            self.session.reject(replies.LOCAL_ERROR)
            return
        self.ctx.committer.submit(writer, lambda error: self._committed(writer, envelope, error))

    def _committed(self, writer: MessageWriter, envelope: Envelope, error: OSError | None) -> None:
        """Runs on the loop once the group commit that carried this message is done."""
        self.writer = None
        if error is not None:
            writer.discard()
            self.session.reject(replies.LOCAL_ERROR)
        else:
            self.ctx.message_received(envelope)
            self.session.accept(replies.queued(envelope.queue_id))
        if self.transport is not None:
            self._drive()

    def _envelope(self, writer: MessageWriter) -> Envelope:
        session = self.session
        params = session.mail_params
        return Envelope(
            queue_id=writer.queue_id,
            sender=session.sender or "",
            recipients=[Recipient(address=a, params=p) for a, p in session.recipients],
            mail_params=params,
            client_address=self.client_ip,
            client_helo=session.helo,
            received_at=self._received_at,
            size=writer.length,
            body_type=(params.get("BODY") or "7BIT").upper(),
            smtputf8="SMTPUTF8" in params,
        )

    def _discard_message(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.discard()

    # ----- deadlines -------------------------------------------------------------------

    def _start_request(self, now: float) -> None:
        self.request_started = now
        self._request_bytes = self._bytes_in
        due = now + self.ctx.command_timeout
        if due < self._timer_due:  # only when the command timeout is the shorter one
            self.rearm_timer()

    def _session_deadline(self) -> float:
        return self.opened_at + self.ctx.config.smtp.session_timeout

    def _deadlines(self) -> tuple[float, float, float]:
        """When the idle, request and session deadlines fall (loop time)."""
        ctx = self.ctx
        idle = self.last_activity + ctx.idle_timeout
        started = self.request_started
        request = _NEVER
        if started is not None:
            credit = (self._bytes_in - self._request_bytes) / ctx.config.smtp.min_data_rate
            request = started + ctx.command_timeout + credit
        return idle, request, self._session_deadline()

    def _arm_timer(self, due: float) -> None:
        self._timer_due = due
        self._timer = self.ctx.loop.call_at(due, self._check_deadlines)

    def rearm_timer(self) -> None:
        """The deadlines moved earlier (a short command timeout, stress mode): wake then."""
        if self._timer is None or self.transport is None:
            return
        self._timer.cancel()
        self._arm_timer(min(self._deadlines()))

    def _check_deadlines(self) -> None:
        """Re-armed lazily: one timer per connection, not one per packet."""
        self._timer = None
        if self.transport is None:
            return
        now = self.ctx.loop.time()
        idle, request, session = self._deadlines()
        due = min(idle, request, session)
        if now < due:
            self._arm_timer(due)
            return
        if self.session.waiting:  # we are the slow one (a commit is running), not the client
            self._arm_timer(now + 1.0)
            return
        which = "session" if now >= session else "request" if now >= request else "idle"
        if which == "request" and self.session.state is State.DATA:
            which = "data"
        log.info("timeout (%s) after %s from [%s]", which, self.session.state.value, self.client_ip)
        self.ctx.count_reject(f"timeout_{which}")
        self.session.timeout()
        self._discard_message()
        self._flush()

    def shutdown(self) -> None:
        """The worker is stopping: idle sessions get 421 now, busy ones after their message."""
        self.session.request_shutdown()
        self._flush()
