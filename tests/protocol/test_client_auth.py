"""AUTH to a smarthost in the client session (mta/protocol/client_session.py), no sockets.

Transcripts are played every way the STARTTLS ones are (one reply at a time, byte by byte,
at once, with trailing data; tests/protocol/test_client_session.py's ``check``).
"""

from __future__ import annotations

import base64
from typing import Any

from mta.protocol.client_auth import Credentials, choose_mechanism
from mta.protocol.client_events import AuthFailed, Ready, StartTlsNow
from mta.protocol.client_session import ClientSession, State
from tests.protocol.test_client_session import GREETING, check, reply

CREDENTIALS = Credentials("relay@example.org", "s3cr:et pass")
PLAIN_LINE = b"AUTH PLAIN " + base64.b64encode(b"\0relay@example.org\0s3cr:et pass") + b"\r\n"
USER_LINE = base64.b64encode(b"relay@example.org") + b"\r\n"
PASS_LINE = base64.b64encode(b"s3cr:et pass") + b"\r\n"
EHLO_TLS_AUTH = b"250-sink.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
EHLO_AUTH = b"250-sink.test\r\n250-PIPELINING\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n"
EHLO_LOGIN = b"250-sink.test\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n"
EHLO_NO_AUTH = b"250-sink.test\r\n250 PIPELINING\r\n"
OK_AUTH = b"235 2.7.0 Authentication successful\r\n"
REFUSED = b"535 5.7.8 Error: authentication failed\r\n"


def after_starttls(ehlo: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"", GREETING),
        (b"EHLO mx.test\r\n", EHLO_TLS_AUTH),
        (b"STARTTLS\r\n", b"220 2.0.0 go ahead\r\n"),
        (b"EHLO mx.test\r\n", ehlo),
    ]


def implicit(ehlo: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"", GREETING), (b"EHLO mx.test\r\n", ehlo)]


def auth(transcript: list[tuple[bytes, bytes]], **options: Any) -> tuple[ClientSession, list[Any]]:
    return check(transcript, credentials=CREDENTIALS, **options)  # type: ignore[arg-type]


def test_plain_with_initial_response_after_starttls() -> None:
    session, events = auth([*after_starttls(EHLO_AUTH), (PLAIN_LINE, OK_AUTH)])
    assert events == [StartTlsNow(), Ready(tls=True, esmtp=True, auth="PLAIN")]
    assert session.reusable


def test_login_answers_both_challenges() -> None:
    transcript = [
        *after_starttls(EHLO_LOGIN),
        (b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n"),
        (USER_LINE, b"334 UGFzc3dvcmQ6\r\n"),
        (PASS_LINE, OK_AUTH),
    ]
    session, events = auth(transcript)
    assert events == [StartTlsNow(), Ready(tls=True, esmtp=True, auth="LOGIN")]
    assert session.reusable


def test_implicit_tls_authenticates_without_starttls() -> None:
    _, events = auth([*implicit(EHLO_TLS_AUTH), (PLAIN_LINE, OK_AUTH)], tls=True)
    assert events == [Ready(tls=True, esmtp=True, auth="PLAIN")]


def test_refused_plain_closes_with_the_reply() -> None:
    session, events = auth([*after_starttls(EHLO_AUTH), (PLAIN_LINE, REFUSED)])
    assert events[1] == AuthFailed("refused", "PLAIN", reply(REFUSED))
    assert session.state is State.CLOSED and not session.usable


def test_refused_login_username_or_password() -> None:
    start = [*after_starttls(EHLO_LOGIN), (b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n")]
    _, events = auth([*start, (USER_LINE, REFUSED)])
    assert events[1] == AuthFailed("refused", "LOGIN", reply(REFUSED))
    _, events = auth([*start, (USER_LINE, b"334 UGFzc3dvcmQ6\r\n"), (PASS_LINE, REFUSED)])
    assert events[1] == AuthFailed("refused", "LOGIN", reply(REFUSED))
    _, events = auth([*after_starttls(EHLO_LOGIN), (b"AUTH LOGIN\r\n", REFUSED)])
    assert events[1] == AuthFailed("refused", "LOGIN", reply(REFUSED))


def test_no_password_in_clear_text() -> None:
    """AUTH offered without STARTTLS, or STARTTLS refused: nothing of the password is sent."""
    session, events = auth(implicit(EHLO_AUTH))
    assert events == [AuthFailed("no_tls", "")]
    assert not session.usable
    refused_tls = [
        (b"", GREETING),
        (b"EHLO mx.test\r\n", EHLO_TLS_AUTH),
        (b"STARTTLS\r\n", b"454 4.7.0 TLS not available\r\n"),
    ]
    assert auth(refused_tls)[1] == [AuthFailed("no_tls", "")]
    assert auth(implicit(EHLO_TLS_AUTH), starttls=False)[1] == [AuthFailed("no_tls", "")]


def test_no_auth_offered_delivers_without_it() -> None:
    session, events = auth(implicit(EHLO_NO_AUTH), tls=True)
    assert events == [Ready(tls=True, esmtp=True, auth="")]
    assert session.reusable
    _, events = auth(implicit(EHLO_NO_AUTH))  # in clear text too: no password is asked for
    assert events == [Ready(tls=False, esmtp=True, auth="")]


def test_no_usable_mechanism() -> None:
    ehlo = b"250-sink.test\r\n250 AUTH CRAM-MD5 XOAUTH2\r\n"
    assert auth(implicit(ehlo), tls=True)[1] == [AuthFailed("no_mechanism", "")]


def test_without_credentials_auth_is_never_said() -> None:
    _, events = check(implicit(EHLO_AUTH), tls=True)  # type: ignore[arg-type]
    assert events == [Ready(tls=True, esmtp=True)]


def test_old_auth_equals_form_and_preference() -> None:
    assert choose_mechanism({"AUTH": "LOGIN PLAIN"}) == "PLAIN"
    assert choose_mechanism({"AUTH=LOGIN": ""}) == "LOGIN"
    assert choose_mechanism({"AUTH": "cram-md5 login"}) == "LOGIN"
    assert choose_mechanism({}) == ""


def test_password_never_in_repr() -> None:
    assert "s3cr" not in repr(CREDENTIALS)
    session = ClientSession("mx.test", credentials=CREDENTIALS)
    assert "s3cr" not in repr(vars(session))
