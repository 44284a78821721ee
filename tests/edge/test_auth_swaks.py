"""SMTP AUTH against a real ``mta serve``: swaks and smtplib over STARTTLS on a submission
listener (TLS and AUTH required) and over implicit TLS on a submissions listener (RFC 8314),
beside an MX listener on another port, relaying through a capture sink
(``delivery.relayhost``).  Loopback is not in ``relay.networks`` here, so only AUTH lets a
client relay.  Certificates come from trustme, written to files.
"""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from mta.policy.passwords import PasswordFile, hash_password
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, free_port, stop_all, wait_for_port, wait_until
from tests.master import children_by_kind

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
PASSWORD = "Tr0ub4dor&3"  # what the sink and the logs must never see
USERS = {"alice": PASSWORD, "bob": "bobs-secret"}
FAILURE_DELAY = 0.5
AUTH_FAILURES = 2  # a minute, per client address; the third failure gets 421


class Relay:
    def __init__(
        self, server: MtaProcess, ports: tuple[int, int], sink: CaptureSink, ca: Path
    ) -> None:
        self.server, self.sink, self.ca = server, sink, ca
        self.submission, self.submissions = ports
        self.mx = server.port


def write_tables(directory: Path, users: dict[str, str]) -> tuple[Path, Path]:
    passwords = directory / "passwd"
    passwords.write_text("".join(f"{u}:{hash_password(p, ln=4)}\n" for u, p in users.items()))
    passwords.chmod(0o600)
    logins = directory / "sender_logins"
    logins.write_text("alice: alice@example.org, @alice.example\nbob: bob@example.org\n")
    return passwords, logins


def relay_config(directory: Path, sink: CaptureSink, ports: tuple[int, int]) -> dict[str, Any]:
    ca = trustme.CA()
    cert = ca.issue_cert("mx.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(directory / "cert.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    passwords, logins = write_tables(directory, USERS)
    return {
        "smtp": {"tls_cert": str(directory / "cert.pem"), "tls_key": str(directory / "cert.pem")},
        "listeners": {
            "submission": {"listen": [f"127.0.0.1:{ports[0]}"], "role": "submission"},
            "submissions": {"listen": [f"127.0.0.1:{ports[1]}"], "role": "submissions"},
        },
        "auth": {
            "passwords": str(passwords),
            "sender_logins": str(logins),
            "failure_delay": FAILURE_DELAY,
        },
        "limits": {"auth_failures": AUTH_FAILURES, "exempt_networks": []},
        "relay": {"networks": ["192.0.2.0/24"], "domains": ["mx.test"], "recipients": "any"},
        "delivery": {"relayhost": f"127.0.0.1:{sink.port}", "tls": "none"},
    }


def start_relay(directory: Path, sink: CaptureSink) -> Relay:
    ports = (free_port(), free_port())
    server = MtaProcess(directory, relay_config(directory, sink, ports))
    server.start()
    wait_for_port("127.0.0.1", ports[0])
    return Relay(server, ports, sink, directory / "ca.pem")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    sink = CaptureSink().start()
    started: list[MtaProcess] = []
    try:
        relay = start_relay(tmp_path_factory.mktemp("auth"), sink)
        started.append(relay.server)
        yield relay
    finally:
        stop_all(started)
        sink.stop()


def swaks(relay: Relay, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWAKS, "--server", f"127.0.0.1:{port or relay.submission}", "--helo", "client.test",
         "--timeout", "20", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def submit(relay: Relay, mechanism: str, user: str = "alice", sender: str = "") -> str:
    done = swaks(
        relay, "--tls", "--auth", mechanism, "--auth-user", user,
        "--auth-password", USERS.get(user, "wrong"),
        "--from", sender or f"{user}@example.org", "--to", "friend@outside.test",
        "--body", f"sent with {mechanism}",
    )  # fmt: skip
    return done.stdout + done.stderr


def delivered(relay: Relay, body: bytes) -> Any:
    return wait_until(lambda: [m for m in relay.sink.messages if body in m.data], timeout=20)


def tls_client(relay: Relay, source: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.submission, timeout=20, source_address=(source, 0))
    client.starttls(context=ssl.create_default_context(cafile=str(relay.ca)))
    client.ehlo("client.test")
    return client


def plain(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# ----- swaks --------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth_over_starttls_relays_to_an_outside_domain(relay: Relay, mechanism: str) -> None:
    out = submit(relay, mechanism)
    assert "235 2.7.0 Authentication successful" in out, out
    assert "250 2.0.0 Ok: queued as" in out, out
    (message,) = delivered(relay, f"sent with {mechanism}".encode())
    assert message.rcpt_tos == ["friend@outside.test"]
    received = message.data.split(b"\r\n\r\n")[0]
    assert b"with ESMTPSA id" in received  # RFC 3848: TLS and AUTH
    assert b"Authenticated sender" not in received  # off by default, as in Postfix
    assert PASSWORD.encode() not in message.data
    assert base64.b64encode(f"\0alice\0{PASSWORD}".encode()) not in message.data


def test_swaks_wrong_password_gets_535_after_the_delay(relay: Relay) -> None:
    started = time.monotonic()
    out = submit(relay, "PLAIN", user="mallory")
    assert "535 5.7.8 Error: authentication failed" in out, out
    assert time.monotonic() - started >= FAILURE_DELAY
    log = wait_until(
        lambda: (text := relay.server.log()) and "SASL PLAIN authentication failed" in text and text
    )
    assert "warning: unknown[127.0.0.1]: SASL PLAIN authentication failed" in log
    assert "sasl_username=mallory" in log and "wrong" not in log


def test_swaks_before_starttls_and_before_auth_is_refused_with_530(relay: Relay) -> None:
    clear = swaks(relay, "--from", "alice@example.org", "--to", "friend@outside.test")
    assert "530 5.7.0 Must issue a STARTTLS command first" in clear.stdout, clear.stdout
    no_auth = swaks(relay, "--tls", "--from", "alice@example.org", "--to", "friend@outside.test")
    assert "530 5.7.0 Authentication required" in no_auth.stdout, no_auth.stdout


def test_swaks_sender_not_owned_by_the_login_gets_553(relay: Relay) -> None:
    out = submit(relay, "LOGIN", user="alice", sender="bob@example.org")
    assert "235 2.7.0" in out
    assert "553 5.7.1 <bob@example.org>: Sender address rejected: not owned by user alice" in out
    ok = submit(relay, "PLAIN", user="alice", sender="someone@alice.example")
    assert "250 2.0.0 Ok: queued as" in ok, ok


def test_the_same_client_unauthenticated_may_not_relay(relay: Relay) -> None:
    mx = swaks(relay, "--tls", "--from", "a@client.test", "--to", "x@outside.test", port=relay.mx)
    assert "554 5.7.1 <x@outside.test>: Relay access denied" in mx.stdout, mx.stdout
    with smtplib.SMTP("127.0.0.1", relay.mx, timeout=20) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")  # the MX listener offers no AUTH
        assert client.docmd("AUTH", plain("alice", PASSWORD))[0] == 502


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth_over_implicit_tls_on_submissions(relay: Relay, mechanism: str) -> None:
    body = f"implicit TLS with {mechanism}"
    done = swaks(
        relay, "--tlsc", "--auth", mechanism, "--auth-user", "alice", "--auth-password",
        PASSWORD, "--from", "alice@example.org", "--to", "friend@outside.test", "--body", body,
        port=relay.submissions,
    )  # fmt: skip
    assert "235 2.7.0 Authentication successful" in done.stdout, done.stdout + done.stderr
    assert "250 2.0.0 Ok: queued as" in done.stdout, done.stdout
    [message] = delivered(relay, body.encode())
    assert b"with ESMTPSA id" in message.data
    assert PASSWORD.encode() not in message.data


def test_implicit_tls_refuses_mail_before_auth_and_a_wrong_password(relay: Relay) -> None:
    done = swaks(
        relay, "--tlsc", "--from", "alice@example.org", "--to", "friend@outside.test",
        port=relay.submissions,
    )  # fmt: skip
    assert "530 5.7.0 Authentication required" in done.stdout, done.stdout + done.stderr
    done = swaks(
        relay, "--tlsc", "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "nope",
        "--from", "bob@example.org", "--to", "friend@outside.test",
        "--local-interface", "127.0.0.4",  # its own failure count (limits.auth_failures)
        port=relay.submissions,
    )  # fmt: skip
    assert "535 5.7.8" in done.stdout, done.stdout + done.stderr


# ----- smtplib ------------------------------------------------------------------------------


def test_smtplib_smtp_ssl_and_login(relay: Relay) -> None:
    context = ssl.create_default_context(cafile=str(relay.ca))
    with smtplib.SMTP_SSL("127.0.0.1", relay.submissions, timeout=20, context=context) as client:
        client.ehlo("client.test")
        assert "starttls" not in client.esmtp_features  # already under TLS
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert client.login("bob", "bobs-secret")[0] == 235
        client.sendmail(
            "bob@example.org", ["someone@outside.test"], b"Subject: ssl\r\n\r\nover 465\r\n"
        )
    [message] = delivered(relay, b"over 465")
    assert b"with ESMTPSA id" in message.data


def test_smtplib_starttls_and_login(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission, timeout=20) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")  # only under TLS
        code, text = client.docmd("AUTH", plain("alice", PASSWORD))
        assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=ssl.create_default_context(cafile=str(relay.ca)))
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert client.login("bob", "bobs-secret")[0] == 235
        client.sendmail(
            "bob@example.org", ["far@outside.test"], b"Subject: smtplib\r\n\r\nvia smtplib\r\n"
        )
    (message,) = delivered(relay, b"via smtplib")
    assert b"with ESMTPSA id" in message.data


def test_too_many_failures_get_421_and_the_connection_closes(relay: Relay) -> None:
    client = tls_client(relay, source="127.0.0.3")  # its own address: its own count
    try:
        for _ in range(AUTH_FAILURES):
            assert client.docmd("AUTH", plain("alice", "guess"))[0] == 535
        code, text = client.docmd("AUTH", plain("alice", "guess"))
        assert (code, text) == (421, b"4.7.0 mx.test Error: too many authentication failures")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()
    limit = "Authentication failure limit exceeded"
    log = wait_until(lambda: (text := relay.server.log()) and limit in text and text)
    line = next(line for line in log.splitlines() if limit in line)
    assert "from unknown[127.0.0.3] for service sub" in line, line
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{relay.server.metrics_port}/metrics", timeout=10
    ).read()
    assert b'mta_smtpd_auth_failures_total{mechanism="PLAIN"}' in metrics
    assert b"mta_smtpd_auth_successes_total{mechanism=" in metrics


def test_a_failure_delay_does_not_hold_up_other_clients(relay: Relay) -> None:
    slow = tls_client(relay, source="127.0.0.4")
    other = tls_client(relay, source="127.0.0.5")
    try:
        started = time.monotonic()
        slow.send(f"AUTH {plain('alice', 'guess')}\r\n".encode())
        assert other.noop()[0] == 250
        assert time.monotonic() - started < FAILURE_DELAY  # the loop was not blocked
        assert slow.getreply()[0] == 535
        assert time.monotonic() - started >= FAILURE_DELAY
    finally:
        slow.close()
        other.close()


def test_the_log_never_holds_a_password(relay: Relay) -> None:
    assert "235 2.7.0" in submit(relay, "PLAIN") and "235 2.7.0" in submit(relay, "LOGIN")
    # at AUTH, and with the queue ID when the message is received (Postfix's client= line)
    log = wait_until(lambda: (text := relay.server.log()).count("sasl_method=") >= 4 and text)
    assert "sasl_method=PLAIN, sasl_username=alice" in log
    assert "sasl_method=LOGIN, sasl_username=alice" in log
    for mechanism in ("PLAIN", "LOGIN"):
        assert re.search(
            rf": \w+: client=unknown\[127\.0\.0\.1\], sasl_method={mechanism}, sasl_username=alice",
            log,
        )
    assert re.search(
        r"Anonymous TLS connection established from unknown\[127\.0\.0\.1\]: "
        r"TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)",
        log,
    )
    for secret in (PASSWORD, "bobs-secret", base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in log


# ----- reload ---------------------------------------------------------------------------------


def test_hup_rereads_the_password_file(
    tmp_path: Path, sink_factory: Callable[..., CaptureSink]
) -> None:
    relay = start_relay(tmp_path, sink_factory())
    try:
        passwords = tmp_path / "passwd"
        client = tls_client(relay)
        assert client.docmd("AUTH", plain("carol", "new"))[0] == 535
        client.close()
        write_tables(tmp_path, {**USERS, "carol": "new"})
        assert len(PasswordFile.load(str(passwords))) == 3
        before = worker_pids(relay.server)
        relay.server.signal(1)  # SIGHUP: the workers are replaced and load the file anew
        wait_until(lambda: worker_pids(relay.server) and not before & worker_pids(relay.server))
        wait_for_port("127.0.0.1", relay.submission)
        client = tls_client(relay)
        assert client.docmd("AUTH", plain("carol", "new"))[0] == 235
        client.close()
        passwords.write_text("carol:broken\n")  # a broken file on reload: the old tables stay
        relay.server.signal(1)
        wait_until(lambda: "reload failed" in relay.server.log())
        assert "auth.passwords: " in relay.server.log() and "line 1" in relay.server.log()
    finally:
        stop_all([relay.server])


def worker_pids(server: MtaProcess) -> set[int]:
    return set(children_by_kind(server.pid).get("smtpd", []))
