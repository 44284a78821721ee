"""The ``Received:`` trace header every relay adds (RFC 5321 §4.4, RFC 5322 §3.6.7).

    Received: from client.helo ([192.0.2.1])
            by mx.example.test (mta) with ESMTP id 0195F3A2B7C4100A3F1
            for <user@example.org>; Sat, 28 Nov 2026 12:00:00 +0000

``for`` is given only when the message has exactly one recipient, so that Bcc recipients
are not disclosed to one another.  The date string is cached per second by a
:class:`DateCache` that the worker keeps: it is formatted once a second, not once per message.

Whatever the client chose (the HELO name, the recipient) is copied with its control
characters replaced (:func:`mta.protocol.printable.for_header`) and cut to
:data:`MAX_CLIENT_TOKEN` octets, so no input can add, end or forge a header line.  Each
clause starts a line; a clause longer than 78 octets is folded between its words (RFC 5322
§2.2.3, §2.1.1: lines SHOULD be at most 78 octets); a word is never split, so every line
stays far below the 998-octet MUST.  The date stays on the last line.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

from mta.protocol.printable import for_header

__all__ = ["DateCache", "protocol_name", "received_header", "rfc5322_date"]

FOLD_AT = 78  # octets: RFC 5322 §2.1.1's SHOULD
MAX_CLIENT_TOKEN = 512  # octets; the session allows 255 (HELO) and 256 (a path)


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
    authenticated: str = "",
) -> bytes:
    """The complete header field, folded, ending in CRLF; ``date`` as from a DateCache.
    ``authenticated``: the SASL login to show (Postfix's smtpd_sasl_authenticated_header),
    "" for none; never anything of the password."""
    clauses = [
        ["from", _client_token(helo) or "unknown", f"({_address_literal(client_ip)})"],
        ["by", hostname, "(mta)", "with", protocol, "id", queue_id],
    ]
    if authenticated:
        clauses.insert(1, ["(Authenticated", "sender:", f"{_client_token(authenticated)})"])
    if len(recipients) == 1:
        clauses.append(["for", f"<{_client_token(recipients[0])}>"])
    lines: list[str] = []
    prefix = "Received: "
    for words in clauses:
        lines.extend(_fold(prefix, words))
        prefix = "\t"
    return ("\r\n".join(lines) + f"; {date}\r\n").encode("utf-8", "replace")


def _client_token(text: str) -> str:
    """Client text as one header word: no control character, at most MAX_CLIENT_TOKEN."""
    text = for_header(text)
    if len(text) <= MAX_CLIENT_TOKEN // 4:  # fast path: even 4-octet UTF-8 fits
        return text
    return text.encode("utf-8", "replace")[:MAX_CLIENT_TOKEN].decode("utf-8", "ignore")


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _fold(prefix: str, words: list[str]) -> list[str]:
    """``words`` joined by spaces after ``prefix``, folded before a word that would take
    the line past FOLD_AT octets; continuation lines start with a tab."""
    lines = []
    line = prefix + words[0]
    length = _octets(line)
    for word in words[1:]:
        size = _octets(word)
        if length + 1 + size > FOLD_AT:
            lines.append(line)
            line, length = "\t" + word, 1 + size
        else:
            line += " " + word
            length += 1 + size
    lines.append(line)
    return lines


def protocol_name(esmtp: bool, tls: bool, smtputf8: bool, authenticated: bool = False) -> str:
    """The ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTPSA... (RFC 3848:
    S for TLS, A for SMTP AUTH; RFC 6531 §3.7.3 for UTF8)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")
