"""REQUIRETLS inbound (RFC 8689 §2): the EHLO keyword and the MAIL parameter exist only on
a session that uses TLS; without TLS the parameter is one we do not offer (555).  Every
test runs against both parser backends."""

from __future__ import annotations

from mta.protocol import replies
from mta.protocol.events import MailFrom, StartTls
from mta.protocol.session import ParserBackend, ServerSession
from tests.protocol.sessions import new_session


def after_starttls(parser: ParserBackend) -> ServerSession:
    session = new_session(parser, starttls=True)
    session.data_to_send()
    session.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    assert isinstance(session.next_event(), StartTls)
    session.accept()
    session.data_to_send()
    return session


def test_requiretls_is_advertised_only_under_tls(parser: ParserBackend) -> None:
    plain = new_session(parser, starttls=True)
    plain.data_to_send()
    plain.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.test> REQUIRETLS\r\n")
    assert plain.next_event() is None
    out = plain.data_to_send()
    assert b"REQUIRETLS" not in out
    assert out.endswith(replies.UNSUPPORTED_PARAM)  # not offered: 555 5.5.4
    session = after_starttls(parser)
    session.receive_data(b"EHLO c\r\n")
    assert session.next_event() is None
    assert b"250 REQUIRETLS\r\n" in session.data_to_send()


def test_requiretls_parameter_under_tls_is_kept_and_takes_no_value(
    parser: ParserBackend,
) -> None:
    session = after_starttls(parser)
    session.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.test> REQUIRETLS=yes\r\n")
    assert session.next_event() is None
    assert session.data_to_send().endswith(replies.UNSUPPORTED_PARAM)
    session.receive_data(b"MAIL FROM:<a@x.test> requiretls\r\n")
    event = session.next_event()
    assert isinstance(event, MailFrom)
    assert "REQUIRETLS" in event.params and event.params["REQUIRETLS"] is None
    assert session.mail_params == {"REQUIRETLS": None}


def test_implicit_tls_session_offers_requiretls(parser: ParserBackend) -> None:
    session = new_session(parser, starttls=False)
    session.tls = True  # what smtpd sets after an implicit-TLS handshake
    session.data_to_send()
    session.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.test> REQUIRETLS\r\n")
    event = session.next_event()
    assert b"250 REQUIRETLS\r\n" in session.data_to_send()
    assert isinstance(event, MailFrom) and "REQUIRETLS" in event.params
