"""Outbound BDAT (RFC 3030 CHUNKING) through a real connection to a capture sink that
offers CHUNKING: the message arrives byte-exact as counted chunks (no dot-stuffing), a
stored large message too; LMTP gets a reply per recipient after the last chunk; a refused
chunk is cleaned up with RSET and the connection carries the next message; ``chunking=False``
(``delivery.chunking = false``) and a server without CHUNKING get DATA.  The relay end to
end: ``mta serve`` delivers with BDAT by default and with DATA when the key is off.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.delivery.smtp_client import Transaction
from tests.delivery.sink import CaptureSink
from tests.delivery.test_large_messages import MIB, big_message, store
from tests.delivery.test_smtp_client import connect, run
from tests.helpers import MtaProcess

pytestmark = pytest.mark.timeout(60)

MESSAGE = b"Subject: x\r\n\r\n.dot\r\n\x00 and \xff\r\nlast line without CRLF"


def tx(message: object = MESSAGE, *recipients: str) -> Transaction:
    return Transaction("a@b.test", list(recipients) or ["c@d.test"], message)  # type: ignore[arg-type]


def chunking_sink(**options: object) -> CaptureSink:
    sink = CaptureSink(**options)  # type: ignore[arg-type]
    sink.chunking = True
    return sink


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one_at_a_time"])
def test_bdat_carries_the_message_byte_exact(pipelining: bool) -> None:
    with chunking_sink() as sink:
        sink.pipelining = pipelining

        async def scenario() -> list[str]:
            conn = await connect(sink.port)
            [result] = await conn.send(tx())
            assert conn.reusable
            await conn.quit()
            return [result.status, result.dsn]

        assert run(scenario()) == ["sent", "2.0.0"]
        [got] = sink.wait_for(1)
    assert got.data == MESSAGE  # not stuffed, nothing added
    assert got.chunks == [len(MESSAGE)]
    assert f"BDAT {len(MESSAGE)} LAST" in sink.lines
    assert "DATA" not in sink.lines


@pytest.mark.parametrize("offered", [True, False], ids=["chunking_off", "not_offered"])
def test_data_when_chunking_is_off_or_not_offered(offered: bool) -> None:
    with CaptureSink() as sink:
        sink.chunking = offered

        async def scenario() -> str:
            conn = await connect(sink.port, chunking=False)
            [result] = await conn.send(tx(b"Subject: x\r\n\r\n.dot\r\n"))
            await conn.quit()
            return result.status

        assert run(scenario()) == "sent"
        [got] = sink.wait_for(1)
    assert got.chunks == [] and "DATA" in sink.lines
    assert got.data == b"Subject: x\r\n\r\n.dot\r\n"


def test_a_stored_message_goes_in_one_counted_chunk_byte_exact(tmp_path: Path) -> None:
    message = big_message(3 * MIB + 4321)  # dotted lines, no CRLF at the end
    stored = store(tmp_path, message)
    with chunking_sink() as sink:

        async def scenario() -> list[str]:
            conn = await connect(sink.port)
            [large] = await conn.send(tx(stored))
            [small] = await conn.send(tx())
            await conn.quit()
            return [large.status, small.status]

        assert run(scenario()) == ["sent", "sent"]
        first, second = sink.wait_for(2)
    assert first.data == message  # exactly its octets: no CRLF added, nothing stuffed
    assert first.chunks == [len(message)]
    assert first.mail_params["SIZE"] == str(len(message))
    assert second.data == MESSAGE


def test_lmtp_gives_each_recipient_its_own_reply_after_the_last_chunk() -> None:
    with chunking_sink(lmtp=True) as sink:
        sink.rcpt_replies = {"carol@d.test": (550, "5.1.1 no such user")}
        sink.lmtp_data_replies = {"bob@d.test": (452, "4.2.2 mailbox full")}
        recipients = ["alice@d.test", "bob@d.test", "carol@d.test", "dave@d.test"]

        async def scenario() -> list[tuple[str, str, str]]:
            conn = await connect(sink.port, lmtp=True)
            results = await conn.send(tx(MESSAGE, *recipients))
            assert conn.reusable
            await conn.quit()
            return [(r.address, r.status, r.dsn) for r in results]

        assert run(scenario()) == [
            ("alice@d.test", "sent", "2.0.0"),
            ("bob@d.test", "deferred", "4.2.2"),
            ("carol@d.test", "failed", "5.1.1"),
            ("dave@d.test", "sent", "2.0.0"),
        ]
        [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["alice@d.test", "dave@d.test"]
    assert got.chunks == [len(MESSAGE)] and got.data == MESSAGE


def test_a_refused_chunk_is_cleaned_up_with_rset_and_the_connection_carries_on() -> None:
    with chunking_sink() as sink:
        sink.bdat_reply = (452, "4.3.1 insufficient system storage")

        async def scenario() -> list[tuple[str, str]]:
            conn = await connect(sink.port)
            [refused] = await conn.send(tx())
            assert conn.reusable
            sink.bdat_reply = None
            [sent] = await conn.send(tx())
            await conn.quit()
            return [(refused.status, refused.dsn), (sent.status, sent.dsn)]

        assert run(scenario()) == [("deferred", "4.3.1"), ("sent", "2.0.0")]
        [got] = sink.wait_for(1)
        assert sink.connections == 1
    assert got.data == MESSAGE
    bdat = f"BDAT {len(MESSAGE)} LAST"
    assert sink.lines.count(bdat) == 2
    assert sink.lines[sink.lines.index(bdat) + 1] == "RSET"


# -- the relay end to end --------------------------------------------------------------------


@pytest.mark.parametrize("chunking", [True, False], ids=["default", "off"])
def test_the_relay_delivers_with_bdat_unless_delivery_chunking_is_off(
    mta_factory: Callable[..., MtaProcess],
    sink_factory: Callable[..., CaptureSink],
    chunking: bool,
) -> None:
    sink = sink_factory()
    sink.chunking = True
    delivery: dict[str, object] = {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 1}
    if not chunking:
        delivery["chunking"] = False
    relay = mta_factory({"delivery": delivery})
    body = b"Subject: relayed\r\n\r\n.a dotted line\r\nend\r\n"
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30) as c:
        assert c.sendmail("a@b.test", ["c@d.test"], body) == {}
    [got] = sink.wait_for(1, timeout=20)
    assert got.data.endswith(body)
    assert bool(got.chunks) is chunking
    assert ("DATA" in sink.lines) is not chunking
