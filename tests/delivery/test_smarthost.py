"""A relay behind a real smarthost: two ``mta serve`` trees over loopback.

The smarthost is an ``mta serve`` with a submission listener (STARTTLS and AUTH required)
and a submissions listener (implicit TLS, RFC 8314) on port 465 of its own loopback
address, a trustme certificate for its names, a password file, and a capture sink behind
it.  Loopback is not in its ``relay.networks``: only an authenticated client can relay
through it.  The relay under test has ``delivery.relayhost`` pointing at it by name (the
test DNS server), ``delivery.smtp_auth_file`` and ``delivery.tls_ca_file`` = the test CA,
and no ``[tls_policy]`` entry: verify is its default for an authenticated hop.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from mta.exitcodes import EXIT_CONFIG
from mta.policy.passwords import hash_password
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, free_port, stop_all, wait_for_port, wait_until

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., MtaProcess]
USER = "relay@mx.test"
PASSWORD = "Tr0ub4dor&3:x"
HOST = "smarthost.test"
SMTPS_HOST = "smtps.smarthost.test"
# Port 465 itself (the auto wrapper mode) needs root to bind; elsewhere a free port, named
# in tls_wrapper_ports.  An address of this test run's own, so that no other run's 465
# is in the way.
SMTPS_ADDRESS = f"127.46.{os.getpid() % 250 + 1}.{os.getpid() // 250 % 250 + 1}"


@dataclass
class Smarthost:
    server: MtaProcess
    sink: CaptureSink
    dns: DnsServer
    ca_file: Path
    submission: int
    submissions: int


def smarthost_config(directory: Path, sink: CaptureSink, ports: tuple[int, int]) -> dict[str, Any]:
    ca = trustme.CA()
    ca.issue_cert(HOST, SMTPS_HOST).private_key_and_cert_chain_pem.write_to_path(
        str(directory / "cert.pem")
    )
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    passwords = directory / "passwd"
    passwords.write_text(f"{USER}:{hash_password(PASSWORD, ln=4)}\n")
    passwords.chmod(0o600)
    return {
        "hostname": HOST,
        "smtp": {"tls_cert": str(directory / "cert.pem"), "tls_key": str(directory / "cert.pem")},
        "listeners": {
            "submission": {"listen": [f"127.0.0.1:{ports[0]}"], "role": "submission"},
            "submissions": {"listen": [f"{SMTPS_ADDRESS}:{ports[1]}"], "role": "submissions"},
        },
        "auth": {"passwords": str(passwords)},
        "relay": {"networks": ["192.0.2.0/24"]},
        "delivery": {"relayhost": f"127.0.0.1:{sink.port}", "tls": "none"},
    }


def tls_greets(host: str, port: int) -> bool:
    """Whether an implicit TLS listener answers with a 220 greeting."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=2) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.recv(1024).startswith(b"220")
    except OSError:
        return False


@pytest.fixture(scope="module")
def smarthost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smarthost]:
    directory = tmp_path_factory.mktemp("smarthost")
    ports = (free_port(), 465 if os.geteuid() == 0 else free_port(SMTPS_ADDRESS))
    with CaptureSink() as sink, DnsServer() as dns:
        dns.add_a(HOST, "127.0.0.1")
        dns.add_a(SMTPS_HOST, SMTPS_ADDRESS)
        server = MtaProcess(directory, smarthost_config(directory, sink, ports))
        server.config["smtp"].pop("listen")  # only the two listeners
        try:
            server.start(wait=False)
            wait_for_port("127.0.0.1", ports[0])
            wait_until(lambda: tls_greets(SMTPS_ADDRESS, ports[1]), timeout=15)
            yield Smarthost(server, sink, dns, directory / "ca.pem", *ports)
        finally:
            stop_all([server])


@pytest.fixture
def sink(smarthost: Smarthost) -> CaptureSink:
    smarthost.sink.clear()
    return smarthost.sink


def auth_file(directory: Path, nexthop: str, password: str = PASSWORD, mode: int = 0o600) -> Path:
    path = directory / "smtp_auth"
    path.write_text(f"# the smarthost\n{nexthop}  {USER}:{password}\n")
    path.chmod(mode)
    return path


def relay_through(
    mta_factory: Factory,
    tmp_path: Path,
    smarthost: Smarthost,
    *,
    nexthop: str = "",
    password: str = PASSWORD,
    ca_file: str = "",
    **delivery: Any,
) -> MtaProcess:
    nexthop = nexthop or f"[{HOST}]:{smarthost.submission}"
    if smarthost.submissions != 465:
        delivery.setdefault("tls_wrapper_ports", [smarthost.submissions])
    settings = {
        "relayhost": nexthop,
        "smtp_auth_file": str(auth_file(tmp_path, nexthop, password)),
        "tls_ca_file": ca_file or str(smarthost.ca_file),
        "dns_servers": [f"127.0.0.1:{smarthost.dns.port}"],
        **delivery,
    }
    return mta_factory({"delivery": settings})


def send(relay: MtaProcess, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
        message = f"Subject: {body}\r\n\r\n{body}\r\n"
        client.sendmail("sender@mx.test", ["friend@outside.test"], message.encode())


def arrived(sink: CaptureSink, body: str) -> Any:
    return wait_until(lambda: [m for m in sink.messages if body.encode() in m.data], timeout=30)


def logged(relay: MtaProcess, pattern: str, count: int = 1, timeout: float = 30) -> str:
    found = wait_until(
        lambda: len(re.findall(pattern, log := relay.log())) >= count and log, timeout=timeout
    )
    assert found, f"{pattern!r} not logged {count} times:\n{relay.log()}"
    return str(found)


@pytest.mark.parametrize("port", ["submission", "submissions"])
def test_relayed_authenticated_through_the_smarthost(
    mta_factory: Factory, tmp_path: Path, smarthost: Smarthost, sink: CaptureSink, port: str
) -> None:
    """STARTTLS on the submission port, implicit TLS on 465: verified, authenticated."""
    implicit = port == "submissions"
    nexthop = f"[{SMTPS_HOST}]:{smarthost.submissions}" if implicit else ""
    relay = relay_through(mta_factory, tmp_path, smarthost, nexthop=nexthop)
    send(relay, f"via {port}")
    [message] = arrived(sink, f"via {port}")
    assert message.rcpt_tos == ["friend@outside.test"]
    # the smarthost's Received header: over TLS and authenticated (RFC 3848)
    assert re.search(rb"by smarthost\.test[^;]*with ESMTPSA", message.data), message.data
    log = logged(relay, r"dsn=2\.0\.0, status=sent \(.*\), tls=TLSv1\.[23] verified")
    host = SMTPS_HOST if implicit else HOST
    assert f"authenticated as {USER} with PLAIN" in log
    assert f"Verified TLS connection established to {host}[" in log
    assert PASSWORD not in log
    assert f"sasl_username={USER}" in smarthost.server.log()


def test_wrong_password_is_deferred_retried_then_fixed_by_a_reload(
    mta_factory: Factory, tmp_path: Path, smarthost: Smarthost, sink: CaptureSink
) -> None:
    wrong = "Wr0ng-Secret"
    relay = relay_through(mta_factory, tmp_path, smarthost, password=wrong, min_backoff=1.0)
    send(relay, "wrong password")
    # deferred with the smarthost's 535 (as a 4.7.8, soft bounce), and tried again
    log = logged(relay, r"dsn=4\.7\.8, status=deferred \(SASL authentication failed; server "
                 r"smarthost\.test\[127\.0\.0\.1\]:\d+ said: 535 5\.7\.8", count=2)  # fmt: skip
    assert wrong not in log
    assert sink.messages == []
    # a file others may read is refused on HUP; the running configuration stays
    path = auth_file(tmp_path, f"[{HOST}]:{smarthost.submission}", PASSWORD, mode=0o644)
    relay.signal(signal.SIGHUP)
    logged(relay, r"reload failed, keeping the running configuration: delivery\.smtp_auth_file")
    path.chmod(0o600)
    relay.signal(signal.SIGHUP)
    arrived(sink, "wrong password")
    assert PASSWORD not in relay.log()


def test_an_unverifiable_smarthost_gets_no_password(
    mta_factory: Factory, tmp_path: Path, smarthost: Smarthost, sink: CaptureSink
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    relay = relay_through(mta_factory, tmp_path, smarthost, ca_file=str(other_ca))
    send(relay, "untrusted")
    log = logged(relay, r"dsn=4\.7\.5, status=deferred \(Server certificate not verified for "
                 r"smarthost\.test\[127\.0\.0\.1\]:\d+")  # fmt: skip
    assert "authenticated as" not in log and sink.messages == []


def test_a_credentials_file_others_can_read_stops_the_start(
    mta_factory: Factory, tmp_path: Path
) -> None:
    path = auth_file(tmp_path, "[relay.test]:587", mode=0o640)
    relay = mta_factory({"delivery": {"smtp_auth_file": str(path)}}, wait=False)
    assert relay.proc is not None
    assert relay.proc.wait(30) == EXIT_CONFIG
    assert f"delivery.smtp_auth_file: {path} may be read by group or others" in relay.log()
    path.write_text("[relay.test]:587 nopassword\n")
    path.chmod(0o600)
    check = subprocess.run(
        [sys.executable, "-m", "mta", "--config", str(relay.config_path), "check-config"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=30,
    )
    assert check.returncode == 1
    assert f"delivery.smtp_auth_file: {path} line 1: expected" in check.stderr
