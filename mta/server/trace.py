"""The ``Received:`` trace header every relay adds (RFC 5321 §4.4, RFC 5322 §3.6.7).

    Received: from client.helo ([192.0.2.1])
            by mx.example.test (mta) with ESMTP id 0195F3A2B7C4100A3F1
            for <user@example.org>; Sat, 28 Nov 2026 12:00:00 +0000

``for`` is given only when the message has exactly one recipient, so that Bcc recipients
are not disclosed to one another.  The date string is cached per second: it is formatted
once, not once per message.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

__all__ = ["received_header"]

_date_cache: tuple[int, str] = (-1, "")


def _rfc5322_date(now: float) -> str:
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        when = datetime.fromtimestamp(second, UTC)
        _date_cache = (second, email.utils.format_datetime(when))  # "... +0000"
    return _date_cache[1]


def _address_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipients: list[str],
    now: float,
) -> bytes:
    """The complete header field, folded, ending in CRLF."""
    helo = helo.replace("\r", "").replace("\n", "") or "unknown"
    lines = [
        f"Received: from {helo} ({_address_literal(client_ip)})\r\n",
        f"\tby {hostname} (mta) with {protocol} id {queue_id}",
    ]
    if len(recipients) == 1:
        lines.append(f"\r\n\tfor <{recipients[0]}>")
    lines.append(f"; {_rfc5322_date(now)}\r\n")
    return "".join(lines).encode("utf-8", "replace")


def protocol_name(esmtp: bool, tls: bool, smtputf8: bool) -> str:
    """The ``with`` keyword: SMTP, ESMTP, ESMTPS, UTF8SMTP... (RFC 3848, RFC 6531 §3.7.3)."""
    if not esmtp:
        return "SMTP"
    if smtputf8:
        return "UTF8SMTPS" if tls else "UTF8SMTP"
    return "ESMTPS" if tls else "ESMTP"
