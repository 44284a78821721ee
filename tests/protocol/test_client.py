"""The outbound SMTP/LMTP client core (mta/protocol/client.py), sans-I/O: bytes in, replies
out, commands as bytes.  No sockets: every input is fed whole, byte by byte and split at
random, as h11's tests do.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.protocol.client import ClientConnection, ProtocolError, Reply, ReplyParser, dot_stuff

EHLO_REPLY = (
    b"250-sink.test Hello mx.test\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-8bitmime\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250 SMTPUTF8\r\n"
)


def feed_bytewise(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    replies: list[Reply] = []
    for i in range(len(data)):
        replies.extend(parser.feed(data[i : i + 1]))
    return replies


def feed_split(data: bytes, cuts: list[int]) -> list[Reply]:
    parser = ReplyParser()
    replies: list[Reply] = []
    start = 0
    for cut in sorted(set(cuts)):
        replies.extend(parser.feed(data[start:cut]))
        start = cut
    replies.extend(parser.feed(data[start:]))
    return replies


# -- ReplyParser ---------------------------------------------------------------------------


def test_single_line_reply() -> None:
    assert ReplyParser().feed(b"250 2.1.0 Ok\r\n") == [Reply(250, ("2.1.0 Ok",))]


def test_multi_line_reply_is_one_reply() -> None:
    [reply] = ReplyParser().feed(EHLO_REPLY)
    assert reply.code == 250
    assert reply.lines == (
        "sink.test Hello mx.test",
        "PIPELINING",
        "SIZE 10240000",
        "8bitmime",
        "ENHANCEDSTATUSCODES",
        "AUTH PLAIN LOGIN",
        "SMTPUTF8",
    )


def test_multi_line_reply_byte_by_byte() -> None:
    assert feed_bytewise(EHLO_REPLY) == ReplyParser().feed(EHLO_REPLY)


def test_incomplete_reply_waits_for_the_last_line() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-first\r\n250-second\r\n250 la") == []
    assert parser.feed(b"st\r\n") == [Reply(250, ("first", "second", "last"))]


def test_pipelined_replies_in_one_chunk_come_out_in_order() -> None:
    data = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n354 Go ahead\r\n"
    replies = ReplyParser().feed(data)
    assert [r.code for r in replies] == [250, 250, 550, 354]
    assert replies[2].text == "550 5.1.1 No such user"
    assert feed_bytewise(data) == replies


@given(st.lists(st.integers(min_value=0, max_value=len(EHLO_REPLY) * 2), max_size=8))
def test_any_split_gives_the_same_replies(cuts: list[int]) -> None:
    data = EHLO_REPLY + b"221 2.0.0 Bye\r\n" + EHLO_REPLY
    assert feed_split(data, cuts) == ReplyParser().feed(data)


def test_bare_code_and_lf_only_lines_are_tolerated() -> None:
    assert ReplyParser().feed(b"250\r\n") == [Reply(250, ("",))]
    assert ReplyParser().feed(b"250-a\n250 b\n") == [Reply(250, ("a", "b"))]


def test_non_utf8_text_does_not_break_the_parser() -> None:
    [reply] = ReplyParser().feed(b"550 5.1.1 caf\xe9 unknown\r\n")
    assert reply.code == 550
    assert reply.text.startswith("550 5.1.1 caf")


@pytest.mark.parametrize(
    "line",
    [b"hello\r\n", b"25 short\r\n", b"2500 four digits\r\n", b"abc text\r\n", b"250_x\r\n"],
)
def test_garbage_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyParser().feed(line)


def test_overlong_line_without_end_is_a_protocol_error() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"250-" + b"x" * (ReplyParser.MAX_LINE + 10))


# -- Reply ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "enhanced"),
    [
        (250, "2.1.5 Ok", "2.1.5"),
        (550, "5.1.1 No such user", "5.1.1"),
        (556, "5.1.10 null MX", "5.1.10"),
        (550, "No such user", "5.0.0"),  # no enhanced code: derived from the class
        (451, "try later", "4.0.0"),
        (250, "5.1.1 class does not match the reply", "2.0.0"),
        (421, "", "4.0.0"),
    ],
)
def test_enhanced_status_code(code: int, text: str, enhanced: str) -> None:
    assert Reply(code, (text,)).enhanced == enhanced


def test_reply_classes() -> None:
    assert Reply(250, ("ok",)).is_positive and Reply(354, ("go",)).is_positive
    assert Reply(451, ("later",)).is_transient and not Reply(451, ("",)).is_permanent
    assert Reply(550, ("no",)).is_permanent and not Reply(550, ("",)).is_positive


def test_reply_text_joins_lines() -> None:
    assert Reply(550, ("5.7.1 first", "second")).text == "550 5.7.1 first second"


# -- dot_stuff -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
        (b".starts with a dot\r\n", b"..starts with a dot\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),  # cannot end the data early
        (b"a\r\n..\r\n", b"a\r\n...\r\n.\r\n"),
        (b"no final line end", b"no final line end\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"mid.dle . dots.\r\n", b"mid.dle . dots.\r\n.\r\n"),
    ],
)
def test_dot_stuff(message: bytes, wire: bytes) -> None:
    assert dot_stuff(message) == wire


def unstuff(wire: bytes) -> bytes:
    """What a receiver makes of the DATA payload (RFC 5321 §4.5.2), as the test sink does."""
    framed = b"\r\n" + wire
    end = framed.find(b"\r\n.\r\n")
    assert end >= 0
    return framed[: end + 2].replace(b"\r\n.", b"\r\n")[2:]


lines = st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a", b"\xc3\xa9"]))


@given(lines)
def test_dot_stuffing_round_trips_and_ends_only_at_the_end(parts: list[bytes]) -> None:
    message = b"".join(p + b"\r\n" for p in parts)
    wire = dot_stuff(message)
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3  # only the real end
    assert unstuff(wire) == message


# -- ClientConnection ----------------------------------------------------------------------


def connected(lmtp: bool = False, ehlo: bytes = EHLO_REPLY) -> ClientConnection:
    client = ClientConnection("mx.test", lmtp=lmtp)
    [reply] = client.receive_data(ehlo)
    client.handle_ehlo(reply)
    return client


def test_ehlo_and_lhlo_commands() -> None:
    assert ClientConnection("mx.test").ehlo() == b"EHLO mx.test\r\n"
    assert ClientConnection("mx.test", lmtp=True).ehlo() == b"LHLO mx.test\r\n"
    assert ClientConnection("mx.test").helo() == b"HELO mx.test\r\n"
    assert ClientConnection("bücher.test").ehlo() == b"EHLO xn--bcher-kva.test\r\n"


def test_ehlo_extensions_are_parsed_case_insensitively() -> None:
    client = connected()
    assert client.esmtp
    for keyword in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"):
        assert client.supports(keyword), keyword
    assert not client.supports("STARTTLS")
    assert not client.supports("sink.test")  # the greeting line is not an extension
    assert client.extensions["AUTH"] == "PLAIN LOGIN"
    assert client.size_limit == 10240000


@pytest.mark.parametrize(("line", "limit"), [(b"SIZE", None), (b"SIZE 0", None), (b"SIZE x", None)])
def test_size_without_a_usable_limit(line: bytes, limit: int | None) -> None:
    client = connected(ehlo=b"250-sink.test\r\n250 " + line + b"\r\n")
    assert client.supports("SIZE")
    assert client.size_limit is limit


def test_a_second_ehlo_replaces_the_extensions() -> None:
    """After STARTTLS the client must forget what it learned in clear text (RFC 3207 §4.2)."""
    client = connected(ehlo=b"250-sink.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
    assert client.supports("STARTTLS")
    [reply] = client.receive_data(b"250-sink.test\r\n250 SIZE 100\r\n")
    client.handle_ehlo(reply)
    assert not client.supports("STARTTLS") and not client.supports("PIPELINING")
    assert client.size_limit == 100


def test_mail_parameters_follow_the_extensions() -> None:
    client = connected()
    assert (
        client.mail("a@x.test", size=123, eight_bit=True, smtputf8=True)
        == b"MAIL FROM:<a@x.test> SIZE=123 BODY=8BITMIME SMTPUTF8\r\n"
    )
    assert client.mail("", size=5, eight_bit=False, smtputf8=False) == b"MAIL FROM:<> SIZE=5\r\n"


def test_no_parameters_to_a_server_without_extensions() -> None:
    client = ClientConnection("mx.test")  # HELO only: no EHLO reply was handled
    assert not client.esmtp
    assert (
        client.mail("a@x.test", size=123, eight_bit=True, smtputf8=True)
        == b"MAIL FROM:<a@x.test>\r\n"
    )


def test_transaction_commands() -> None:
    client = connected()
    assert client.rcpt("ü@x.test") == "RCPT TO:<ü@x.test>\r\n".encode()
    assert client.data() == b"DATA\r\n"
    assert client.message(b".x\r\n") == b"..x\r\n.\r\n"
    assert client.rset() == b"RSET\r\n"
    assert client.quit() == b"QUIT\r\n"
    assert client.starttls() == b"STARTTLS\r\n"
