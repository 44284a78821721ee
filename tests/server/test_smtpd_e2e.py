"""The receive path end to end: a real ``mta serve`` on loopback, real clients, real files.

Every test talks SMTP over a socket to the server subprocess and then reads what the server
promised to keep: the message file in the queue (envelope and exact bytes), or the
absence of one.  Nothing is mocked.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import random
import re
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from mta.queue.envelope import Envelope
from mta.queue.msgfile import read_message_file
from mta.queue.spool import Spool
from tests.helpers import MtaProcess, RawClient
from tests.server.queue_view import (
    QUEUED_STATES,
    queue_id_of,
    queued,
    read_all_replies,
    running_relay,
)
from tests.server.queue_view import stored as queued_message

pytestmark = pytest.mark.timeout(60)

HELO = "client.test"


# ----- helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    """One relay with the default settings, shared by the tests that only add messages."""
    yield from running_relay(tmp_path_factory, dead_relay, {})


class Stored(NamedTuple):
    envelope: Envelope
    data: bytes  # the message as stored: our trace header, then what the client sent


def stored(server: MtaProcess, queue_id: str) -> Stored:
    """The complete message of ``queue_id`` (fails if it is missing or partial)."""
    return Stored(*queued_message(server, queue_id))


def split_trace(message: bytes) -> tuple[bytes, bytes]:
    """The first header field (with its folded lines) and everything after it."""
    end = 0
    while True:
        end = message.index(b"\r\n", end) + 2
        if message[end : end + 1] not in (b" ", b"\t"):
            return message[:end], message[end:]


def check_received(trace: bytes, queue_id: str, recipient: str | None, protocol: str) -> None:
    """The Received: field we add: from HELO and address, by us, with, id, (for), date."""
    pattern = (
        rb"Received: from (?P<helo>\S+) \(\[(?P<ip>[^\]]+)\]\)\r\n"
        rb"\tby mx\.test \(mta\) with (?P<proto>\S+) id (?P<id>[0-9A-F]{19})"
        rb"(?:\r\n\tfor <(?P<for>[^>]*)>)?"
        rb"; (?P<date>[^\r\n]+)\r\n"
    )
    match = re.fullmatch(pattern, trace)
    assert match, f"unexpected trace header: {trace!r}"
    assert match["helo"] == HELO.encode()
    assert match["ip"] == b"127.0.0.1"
    assert match["proto"] == protocol.encode()
    assert match["id"] == queue_id.encode()
    assert match["for"] == (recipient.encode() if recipient is not None else None)
    when = email.utils.parsedate_to_datetime(match["date"].decode()).timestamp()
    assert abs(when - time.time()) < 120


def send_with_smtplib(
    server: MtaProcess,
    sender: str,
    recipients: list[str],
    message: bytes,
    mail_options: tuple[str, ...] = (),
) -> str:
    """One transaction through smtplib; the queue ID from the final reply."""
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname=HELO, timeout=30) as client:
        client.ehlo()
        code, text = client.mail(sender, list(mail_options))
        assert code == 250, text
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            assert code == 250, text
        code, text = client.data(message)
        assert code == 250, text
        client.quit()
    return queue_id_of(b"%d %s\r\n" % (code, text))


def assert_stored_exactly(
    server: MtaProcess, queue_id: str, message: bytes, recipient: str | None
) -> Stored:
    """The queued file holds our Received: field followed by exactly ``message``."""
    mf = stored(server, queue_id)
    data = mf.data
    trace, rest = split_trace(data)
    check_received(trace, queue_id, recipient, "UTF8SMTP" if mf.envelope.smtputf8 else "ESMTP")
    assert rest == message
    assert mf.envelope.size == len(data)
    return mf


def all_envelopes(server: MtaProcess) -> list[Envelope]:
    """Envelopes of every complete message file in any state."""
    spool = Spool(str(server.spool))
    found = [spool.read_segment_message(ref).envelope for ref in spool.segment_messages()]
    for state in (*QUEUED_STATES, "hold", "corrupt", "tmp"):
        for path in server.files(state):
            # a partial file in tmp/ is no message; one that moved on is read in its next state
            with contextlib.suppress(ValueError, FileNotFoundError):
                found.append(read_message_file(str(path)).envelope)
    return found


def transaction(sender: bytes, recipients: list[bytes]) -> bytes:
    lines = [b"MAIL FROM:<%s>\r\n" % sender]
    lines += [b"RCPT TO:<%s>\r\n" % r for r in recipients]
    return b"".join(lines) + b"DATA\r\n"


# ----- plain acceptance ------------------------------------------------------------------


def test_two_recipients_are_queued_with_envelope_and_trace(server: MtaProcess) -> None:
    message = (
        b"From: Alice <alice@client.test>\r\n"
        b"To: bob@example.org, carol@example.net\r\n"
        b"Subject: hello\r\n"
        b"Message-ID: <1@client.test>\r\n"
        b"\r\n"
        b"Hello Bob and Carol.\r\n"
        b".a line that starts with a dot\r\n"
        b"..two dots\r\n"
        b"\r\n"
        b"Bye.\r\n"
    )
    queue_id = send_with_smtplib(
        server, "alice@client.test", ["bob@example.org", "carol@example.net"], message
    )
    mf = assert_stored_exactly(server, queue_id, message, recipient=None)
    env = mf.envelope
    assert env.queue_id == queue_id
    assert env.sender == "alice@client.test"
    assert [r.address for r in env.recipients] == ["bob@example.org", "carol@example.net"]
    assert env.client_address == "127.0.0.1"
    assert env.client_helo == HELO
    assert env.body_type == "7BIT"
    assert not env.smtputf8
    assert abs(env.received_at - time.time()) < 120
    assert not (server.spool / "tmp" / queue_id).exists()


def test_single_recipient_trace_names_it(server: MtaProcess) -> None:
    message = b"Subject: one\r\n\r\njust you\r\n"
    queue_id = send_with_smtplib(server, "a@client.test", ["only@example.org"], message)
    assert_stored_exactly(server, queue_id, message, recipient="only@example.org")


def test_null_sender(server: MtaProcess) -> None:
    message = b"Subject: bounce\r\n\r\nDelivery failed.\r\n"
    queue_id = send_with_smtplib(server, "<>", ["a@example.org"], message)
    mf = assert_stored_exactly(server, queue_id, message, recipient="a@example.org")
    assert mf.envelope.sender == ""


def test_8bitmime_body_is_stored_byte_exact(server: MtaProcess) -> None:
    high = bytes(range(0x80, 0x100))
    message = (
        b"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "Grüße, ça va? Привет 你好 🎉\r\n".encode()
        + high[:64]
        + b"\r\n"
        + high[64:]
        + b"\r\n"
        + b"\x01\x02\x1b[0m\t tab and controls\r\n"
    )
    queue_id = send_with_smtplib(
        server, "a@client.test", ["b@example.org"], message, ("BODY=8BITMIME",)
    )
    mf = assert_stored_exactly(server, queue_id, message, recipient="b@example.org")
    assert mf.envelope.body_type == "8BITMIME"
    assert mf.envelope.mail_params == {"BODY": "8BITMIME"}


def test_smtputf8_addresses(server: MtaProcess) -> None:
    message = "Subject: ünïcödé\r\nFrom: Jürgen <jürgen@bücher.test>\r\n\r\nHallo!\r\n".encode()
    queue_id = send_with_smtplib(
        server, "jürgen@bücher.test", ["用户@例子.测试"], message, ("SMTPUTF8", "BODY=8BITMIME")
    )
    mf = assert_stored_exactly(server, queue_id, message, recipient="用户@例子.测试")
    assert mf.envelope.sender == "jürgen@bücher.test"
    assert [r.address for r in mf.envelope.recipients] == ["用户@例子.测试"]
    assert mf.envelope.smtputf8


def test_utf8_address_without_smtputf8_is_refused(server: MtaProcess) -> None:
    client = RawClient(server.port)
    client.cmd(b"EHLO " + HELO.encode())
    assert client.cmd("MAIL FROM:<jürgen@bücher.test>".encode()).startswith(b"553 5.6.7")
    assert client.cmd(b"QUIT").startswith(b"221")
    client.close()


def test_dot_stuffed_lines_come_back_unstuffed(server: MtaProcess) -> None:
    """RFC 5321 §4.5.2, over a raw socket so that we choose the stuffing ourselves."""
    wire = (
        b"Subject: dots\r\n\r\n"
        b"..\r\n"  # a line that is one dot
        b"...\r\n"  # two dots
        b"..leading dot\r\n"
        b"...two leading dots\r\n"
        b"no dot.\r\n"
        b"a . in the middle\r\n"
        b"..\r\n"
    )
    expected = (
        b"Subject: dots\r\n\r\n"
        b".\r\n"
        b"..\r\n"
        b".leading dot\r\n"
        b"..two leading dots\r\n"
        b"no dot.\r\n"
        b"a . in the middle\r\n"
        b".\r\n"
    )
    client = RawClient(server.port)
    client.cmd(b"EHLO " + HELO.encode())
    client.send(transaction(b"a@client.test", [b"b@example.org"]))
    assert [r[:3] for r in client.replies(3)] == [b"250", b"250", b"354"]
    client.send(wire + b".\r\n")
    queue_id = queue_id_of(client.reply())
    client.cmd(b"QUIT")
    client.close()
    assert_stored_exactly(server, queue_id, expected, recipient="b@example.org")


def test_smtplib_message_with_dot_lines_round_trips(server: MtaProcess) -> None:
    message = b"Subject: x\r\n\r\n.\r\n..\r\n.x\r\n..y\r\n. \r\nend\r\n"
    queue_id = send_with_smtplib(server, "a@client.test", ["b@example.org"], message)
    assert_stored_exactly(server, queue_id, message, recipient="b@example.org")


def test_long_body_line_passes_unchanged(server: MtaProcess) -> None:
    line = bytes(random.Random(1).choice(b"abcdefghijklmnop.- ") for _ in range(5000))
    message = b"Subject: long\r\n\r\n" + line + b"\r\nshort\r\n" + line + b"\r\n"
    assert len(line) == 5000
    queue_id = send_with_smtplib(server, "a@client.test", ["b@example.org"], message)
    assert_stored_exactly(server, queue_id, message, recipient="b@example.org")


@pytest.mark.timeout(120)
def test_five_megabyte_message_is_stored_byte_exact(server: MtaProcess) -> None:
    rng = random.Random(5)
    text = base64.a85encode(rng.randbytes(4_000_000))  # printable, includes "."
    lines, pos = [], 0
    while pos < len(text):
        n = rng.randint(0, 998)
        lines.append(text[pos : pos + n])
        pos += n
    lines[10:10] = [b".", b"..", b".starts with a dot", b""]
    message = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    assert len(message) > 5_000_000
    queue_id = send_with_smtplib(server, "a@client.test", ["b@example.org"], message)
    assert_stored_exactly(server, queue_id, message, recipient="b@example.org")


def test_lowercase_commands_work(server: MtaProcess) -> None:
    client = RawClient(server.port)
    assert client.cmd(b"ehlo " + HELO.encode()).startswith(b"250-mx.test")
    assert client.cmd(b"mail from:<a@client.test>").startswith(b"250 2.1.0")
    assert client.cmd(b"rcpt to:<b@example.org>").startswith(b"250 2.1.5")
    assert client.cmd(b"noop").startswith(b"250")
    assert client.cmd(b"data").startswith(b"354")
    queue_id = queue_id_of(client.cmd(b"Subject: lc\r\n\r\nhi\r\n."))
    assert client.cmd(b"quit").startswith(b"221")
    client.close()
    assert_stored_exactly(server, queue_id, b"Subject: lc\r\n\r\nhi\r\n", "b@example.org")


def test_helo_session_is_plain_smtp(server: MtaProcess) -> None:
    client = RawClient(server.port)
    assert client.cmd(b"HELO " + HELO.encode()) == b"250 mx.test\r\n"
    client.send(transaction(b"a@client.test", [b"b@example.org"]))
    assert [r[:3] for r in client.replies(3)] == [b"250", b"250", b"354"]
    queue_id = queue_id_of(client.cmd(b"Subject: helo\r\n\r\nhi\r\n."))
    client.close()
    data = stored(server, queue_id).data
    assert b" with SMTP id " + queue_id.encode() in split_trace(data)[0]


# ----- pipelining (RFC 2920) -------------------------------------------------------------


def test_pipelined_commands_get_replies_in_order(server: MtaProcess) -> None:
    client = RawClient(server.port)
    ehlo = client.cmd(b"EHLO " + HELO.encode())
    assert b"250-PIPELINING\r\n" in ehlo
    recipients = [b"r1@example.org", b"r2@example.org", b"r3@example.org"]
    client.send(transaction(b"a@client.test", recipients))  # one packet
    assert client.replies(5) == [
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ]
    first = b"Subject: first\r\n\r\none\r\n"
    client.send(first + b".\r\n" + transaction(b"b@client.test", [b"r4@example.org"]))
    replies = client.replies(4)
    first_id = queue_id_of(replies[0])
    assert replies[1:] == [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", replies[3]]
    assert replies[3].startswith(b"354 ")
    second = b"Subject: second\r\n\r\ntwo\r\n"
    client.send(second + b".\r\nQUIT\r\n")
    replies = client.replies(2)
    second_id = queue_id_of(replies[0])
    assert replies[1] == b"221 2.0.0 mx.test Bye\r\n"
    assert client.closed_by_server()
    client.close()
    env = assert_stored_exactly(server, first_id, first, recipient=None).envelope
    assert [r.address.encode() for r in env.recipients] == recipients
    env = assert_stored_exactly(server, second_id, second, "r4@example.org").envelope
    assert env.sender == "b@client.test"


def test_whole_transactions_pipelined_with_rset_and_noop(server: MtaProcess) -> None:
    """Several transactions (and an abandoned one) in a single write; replies in order."""
    messages = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    batch = (
        b"EHLO client.test\r\n"
        + transaction(b"s0@client.test", [b"r0@example.org"])
        + messages[0]
        + b".\r\nNOOP\r\nRSET\r\n"
        + transaction(b"s1@client.test", [b"r1a@example.org", b"r1b@example.org"])
        + messages[1]
        + b".\r\n"
        + b"MAIL FROM:<gone@client.test>\r\nRCPT TO:<gone@example.org>\r\nRSET\r\n"
        + b"NOOP\r\n"
        + transaction(b"s2@client.test", [b"r2@example.org"])
        + messages[2]
        + b".\r\nQUIT\r\n"
    )
    client = RawClient(server.port)
    client.send(batch)
    replies = read_all_replies(client)
    client.close()
    codes = [r[:3] for r in replies]
    assert codes == [
        b"250",  # EHLO
        *[b"250", b"250", b"354", b"250"],  # transaction 0
        b"250",  # NOOP
        b"250",  # RSET
        *[b"250", b"250", b"250", b"354", b"250"],  # transaction 1
        *[b"250", b"250", b"250"],  # abandoned MAIL, RCPT, RSET
        b"250",  # NOOP
        *[b"250", b"250", b"354", b"250"],  # transaction 2
        b"221",
    ]
    ids = [queue_id_of(replies[i]) for i in (4, 11, 19)]
    assert len(set(ids)) == 3
    expect = [["r0@example.org"], ["r1a@example.org", "r1b@example.org"], ["r2@example.org"]]
    for i, queue_id in enumerate(ids):
        single = expect[i][0] if len(expect[i]) == 1 else None
        env = assert_stored_exactly(server, queue_id, messages[i], single).envelope
        assert env.sender == f"s{i}@client.test"
        assert [r.address for r in env.recipients] == expect[i]
    assert "gone@client.test" not in {e.sender for e in all_envelopes(server)}


@pytest.mark.timeout(120)
def test_many_transactions_pipelined_in_one_burst(server: MtaProcess) -> None:
    """More pipelined input than the server commits at once: nothing lost or reordered."""
    count = 60
    body = b"Subject: burst\r\n\r\n" + b"x" * 2000 + b"\r\n"
    batch = b"EHLO client.test\r\n" + b"".join(
        transaction(b"s%d@client.test" % i, [b"r%d@example.org" % i]) + body + b".\r\n"
        for i in range(count)
    )
    client = RawClient(server.port, timeout=60)
    client.send(batch + b"QUIT\r\n")
    replies = read_all_replies(client)
    client.close()
    assert len(replies) == 1 + 4 * count + 1
    assert replies[-1].startswith(b"221")
    for i in range(count):
        group = replies[1 + 4 * i : 5 + 4 * i]
        assert [r[:3] for r in group[:3]] == [b"250", b"250", b"354"]
        env = assert_stored_exactly(
            server, queue_id_of(group[3]), body, f"r{i}@example.org"
        ).envelope
        assert env.sender == f"s{i}@client.test"


# ----- relay control ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay_server(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    """Loopback is *not* a relay client here; only example.org is ours."""
    overrides = {
        "relay": {"networks": ["10.0.0.0/8"], "domains": ["example.org"], "recipients": "any"}
    }
    yield from running_relay(tmp_path_factory, dead_relay, overrides)


def test_relay_is_denied_outside_our_domains(relay_server: MtaProcess) -> None:
    client = RawClient(relay_server.port)
    client.cmd(b"EHLO " + HELO.encode())
    assert client.cmd(b"MAIL FROM:<a@client.test>") == b"250 2.1.0 Ok\r\n"
    assert client.cmd(b"RCPT TO:<x@example.org>") == b"250 2.1.5 Ok\r\n"
    assert client.cmd(b"RCPT TO:<x@other.test>").startswith(b"554 5.7.1 ")
    assert client.cmd(b"RCPT TO:<postmaster>") == b"250 2.1.5 Ok\r\n"
    assert client.cmd(b"RCPT TO:<Y@EXAMPLE.ORG>") == b"250 2.1.5 Ok\r\n"
    assert client.cmd(b"RCPT TO:<x@sub.example.org>").startswith(b"554 5.7.1 ")
    assert client.cmd(b"RCPT TO:<x@example.org.other.test>").startswith(b"554 5.7.1 ")
    assert client.cmd(b"DATA").startswith(b"354")
    queue_id = queue_id_of(client.cmd(b"Subject: relay\r\n\r\nhi\r\n."))
    client.cmd(b"QUIT")
    client.close()
    env = stored(relay_server, queue_id).envelope
    assert [r.address for r in env.recipients] == ["x@example.org", "postmaster", "Y@EXAMPLE.ORG"]


def test_only_denied_recipients_means_no_data(relay_server: MtaProcess) -> None:
    client = RawClient(relay_server.port)
    client.cmd(b"EHLO " + HELO.encode())
    client.send(transaction(b"a@client.test", [b"x@other.test", b"y@third.test"]))
    replies = client.replies(4)
    assert [r[:9] for r in replies] == [b"250 2.1.0", b"554 5.7.1", b"554 5.7.1", b"503 5.5.1"]
    before = queued(relay_server)
    client.cmd(b"QUIT")
    client.close()
    assert queued(relay_server) == before


# ----- SMTP smuggling --------------------------------------------------------------------

SMUGGLE_VECTORS = [
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r\n.\r",
    b"\r\r\n.\r\r\n",
    b"\n\n.\r\n",
    b"\r\n\x00.\r\n",
]
SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"


def _smuggle(server: MtaProcess, vector: bytes) -> list[bytes]:
    """One transaction whose DATA hides a second one behind ``vector``; replies after 354."""
    client = RawClient(server.port)
    client.cmd(b"EHLO " + HELO.encode())
    client.send(transaction(b"good@client.test", [b"rcpt@example.org"]))
    assert [r[:3] for r in client.replies(3)] == [b"250", b"250", b"354"]
    client.send(b"Subject: s\r\n\r\nhello" + vector + SMUGGLED + b"\r\n.\r\nQUIT\r\n")
    replies = read_all_replies(client)
    client.close()
    return replies


@pytest.fixture(scope="module")
def normalizing_server(
    tmp_path_factory: pytest.TempPathFactory, dead_relay: str
) -> Iterator[MtaProcess]:
    normalize = {"bare_lf": "normalize", "nul": "strip"}
    yield from running_relay(tmp_path_factory, dead_relay, {"smtp": normalize})


def _never_evil(server: MtaProcess) -> None:
    # No wait needed: _smuggle read every reply until the server closed after QUIT, and a
    # smuggled message would have had its 250 (sent only once it is durable) before 221.
    senders = {e.sender for e in all_envelopes(server)}
    assert "evil@x" not in senders
    assert not any("victim@y" in [r.address for r in e.recipients] for e in all_envelopes(server))


@pytest.mark.parametrize("vector", SMUGGLE_VECTORS, ids=repr)
def test_smuggling_is_one_message_or_none(server: MtaProcess, vector: bytes) -> None:
    before = queued(server)
    replies = _smuggle(server, vector)
    assert len(replies) == 2, replies  # exactly one reply to the data, then QUIT's
    assert replies[1].startswith(b"221 ")
    new = queued(server) - before
    bare = b"\r" in vector.replace(b"\r\n", b"") or b"\n" in vector.replace(b"\r\n", b"")
    if bare or b"\x00" in vector:  # a next hop that drops NULs would see the end (issue 10)
        assert replies[0].startswith(b"550 5.5.2 "), replies
        assert new == set()
    else:
        queue_id = queue_id_of(replies[0])
        assert new == {queue_id}
        mf = stored(server, queue_id)
        assert mf.envelope.sender == "good@client.test"
        assert vector + SMUGGLED in mf.data
    _never_evil(server)


@pytest.mark.parametrize("vector", SMUGGLE_VECTORS, ids=repr)
def test_smuggling_normalized_stays_inside_one_message(
    normalizing_server: MtaProcess, vector: bytes
) -> None:
    before = queued(normalizing_server)
    replies = _smuggle(normalizing_server, vector)
    assert len(replies) == 2, replies
    queue_id = queue_id_of(replies[0])
    assert replies[1].startswith(b"221 ")
    new = queued(normalizing_server) - before
    assert new == {queue_id}
    mf = stored(normalizing_server, queue_id)
    assert mf.envelope.sender == "good@client.test"
    assert [r.address for r in mf.envelope.recipients] == ["rcpt@example.org"]
    data = mf.data
    assert SMUGGLED in data
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert b"\x00" not in data
    _never_evil(normalizing_server)


def test_bare_lf_in_command_is_refused(server: MtaProcess) -> None:
    client = RawClient(server.port)
    client.send(b"EHLO client.test\nMAIL FROM:<a@client.test>\r\n")
    assert client.reply().startswith(b"500 5.5.2 ")
    assert client.reply().startswith(b"503 ")  # the MAIL line stays a separate command
    client.close()


# ----- graceful stop ---------------------------------------------------------------------


def test_term_lets_the_transaction_in_flight_finish(
    mta_factory: Callable[..., MtaProcess], dead_relay: str
) -> None:
    """SIGTERM: idle sessions get 421 at once, a message half-sent still gets its 250."""
    server = mta_factory({"delivery": {"relayhost": dead_relay}})
    busy = RawClient(server.port)
    busy.cmd(b"EHLO " + HELO.encode())
    busy.send(transaction(b"a@client.test", [b"b@example.org"]))
    assert [r[:3] for r in busy.replies(3)] == [b"250", b"250", b"354"]
    busy.send(b"Subject: drain\r\n\r\nfirst half\r\n")
    idle = RawClient(server.port)
    idle.cmd(b"EHLO " + HELO.encode())
    server.signal(signal.SIGTERM)
    assert idle.reply().startswith(b"421 4.3.2 mx.test ")
    assert idle.closed_by_server()
    idle.close()
    busy.send(b"second half\r\n.\r\n")
    queue_id = queue_id_of(busy.reply())
    assert busy.reply().startswith(b"421 4.3.2 ")  # and then it is closed, too
    assert busy.closed_by_server()
    busy.close()
    assert server.proc is not None
    assert server.proc.wait(15) == 0
    envelope, data = stored(server, queue_id)
    assert data.endswith(b"\r\nSubject: drain\r\n\r\nfirst half\r\nsecond half\r\n")
    assert envelope.recipients[0].address == "b@example.org"


def test_clean_stop_leaves_no_temporary_directories(
    mta_factory: Callable[..., MtaProcess],
    dead_relay: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The master's run directory and metrics directory go away with it (no /tmp litter)."""
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))  # inherited by `mta serve`
    server = mta_factory({"delivery": {"relayhost": dead_relay}})
    send_with_smtplib(server, "a@client.test", ["b@example.org"], b"Subject: t\r\n\r\nx\r\n")
    assert list(private_tmp.iterdir()) != []  # it did use them while running
    assert server.stop() == 0
    assert list(private_tmp.iterdir()) == []
