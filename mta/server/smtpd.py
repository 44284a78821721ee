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

from mta.policy.auth import sender_refusal
from mta.policy.decide import Facts, recipient_stage
from mta.policy.limits import Refusal, Undecided
from mta.protocol import proxy, replies
from mta.protocol.events import (
    AuthRequest,
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
from mta.protocol.session import ServerSession
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.spool import MessageWriter
from mta.server import tls
from mta.server.message_id import MessageIdScanner
from mta.server.policy import declared_size, in_networks, storage_refusal
from mta.server.trace import protocol_name, received_header

if TYPE_CHECKING:
    from mta.policy.dnsbl import Listing
    from mta.server.context import WorkerContext
    from mta.server.listeners import ListenerState

__all__ = ["ConnectCheck", "SMTPProtocol"]

log = logging.getLogger("mta.smtpd")

_MAX_UNREAD = 1 << 20  # pause reading beyond this much unprocessed input
_NEVER = float("inf")  # the request deadline while no request is in progress


# A check of the connect stage: None lets the client be greeted, bytes refuse it with them.
ConnectCheck = Callable[["SMTPProtocol"], Awaitable[bytes | None]]


class SMTPProtocol(asyncio.Protocol):
    """One inbound SMTP connection."""

    def __init__(self, ctx: WorkerContext, listener: ListenerState | None = None) -> None:
        # per-connection state
        self.ctx = ctx
        self.listener = listener = listener or ctx.listeners[0]
        self.transport: asyncio.Transport | None = None
        self.session = ServerSession(listener.limits, ctx.parser, greet=False)
        self.client_ip = ""  # the client's: from the socket, or from a PROXY header
        self.client_port = 0
        self.proxied_by = ""  # the balancer's address when a PROXY header gave the client's
        self._auth_task: asyncio.Task[None] | None = None  # verifying an AUTH (_authenticate)
        self.limited_as: str | None = None  # the address its connection counts for (limits)
        self._deciding: asyncio.Task[None] | None = None  # a limit check in flight
        # before the greeting (see _open): input held back, and the task deciding it
        self._early: bytearray | None = None
        self._opening: asyncio.Task[None] | None = None
        self._connect_logged = False  # "disconnect from" answers a logged "connect from"
        self._message_id = MessageIdScanner()  # of the message being received
        self._input_waiter: asyncio.Future[None] | None = None  # _open waits for bytes
        self._handshaking = False  # a TLS handshake is under way (see _tls_handshake)
        # deadlines (loop time; see the module docstring)
        self.opened_at = 0.0
        self.last_activity = 0.0
        self.request_started: float | None = None  # first byte of the request in progress
        self._request_bytes = 0  # self._bytes_in when it started
        self._bytes_in = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._reading_paused = False
        self._client_done = False  # the client half-closed: answer what it sent, then close
        self._writing_paused = False
        # the DNSBL lookup started at connect (connect_access.py), applied at RCPT
        self.dnsbl_lookup: asyncio.Task[Listing] | None = None
        self._rcpt_waiting: asyncio.Task[None] | None = None  # a RCPT waiting for it
        # per-message state
        self.hold = False  # an access table said HOLD: the message goes to hold/
        self.discard = False  # an access table said DISCARD: 250, then dropped
        self.writer: MessageWriter | None = None
        self._write_failed = False
        self._received_at = 0.0

    # ----- transport callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport reads and writes: an asyncio.Transport (uvloop's
        # TCPTransport has that interface without subclassing it, hence no isinstance).
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip, self.client_port = peer[0], peer[1]
        ctx, listener = self.ctx, self.listener
        self.session.limits = listener.leniency.limits_for(self.client_ip)
        sock = transport.get_extra_info("socket")
        refusal = ctx.admit(self, sock.fileno() if sock is not None else -1)
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self.opened_at = self.last_activity = now = ctx.loop.time()
        self._arm_timer(min(now + ctx.idle_timeout, self._session_deadline()))
        if ctx.connect_checks or listener.proxy_networks or listener.implicit_tls:
            self._early = bytearray()
            self._opening = ctx.loop.create_task(self._open())
        else:
            self._log_connect()
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
        """The connect stage (DESIGN.md §7), before the greeting: on a listener with
        ``proxy_protocol`` the PROXY header first (it says who the client is), then on an
        implicit-TLS one the handshake, then each check in ``ctx.connect_checks``, which may
        refuse the connection with a reply (``421``, ``554``) instead of the greeting.
        Input that arrives meanwhile waits in ``_early``."""
        listener = self.listener
        if listener.proxy_networks and not await self._read_proxy_header():
            return
        self._log_connect()
        if listener.implicit_tls and not await self._implicit_tls():
            return
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

    async def _read_proxy_header(self) -> bool:
        """The PROXY header (haproxy's spec; :mod:`mta.protocol.proxy`), complete within
        ``smtp.proxy_timeout`` (Postfix's postscreen_upstream_proxy_timeout), and only from
        ``smtp.proxy_networks``; from then on its source is the client.  False: the
        connection was closed without a greeting (logged, counted by reason)."""
        balancer, early = self.client_ip, self._early
        assert early is not None
        if not in_networks(balancer, self.listener.proxy_networks):
            return self._drop_proxy("proxy_untrusted", "client not in smtp.proxy_networks")
        timeout = self.ctx.config.smtp.proxy_timeout
        deadline = self.ctx.loop.time() + timeout
        while True:
            try:
                header = proxy.parse(early)
            except proxy.ProxyError as exc:
                return self._drop_proxy("proxy_malformed", exc.reason)
            if header is not None:
                break
            if not await self._more_input(deadline):
                return self._drop_proxy("proxy_timeout", f"no header within {timeout:g}s")
        del early[: header.length]  # what follows is the client's (commands, a ClientHello)
        if header.source is not None:  # LOCAL, UNKNOWN: the connection's own endpoints
            self.client_ip, self.client_port = header.source
            self.proxied_by = balancer
            self.session.limits = self.listener.leniency.limits_for(self.client_ip)
        return True

    async def _more_input(self, deadline: float) -> bool:
        """Wait for the next bytes before ``deadline`` (loop time); False if none came."""
        loop = self.ctx.loop
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        self._input_waiter = waiter = loop.create_future()
        try:
            await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            return False
        finally:
            self._input_waiter = None
        return True

    def _drop_proxy(self, reason: str, detail: str) -> bool:
        """Close without a word: a client that is not a balancer must not learn more."""
        self.ctx.count_reject(reason)
        log.warning(
            "PROXY header from [%s]:%d on %s refused: %s",
            self.client_ip,
            self.client_port,
            self.listener.name,
            detail,
        )
        if self.transport is not None:
            self.transport.close()
        return False

    def _log_connect(self) -> None:
        via = f" via [{self.proxied_by}]" if self.proxied_by else ""
        log.info(
            "connect from unknown[%s]%s on %s",
            self.client_ip,
            via,
            self.listener.name,
            extra={"client": self.client_ip},
        )
        self._connect_logged = True

    async def _implicit_tls(self) -> bool:
        """RFC 8314 §3.3: TLS from the first octet (after a PROXY header), then the greeting;
        False if the handshake failed (logged, closed).  STARTTLS is then not offered."""
        early, context = self._early, self.listener.tls
        assert early is not None and context is not None
        pending = bytes(early)
        early.clear()
        if not await self._tls_handshake(context, pending):
            return False
        self.session.tls = True  # EHLO, AUTH and the Received: header see it
        return True

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # not greeted yet: kept for the checks (see _open)
            self._early += data
            transport = self.transport
            if len(self._early) > _MAX_UNREAD and not self._reading_paused and transport:
                self._reading_paused = True  # bounded (access.greet_pause may last 60 s)
                transport.pause_reading()  # _greet's first _flush resumes it
            waiter = self._input_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
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
        if self._opening is not None and not self._handshaking:
            self._opening.cancel()  # (a handshake in progress fails by itself, and is logged)
        if self._auth_task is not None:
            self._auth_task.cancel()
        if self.dnsbl_lookup is not None:
            self.dnsbl_lookup.cancel()
        if self.writer is not None and not self.session.waiting:
            self._discard_message()  # a client that vanishes mid-DATA leaves nothing behind
        if self._connect_logged:
            log.info(
                "disconnect from unknown[%s]", self.client_ip, extra={"client": self.client_ip}
            )
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
            elif kind is AuthRequest:
                self._decide_auth(event)  # type: ignore[arg-type]
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
        if self.session.closing or (self._client_done and not self.session.waiting):
            transport.close()
            return
        self._update_reading()

    def eof_received(self) -> bool | None:
        """The client sends no more (a half-close: ``nc -N``, a sendmail -bs relay, a client
        that shuts down its side after QUIT).  What it sent is still answered, a message
        being made durable included (its 250 is a promise the client must hear); then the
        connection is closed (``_flush``), as Postfix's smtpd does.  Before the greeting,
        and under TLS (which cannot half-close), the connection just ends."""
        if self._early is not None or self.transport is None or self.session.tls:
            return None
        self._client_done = True
        self._drive()
        return True

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
        context = self.listener.tls
        if context is None or self.transport is None:
            self.session.reject(replies.TLS_UNAVAILABLE)
            self._drive()
            return
        self.session.accept()
        self._flush()
        if self.transport is not None:
            self.transport.pause_reading()  # the next bytes are TLS's (tls.start_tls)
            self.ctx.loop.create_task(self._starttls_handshake(context))

    async def _starttls_handshake(self, context: ssl.SSLContext) -> None:
        if await self._tls_handshake(context):
            self._drive()

    async def _tls_handshake(self, context: ssl.SSLContext, early: bytes = b"") -> bool:
        """The server side of the handshake, bounded like Postfix's smtpd_starttls_timeout
        (the idle timeout, shorter under stress); False if it failed (logged, closed)."""
        transport = self.transport
        if transport is None:
            return False
        self._handshaking = True
        try:
            tls_transport = await tls.start_tls(
                self.ctx.loop, transport, self, context, early, self.ctx.idle_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._tls_failed(transport, str(exc) or type(exc).__name__)
            return False
        finally:
            self._handshaking = False
        if tls_transport.is_closing():
            self._tls_failed(transport, "lost connection")
            return False
        self.transport = tls_transport
        self.ctx.stats.tls_sessions += 1
        self._log_tls(tls_transport.get_extra_info("ssl_object"))
        return True

    def _log_tls(self, tls: ssl.SSLObject | None) -> None:
        """Postfix's line; "Anonymous": no client certificate is asked for."""
        cipher = tls.cipher() if tls is not None else None
        name, bits = (cipher[0], cipher[2]) if cipher else ("unknown", 0)
        log.info(
            "Anonymous TLS connection established from unknown[%s]: %s with cipher %s (%d/%d bits)",
            self.client_ip,
            tls.version() if tls is not None else "TLS",
            name,
            bits,
            bits,
            extra={"client": self.client_ip},
        )

    def _tls_failed(self, transport: asyncio.Transport, detail: str) -> None:
        log.info("SSL_accept error from [%s] on %s: %s", self.client_ip, self.listener.name, detail)
        self.ctx.count_reject("tls_handshake_failed")
        transport.abort()
        # uvloop's TLS protocol reports a failed handshake to us (connection_lost, which
        # clears self.transport); should a loop not, the session ends here all the same.
        self._opening = None
        if self.transport is not None:
            self.connection_lost(None)

    def _decide_auth(self, request: AuthRequest) -> None:
        """AUTH: verified off the loop (mta.policy.auth); the session waits meanwhile."""
        self._auth_task = self.ctx.loop.create_task(self._authenticate(request))

    async def _authenticate(self, request: AuthRequest) -> None:
        ctx = self.ctx
        authenticator = ctx.authenticator
        good = authenticator is not None and await authenticator.verify(request)
        if good:
            ctx.auth_succeeded(self.client_ip, request)
            self.session.accept()
        else:
            # Slowed down (Postfix's smtpd_error_sleep_time for AUTH), then counted.
            await asyncio.sleep(ctx.config.auth.failure_delay)
            ctx.auth_failed(self.client_ip, request)
            refusal = await ctx.auth_failure_limit(self.client_ip, self.listener.name)
            self.session.reject(refusal or replies.AUTH_FAILED)
        self._auth_task = None
        if self.transport is not None:
            self._drive()

    def _decide_mail(self, mail: MailFrom) -> None:
        """MAIL: an authenticated client only with a sender its login owns (553 5.7.1,
        auth.sender_logins); 452 4.3.1 while the spool lacks room for the transaction
        (Postfix's queue_minfree, policy.py), so that a client is not sent to DATA only to
        get 451."""
        login = self.session.authenticated
        refusal = sender_refusal(self.ctx.sender_logins, login, mail.sender)
        if refusal is not None:
            self.ctx.count_reject("sender_login_mismatch")
            log.info(
                "NOQUEUE: reject: MAIL from unknown[%s]: %s; from=<%s>",
                self.client_ip,
                refusal[:-2].decode("utf-8", "replace"),
                for_log(mail.sender),
            )
            self.session.reject(refusal)
            return
        declared = declared_size(mail.params)
        refusal = storage_refusal(self.ctx.space, declared)
        if refusal is None:
            self.hold = self.discard = False  # a new transaction
            self._limit_mail(mail)
            return
        self.ctx.mail_refused_for_space(self.client_ip, mail.sender, declared)
        self.session.reject(refusal)

    def _decide_recipient(self, recipient: str) -> None:
        """RCPT: the access tables, relay control, DNSBL and valid recipients, decided in
        one place (mta/policy/decide.py).  A DNSBL lookup still running is waited for
        (only then is the decision asynchronous; input waits in the session meanwhile)."""
        lookup = self.dnsbl_lookup
        if lookup is not None and not lookup.done():
            self._rcpt_waiting = self.ctx.loop.create_task(self._decide_after(lookup, recipient))
            return
        self._answer_recipient(recipient)

    async def _decide_after(self, lookup: asyncio.Task[Listing], recipient: str) -> None:
        await asyncio.wait([lookup])
        self._rcpt_waiting = None
        if self.transport is not None:
            self._answer_recipient(recipient)
            self._drive()

    def _answer_recipient(self, recipient: str) -> None:
        ctx, session = self.ctx, self.session
        client = self.client_ip  # read late: a PROXY header may have replaced it
        facts = Facts(
            client_ip=client,
            helo=session.helo,
            sender=session.sender or "",
            recipient=recipient,
            trusted_network=ctx.policy.client_may_relay(client),
            authenticated=session.authenticated,  # AUTH may relay
            dnsbl_zone=self._dnsbl_zone(),
        )
        verdict = recipient_stage(facts, ctx.tables)
        if verdict.reply is None:
            if verdict.note:
                self.hold = self.hold or verdict.hold
                self.discard = self.discard or verdict.discard
                self._log_rcpt(verdict.reason, verdict.note, facts)
            self._accept_recipient(recipient)
            return
        ctx.count_reject(verdict.reason)
        self._log_rcpt("reject", verdict.reply.decode("utf-8", "replace").rstrip(), facts)
        session.reject(verdict.reply)

    def _dnsbl_zone(self) -> str | None:
        lookup = self.dnsbl_lookup
        if lookup is None or lookup.cancelled():
            return None
        error = lookup.exception()
        if error is not None:  # a bug, not DNS trouble (dnsbl.py catches that): not listed
            log.error("dnsbl lookup for [%s] failed: %r", self.client_ip, error)
            self.dnsbl_lookup = None
            return None
        return lookup.result().zone

    def _log_rcpt(self, what: str, text: str, facts: Facts) -> None:
        """``NOQUEUE: reject: RCPT from unknown[ip]: 554 5.7.1 ...; from=<> to=<> proto=
        ESMTP helo=<>``, Postfix's line (client text through for_log)."""
        log.info(
            "NOQUEUE: %s: RCPT from unknown[%s]: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
            what,
            facts.client_ip,
            for_log(text),
            for_log(facts.sender),
            for_log(facts.recipient),
            "ESMTP" if self.session.esmtp else "SMTP",
            for_log(facts.helo),
            extra={
                "client": facts.client_ip,
                "from": for_log(facts.sender),
                "to": for_log(facts.recipient),
                "status": what,
            },
        )

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
        self.ctx.limit_refused(refusal, self.client_ip, stage, detail, self.listener.name)

    def _open_message(self) -> None:
        ctx = self.ctx
        queue_id = new_queue_id()
        self._received_at = time.time()
        session = self.session
        login = session.authenticated
        header = received_header(
            helo=session.helo,
            client_ip=self.client_ip,
            hostname=ctx.limits.hostname,
            protocol=protocol_name(
                session.esmtp, session.tls, "SMTPUTF8" in session.mail_params, login is not None
            ),
            authenticated=login if login and ctx.config.auth.authenticated_header else "",
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
        self._log_client(queue_id)
        self._write_failed = False
        session.accept()

    def _append(self, data: bytes) -> None:
        writer = self.writer
        if writer is None or self._write_failed:
            return
        self._message_id.feed(data)
        try:
            writer.write(data)
        except OSError as exc:  # disk full: keep reading to the end, then answer 451
            log.error("%s: queue file write error: %s", writer.queue_id, exc)
            self._write_failed = True

    def _commit_message(self) -> None:
        writer = self.writer
        if self.discard:  # DISCARD: the client hears success, nothing is kept
            self._discard_message()
            queue_id = writer.queue_id if writer is not None else new_queue_id()
            log.info("%s: discard: message from [%s] (access policy)", queue_id, self.client_ip)
            self.session.accept(replies.queued(queue_id))
            return
        if writer is None or self._write_failed:
            self._discard_message()
            self.session.reject(replies.LOCAL_ERROR)
            return
        envelope = self._envelope(writer)
        self._log_message_id(writer.queue_id)  # before the queue manager can see it
        try:
            if self.hold:  # the queue manager sees it in incoming/ and holds it
                writer.spill()
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
            hold=self.hold,
        )

    def _log_client(self, queue_id: str) -> None:
        """``QID: client=unknown[ip]`` (with the SASL login), as Postfix's smtpd logs when
        a queue file is opened: the line log readers count as a message received."""
        session = self.session
        sasl = ""
        if session.authenticated:
            login = for_log(session.authenticated)
            sasl = f", sasl_method={session.auth_mechanism}, sasl_username={login}"
        log.info(
            "%s: client=unknown[%s]%s",
            queue_id,
            self.client_ip,
            sasl,
            extra={"queue_id": queue_id, "client": self.client_ip},
        )
        self._message_id = MessageIdScanner()

    def _log_message_id(self, queue_id: str) -> None:
        """Postfix's cleanup line (the Message-ID read while receiving: message_id.py)."""
        message_id = for_log(self._message_id.message_id())
        log.info(
            "%s: message-id=<%s>",
            queue_id,
            message_id,
            extra={"service": "cleanup", "queue_id": queue_id, "message_id": message_id},
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
        if self._handshaking:  # bounded by its own timeout; no plaintext 421 in the middle
            self._arm_timer(now + 1.0)
            return
        which = "session" if now >= session else "request" if now >= request else "idle"
        if which == "request" and self.session.receiving_message:
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
