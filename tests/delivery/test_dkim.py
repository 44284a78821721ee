"""DKIM signing end to end: a real ``mta serve`` relays to the capture sink, and what the
sink got verifies with dkimpy against the public keys ``mta dkim keygen`` printed
(served by a ``dnsfunc``); a retried message carries the signature of its first attempt;
a key that cannot be used stops the start (mta/delivery/signing.py)."""

from __future__ import annotations

import email
import os
import re
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest

from mta.exitcodes import EXIT_CONFIG
from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, wait_until

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., MtaProcess]


def keygen(directory: Path, domain: str, selector: str, key_type: str) -> tuple[Path, str]:
    """``mta dkim keygen``: the key file and the TXT record's text (strings joined)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "dkim", "keygen", domain, selector]
    command += ["--type", key_type, "--dir", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    key = directory / f"{domain}.{selector}.key"
    assert key.stat().st_mode & 0o777 == 0o600
    [record] = [line for line in done.stdout.splitlines() if "._domainkey." in line]
    assert record.startswith(f"{selector}._domainkey.{domain}. IN TXT ")
    return key, "".join(re.findall(r'"([^"]*)"', record))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """An RSA key for rsa.test, an Ed25519 key for ed.test and the relay's own (mx.test)."""
    directory = tmp_path_factory.mktemp("dkim")
    return {
        "rsa.test": keygen(directory, "rsa.test", "s1", "rsa"),
        "ed.test": keygen(directory, "ed.test", "e1", "ed25519"),
        "mx.test": keygen(directory, "mx.test", "mx", "ed25519"),
    }


def dnsfunc_for(keys: dict[str, tuple[Path, str]]) -> Callable[..., bytes]:
    selectors = {"rsa.test": "s1", "ed.test": "e1", "mx.test": "mx"}
    records = {
        f"{selectors[domain]}._domainkey.{domain}.": txt for domain, (_, txt) in keys.items()
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode(), "").encode()

    return dnsfunc


def dkim_config(keys: dict[str, tuple[Path, str]], **overrides: Any) -> dict[str, Any]:
    selectors = {"rsa.test": "s1", "ed.test": "e1", "mx.test": "mx"}
    entries = {d: {"selector": selectors[d], "key": str(k)} for d, (k, _) in keys.items()}
    return {"dkim": {"keys": entries}, **overrides}


def message(sender: str, subject: str) -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: bob@dest.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@test>\r\nDate: Sun, 29 Nov 2026 22:00:00 +0000\r\n"
        f"\r\nHello.\r\n.leading dot\r\n"
    ).encode()


def send(relay: MtaProcess, sender: str, data: bytes, rcpts: list[str] | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30) as c:
        assert c.sendmail(sender, rcpts or ["bob@dest.test"], data) == {}


def signatures(data: bytes) -> list[str]:
    return email.message_from_bytes(data).get_all("DKIM-Signature") or []


def test_relayed_mail_verifies_for_both_key_types_and_other_domains_are_not_signed(
    mta_factory: Factory, sink: CaptureSink, keys: dict[str, tuple[Path, str]]
) -> None:
    relay = mta_factory(dkim_config(keys, delivery={"relayhost": f"127.0.0.1:{sink.port}"}))
    send(relay, "alice@rsa.test", message("alice@rsa.test", "rsa"))
    send(relay, "eve@ed.test", message("eve@news.ed.test", "ed"))  # a subdomain's From
    send(relay, "carol@other.test", message("carol@other.test", "unsigned"))
    got = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0]: m for m in sink.wait_for(3)}
    dnsfunc = dnsfunc_for(keys)
    for subject, algorithm, domain in (
        (b"rsa", "rsa-sha256", "rsa.test"),
        (b"ed", "ed25519-sha256", "ed.test"),
    ):
        data = got[subject].data
        [header] = signatures(data)
        assert f"a={algorithm};" in header and f"d={domain};" in header
        assert "c=relaxed/relaxed" in header
        assert re.search(r"h=from\s*:.*:\s*from;", " ".join(header.split())), header  # oversigned
        assert dkim.verify(data, dnsfunc=dnsfunc), header
        assert not dkim.verify(data.replace(b"Hello.", b"Hallo."), dnsfunc=dnsfunc)
    assert signatures(got[b"unsigned"].data) == []


def test_a_retried_message_carries_its_first_signature_once(
    mta_factory: Factory, sink: CaptureSink, keys: dict[str, tuple[Path, str]]
) -> None:
    sink.rcpt_replies = {"later@dest.test": (452, "4.2.2 Mailbox full")}
    delivery = {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 1, "max_backoff": 1}
    relay = mta_factory(dkim_config(keys, delivery=delivery))
    send(
        relay,
        "alice@rsa.test",
        message("alice@rsa.test", "retry"),
        ["bob@dest.test", "later@dest.test"],
    )
    [first] = sink.wait_for(1)
    assert first.rcpt_tos == ["bob@dest.test"]
    [saved] = wait_until(lambda: list((relay.spool / "dkim").glob("*")))
    header = saved.read_bytes()  # kept beside the deferred message
    assert first.data.startswith(header)
    sink.rcpt_replies = {}  # the backoff brings the deferred recipient back
    second = sink.wait_for(2, timeout=20)[1]
    assert second.rcpt_tos == ["later@dest.test"]
    assert signatures(first.data) == signatures(second.data)
    assert len(signatures(second.data)) == 1
    assert second.data.startswith(header)
    assert dkim.verify(second.data, dnsfunc=dnsfunc_for(keys))
    wait_until(lambda: relay.queue_empty())
    wait_until(lambda: not list((relay.spool / "dkim").glob("*")))  # removed with the message


def test_bounces_are_signed_with_the_relays_own_key(
    mta_factory: Factory, sink_factory: Callable[..., CaptureSink], keys: dict[str, Any]
) -> None:
    sink, home = sink_factory(), sink_factory()
    sink.rcpt_replies = {"nobody@dest.test": (550, "5.1.1 No such user")}
    relay = mta_factory(
        dkim_config(
            keys,
            delivery={"relayhost": f"127.0.0.1:{sink.port}"},
            routes={"other.test": f"smtp:[127.0.0.1]:{home.port}"},
        )
    )
    send(relay, "carol@other.test", message("carol@other.test", "bounce"), ["nobody@dest.test"])
    [bounce] = home.wait_for(1)
    assert bounce.mail_from == ""
    [header] = signatures(bounce.data)
    assert "d=mx.test;" in header
    assert dkim.verify(bounce.data, dnsfunc=dnsfunc_for(keys))


@pytest.mark.parametrize("content", [b"not a key\n", None], ids=["garbage", "missing"])
def test_a_key_that_cannot_be_used_stops_the_start(
    mta_factory: Factory, tmp_path: Path, content: bytes | None
) -> None:
    key = tmp_path / "broken.key"
    if content is not None:
        key.write_bytes(content)
    relay = mta_factory(
        {"dkim": {"keys": {"rsa.test": {"selector": "s1", "key": str(key)}}}}, wait=False
    )
    assert relay.proc is not None
    assert relay.proc.wait(30) == EXIT_CONFIG
    assert f'dkim.keys."rsa.test".key: {key}' in relay.log()
    check = subprocess.run(
        [sys.executable, "-m", "mta", "--config", str(relay.config_path), "check-config"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=30,
    )
    assert check.returncode == 1
    assert f'dkim.keys."rsa.test".key: {key}' in check.stderr


def test_rsa_signed_by_openssl_is_dkimpys_signature_byte_for_byte(
    keys: dict[str, tuple[Path, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import msgspec

    import mta.delivery.signing as signing
    from mta.config import Config

    monkeypatch.setattr(dkim.time, "time", lambda: 1_795_990_000.0)  # one t= for both
    entry = {"selector": "s1", "key": str(keys["rsa.test"][0])}
    signer = signing.load_signer(msgspec.convert({"dkim": {"keys": {"rsa.test": entry}}}, Config))
    assert signer is not None
    data = message("alice@rsa.test", "openssl")
    assert dkim.RSASSA_PKCS1_v1_5_sign is signing._rsa_sign_with_openssl
    ours = signer.sign(data)
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", signing._dkimpy_rsa_sign)
    assert ours is not None and ours == signer.sign(data)
    assert dkim.verify(ours + data, dnsfunc=dnsfunc_for(keys))
