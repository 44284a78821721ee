"""The Received: trace header (RFC 5321 §4.4, RFC 5322 §3.6.7)."""

from __future__ import annotations

import email.parser
import email.policy
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest

from mta.server.trace import DateCache, protocol_name, received_header, rfc5322_date

NOW = 1_790_000_000.75  # a fixed instant, not on a whole second
QID = "0195F3A2B7C4100A3F1"


def header(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "helo": "client.example",
        "client_ip": "192.0.2.1",
        "hostname": "mx.example.test",
        "protocol": "ESMTP",
        "queue_id": QID,
        "recipients": ["user@example.org"],
        "date": rfc5322_date(NOW),
    }
    args.update(overrides)
    return received_header(**args)  # type: ignore[arg-type]


def parsed(raw: bytes) -> list[tuple[str, str]]:
    """The header fields as a mail reader sees them (unfolded)."""
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        raw + b"\r\nbody\r\n"
    )
    return [(name, re.sub(r"\r?\n[ \t]", " ", value)) for name, value in message.items()]


def clauses(raw: bytes) -> str:
    ((name, value),) = parsed(raw)
    assert name == "Received"
    return value


def date_of(raw: bytes) -> datetime:
    return parsedate_to_datetime(clauses(raw).rsplit(";", 1)[1].strip())


def test_shape_with_one_recipient() -> None:
    value = clauses(header())
    assert re.fullmatch(
        r"from client\.example \(\[192\.0\.2\.1\]\)\s+by mx\.example\.test \(mta\)"
        rf" with ESMTP id {QID}\s+for <user@example\.org>; .+",
        value,
    ), value


def test_clauses_are_in_rfc_order() -> None:
    value = clauses(header())
    positions = [value.index(word) for word in ("from ", " by ", " with ", " id ", " for ", ";")]
    assert positions == sorted(positions)


@pytest.mark.parametrize("recipients", [[], ["a@example.org", "b@example.org"]])
def test_for_only_with_exactly_one_recipient(recipients: list[str]) -> None:
    value = clauses(header(recipients=recipients))
    assert " for " not in value
    assert "@example.org" not in value  # Bcc recipients are not disclosed
    assert re.fullmatch(rf"from .+ by .+ with ESMTP id {QID}; .+", value)


def as_utc(when: datetime) -> datetime:
    """A date without zone information ("-0000", RFC 5322 §3.3) is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def test_date_is_rfc5322_and_correct() -> None:
    raw = header()
    assert re.search(rb"; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\r\n$", raw), raw
    assert as_utc(date_of(raw)) == datetime.fromtimestamp(int(NOW), UTC)


def test_cached_date_follows_the_clock() -> None:
    dates = DateCache()
    first = date_of(header(date=dates(NOW)))
    same_second = date_of(header(date=dates(NOW + 0.2)))
    next_second = date_of(header(date=dates(NOW + 1)))
    much_later = date_of(header(date=dates(NOW + 86_400 * 40)))
    assert same_second == first
    assert (next_second - first).total_seconds() == 1
    assert (much_later - first).days == 40


def test_folded_with_crlf_tab_and_ends_with_crlf() -> None:
    raw = header()
    assert raw.startswith(b"Received: from ")
    assert raw.endswith(b"\r\n") and not raw.endswith(b"\r\n\r\n")
    lines = raw.split(b"\r\n")[:-1]
    assert len(lines) >= 2  # folded
    assert all(line.startswith(b"\t") for line in lines[1:])
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in lines)  # RFC 5322 §2.1.1


def test_ipv6_client_is_an_address_literal() -> None:
    value = clauses(header(client_ip="2001:db8::1"))
    assert value.startswith("from client.example ([IPv6:2001:db8::1]) by ")


def test_empty_helo_is_unknown() -> None:
    assert clauses(header(helo="")).startswith("from unknown ([192.0.2.1])")


def test_helo_cannot_inject_header_lines() -> None:
    raw = header(helo="evil\r\nX-Injected: yes\r\n\r\nbody", recipients=[])
    fields = parsed(raw)
    assert [name for name, _ in fields] == ["Received"]
    assert raw.count(b"\r\n") == 2  # only the fold and the end


def test_utf8_names_are_kept_as_utf8() -> None:
    raw = header(helo="bücher.example", recipients=["δοκιμή@παράδειγμα.test"], protocol="UTF8SMTP")
    assert "bücher.example".encode() in raw
    assert "<δοκιμή@παράδειγμα.test>".encode() in raw
    assert b" with UTF8SMTP " in raw


@pytest.mark.parametrize(
    ("esmtp", "tls", "smtputf8", "expected"),
    [
        (False, False, False, "SMTP"),
        (True, False, False, "ESMTP"),
        (True, True, False, "ESMTPS"),
        (True, False, True, "UTF8SMTP"),
        (True, True, True, "UTF8SMTPS"),
    ],
)
def test_protocol_name(esmtp: bool, tls: bool, smtputf8: bool, expected: str) -> None:
    assert protocol_name(esmtp, tls, smtputf8) == expected  # RFC 3848, RFC 6531 §3.7.3


@pytest.mark.parametrize(
    ("tls", "smtputf8", "expected"),
    [
        (False, False, "ESMTPA"),
        (True, False, "ESMTPSA"),
        (False, True, "UTF8SMTPA"),
        (True, True, "UTF8SMTPSA"),
    ],
)
def test_protocol_name_after_auth(tls: bool, smtputf8: bool, expected: str) -> None:
    assert protocol_name(True, tls, smtputf8, authenticated=True) == expected  # RFC 3848


def test_authenticated_sender_clause_when_asked() -> None:
    raw = header(protocol="ESMTPSA", authenticated="alice")
    assert clauses(raw).startswith(
        "from client.example ([192.0.2.1]) (Authenticated sender: alice) by mx.example.test"
    )
    assert b"Authenticated" not in header(protocol="ESMTPSA")
    forged = header(authenticated="x\r\nBcc: y")  # never reaches the header as a line
    assert [name for name, _ in parsed(forged)] == ["Received"]


# ----- client text that is unsafe or over-long (issue 10, item 7) ----------------------------

CONTROLS = "\x00\x1b\x7f\x85\u2028\r\n\t"


def assert_safe(raw: bytes) -> list[bytes]:
    """One field, CRLF only at folds and the end, no control octet; return its lines."""
    assert [name for name, _ in parsed(raw)] == ["Received"]
    lines = raw.split(b"\r\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert all(line.startswith(b"\t") for line in lines[1:])
    text = raw.decode("utf-8")
    assert not any(c in text.replace("\r\n\t", "").removesuffix("\r\n") for c in CONTROLS)
    assert all(len(line) <= 998 for line in lines)  # RFC 5322 §2.1.1
    return lines


def test_control_characters_never_reach_the_header() -> None:
    raw = header(helo="a\x00b\x1bc\x7fd\x85e\u2028f", recipients=["x\u2028y@example.org"])
    assert_safe(raw)
    assert clauses(raw).startswith("from a?b?c?d?e?f ([192.0.2.1])")
    assert "<x?y@example.org>" in clauses(raw)


def test_the_probes_helo_gives_short_safe_lines() -> None:
    """1,900 characters with NUL, ESC and DEL: the session refuses it, and even if it did
    not, the header stays within the limits."""
    helo = "x\x00\x1b\x7f" + "y" * 1900
    lines = assert_safe(header(helo=helo))
    assert max(len(line) for line in lines) < 600


def test_long_valid_helo_is_folded_and_kept_whole() -> None:
    helo = ".".join(["label" + str(i) * 50 for i in range(4)])[:255]
    raw = header(helo=helo, hostname="relay." + "h" * 60 + ".example")
    lines = assert_safe(raw)
    assert len(lines) >= 4
    assert clauses(raw).startswith(f"from {helo} ([192.0.2.1]) by relay.")
    for line in lines[:-1]:  # at most 78 where a fold is possible (RFC 5322 §2.1.1)
        words = line.split()
        assert len(line) <= 78 or len(words) == 1 or len(words[-1]) > 70, line


def test_every_clause_folds_at_78_when_words_allow() -> None:
    raw = header(hostname="mx." + "a" * 40 + ".example", protocol="UTF8SMTPS")
    lines = assert_safe(raw)
    assert all(len(line) <= 78 for line in lines[:-1]), lines
