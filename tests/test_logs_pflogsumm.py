"""Debian's pflogsumm reads the relay's syslog-format log (mta/logs.py): a real ``mta serve``
receives mail that is delivered, deferred (451 at the next hop), bounced (550) and
rejected at RCPT, and pflogsumm's counts match; the lines of each message are in causal
order across processes."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("pflogsumm") is None, reason="pflogsumm not installed"),
]

PREFIX = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ mta/(\w+)\[(\d+)\]: ")


def message(sender: str, tag: str) -> bytes:
    return (
        f"From: {sender}\r\nSubject: {tag}\r\nMessage-ID: <{tag}@test>\r\n\r\nbody\r\n"
    ).encode()


def send(server: MtaProcess, sender: str, rcpts: list[str], tag: str, **kw: object) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail(sender, rcpts, message(sender, tag), **kw)  # type: ignore[arg-type]


def reject_at_rcpt(server: MtaProcess) -> None:
    """From outside relay.networks, to a domain not ours: 554 Relay access denied."""
    with smtplib.SMTP("127.0.0.1", server.port, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("outside.test")
        client.mail("eve@outside.test")
        code, _ = client.rcpt("x@good.test")
        assert code == 554


def grand_totals(log_path: str) -> dict[str, int]:
    out = subprocess.run(
        ["pflogsumm", "--syslog-name=mta", "--smtpd-stats", log_path],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    totals = {}
    for number, what in re.findall(r"^ +(\d+)[km]? +([a-z][a-z /]+?)(?: \(|$)", out, re.M):
        totals.setdefault(what.strip(), int(number))
    return totals


def test_pflogsumm_counts_a_real_run(
    mta_factory: Callable[..., MtaProcess], sink_factory: Callable[..., CaptureSink]
) -> None:
    good, slow, bad = sink_factory(), sink_factory(), sink_factory()
    slow.data_reply = (451, "4.3.0 try again later")
    bad.data_reply = (550, "5.7.1 not wanted here")
    routes = {
        name: f"smtp:[127.0.0.1]:{s.port}"
        for name, s in (("good.test", good), ("slow.test", slow), ("bad.test", bad))
    }
    server = mta_factory(
        {
            "log": {"format": "syslog"},
            "relay": {"networks": ["127.0.0.1/32"]},
            "routes": routes,
        }
    )
    send(server, "alice@one.test", ["bob@good.test", "carol@good.test"], "good")
    send(server, "bert@two.test", ["dan@slow.test"], "slow")
    send(server, "cleo@two.test", ["erin@bad.test"], "bad", rcpt_options=["NOTIFY=NEVER"])
    reject_at_rcpt(server)
    wait_until(lambda: server.log().count(": removed") == 2 and "status=deferred" in server.log())
    # every connection (the test harness's readiness probe among them) has ended
    wait_until(
        lambda: server.log().count(": disconnect from") == server.log().count(": connect from")
    )
    log = server.log()

    sizes = [int(n) for n in re.findall(r"size=(\d+), nrcpt=\d+, client=\S+ \(queued\)", log)]
    good_size = sizes[0]  # the first message sent
    totals = grand_totals(str(server.log_path))
    assert totals["received"] == 3
    assert totals["delivered"] == 2
    assert totals["deferred"] == 1
    assert totals["bounced"] == 1
    assert totals["rejected"] == 1
    assert totals["bytes received"] == sum(sizes)
    assert totals["bytes delivered"] == 2 * good_size
    assert totals["senders"] == 3
    assert totals["sending hosts/domains"] == 2
    assert totals["recipients"] == 2
    assert totals["connections"] == log.count(": connect from") >= 4


def test_lines_of_a_message_follow_causality(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink
) -> None:
    """smtpd's client=, cleanup's message-id=, from= (queue active), to= and removed, in
    this order in the file, though several processes (two smtpd, two delivery agents and
    the queue manager) wrote them."""
    server = mta_factory(
        {
            "log": {"format": "syslog"},
            "smtp": {"workers": 2},
            "delivery": {"relayhost": f"127.0.0.1:{sink.port}"},
        }
    )
    for n in range(12):
        send(server, "alice@one.test", ["bob@good.test"], f"order{n}")
    wait_until(lambda: server.log().count(": removed") == 12)
    lines = server.log().splitlines()
    assert all(PREFIX.match(line) for line in lines), [x for x in lines if not PREFIX.match(x)]
    queue_ids = re.findall(
        r"mta/smtpd\[\d+\]: (\w+): client=unknown\[127\.0\.0\.1\]", "\n".join(lines)
    )
    assert len(queue_ids) == 12
    steps = [
        ("smtpd", "client=unknown[127.0.0.1]"),
        ("cleanup", "message-id=<order"),
        ("smtp", "from=<alice@one.test>, size="),
        ("smtp", "to=<bob@good.test>, relay="),
        ("qmgr", "removed"),
    ]
    for queue_id in queue_ids:
        mine = [line for line in lines if f": {queue_id}: " in line]
        found = []
        for service, text in steps:
            [index] = [
                i
                for i, line in enumerate(mine)
                if f"mta/{service}[" in line and f"{queue_id}: {text}" in line
            ]
            found.append(index)
        assert found == sorted(found), mine
    delivered = [line for line in lines if "status=sent" in line]
    assert all(
        re.search(r"delay=[\d.]+, delays=[\d.]+/0/0/[\d.]+, dsn=2\.0\.0, status=sent \(", line)
        for line in delivered
    )
