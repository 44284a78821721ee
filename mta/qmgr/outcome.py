"""Applying the result of one delivery attempt to the queue (the queue manager's decision).

Order matters for crash safety:

1. a bounce for newly failed recipients is made durable in ``incoming/`` first;
2. then the message's state (which recipients are done, attempts, next try) is saved
   atomically — or, when every recipient is done, the message and its state are removed;
3. then the message file moves from ``active/`` to ``deferred/`` with its mtime set to the
   next try time (Postfix's trick), where the scheduler finds it.

A crash between any two steps repeats work (a second bounce, a second delivery to a
recipient the state had not yet recorded), it never loses a recipient.

Retry timing: ``min_backoff * 2**(attempts-1)`` capped at ``max_backoff``, times a random
factor in [0.8, 1.2] so that retries of a burst spread out; after ``max_lifetime`` seconds in
the queue, recipients still pending fail with 4.4.7 and are bounced.

Notifications (notify.py says which are wanted): a bounce honours NOTIFY; success notices
are queued with the bounce (step 1); the one delay warning (``delivery.delay_warning_time``)
is queued before the state that records it (``delay_warned``) is saved, so a crash between
the two sends it twice, never not at all, and a restart never repeats a recorded one.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from mta import metrics
from mta.config import Config
from mta.qmgr import notify
from mta.qmgr.dsn import Notice
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id, queue_id_time
from mta.queue.msgfile import MessageFile
from mta.queue.results import RecipientResult
from mta.queue.spool import Spool
from mta.queue.state import MessageState, RecipientState, StateStore

__all__ = ["Outcome", "apply_results", "backoff"]

log = logging.getLogger("mta.qmgr")


@dataclass(frozen=True, slots=True)
class Outcome:
    queue_id: str
    removed: bool
    next_try: float = 0.0
    bounce_id: str = ""


def backoff(attempts: int, config: Config, rng: random.Random | None = None) -> float:
    delivery = config.delivery
    base = min(delivery.max_backoff, delivery.min_backoff * 2 ** max(attempts - 1, 0))
    return base * (rng or random).uniform(0.8, 1.2)


def _initial_state(message: MessageFile) -> MessageState:
    return MessageState(
        queue_id=message.envelope.queue_id,
        recipients=[RecipientState(address=r.address) for r in message.envelope.recipients],
    )


def apply_results(
    config: Config,
    spool: Spool,
    states: StateStore,
    message: MessageFile,
    results: list[RecipientResult],
    now: float | None = None,
) -> Outcome:
    """Record one attempt of ``message`` (in ``active/``); return what became of it."""
    now = time.time() if now is None else now
    queue_id = message.envelope.queue_id
    state = states.load(queue_id) or _initial_state(message)
    by_address = {r.address: r for r in state.recipients}
    newly_failed: list[RecipientResult] = []
    newly_sent: list[RecipientResult] = []  # with a success notice due (NOTIFY=SUCCESS)
    for result in results:
        entry = by_address.get(result.address)
        if entry is None or entry.status != "pending":
            continue
        entry.dsn, entry.reply, entry.relay = result.dsn, result.reply, result.relay
        if result.status in ("sent", "failed"):
            entry.status = result.status
            if result.status == "failed":
                newly_failed.append(result)
            elif result.success_action:
                newly_sent.append(result)
        else:
            state.last_error = result.reply
    state.attempts += 1
    state.first_attempt = state.first_attempt or now
    state.last_attempt = now
    if state.pending() and now - queue_id_time(queue_id) >= config.delivery.max_lifetime:
        newly_failed.extend(_expire(state, queue_id))
    bounce_id = _bounce(config, spool, message, newly_failed, now) if newly_failed else ""
    if newly_sent:
        _notify_success(config, spool, message, newly_sent, now)
    if state.pending() and _delay_warning_due(config, state, now):
        state.delay_warned = True
        _warn_delay(config, spool, message, state, now)
    if not state.pending():
        _remove(spool, states, queue_id)
        return Outcome(queue_id, removed=True, bounce_id=bounce_id)
    next_try = now + backoff(state.attempts, config)
    state.next_try = next_try
    states.save(state)
    spool.defer(queue_id, "active", until=next_try)
    return Outcome(queue_id, removed=False, next_try=next_try, bounce_id=bounce_id)


def _expire(state: MessageState, queue_id: str) -> list[RecipientResult]:
    expired = []
    for entry in state.recipients:
        if entry.status == "pending":
            entry.status = "failed"
            reason = entry.reply or "no attempt succeeded"
            result = RecipientResult(
                address=entry.address,
                status="failed",
                dsn="4.4.7",
                reply=f"message expired in the queue; last error: {reason}",
                relay=entry.relay or "none",
            )
            log.info(
                "%s: to=<%s>, relay=%s, dsn=4.4.7, status=expired, returned to sender (%s)",
                queue_id,
                entry.address,
                result.relay,
                reason,
            )
            expired.append(result)
    return expired


def _remove(spool: Spool, states: StateStore, queue_id: str) -> None:
    spool.remove("active", queue_id)
    states.remove(queue_id)
    metrics.MESSAGES_DELIVERED.inc()
    log.info("%s: removed", queue_id, extra={"queue_id": queue_id})


def _bounce(
    config: Config,
    spool: Spool,
    message: MessageFile,
    failed: list[RecipientResult],
    now: float,
) -> str:
    """Queue a DSN to the sender for ``failed``; return its queue ID ('' if none is due)."""
    envelope = message.envelope
    if not envelope.sender or envelope.is_bounce:
        for result in failed:
            log.info(
                "%s: to=<%s>: undeliverable and the sender is <>; bounce dropped",
                envelope.queue_id,
                result.address,
            )
        return ""
    wanted = [r for r in failed if notify.wants(envelope, r.address, "FAILURE")]
    for result in failed:
        if result not in wanted:  # RFC 3461 §4.1: NOTIFY=NEVER (or without FAILURE)
            log.info(
                "%s: to=<%s>: undeliverable; no bounce (NOTIFY without FAILURE)",
                envelope.queue_id,
                result.address,
            )
    if not wanted:
        return ""
    bounce_id = _queue_report(
        config, spool, message, notify.notices(envelope, wanted, "failed"), now
    )
    metrics.BOUNCES.inc()
    log.info("%s: sender non-delivery notification: %s", envelope.queue_id, bounce_id)
    return bounce_id


def _queue_report(
    config: Config,
    spool: Spool,
    message: MessageFile,
    items: list[Notice],
    now: float,
    retry_until: float | None = None,
) -> str:
    envelope = message.envelope
    arrival = envelope.received_at or queue_id_time(envelope.queue_id)
    data = notify.make_report(config.fqdn, message, items, arrival, now, retry_until)
    # A sender (or headers) that needed SMTPUTF8 to arrive needs it to be written back to.
    return inject(
        spool,
        sender="",
        recipient=envelope.sender,
        data=data,
        is_bounce=True,
        smtputf8=envelope.smtputf8,
        # RFC 8689 §5: a REQUIRETLS message's notification goes with REQUIRETLS too (and
        # with the original's headers only, as RET=HDRS, whatever RET said: notify.py)
        require_tls="REQUIRETLS" in envelope.mail_params,
    )


def _notify_success(
    config: Config, spool: Spool, message: MessageFile, sent: list[RecipientResult], now: float
) -> None:
    """RFC 3461 §4.1 NOTIFY=SUCCESS: one report per action (delivered, relayed)."""
    envelope = message.envelope
    if not envelope.sender or envelope.is_bounce:
        return
    for action in ("delivered", "relayed"):
        results = [r for r in sent if r.success_action == action]
        if results:
            report_id = _queue_report(
                config, spool, message, notify.notices(envelope, results, action), now
            )
            metrics.DSN_NOTICES.labels(action).inc()
            log.info("%s: sender delivery status notification: %s", envelope.queue_id, report_id)


def _delay_warning_due(config: Config, state: MessageState, now: float) -> bool:
    warn_after = config.delivery.delay_warning_time
    return (
        warn_after > 0
        and not state.delay_warned
        and now - queue_id_time(state.queue_id) >= warn_after
    )


def _warn_delay(
    config: Config, spool: Spool, message: MessageFile, state: MessageState, now: float
) -> None:
    """The one "delayed" report (Postfix's delay_warning_time) for the recipients still
    deferred whose NOTIFY asks for it (or who gave none); the caller marks it sent."""
    envelope = message.envelope
    if not envelope.sender or envelope.is_bounce:
        return
    delayed = [
        RecipientResult(
            address=entry.address,
            status="deferred",
            dsn=entry.dsn or "4.0.0",
            reply=entry.reply or state.last_error or "delivery temporarily suspended",
            relay=entry.relay or "none",
        )
        for entry in state.recipients
        if entry.status == "pending" and notify.wants(envelope, entry.address, "DELAY")
    ]
    if not delayed:
        return
    retry_until = queue_id_time(envelope.queue_id) + config.delivery.max_lifetime
    items = notify.notices(envelope, delayed, "delayed")
    report_id = _queue_report(config, spool, message, items, now, retry_until)
    metrics.DSN_NOTICES.labels("delayed").inc()
    log.info("%s: sender delay notification: %s", envelope.queue_id, report_id)


def inject(
    spool: Spool,
    *,
    sender: str,
    recipient: str,
    data: bytes,
    is_bounce: bool,
    smtputf8: bool = False,
    require_tls: bool = False,
) -> str:
    """Queue a locally generated message durably into ``incoming/``; return its queue ID."""
    queue_id = new_queue_id()
    writer = spool.new_message(queue_id)
    try:
        writer.write(data)
        writer.finish(
            Envelope(
                queue_id=queue_id,
                sender=sender,
                recipients=[Recipient(address=recipient)],
                received_at=time.time(),
                size=len(data),
                body_type="8BITMIME",
                smtputf8=smtputf8,
                is_bounce=is_bounce,
                mail_params={"REQUIRETLS": None} if require_tls else {},
            )
        )
        writer.persist(sync=True)
        spool.move(queue_id, "tmp", "incoming")
    except OSError:
        writer.discard()
        raise
    spool.sync("incoming")
    return queue_id
