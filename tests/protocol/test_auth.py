"""SMTP AUTH (RFC 4954) in the sans-I/O session: PLAIN and LOGIN exchanges, where AUTH is
offered, the listener's rules (TLS first, AUTH first) and MAIL's AUTH= parameter.  Every
test runs against both parser backends."""

from __future__ import annotations

import base64

import pytest

from mta.protocol import replies
from mta.protocol.events import AuthRequest, Event, MailFrom, StartTls
from mta.protocol.sasl import MAX_RESPONSE_LINE
from mta.protocol.session import Decision, ParserBackend, ServerSession, State
from tests.protocol.sessions import new_session

PLAIN = base64.b64encode(b"\x00alice\x00s3cret").decode()
SUBMISSION = {"starttls": True, "require_tls": True, "auth": True, "require_auth": True}


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def feed(session: ServerSession, data: bytes) -> tuple[list[Event], bytes]:
    """Feed ``data``; the events up to the first decision (unanswered) and the replies."""
    session.receive_data(data)
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events, session.data_to_send()


def under_tls(session: ServerSession) -> ServerSession:
    """Greeted, STARTTLS done (the I/O layer's handshake is assumed), EHLO said again."""
    session.data_to_send()
    events, _ = feed(session, b"EHLO c.test\r\nSTARTTLS\r\n")
    assert isinstance(events[-1], StartTls)
    session.accept()
    feed(session, b"EHLO c.test\r\n")
    return session


def submission(parser: ParserBackend, **overrides: object) -> ServerSession:
    return under_tls(new_session(parser, **{**SUBMISSION, **overrides}))


def authenticate(session: ServerSession, line: bytes = b"AUTH PLAIN " + PLAIN.encode()) -> None:
    events, _ = feed(session, line + b"\r\n")
    assert isinstance(events[-1], AuthRequest)
    session.accept()
    assert session.data_to_send() == replies.AUTH_OK


# ----- where AUTH is offered ----------------------------------------------------------------


def test_auth_is_advertised_only_under_tls_where_the_listener_offers_it(
    parser: ParserBackend,
) -> None:
    before = new_session(parser, **SUBMISSION)
    before.data_to_send()
    _, out = feed(before, b"EHLO c.test\r\n")
    assert b"AUTH" not in out and b"250 STARTTLS" in out
    after = submission(parser)
    _, out = feed(after, b"EHLO c.test\r\n")
    assert b"250 AUTH PLAIN LOGIN\r\n" in out
    mx = under_tls(new_session(parser, starttls=True))  # a listener without AUTH
    _, out = feed(mx, b"EHLO c.test\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert b"AUTH" not in out.split(b"\r\n502")[0] and out.endswith(replies.NOT_IMPLEMENTED)


def test_plaintext_auth_only_where_the_listener_allows_it(parser: ParserBackend) -> None:
    plain = new_session(parser, auth=True, auth_plaintext=True)
    plain.data_to_send()
    events, out = feed(plain, b"EHLO c.test\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert b"250 AUTH PLAIN LOGIN\r\n" in out
    assert events == [AuthRequest("PLAIN", "", "alice", "s3cret")]
    no_tls_here = new_session(parser, auth=True)  # AUTH on, but no TLS and no plaintext
    no_tls_here.data_to_send()
    _, out = feed(no_tls_here, b"EHLO c.test\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert b"AUTH" not in out.split(b"\r\n502")[0] and out.endswith(replies.NOT_IMPLEMENTED)


def test_auth_before_starttls_must_issue_starttls_first(parser: ParserBackend) -> None:
    for overrides in (SUBMISSION, {"starttls": True, "auth": True}):
        session = new_session(parser, **overrides)
        session.data_to_send()
        events, out = feed(session, b"EHLO c.test\r\nAUTH LOGIN\r\n")
        assert events == []
        assert out.endswith(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
    # a listener that requires TLS refuses AUTH before it even if plaintext AUTH is allowed
    strict = new_session(parser, **SUBMISSION, auth_plaintext=True)
    strict.data_to_send()
    _, out = feed(strict, b"EHLO c.test\r\nAUTH LOGIN\r\n")
    assert out.endswith(replies.MUST_STARTTLS) and b"AUTH PLAIN" not in out


# ----- the listener's rules for MAIL ------------------------------------------------------


def test_mail_before_starttls_and_before_auth_is_refused_with_530(parser: ParserBackend) -> None:
    session = new_session(parser, **SUBMISSION)
    session.data_to_send()
    events, out = feed(session, b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    assert events == [] and out.endswith(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
    session = submission(parser)
    events, out = feed(session, b"MAIL FROM:<a@x.test>\r\n")
    assert events == [] and out == b"530 5.7.0 Authentication required\r\n"
    authenticate(session)
    events, _ = feed(session, b"MAIL FROM:<a@x.test>\r\n")
    assert events == [MailFrom("a@x.test", {})]


def test_require_tls_alone_refuses_mail_in_the_clear(parser: ParserBackend) -> None:
    session = new_session(parser, starttls=True, require_tls=True)
    session.data_to_send()
    _, out = feed(session, b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    assert out.endswith(replies.MUST_STARTTLS)
    under_tls(session)
    events, _ = feed(session, b"MAIL FROM:<a@x.test>\r\n")
    assert isinstance(events[0], MailFrom)  # no AUTH needed on this listener


# ----- PLAIN and LOGIN --------------------------------------------------------------------


def test_plain_with_initial_response(parser: ParserBackend) -> None:
    session = submission(parser)
    events, out = feed(session, b"AUTH PLAIN " + b64("boss\x00alice\x00pw") + b"\r\nNOOP\r\n")
    assert events == [AuthRequest("PLAIN", "boss", "alice", "pw")]
    assert out == b"" and session.waiting  # NOOP waits behind the decision
    session.accept()
    assert session.next_event() is None
    assert session.data_to_send() == replies.AUTH_OK + replies.OK
    assert session.authenticated == "alice" and session.auth_mechanism == "PLAIN"


def test_plain_without_initial_response_gets_an_empty_challenge(parser: ParserBackend) -> None:
    session = submission(parser)
    events, out = feed(session, b"AUTH plain\r\n")
    assert events == [] and out == b"334 \r\n"
    events, out = feed(session, b64("\x00alice\x00pw") + b"\r\n")
    assert events == [AuthRequest("PLAIN", "", "alice", "pw")]


def test_login_asks_username_then_password(parser: ParserBackend) -> None:
    session = submission(parser)
    events, out = feed(session, b"AUTH LOGIN\r\n")
    assert out == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
    events, out = feed(session, b64("alice") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
    events, out = feed(session, b64("pw") + b"\r\n")
    assert events == [AuthRequest("LOGIN", "", "alice", "pw")]
    session.accept()
    assert session.data_to_send() == replies.AUTH_OK
    assert (session.authenticated, session.auth_mechanism) == ("alice", "LOGIN")


def test_login_with_the_username_as_initial_response(parser: ParserBackend) -> None:
    session = submission(parser)
    _, out = feed(session, b"AUTH LOGIN " + b64("alice") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    events, _ = feed(session, b64("pw") + b"\r\n")
    assert events == [AuthRequest("LOGIN", "", "alice", "pw")]


def test_equals_sign_is_an_empty_initial_response(parser: ParserBackend) -> None:
    session = submission(parser)
    _, out = feed(session, b"AUTH PLAIN =\r\n")  # empty: no authcid, so malformed PLAIN
    assert out == replies.AUTH_BAD_PLAIN
    _, out = feed(session, b"AUTH LOGIN =\r\n")  # the empty username, then the password
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    events, _ = feed(session, b"\r\n")  # an empty response line is the empty password
    assert events == [AuthRequest("LOGIN", "", "", "")]


def test_star_cancels_the_exchange(parser: ParserBackend) -> None:
    session = submission(parser)
    feed(session, b"AUTH LOGIN\r\n")
    events, out = feed(session, b"*\r\nNOOP\r\n")
    assert events == [] and out == b"501 5.7.0 Authentication aborted\r\n" + replies.OK
    assert session.authenticated is None and session.state is State.READY


@pytest.mark.parametrize("response", [b"not base64!", b"YWxpY2U", b"////", b"/w=="])
def test_malformed_base64_ends_the_exchange_with_501(
    parser: ParserBackend, response: bytes
) -> None:
    session = submission(parser)
    feed(session, b"AUTH LOGIN\r\n")
    events, out = feed(session, response + b"\r\nNOOP\r\n")  # /w== is no UTF-8 either
    assert events == [] and out == b"501 5.5.2 Cannot decode response\r\n" + replies.OK


@pytest.mark.parametrize(
    "message", ["alice\x00pw", "\x00\x00pw", "\x00alice\x00", "a\x00b\x00c\x00d"]
)
def test_malformed_plain_messages_are_refused(parser: ParserBackend, message: str) -> None:
    session = submission(parser)
    events, out = feed(session, b"AUTH PLAIN " + b64(message) + b"\r\n")
    assert events == [] and out == replies.AUTH_BAD_PLAIN


def test_unknown_mechanism_and_missing_argument(parser: ParserBackend) -> None:
    session = submission(parser)
    _, out = feed(session, b"AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n")
    assert out == replies.AUTH_MECHANISM_UNKNOWN + replies.AUTH_SYNTAX + replies.AUTH_SYNTAX


# ----- order and state --------------------------------------------------------------------


def test_auth_twice_is_refused(parser: ParserBackend) -> None:
    session = submission(parser)
    authenticate(session)
    events, out = feed(session, b"AUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert events == [] and out == b"503 5.5.1 Error: already authenticated\r\n"
    feed(session, b"EHLO again.test\r\nRSET\r\n")
    assert session.authenticated == "alice"  # EHLO and RSET keep the identity


def test_auth_inside_a_transaction_and_before_ehlo(parser: ParserBackend) -> None:
    session = new_session(parser, auth=True, auth_plaintext=True)
    session.data_to_send()
    _, out = feed(session, b"AUTH LOGIN\r\n")
    assert out == replies.NEED_HELO
    feed(session, b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    session.accept()
    session.data_to_send()
    _, out = feed(session, b"AUTH LOGIN\r\n")
    assert out == b"503 5.5.1 Error: MAIL transaction in progress\r\n"


def test_a_rejected_auth_leaves_the_session_unauthenticated(parser: ParserBackend) -> None:
    session = submission(parser)
    feed(session, b"AUTH PLAIN " + PLAIN.encode() + b"\r\n")
    session.reject(replies.AUTH_FAILED)
    assert session.data_to_send() == b"535 5.7.8 Error: authentication failed\r\n"
    assert session.authenticated is None
    _, out = feed(session, b"MAIL FROM:<a@x.test>\r\n")
    assert out == replies.AUTH_REQUIRED
    authenticate(session)  # a later try may succeed


def test_a_421_answer_closes_the_session(parser: ParserBackend) -> None:
    session = submission(parser)
    feed(session, b"AUTH PLAIN " + PLAIN.encode() + b"\r\nNOOP\r\n")
    session.reject(replies.too_many_auth_failures("mx.test"))
    assert session.closing and session.next_event() is None
    assert session.data_to_send() == (
        b"421 4.7.0 mx.test Error: too many authentication failures\r\n"
    )


def test_starttls_forgets_the_identity(parser: ParserBackend) -> None:
    session = new_session(parser, starttls=True, auth=True, auth_plaintext=True)
    session.data_to_send()
    feed(session, b"EHLO c.test\r\n")
    authenticate(session)
    feed(session, b"STARTTLS\r\n")
    session.accept()
    assert session.authenticated is None  # RFC 3207 §4.2


def test_commands_pipelined_after_auth_run_once_it_is_accepted(parser: ParserBackend) -> None:
    session = submission(parser)
    events, out = feed(
        session,
        b"AUTH PLAIN " + PLAIN.encode() + b"\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n",
    )
    assert isinstance(events[-1], AuthRequest) and out == b""
    session.accept()
    mail = session.next_event()
    assert isinstance(mail, MailFrom)  # not 530: it waited for the AUTH decision
    session.accept()
    assert session.next_event() is not None
    session.accept()
    assert session.data_to_send() == replies.AUTH_OK + replies.OK_SENDER + replies.OK_RECIPIENT


def test_pipelined_lines_after_a_failed_auth_meet_the_rules(parser: ParserBackend) -> None:
    session = submission(parser)
    feed(session, b"AUTH PLAIN " + PLAIN.encode() + b"\r\nMAIL FROM:<a@x.test>\r\n")
    session.reject(replies.AUTH_FAILED)
    assert session.next_event() is None
    assert session.data_to_send() == replies.AUTH_FAILED + replies.AUTH_REQUIRED


# ----- line length (RFC 4954 §4) ------------------------------------------------------------


def test_responses_may_be_12288_octets(parser: ParserBackend) -> None:
    session = submission(parser, max_line_length=512)
    feed(session, b"AUTH LOGIN\r\n")
    username = "u" * (12288 // 4 * 3)  # 12288 octets of base64
    line = b64(username)
    assert len(line) + 2 == MAX_RESPONSE_LINE
    _, out = feed(session, line + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    events, _ = feed(session, b64("pw") + b"\r\n")
    assert events == [AuthRequest("LOGIN", "", username, "pw")]


def test_a_longer_response_ends_the_exchange(parser: ParserBackend) -> None:
    session = submission(parser, max_line_length=512)
    feed(session, b"AUTH LOGIN\r\n")
    _, out = feed(session, b"QUFB" * 3073 + b"\r\n")  # 12292 octets
    assert out == replies.LINE_TOO_LONG
    _, out = feed(session, b"NOOP\r\n")  # a command again, not a response
    assert out == replies.OK
    feed(session, b"AUTH LOGIN\r\n")  # and the buffer is never held unbounded
    _, out = feed(session, b"A" * 20000)
    assert session.buffered == 0 and out == b""


def test_the_auth_command_line_keeps_the_smtp_limit(parser: ParserBackend) -> None:
    session = submission(parser, max_line_length=512)
    _, out = feed(session, b"AUTH PLAIN " + b"A" * 600 + b"\r\n")
    assert out == replies.LINE_TOO_LONG


# ----- AUTH= on MAIL (RFC 4954 §5) ---------------------------------------------------------


def test_auth_param_is_kept_from_an_authenticated_client(parser: ParserBackend) -> None:
    session = submission(parser)
    authenticate(session)
    events, _ = feed(session, b"MAIL FROM:<a@x.test> AUTH=a+2Bb@x.test\r\n")
    assert events == [MailFrom("a@x.test", {"AUTH": "a+2Bb@x.test"})]
    session.accept()
    feed(session, b"RSET\r\n")
    events, _ = feed(session, b"MAIL FROM:<a@x.test> AUTH=<>\r\n")
    assert events == [MailFrom("a@x.test", {"AUTH": "<>"})]


def test_auth_param_of_an_unauthenticated_client_becomes_empty(parser: ParserBackend) -> None:
    session = new_session(parser, auth=True, auth_plaintext=True)  # MAIL without AUTH allowed
    session.data_to_send()
    events, _ = feed(session, b"EHLO c.test\r\nMAIL FROM:<a@x.test> AUTH=boss@x.test\r\n")
    assert events == [MailFrom("a@x.test", {"AUTH": "<>"})]  # RFC 4954 §5: not trusted


@pytest.mark.parametrize("value", [b"AUTH", b"AUTH=a+2", b"AUTH=a+2b", b"AUTH=a=b", b"AUTH=a+zz"])
def test_malformed_auth_param_is_refused(parser: ParserBackend, value: bytes) -> None:
    session = submission(parser)
    authenticate(session)
    events, out = feed(session, b"MAIL FROM:<a@x.test> " + value + b"\r\n")
    assert events == [] and out == replies.BAD_AUTH_PARAM


def test_auth_param_where_auth_is_not_offered_is_unsupported(parser: ParserBackend) -> None:
    session = new_session(parser, auth=True)  # offered only under TLS, and this is not
    session.data_to_send()
    _, out = feed(session, b"EHLO c.test\r\nMAIL FROM:<a@x.test> AUTH=<>\r\n")
    assert out.endswith(replies.UNSUPPORTED_PARAM)


# ----- the password stays secret ----------------------------------------------------------


def test_the_password_is_not_in_the_events_repr(parser: ParserBackend) -> None:
    session = submission(parser)
    events, _ = feed(session, b"AUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert "alice" in repr(events) and "s3cret" not in repr(events)
    assert "s3cret" not in repr(vars(session) if hasattr(session, "__dict__") else session)
    assert session._pending is Decision.AUTH
