"""The DSN extension's parameters (RFC 3461) in the sans-I/O server session, on both parser
backends: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT, xtext; a bad value is 501 5.5.4."""

from __future__ import annotations

import pytest

from mta.protocol.dsn_params import (
    mail_params_to_pass,
    rcpt_params_to_pass,
    xtext_decode,
    xtext_encode,
)
from mta.protocol.events import MailFrom, RcptTo
from mta.protocol.session import ParserBackend, ServerSession
from tests.protocol.sessions import new_session
from tests.protocol.test_session import code_of, greeted, run


@pytest.fixture
def session(parser: ParserBackend) -> ServerSession:
    return new_session(parser, max_message_size=1000, max_recipients=5, max_errors=20)


def test_dsn_is_advertised(session: ServerSession) -> None:
    t = run(session, b"EHLO client.test\r\n")
    assert b"250-DSN\r\n" in t.replies[1] or t.replies[1].endswith(b"250 DSN\r\n")


def test_valid_dsn_parameters_are_taken_as_received(session: ServerSession) -> None:
    t = run(
        greeted(session),
        b"MAIL FROM:<a@x.test> RET=HDRS ENVID=QQ+2Bid+3D1\r\n"
        b"RCPT TO:<b@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@y.test\r\n"
        b"RCPT TO:<c@y.test> NOTIFY=NEVER\r\n",
    )
    assert [code_of(r) for r in t.replies] == [b"250 2.1.0", b"250 2.1.5", b"250 2.1.5"]
    assert t.of(MailFrom)[0].params == {"RET": "HDRS", "ENVID": "QQ+2Bid+3D1"}
    rcpts = t.of(RcptTo)
    assert rcpts[0].params == {"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;b+2Bx@y.test"}
    assert rcpts[1].params == {"NOTIFY": "NEVER"}
    assert session.recipients[0][1]["ORCPT"] == "rfc822;b+2Bx@y.test"


@pytest.mark.parametrize(
    "param, why",
    [
        (b"RET=BODY", b"RET"),
        (b"RET", b"RET"),
        (b"ENVID=a+2", b"ENVID"),  # a hexchar needs two upper-case hex digits
        (b"ENVID=a+2b", b"ENVID"),
        (b"ENVID=a+0D+0AX-Injected:+20yes", b"control character"),
        (b"ENVID=" + b"x" * 101, b"100 octets"),
    ],
)
def test_bad_mail_dsn_parameters_are_501(session: ServerSession, param: bytes, why: bytes) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test> " + param + b"\r\n")
    assert code_of(t.replies[0]) == b"501 5.5.4"
    assert why in t.replies[0]
    assert t.of(MailFrom) == []


@pytest.mark.parametrize(
    "param, why",
    [
        (b"NOTIFY=NEVER,SUCCESS", b"NOTIFY"),
        (b"NOTIFY=SOMETIMES", b"NOTIFY"),
        (b"NOTIFY=SUCCESS,SUCCESS", b"NOTIFY"),
        (b"NOTIFY", b"NOTIFY"),
        (b"ORCPT=b@y.test", b"ORCPT"),
        (b"ORCPT=x400;b@y.test", b"ORCPT"),
        (b"ORCPT=utf-8;b@y.test", b"ORCPT"),  # utf-8 only under SMTPUTF8 (RFC 6533)
        (b"ORCPT=rfc822;", b"ORCPT"),
        (b"ORCPT=rfc822;b+zz@y.test", b"ORCPT"),
        (b"ORCPT=rfc822;b+0A@y.test", b"control character"),
    ],
)
def test_bad_rcpt_dsn_parameters_are_501(session: ServerSession, param: bytes, why: bytes) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> " + param + b"\r\n")
    assert code_of(t.replies[1]) == b"501 5.5.4"
    assert why in t.replies[1]
    assert t.of(RcptTo) == []


def test_utf8_orcpt_under_smtputf8(session: ServerSession) -> None:
    t = run(
        greeted(session),
        b"MAIL FROM:<a@x.test> SMTPUTF8\r\nRCPT TO:<b@y.test> ORCPT=utf-8;b\\x{E9}@y.test\r\n",
    )
    assert code_of(t.replies[1]) == b"250 2.1.5"


def test_duplicate_and_unknown_rcpt_parameters(session: ServerSession) -> None:
    t = run(
        greeted(session),
        b"MAIL FROM:<a@x.test>\r\n"
        b"RCPT TO:<b@y.test> NOTIFY=NEVER NOTIFY=NEVER\r\n"
        b"RCPT TO:<b@y.test> NOTIFY=NEVER FOO=1\r\n",
    )
    assert [code_of(r) for r in t.replies[1:]] == [b"555 5.5.4", b"555 5.5.4"]
    assert t.of(RcptTo) == []


def test_rcpt_parameters_after_helo_are_555(session: ServerSession) -> None:
    t = run(session, b"HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> NOTIFY=NEVER\r\n")
    assert code_of(t.replies[-1]) == b"555 5.5.4"


def test_xtext_round_trip_and_passing_on() -> None:
    assert xtext_encode("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"
    assert xtext_decode("a+2Bb+3Dc+20d+C3+A9") == "a+b=c d\u00e9"
    assert mail_params_to_pass({"RET": "hdrs", "ENVID": "x+41"}) == " RET=HDRS ENVID=xA"
    assert rcpt_params_to_pass("b@y.test", {"NOTIFY": "success"}) == (
        " NOTIFY=SUCCESS ORCPT=rfc822;b@y.test"
    )
    assert rcpt_params_to_pass("b@y.test", {"ORCPT": "RFC822;o+2Bx@y.test"}) == (
        " ORCPT=rfc822;o+2Bx@y.test"
    )
