"""Destination shaping for real (mta/qmgr/shaping.py, mta/delivery/slots.py): relays with
two delivery processes against counting sinks on loopback; the outbound source address and
the IPv6-to-IPv4 fallback (mta/delivery/dns.py)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mta.config import ConfigError, load_config
from mta.queue.ipc import agent_address
from tests.delivery.counting_sink import CountingSink
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, wait_until
from tests.master import children_by_kind, scrape

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]


@pytest.fixture
def counting_sink() -> Iterator[CountingSink]:
    sink = CountingSink().start()
    yield sink
    sink.stop()


def submit(relay: MtaProcess, count: int, sessions: int = 1) -> None:
    """``count`` messages to one recipient each, over ``sessions`` SMTP sessions at once."""

    def session(first: int) -> None:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            for i in range(first, count, sessions):
                body = f"Subject: m{i}\r\n\r\nmessage {i}\r\n".encode()
                client.sendmail("a@client.test", [f"r{i}@example.test"], body)

    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(session, range(sessions)))


def relay_to(sink: CaptureSink, **delivery: Any) -> dict[str, Any]:
    return {"delivery": {"workers": 2, "relayhost": f"127.0.0.1:{sink.port}", **delivery}}


def connected_agents(relay: MtaProcess) -> int:
    """Delivery processes connected to the queue manager now: the accepted (state 03)
    sockets of its abstract Unix address in /proc/net/unix."""
    name = "@" + agent_address(str(relay.spool))[1:]
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if len(row) >= 8 and row[7] == name and row[5] == "03")


def flush(relay: MtaProcess) -> None:
    command = [sys.executable, "-m", "mta", "queue", "flush", "--config", str(relay.config_path)]
    subprocess.run(command, check=True, capture_output=True, env={"PYTHONPATH": str(REPO)})


def test_two_delivery_processes_share_the_concurrency_and_start_slow(
    mta_factory: Factory, counting_sink: CountingSink
) -> None:
    counting_sink.hold = 0.3  # each transaction takes a while: they overlap
    relay = mta_factory(
        relay_to(counting_sink, destination_concurrency=4, initial_destination_concurrency=2)
    )
    # both processes take jobs only once both are connected (a slow start of the machine
    # must not leave the whole run to one of them)
    wait_until(lambda: connected_agents(relay) == 2, timeout=30)
    submit(relay, 24, sessions=4)
    counting_sink.wait_for(24, timeout=60)
    assert counting_sink.most == 4  # the limit is reached, and across both processes held
    senders = set(re.findall(r"mta\[(\d+)\] mta\.delivery: .*status=sent", relay.log()))
    assert len(senders) == 2  # both delivery processes took part
    # slow start: the first transactions run two at a time, and the window grows after
    assert max(counting_sink.levels[:4]) <= 2, counting_sink.levels


def test_a_dead_destination_costs_a_handful_of_connections(
    mta_factory: Factory, counting_sink: CountingSink
) -> None:
    """200 messages to a next hop that greets 421: five attempts (dead_after) and then the
    queue manager answers "dead" without a connection; a flush brings them all."""
    counting_sink.greeting_reply = (421, "4.3.2 sink.test closing: not today")
    relay = mta_factory(relay_to(counting_sink))
    submit(relay, 200, sessions=4)
    suspended = "delivery temporarily suspended: host 127.0.0.1[127.0.0.1]"
    # every result applied: all 200 wait in deferred/ (a flush sooner would miss some)
    wait_until(lambda: len(relay.files("deferred")) == 200, timeout=60)
    log = relay.log()
    assert log.count(suspended) >= 190
    assert "marked dead for 300s after 5 failed attempts" in log
    connections = counting_sink.connections
    print(f"200 messages to a dead destination: {connections} connection attempts")
    assert connections <= 10
    metrics = scrape(relay.metrics_port)
    assert metrics.value("mta_delivery_destinations_dead") == 1
    assert metrics.value("mta_delivery_destination_suspensions_total") == 1
    counting_sink.greeting_reply = None  # back up
    flush(relay)
    counting_sink.wait_for(200, timeout=60)
    wait_until(relay.queue_empty, timeout=30)
    assert scrape(relay.metrics_port).value("mta_delivery_destinations_dead") == 0


def test_a_probe_after_the_backoff_finds_the_destination_back(
    mta_factory: Factory, counting_sink: CountingSink
) -> None:
    counting_sink.greeting_reply = (421, "4.3.2 not now")
    relay = mta_factory(
        relay_to(
            counting_sink,
            dead_after=2,
            dead_backoff=1,
            min_backoff=0.5,
            max_backoff=1,
            initial_destination_concurrency=2,
        )
    )
    submit(relay, 20)
    wait_until(lambda: "marked dead for 1s" in relay.log(), timeout=30)
    wait_until(lambda: "after probe failed" in relay.log(), timeout=30)  # still 421: 2s
    counting_sink.greeting_reply = None
    counting_sink.wait_for(20, timeout=30)
    assert "is back up" in relay.log()
    # two to go dead, one or two probes: each probe, not each message, costs a connection
    assert counting_sink.connections - len(counting_sink.levels) <= 8


def test_the_slots_of_a_delivery_process_that_dies_are_freed(
    mta_factory: Factory, counting_sink: CountingSink
) -> None:
    """Concurrency 1: the only slot is held by a transaction the sink never finishes; both
    delivery processes are killed; their successors get the slot and deliver."""
    counting_sink.hold = 60.0
    relay = mta_factory(relay_to(counting_sink, destination_concurrency=1))
    submit(relay, 2)
    wait_until(lambda: counting_sink.active == 1, timeout=30)
    old = children_by_kind(relay.pid)["delivery"]
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    counting_sink.hold = 0.0
    wait_until(
        lambda: len(set(children_by_kind(relay.pid).get("delivery", [])) - set(old)) == 2,
        timeout=30,
    )
    counting_sink.wait_for(2, timeout=30)
    assert counting_sink.most == 1


def test_a_rate_holds_within_ten_percent(mta_factory: Factory, counting_sink: CountingSink) -> None:
    relay = mta_factory(
        {
            **relay_to(counting_sink, initial_destination_concurrency=20),
            "destinations": {"127.0.0.1": {"rate": 600}},  # one every 0.1 s
        }
    )
    wait_until(lambda: connected_agents(relay) == 2, timeout=30)
    # A warm-up first: the connections it opens are reused by the measured run, whose
    # starts then follow the grants (a first connection's setup would shorten the span).
    submit(relay, 4)
    counting_sink.wait_for(4, timeout=30)
    submit(relay, 20)
    counting_sink.wait_for(24, timeout=30)
    starts = counting_sink.starts[4:]
    per_minute = (len(starts) - 1) / (starts[-1] - starts[0]) * 60
    assert 540 <= per_minute <= 660, per_minute


def test_outbound_connections_come_from_the_bind_address(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    relay = mta_factory(relay_to(sink, bind_address="127.0.0.5"))
    submit(relay, 1)
    assert sink.wait_for(1, timeout=30)[0].peer == "127.0.0.5"


def test_a_bind_address_that_is_no_address_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text('[delivery]\nbind_address6 = "127.0.0.5"\n')
    with pytest.raises(ConfigError, match=r"bind_address6: '127.0.0.5' is not an IPv6"):
        load_config(str(path))
    path.write_text('[delivery]\nbind_address = "mail.example"\n')
    with pytest.raises(ConfigError, match=r"bind_address: 'mail.example' is not an IP"):
        load_config(str(path))


def test_shaping_settings_that_cannot_work_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text("[delivery]\ndead_backoff = 600\ndead_max_backoff = 60\n")
    with pytest.raises(ConfigError, match="dead_max_backoff: must not be smaller"):
        load_config(str(path))
    path.write_text('[destinations."example.com"]\nconcurrency = 0\n')
    with pytest.raises(ConfigError, match=r"destinations.*concurrency"):
        load_config(str(path))
    path.write_text('[destinations."example.com"]\nrate = -1\n')
    with pytest.raises(ConfigError, match=r"destinations.*rate"):
        load_config(str(path))


def test_ipv6_first_falls_back_to_ipv4(mta_factory: Factory, sink: CaptureSink) -> None:
    """The exchanger's AAAA is ::1, where nothing listens: IPv6 is tried first, as
    preferred, and the message goes to its A record."""
    with DnsServer() as dns:
        dns.add_mx("example.test", [(10, "mx.example.test")])
        dns.add_a("mx.example.test", "127.0.0.1")
        dns.add_aaaa("mx.example.test", "::1")
        relay = mta_factory(
            {
                "delivery": {
                    "smtp_port": sink.port,
                    "dns_servers": [f"127.0.0.1:{dns.port}"],
                    "address_preference": "ipv6",
                },
                "log": {"level": "debug"},
            }
        )
        submit(relay, 1)
        captured = sink.wait_for(1, timeout=30)
    assert captured[0].rcpt_tos == ["r0@example.test"]
    assert f"connect to mx.example.test[::1]:{sink.port}: " in relay.log()
