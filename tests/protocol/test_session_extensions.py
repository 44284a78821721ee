"""What the server says it supports is what it supports, on every listener and TLS state.

Every EHLO keyword the session advertises is probed with the command or parameter it
promises (a keyword without a probe here fails the test: add one), and what it does not
advertise (STARTTLS after TLS, AUTH before TLS) is refused.  HELP names exactly the
commands that are taken; VRFY answers 252 without disclosing anyone, or 502 when
``smtp.vrfy`` is off (Postfix's ``disable_vrfy_command``); EXPN is 502 (RFC 5321 §3.5.3).
Every test runs against both parser backends.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mta.protocol import replies
from mta.protocol.events import AuthRequest, DataEnd, MailFrom, StartTls
from mta.protocol.session import ParserBackend, ServerSession
from tests.protocol.sessions import new_session
from tests.protocol.test_session import QID, run, split_replies

# listener settings x TLS state: (name, SessionLimits overrides, start TLS first)
SETTINGS = [
    ("plain", {}, False),
    ("starttls_offered", {"starttls": True}, False),
    ("after_starttls", {"starttls": True}, True),
    ("auth_before_tls", {"starttls": True, "auth": True}, False),
    ("auth_after_tls", {"starttls": True, "auth": True}, True),
    ("auth_plaintext", {"auth": True, "auth_plaintext": True}, False),
    ("required_tls_auth", {"starttls": True, "require_tls": True, "auth": True}, False),
    ("small_size_no_vrfy", {"max_message_size": 5000, "vrfy": False}, False),
]


def greeted(parser: ParserBackend, overrides: dict[str, object], tls: bool) -> ServerSession:
    session = new_session(parser, **overrides)
    session.data_to_send()  # the greeting
    if tls:
        session.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
        assert isinstance(session.next_event(), StartTls)
        session.accept()
        session.data_to_send()
        assert session.tls
    return session


def ehlo_keywords(session: ServerSession) -> list[str]:
    [reply] = split_replies(run(session, b"EHLO client.test\r\n").replies[0])
    return [line[4:].decode() for line in reply.splitlines()[1:]]


def reply_to(session: ServerSession, command: bytes) -> bytes:
    t = run(session, command)
    return t.replies[-1]


def raw_reply(session: ServerSession, command: bytes) -> bytes:
    """The reply to ``command`` as it is (334 challenges have no enhanced code)."""
    session.receive_data(command)
    assert session.next_event() is None
    return session.data_to_send()


# -- one probe per keyword: it must do what the keyword promises -----------------------------


def probe_pipelining(session: ServerSession, argument: str) -> None:
    t = run(session, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\n")  # one write
    assert [r[:3] for r in t.replies] == [b"250", b"250", b"250"]


def probe_size(session: ServerSession, argument: str) -> None:
    assert int(argument) == session.limits.max_message_size
    ok = reply_to(session, b"MAIL FROM:<a@x.test> SIZE=%d\r\n" % int(argument))
    assert ok.startswith(b"250 ")
    run(session, b"RSET\r\n")
    too_big = reply_to(session, b"MAIL FROM:<a@x.test> SIZE=%d\r\n" % (int(argument) + 1))
    assert too_big.startswith(b"552 ")


def probe_8bitmime(session: ServerSession, argument: str) -> None:
    assert reply_to(session, b"MAIL FROM:<a@x.test> BODY=8BITMIME\r\n").startswith(b"250 ")
    run(session, b"RSET\r\n")


def probe_enhancedstatuscodes(session: ServerSession, argument: str) -> None:
    assert reply_to(session, b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


def probe_smtputf8(session: ServerSession, argument: str) -> None:
    mail = "MAIL FROM:<ü@x.test> SMTPUTF8\r\n".encode()
    assert reply_to(session, mail).startswith(b"250 ")
    run(session, b"RSET\r\n")


def probe_chunking(session: ServerSession, argument: str) -> None:
    t = run(session, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3 LAST\r\nabc")
    assert t.of(DataEnd) and t.data == b"abc"
    assert t.replies[-1] == replies.queued(QID)


def probe_dsn(session: ServerSession, argument: str) -> None:
    t = run(
        session,
        b"MAIL FROM:<a@x.test> RET=HDRS ENVID=id+2B1\r\n"
        b"RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.test\r\nRSET\r\n",
    )
    assert [r[:3] for r in t.replies] == [b"250", b"250", b"250"]
    assert reply_to(session, b"MAIL FROM:<a@x.test> RET=MAYBE\r\n").startswith(b"501 ")


def probe_requiretls(session: ServerSession, argument: str) -> None:
    assert session.tls  # RFC 8689 §2: offered only under TLS
    assert reply_to(session, b"MAIL FROM:<a@x.test> REQUIRETLS\r\n").startswith(b"250 ")
    run(session, b"RSET\r\n")
    assert reply_to(session, b"MAIL FROM:<a@x.test> REQUIRETLS=YES\r\n").startswith(b"555 ")


def probe_starttls(session: ServerSession, argument: str) -> None:
    session.receive_data(b"STARTTLS\r\n")
    assert isinstance(session.next_event(), StartTls)
    session.reject(replies.TLS_UNAVAILABLE)  # taken: the server decides, not the session
    session.data_to_send()


def probe_auth(session: ServerSession, argument: str) -> None:
    mechanisms = argument.split()
    assert set(mechanisms) == {"PLAIN", "LOGIN"}
    for mechanism in mechanisms:
        assert raw_reply(session, b"AUTH %s\r\n" % mechanism.encode()).startswith(b"334 ")
        assert raw_reply(session, b"*\r\n").startswith(b"501 ")  # RFC 4954 §4: cancelled
    session.receive_data(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
    assert isinstance(session.next_event(), AuthRequest)
    session.reject(replies.AUTH_FAILED)
    session.data_to_send()


PROBES: dict[str, Callable[[ServerSession, str], None]] = {
    "PIPELINING": probe_pipelining,
    "SIZE": probe_size,
    "8BITMIME": probe_8bitmime,
    "ENHANCEDSTATUSCODES": probe_enhancedstatuscodes,
    "SMTPUTF8": probe_smtputf8,
    "CHUNKING": probe_chunking,
    "DSN": probe_dsn,
    "REQUIRETLS": probe_requiretls,
    "STARTTLS": probe_starttls,
    "AUTH": probe_auth,
}


@pytest.mark.parametrize(
    ("overrides", "tls"), [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS]
)
def test_every_ehlo_keyword_works_and_what_is_not_offered_is_refused(
    parser: ParserBackend, overrides: dict[str, object], tls: bool
) -> None:
    session = greeted(parser, overrides, tls)
    keywords = ehlo_keywords(session)
    offered = {k.split()[0]: k.partition(" ")[2] for k in keywords}
    assert len(offered) == len(keywords), keywords  # no keyword twice
    assert not offered.keys() - PROBES.keys(), "a keyword without a probe: add one"
    limits = session.limits
    require_tls_first = limits.require_tls and not session.tls
    for keyword, argument in offered.items():
        if require_tls_first and keyword in (
            "PIPELINING",
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "CHUNKING",
            "DSN",
        ):
            continue  # MAIL waits for STARTTLS on this listener (530, tested elsewhere)
        PROBES[keyword](session, argument)
    # the extensions every listener offers, and the ones that depend on settings and TLS
    every = {"PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"}
    assert every <= offered.keys()
    assert ("STARTTLS" in offered) is (limits.starttls and not session.tls)
    assert ("REQUIRETLS" in offered) is session.tls
    auth = limits.auth and (session.tls or (limits.auth_plaintext and not limits.require_tls))
    assert ("AUTH" in offered) is auth
    if "STARTTLS" not in offered:
        assert reply_to(session, b"STARTTLS\r\n")[:1] == b"5"
    if "AUTH" not in offered:
        assert reply_to(session, b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")[:1] == b"5"


@pytest.mark.parametrize(
    ("overrides", "tls"), [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS]
)
def test_help_names_exactly_the_commands_taken(
    parser: ParserBackend, overrides: dict[str, object], tls: bool
) -> None:
    session = greeted(parser, overrides, tls)
    run(session, b"EHLO client.test\r\n")
    help_reply = reply_to(session, b"HELP\r\n")
    assert help_reply.startswith(b"214 2.0.0 ")
    named = help_reply.decode().split("commands: ")[1].rstrip(")\r\n").split()
    not_taken = (b"500 ", b"502 ")
    for verb in ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT",
                 "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "ETRN", "TURN"]:  # fmt: skip
        probe = greeted(parser, overrides, tls)
        run(probe, b"EHLO client.test\r\n")
        argument = {"VRFY": b" postmaster", "EXPN": b" staff", "AUTH": b" LOGIN"}
        probe.receive_data(verb.encode() + argument.get(verb, b"") + b"\r\n")
        event = probe.next_event()
        if isinstance(event, (StartTls, MailFrom)):
            taken = True
        else:
            # AUTH before TLS is 530 "Must issue a STARTTLS command first": not taken now
            refusals = (*not_taken, b"530 ") if verb == "AUTH" else not_taken
            taken = not probe.data_to_send().startswith(refusals)
        assert taken is (verb in named), verb


def test_vrfy_answers_252_and_discloses_no_one(parser: ParserBackend) -> None:
    session = greeted(parser, {}, False)
    assert reply_to(session, b"VRFY root\r\n") == replies.VRFY
    assert reply_to(session, b"VRFY no-such-user\r\n") == replies.VRFY


def test_vrfy_off_is_502_as_postfix_says_it(parser: ParserBackend) -> None:
    session = greeted(parser, {"vrfy": False}, False)
    assert reply_to(session, b"VRFY root\r\n") == b"502 5.5.1 VRFY command is disabled\r\n"


def test_expn_is_502(parser: ParserBackend) -> None:
    session = greeted(parser, {}, False)
    assert reply_to(session, b"EXPN staff\r\n") == replies.NOT_IMPLEMENTED
