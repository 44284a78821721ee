"""Delivery status notifications (bounces), RFC 3464 ``multipart/report``.

A bounce goes to the original sender with the null reverse-path ``<>`` (RFC 5321 §4.5.5),
so it can never cause another bounce; a message whose sender is ``<>`` is never bounced.
It has three parts: a human explanation, the ``message/delivery-status`` part (one
per-recipient block with Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code) and
the original message's headers (``text/rfc822-headers``, RFC 6522).
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Sequence

from mta.queue.results import RecipientResult

__all__ = ["build_bounce"]


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
    """The complete bounce message (headers and body) with CRLF line ends."""
    now = time.time() if now is None else now
    boundary = f"{queue_id}.{int(now)}/{hostname}"
    human = _human_part(hostname, failed)
    status = _status_part(hostname, queue_id, arrival, failed)
    headers = original_headers.rstrip(b"\r\n") + b"\r\n"
    lines = [
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
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
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    return head + headers + f"\r\n--{boundary}--\r\n".encode()


def _human_part(hostname: str, failed: Sequence[RecipientResult]) -> str:
    text = [
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
    ]
    for result in failed:
        text.append(f"<{result.address}>: {_header_value(result.reply)}")
    return "\r\n".join(text) + "\r\n"


def _status(dsn: str) -> str:
    """RFC 3464 §2.3.4: a 4.x.x or 5.x.x code; anything else reads as a permanent failure."""
    parts = dsn.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("4", "5"):
        return dsn
    return "5.0.0"


def _status_part(
    hostname: str, queue_id: str, arrival: float, failed: Sequence[RecipientResult]
) -> str:
    blocks = [
        "\r\n".join(
            [
                f"Reporting-MTA: dns; {hostname}",
                f"X-Mta-Queue-ID: {queue_id}",
                f"Arrival-Date: {email.utils.formatdate(arrival)}",
            ]
        )
    ]
    for result in failed:
        block = [
            f"Final-Recipient: rfc822; {result.address}",
            f"Original-Recipient: rfc822; {result.address}",
            "Action: failed",
            f"Status: {_status(result.dsn)}",
        ]
        if result.remote_mta:
            block.append(f"Remote-MTA: dns; {result.remote_mta}")
        kind = "smtp" if result.reply[:3].isdigit() else "x-mta"
        block.append(f"Diagnostic-Code: {kind}; {_header_value(result.reply)}")
        blocks.append("\r\n".join(block))
    return "\r\n\r\n".join(blocks) + "\r\n"
