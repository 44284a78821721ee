"""Delivery status notifications, RFC 3464 ``multipart/report``: bounces, delay warnings and
success notices (RFC 3461 NOTIFY).

A notification goes to the original sender with the null reverse-path ``<>`` (RFC 5321
§4.5.5), so it can never cause another one; a message whose sender is ``<>`` gets none.
It has three parts: a human explanation, the ``message/delivery-status`` part (the
per-message fields with ``Original-Envelope-Id`` from ENVID, then one per-recipient block
with Final-Recipient, Original-Recipient from ORCPT, Action, Status, Remote-MTA,
Diagnostic-Code, and for a delay Will-Retry-Until) and the original message: its headers
(``text/rfc822-headers``, RFC 6522), or the whole message (``message/rfc822``) when the
sender asked for it with RET=FULL and it is within :data:`RETURN_SIZE_LIMIT`.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mta.queue.results import RecipientResult

__all__ = ["RETURN_SIZE_LIMIT", "Notice", "build_bounce", "build_report"]

# Postfix's bounce_size_limit: a larger message is returned as its headers only
RETURN_SIZE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class Notice:
    """One per-recipient block: the result, its RFC 3464 Action and the ORCPT, if any."""

    result: RecipientResult
    action: str = "failed"  # failed | delayed | delivered | relayed
    original_recipient: str | None = None  # "rfc822; a@b" (RFC 3464 §2.3.1), decoded


_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}
_INTROS = {
    "failed": [
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
    ],
    "delayed": [
        "Your message could not be delivered for some time.",
        "It will be retried until it is too old; no action is needed yet.",
    ],
    "delivered": ["Your message was successfully delivered to the destination(s)", "listed below."],
    "relayed": [
        "Your message was relayed to the destination(s) listed below; the next",
        "mail system does not support delivery notifications.",
    ],
}


def _header_value(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def build_bounce(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    arrival: float,
    failed: Sequence[RecipientResult],
    original_headers: bytes,
    now: float | None = None,
) -> bytes:
    """A bounce for ``failed`` with the original headers (the report with defaults)."""
    return build_report(
        hostname=hostname,
        queue_id=queue_id,
        sender=sender,
        arrival=arrival,
        notices=[Notice(r) for r in failed],
        original=original_headers,
        now=now,
    )


def build_report(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    arrival: float,
    notices: Sequence[Notice],
    original: bytes,
    full_message: bool = False,
    envid: str | None = None,
    retry_until: float | None = None,
    now: float | None = None,
) -> bytes:
    """The complete notification (headers and body) with CRLF line ends.  ``original`` is
    the original headers, or the whole message when ``full_message``.  The first notice's
    action names the report (one report has one kind of notice)."""
    now = time.time() if now is None else now
    kind = notices[0].action if notices else "failed"
    boundary = f"{queue_id}.{int(now)}/{hostname}"
    human = _human_part(hostname, kind, notices)
    status = _status_part(hostname, queue_id, arrival, notices, envid, retry_until)
    if full_message:
        returned = ["Content-Description: Undelivered Message", "Content-Type: message/rfc822"]
        if kind != "failed":
            returned[0] = "Content-Description: Message"
    else:
        returned = [
            "Content-Description: Undelivered Message Headers",
            "Content-Type: text/rfc822-headers",
        ]
        original = original.rstrip(b"\r\n") + b"\r\n"
    lines = [
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: <{sender}>",
        f"Subject: {_SUBJECTS.get(kind, _SUBJECTS['failed'])}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{queue_id}.{os.getpid()}.{int(now * 1000)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        status,
        f"--{boundary}",
        *returned,
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if not original.endswith(b"\r\n"):
        original += b"\r\n"
    return head + original + f"\r\n--{boundary}--\r\n".encode()


def _human_part(hostname: str, kind: str, notices: Sequence[Notice]) -> str:
    text = [
        f"This is the mail system at host {hostname}.",
        "",
        *_INTROS.get(kind, _INTROS["failed"]),
        "",
    ]
    for notice in notices:
        result = notice.result
        text.append(f"<{result.address}>: {_header_value(result.reply)}")
    return "\r\n".join(text) + "\r\n"


def _status(dsn: str, action: str) -> str:
    """RFC 3464 §2.3.4: a code of the action's class (2 for success, 4 for a delay, 5 for a
    failure, though a failure may be 4.x.x as an expiry is); else the class's x.0.0."""
    parts = dsn.split(".")
    valid = len(parts) == 3 and all(p.isdigit() for p in parts)
    wanted = {"delivered": ("2",), "relayed": ("2",), "delayed": ("4",)}.get(action, ("4", "5"))
    if valid and parts[0] in wanted:
        return dsn
    return f"{wanted[-1]}.0.0"


def _status_part(
    hostname: str,
    queue_id: str,
    arrival: float,
    notices: Sequence[Notice],
    envid: str | None,
    retry_until: float | None,
) -> str:
    head = [f"Reporting-MTA: dns; {hostname}", f"X-Mta-Queue-ID: {queue_id}"]
    if envid is not None:  # RFC 3464 §2.2.1
        head.insert(0, f"Original-Envelope-Id: {_header_value(envid)}")
    head.append(f"Arrival-Date: {email.utils.formatdate(arrival)}")
    blocks = ["\r\n".join(head)]
    for notice in notices:
        result = notice.result
        original = notice.original_recipient or f"rfc822; {result.address}"
        block = [
            f"Final-Recipient: rfc822; {result.address}",
            f"Original-Recipient: {_header_value(original)}",
            f"Action: {notice.action}",
            f"Status: {_status(result.dsn, notice.action)}",
        ]
        if result.remote_mta:
            block.append(f"Remote-MTA: dns; {result.remote_mta}")
        kind = "smtp" if result.reply[:3].isdigit() else "x-mta"
        block.append(f"Diagnostic-Code: {kind}; {_header_value(result.reply)}")
        if retry_until is not None and notice.action == "delayed":  # RFC 3464 §2.3.8
            block.append(f"Will-Retry-Until: {email.utils.formatdate(retry_until)}")
        blocks.append("\r\n".join(block))
    return "\r\n\r\n".join(blocks) + "\r\n"
