"""DKIM signatures checked by an independent verifier: OpenDKIM (libopendkim 2.11, C and
OpenSSL; Debian's ``opendkim`` package, installed by .ci/setup).

What a real ``mta serve`` relayed to the capture sink goes through ``opendkim -t FILES``,
its test mode, which verifies messages and exits; its ``TestPublicKeys`` setting reads the
public keys from a file (``NAME TXT-value`` lines) instead of DNS.  (``opendkim-testmsg``
from opendkim-tools verifies through DNS only: it has no option for a key file.)  Both key
types: OpenDKIM 2.11 built with OpenSSL 3 verifies ed25519-sha256 (``opendkim -V``).
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.delivery.stored import STREAM_THRESHOLD
from tests.delivery.sink import CaptureSink
from tests.delivery.test_dkim import dkim_config, keygen, message, send
from tests.helpers import MtaProcess

pytestmark = pytest.mark.timeout(60)

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"


def opendkim_verify(
    directory: Path, keys: dict[str, tuple[Path, str]], messages: dict[str, bytes]
) -> dict[str, str]:
    """{file name: OpenDKIM's verdict line} for each message, verified with ``keys``."""
    selectors = {"rsa.test": "s1", "ed.test": "e1", "mx.test": "mx"}
    published = directory / "public-keys"
    published.write_text(
        "".join(f"{selectors[d]}._domainkey.{d} {txt}\n" for d, (_, txt) in keys.items())
    )
    conf = directory / "opendkim.conf"
    conf.write_text(f"Mode v\nTestPublicKeys {published}\n")
    files = []
    for name, data in messages.items():
        (directory / name).write_bytes(data)
        files.append(str(directory / name))
    done = subprocess.run(
        [OPENDKIM, "-x", str(conf), "-t", ",".join(files)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    verdicts: dict[str, str] = {}
    for line in (done.stdout + done.stderr).splitlines():  # "opendkim: FILE: verification..."
        found = re.match(r"opendkim: (\S+): (.*)$", line)
        if found:
            verdicts[Path(found[1]).name] = found[2]
    return verdicts


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("dkim")
    return {
        "rsa.test": keygen(directory, "rsa.test", "s1", "rsa"),
        "ed.test": keygen(directory, "ed.test", "e1", "ed25519"),
    }


def test_opendkim_verifies_what_the_relay_signed_with_both_key_types(
    mta_factory: Callable[..., MtaProcess],
    sink: CaptureSink,
    keys: dict[str, tuple[Path, str]],
    tmp_path: Path,
) -> None:
    relay = mta_factory(dkim_config(keys, delivery={"relayhost": f"127.0.0.1:{sink.port}"}))
    send(relay, "alice@rsa.test", message("alice@rsa.test", "rsa"))
    send(relay, "eve@ed.test", message("eve@ed.test", "ed"))
    got = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0]: m.data for m in sink.wait_for(2)}
    messages = {
        "rsa.eml": got[b"rsa"],
        "ed.eml": got[b"ed"],
        "rsa-changed.eml": got[b"rsa"].replace(b"Hello.", b"Hallo."),
        "ed-changed.eml": got[b"ed"].replace(b"Subject: ed", b"Subject: ed!"),
    }
    for data in got.values():  # the fields the message has, From once more (not Cc...)
        signature = email.message_from_bytes(data)["DKIM-Signature"]
        h = re.search(r"h=([^;]*);", "".join(signature.split()))
        assert h is not None and h[1] == "from:to:subject:message-id:date:from", signature
    verdicts = opendkim_verify(tmp_path, keys, messages)
    expected = "verification (s=s1, d=rsa.test, 2048-bit key) succeeded"
    assert verdicts.get("rsa.eml") == expected, verdicts
    assert verdicts["ed.eml"].startswith("verification (s=e1, d=ed.test, ")
    assert verdicts["ed.eml"].endswith(") succeeded")
    for changed in ("rsa-changed.eml", "ed-changed.eml"):
        assert "failed" in verdicts[changed], verdicts


def test_a_large_message_sent_from_its_file_is_signed_and_verifies(
    mta_factory: Callable[..., MtaProcess],
    sink: CaptureSink,
    keys: dict[str, tuple[Path, str]],
    tmp_path: Path,
) -> None:
    """Over STREAM_THRESHOLD a message is read whole for dkimpy, off the loop, and signed
    by the agent's signing thread; the body sent in chunks is the one signed."""
    relay = mta_factory(dkim_config(keys, delivery={"relayhost": f"127.0.0.1:{sink.port}"}))
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    data = message("eve@ed.test", "large").replace(b"Hello.\r\n", line * (STREAM_THRESHOLD // 70))
    assert len(data) > STREAM_THRESHOLD
    send(relay, "eve@ed.test", data)
    [got] = sink.wait_for(1, timeout=30)
    assert got.data.endswith(data)
    signature = email.message_from_bytes(got.data)["DKIM-Signature"]
    assert "h=from:to:subject:message-id:date:from;" in "".join(signature.split())
    verdicts = opendkim_verify(tmp_path, keys, {"large.eml": got.data})
    assert verdicts["large.eml"].endswith(") succeeded"), verdicts
