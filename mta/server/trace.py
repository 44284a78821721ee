"""The ``Received:`` trace header every relay adds (RFC 5321 §4.4, RFC 5322 §3.6.7).

    Received: from client.helo ([192.0.2.1])
            by mx.example.test (mta) with ESMTP id 0195F3A2B7C4100A3F1
            for <user@example.org>; Sat, 28 Nov 2026 12:00:00 +0000

``for`` is given only when the message has exactly one recipient, so that Bcc recipients
are not disclosed to one another.  The date string is cached per second by a
:class:`DateCache` that the worker keeps: it is formatted once a second, not once per message.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

__all__ = ["DateCache", "protocol_name", "received_header", "rfc5322_date"]


def rfc5322_date(now: float) -> str:
    """``now`` (Unix time) as an RFC 5322 §3.3 date in UTC, to the second."""
    return email.utils.format_datetime(datetime.fromtimestamp(int(now), UTC))  # "... +0000"


class DateCache:
    """:func:`rfc5322_date`, formatted again only when the second changes."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._text = second, rfc5322_date(second)
        return self._text


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
    date: str,
) -> bytes:
    """The complete header field, folded, ending in CRLF; ``date`` as from a DateCache."""
    helo = helo.replace("\r", "").replace("\n", "") or "unknown"
    lines = [
        f"Received: from {helo} ({_address_literal(client_ip)})\r\n",
        f"\tby {hostname} (mta) with {protocol} id {queue_id}",
    ]
    if len(recipients) == 1:
        lines.append(f"\r\n\tfor <{recipients[0]}>")
    lines.append(f"; {date}\r\n")
    return "".join(lines).encode("utf-8", "replace")


def protocol_name(esmtp: bool, tls: bool, smtputf8: bool) -> str:
    """The ``with`` keyword: SMTP, ESMTP, ESMTPS, UTF8SMTP... (RFC 3848, RFC 6531 §3.7.3)."""
    if not esmtp:
        return "SMTP"
    if smtputf8:
        return "UTF8SMTPS" if tls else "UTF8SMTP"
    return "ESMTPS" if tls else "ESMTP"
