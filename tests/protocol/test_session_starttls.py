"""STARTTLS in the sans-I/O session (RFC 3207): offered only when configured, answered with
220, and nothing the client pipelined behind it in the clear is ever acted on.  Every test
runs against both parser backends."""

from __future__ import annotations

from mta.protocol import replies
from mta.protocol.events import MailFrom, StartTls
from mta.protocol.session import ParserBackend, ServerSession, State
from tests.protocol.sessions import new_session


def tls_session(parser: ParserBackend) -> ServerSession:
    session = new_session(parser, starttls=True)
    session.data_to_send()  # the greeting
    return session


def test_starttls_is_advertised_only_when_configured(parser: ParserBackend) -> None:
    plain = new_session(parser, starttls=False)
    plain.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    assert plain.next_event() is None
    out = plain.data_to_send()
    assert b"STARTTLS" not in out.split(b"502")[0]
    assert out.endswith(replies.NOT_IMPLEMENTED)
    offered = tls_session(parser)
    offered.receive_data(b"EHLO c\r\n")
    assert offered.next_event() is None
    assert b"250 STARTTLS\r\n" in offered.data_to_send()


def test_commands_pipelined_after_starttls_are_discarded(parser: ParserBackend) -> None:
    session = tls_session(parser)
    session.receive_data(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n")
    assert isinstance(session.next_event(), StartTls)
    assert session.next_event() is None  # waits for the server's decision
    session.accept()
    assert session.data_to_send().endswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert session.next_event() is None  # the injected MAIL/RCPT are gone, not executed
    assert session.data_to_send() == b""
    assert session.tls and session.state is State.CONNECTED and session.helo == ""


def test_after_tls_the_client_greets_again_and_starttls_is_not_offered_twice(
    parser: ParserBackend,
) -> None:
    session = tls_session(parser)
    session.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    assert isinstance(session.next_event(), StartTls)
    session.accept()
    session.data_to_send()
    session.receive_data(b"MAIL FROM:<a@x.test>\r\n")
    assert session.next_event() is None
    assert session.data_to_send() == replies.NEED_HELO  # RFC 3207 §4.2: state is reset
    session.receive_data(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@x.test>\r\n")
    event = session.next_event()
    out = session.data_to_send()
    assert b"STARTTLS" not in out.split(b"\r\n502")[0]
    assert replies.NOT_IMPLEMENTED in out
    assert isinstance(event, MailFrom)


def test_starttls_inside_a_transaction_is_refused(parser: ParserBackend) -> None:
    session = tls_session(parser)
    session.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n")
    assert isinstance(session.next_event(), MailFrom)
    session.accept()
    session.receive_data(b"STARTTLS\r\n")
    assert session.next_event() is None
    assert session.data_to_send().endswith(replies.STARTTLS_IN_TRANSACTION)


def test_starttls_refused_by_the_server_keeps_the_plain_session(parser: ParserBackend) -> None:
    session = tls_session(parser)
    session.receive_data(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n")
    assert isinstance(session.next_event(), StartTls)
    session.reject(replies.TLS_UNAVAILABLE)
    assert session.next_event() is None
    out = session.data_to_send()
    assert out.endswith(replies.TLS_UNAVAILABLE + replies.OK)
    assert not session.tls
