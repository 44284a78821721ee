"""Which header fields a DKIM signature covers (mta/delivery/signing.py, RFC 6376 §5.4):
only the configured fields present in the message, each instance, and From once more;
fields a signer should not sign are a configuration error."""

from __future__ import annotations

from pathlib import Path

import dkim
import msgspec
import pytest

from mta.config import DKIM_HEADERS, Config, ConfigError, DkimConfig, load_config
from mta.delivery.signing import Signer, generate_key, load_signer


@pytest.fixture(scope="module")
def signer_and_dns(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, object]:
    pem, record = generate_key("ed25519")
    key = tmp_path_factory.mktemp("dkim") / "h.test.key"
    key.write_bytes(pem)
    entry = {"selector": "h1", "key": str(key)}
    signer = load_signer(msgspec.convert({"dkim": {"keys": {"h.test": entry}}}, Config))
    assert signer is not None

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record.encode() if name == b"h1._domainkey.h.test." else b""

    return signer, dnsfunc


MESSAGE = (
    b"Received: from client.test by mx.test; Sun, 29 Nov 2026 22:00:00 +0000\r\n"
    b"From: Alice <alice@h.test>\r\n"
    b"To: bob@dest.test\r\n"
    b"Cc: carol@dest.test\r\n"
    b"Cc: dave@dest.test\r\n"
    b"Subject: headers\r\n"
    b"X-Mailer: test\r\n"
    b"List-Id: <news.h.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def tags(header: bytes) -> dict[str, str]:
    value = b"".join(header.partition(b":")[2].split()).decode()
    return dict(t.split("=", 1) for t in value.split(";") if t)


def test_h_lists_the_present_fields_each_instance_and_from_once_more(
    signer_and_dns: tuple[Signer, object],
) -> None:
    signer, dnsfunc = signer_and_dns
    header = signer.sign(MESSAGE)
    assert header is not None
    # not Reply-To, Date, Message-ID, MIME-Version...: absent; not Received, X-Mailer
    assert tags(header)["h"] == "from:to:cc:cc:subject:list-id:from"
    signed = header + MESSAGE
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    # an absent field is not covered: adding it keeps the signature valid ...
    added = signed.replace(b"\r\n\r\n", b"\r\nReply-To: x@h.test\r\n\r\n", 1)
    assert dkim.verify(added, dnsfunc=dnsfunc)
    # ... but a second From, a third Cc or a changed one breaks it
    for change in (b"\r\nFrom: mallory@evil.test", b"\r\nCc: x@evil.test"):
        forged = signed.replace(b"\r\n\r\n", change + b"\r\n\r\n", 1)
        assert not dkim.verify(forged, dnsfunc=dnsfunc)
    assert not dkim.verify(signed.replace(b"dave@", b"eve@"), dnsfunc=dnsfunc)


def test_an_oversigned_field_is_named_even_when_absent_so_none_can_be_added(
    signer_and_dns: tuple[Signer, object], tmp_path: Path
) -> None:
    signer, dnsfunc = signer_and_dns
    settings = msgspec.convert({"oversign": ["From", "Reply-To"]}, DkimConfig)
    oversigning = Signer(signer.keys, settings, str(tmp_path))
    header = oversigning.sign(MESSAGE)
    assert header is not None
    assert tags(header)["h"] == "from:to:cc:cc:subject:list-id:from:reply-to"
    signed = header + MESSAGE
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    added = signed.replace(b"\r\n\r\n", b"\r\nReply-To: x@evil.test\r\n\r\n", 1)
    assert not dkim.verify(added, dnsfunc=dnsfunc)


def test_the_default_list_is_rfc_6376s_with_the_mime_fields() -> None:
    recommended = {  # RFC 6376 §5.4.1
        *("From", "Reply-To", "Subject", "Date", "To", "Cc", "In-Reply-To", "References"),
        *("Resent-Date", "Resent-From", "Resent-To", "Resent-Cc"),
        *("List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post"),
        *("List-Owner", "List-Archive"),
    }
    assert set(recommended) <= set(DKIM_HEADERS)
    assert Config().dkim.headers == DKIM_HEADERS
    assert Config().dkim.oversign == ("From",)


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("headers", '["From", "Received", "Subject"]', "Received"),
        ("headers", '["From", "Bcc"]', "Bcc"),
        ("oversign", '["Return-Path"]', "Return-Path"),
    ],
)
def test_a_field_that_should_not_be_signed_is_a_config_error(
    tmp_path: Path, key: str, value: str, named: str
) -> None:
    path = tmp_path / "mta.toml"
    path.write_text(f"[dkim]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (f"{path}: dkim.{key}: {named} must not be signed (RFC 6376 §5.4.1)")
