"""The delivery side of a smarthost against capture sinks: AUTH PLAIN/LOGIN over STARTTLS or
implicit TLS, verify by default for an authenticated hop, refusals deferred, no password
without TLS, and the per-destination lowest TLS version.

A :class:`Deliverer` delivers to the relayhost ``[smarthost.test]:PORT`` as the delivery
process does; the name resolves to 127.0.0.1 (a stub: DNS is not what is tested here) and
the sinks present certificates from a trustme test CA.
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import trustme
import uvloop
from prometheus_client import REGISTRY

from mta.config import Config, ConfigError, DeliveryConfig
from mta.delivery.credentials import load_credentials
from mta.delivery.deliver import Deliverer
from mta.delivery.dns import Resolver
from mta.delivery.routing import NextHop
from mta.delivery.smtp_client import Transaction
from mta.delivery.tls_policy import PolicyTable, TlsPolicy
from mta.queue.results import RecipientResult
from tests.delivery.sink import CaptureSink

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
HOST = "smarthost.test"
USER = "relay@example.org"
PASSWORD = "s3cr:et w0rd"  # a ':' and a space: all after the first ':' is the password
SECRETS = (
    PASSWORD,
    base64.b64encode(PASSWORD.encode()).decode(),
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
)
TX = Transaction(sender="a@b.test", recipients=["c@dest.test"], message=b"Subject: x\r\n\r\nx\r\n")


class LoopbackResolver(Resolver):
    async def addresses(self, host: str) -> list[str]:
        return ["127.0.0.1"]


def auth_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("mta_delivery_auth_total", {"outcome": outcome})
    return value or 0.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(HOST).configure_cert(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def auth_sink(ca: trustme.CA, password: str = PASSWORD, **kwargs: Any) -> CaptureSink:
    """A STARTTLS (or implicit TLS) sink that takes ``USER`` with ``password``."""
    sink = CaptureSink(ssl_context=server_context(ca), **kwargs)
    sink.auth_users = {USER: password}
    return sink


def auth_file(directory: Path, port: int) -> str:
    path = directory / "smtp_auth"
    path.write_text(f"# the smarthost\n\n[{HOST}]:{port}  {USER}:{PASSWORD}\n")
    path.chmod(0o600)
    return str(path)


def deliverer(
    tmp_path: Path, port: int, ca_file: str, *, auth: bool = True, **settings: Any
) -> Deliverer:
    policy = settings.pop("tls_policy", {})
    settings.setdefault("command_timeout", 10.0)
    delivery = DeliveryConfig(
        relayhost=f"[{HOST}]:{port}",
        smtp_auth_file=auth_file(tmp_path, port) if auth else "",
        tls_ca_file=ca_file,
        **settings,
    )
    config = Config(hostname="mx.test", delivery=delivery, tls_policy=policy)
    return Deliverer(config, LoopbackResolver())


def deliver(d: Deliverer, port: int) -> RecipientResult:
    async def once() -> RecipientResult:
        [result] = await d.deliver(NextHop("smtp", HOST, port), TX)
        await d.close_idle(0)
        return result

    return run(once())


def assert_no_secret(log: str, sink: CaptureSink | None = None) -> None:
    """Neither the log nor (when given) the server saw the password in any form."""
    for secret in SECRETS:
        assert secret not in log
        assert sink is None or not any(secret in line for line in sink.lines)


@pytest.mark.parametrize("mechanisms", [("PLAIN", "LOGIN"), ("LOGIN",)])
def test_auth_over_starttls_verified_by_default(
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mechanisms: tuple[str, ...],
) -> None:
    before = auth_count("authenticated")
    with auth_sink(ca) as sink, caplog.at_level(logging.DEBUG, "mta.delivery"):
        sink.auth_mechanisms = mechanisms
        result = deliver(deliverer(tmp_path, sink.port, ca_file), sink.port)
        [got] = sink.wait_for(1)
    assert result.status == "sent", result
    assert auth_count("authenticated") == before + 1
    assert re.fullmatch(r"TLSv1\.[23] verified", result.tls)  # verify, with no entry for it
    assert got.auth == USER and got.tls
    assert sink.auth_attempts == [(mechanisms[0], True)]  # PLAIN when offered, else LOGIN
    assert f"authenticated as {USER} with {mechanisms[0]}" in caplog.text
    assert_no_secret(caplog.text)


def test_implicit_tls_on_a_wrapper_port(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    with auth_sink(ca, implicit_tls=True) as sink:
        d = deliverer(tmp_path, sink.port, ca_file, tls_wrapper_ports=(sink.port,))
        result = deliver(d, sink.port)
        [got] = sink.wait_for(1)
    assert result.status == "sent", result
    assert re.fullmatch(r"TLSv1\.[23] verified", result.tls)
    assert got.auth == USER and sink.auth_attempts == [("PLAIN", True)]
    assert sink.server_names == [HOST]
    assert "STARTTLS" not in sink.lines


def test_a_port_not_listed_is_never_wrapped(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    """The explicit override: an implicit TLS server on a port not in tls_wrapper_ports
    gets a plaintext greeting wait, which fails; nothing is sent."""
    with auth_sink(ca, implicit_tls=True) as sink:
        d = deliverer(tmp_path, sink.port, ca_file, tls_wrapper_ports=(), command_timeout=1.0)
        result = deliver(d, sink.port)
        assert result.status == "deferred" and sink.auth_attempts == []


def test_wrong_password_is_deferred_with_the_reply(
    ca: trustme.CA, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = auth_count("refused")
    with auth_sink(ca, password="another") as sink, caplog.at_level(logging.DEBUG, "mta"):
        result = deliver(deliverer(tmp_path, sink.port, ca_file), sink.port)
        assert sink.messages == [] and sink.transactions == 0
    assert auth_count("refused") == before + 1
    assert (result.status, result.dsn) == ("deferred", "4.7.8")  # soft bounce: 5.7.8 → 4.7.8
    assert result.reply == (
        f"SASL authentication failed; server {HOST}[127.0.0.1]:{sink.port} said: "
        "535 5.7.8 Error: authentication failed"
    )
    assert_no_secret(caplog.text + repr(result))


@pytest.mark.parametrize(("policy", "dsn"), [({}, "4.7.4"), ({"[{host}]:{port}": "may"}, "4.7.0")])
def test_no_password_without_tls(
    ca_file: str, tmp_path: Path, policy: dict[str, str], dsn: str
) -> None:
    """A server offering AUTH with no STARTTLS: under the default verify TLS is missing
    (4.7.4); under an explicit may the password is still never sent (4.7.0)."""
    before = auth_count("no_tls")
    with CaptureSink() as sink:
        sink.auth_users, sink.auth_in_clear = {USER: PASSWORD}, True
        entries = {k.format(host=HOST, port=sink.port): v for k, v in policy.items()}
        result = deliver(deliverer(tmp_path, sink.port, ca_file, tls_policy=entries), sink.port)
        assert (result.status, result.dsn) == ("deferred", dsn), result
        assert sink.auth_attempts == [] and sink.transactions == 0
        assert_no_secret(repr(result), sink)
    assert auth_count("no_tls") == before + (dsn == "4.7.0")  # 4.7.4: TLS decided it first


def test_server_without_auth_gets_the_mail_and_a_warning(
    ca: trustme.CA, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = auth_count("not_offered")
    with CaptureSink(ssl_context=server_context(ca)) as sink, caplog.at_level(logging.WARNING):
        result = deliver(deliverer(tmp_path, sink.port, ca_file), sink.port)
        [got] = sink.wait_for(1)
    assert result.status == "sent" and got.auth == ""
    assert auth_count("not_offered") == before + 1
    assert f"{HOST}[127.0.0.1]:{sink.port} offered no AUTH" in caplog.text


def test_unknown_ca_is_deferred_before_auth(ca_file: str, tmp_path: Path) -> None:
    with auth_sink(trustme.CA()) as sink:
        result = deliver(deliverer(tmp_path, sink.port, ca_file), sink.port)
        assert (result.status, result.dsn) == ("deferred", "4.7.5"), result
        assert sink.auth_attempts == []


def test_an_explicit_entry_overrides_verify(ca_file: str, tmp_path: Path) -> None:
    with auth_sink(trustme.CA()) as sink:
        entries = {f"[{HOST}]:{sink.port}": "encrypt"}
        result = deliver(deliverer(tmp_path, sink.port, ca_file, tls_policy=entries), sink.port)
        assert result.status == "sent", result
        assert result.tls.endswith(" unverified")
        assert sink.wait_for(1)[0].auth == USER


# ----- the lowest TLS version per destination -------------------------------------------------


@pytest.mark.parametrize(
    ("maximum", "status"), [(ssl.TLSVersion.TLSv1_2, "deferred"), (None, "sent")]
)
def test_per_destination_lowest_version(
    ca: trustme.CA, ca_file: str, tmp_path: Path, maximum: ssl.TLSVersion | None, status: str
) -> None:
    with CaptureSink(ssl_context=server_context(ca, maximum)) as sink:
        entries = {f"[{HOST}]:{sink.port}": "encrypt protocols=>=TLSv1.3"}
        d = deliverer(tmp_path, sink.port, ca_file, auth=False, tls_policy=entries)
        result = deliver(d, sink.port)
        assert result.status == status, result
        if status == "sent":
            assert result.tls == "TLSv1.3 unverified"
        else:
            assert result.dsn == "4.7.5" and sink.messages == []
        # the same server without the entry: TLS 1.2 is enough
        plain = deliverer(tmp_path, sink.port, ca_file, auth=False, tls="encrypt")
        assert deliver(plain, sink.port).status == "sent"


def test_policy_table_with_credentials_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("[relay.test]:587 u:p\nplain.test u:p\n")
    path.chmod(0o600)
    config = Config(delivery=DeliveryConfig(smtp_auth_file=str(path)))
    credentials = load_credentials(config)
    table = PolicyTable(
        "may",
        {"[relay.test]:2525": "none", "v13.test": "verify protocols=>=TLSv1.3"},
        credentials=credentials,
    )
    assert table.level("relay.test", 587, mx=False) == "verify"  # authenticated: verify
    assert table.level("plain.test", 25, mx=False) == "verify"
    assert table.level("relay.test", 2525, mx=False) == "none"  # an explicit entry wins
    assert table.level("relay.test", 587, mx=True) == "may"  # MX hops get no password
    assert table.policy("relay.test", 587, False, "relay.test") == TlsPolicy(
        "verify", ("relay.test",)
    )
    assert table.policy("v13.test", 25, True, "mx.v13.test") == TlsPolicy(
        "verify", ("mx.v13.test", "v13.test"), min_version="1.3"
    )
    assert table.context(TlsPolicy("encrypt", min_version="1.3")).minimum_version == (
        ssl.TLSVersion.TLSv1_3
    )


@pytest.mark.parametrize(
    "value",
    ["verify protocols=TLSv1.3", "encrypt protocols=>=TLSv1.1", "may ciphers=high", "verify,1.3"],
)
def test_bad_version_syntax_names_the_key(value: str) -> None:
    with pytest.raises((msgspec.ValidationError, ValueError)) as caught:
        msgspec.convert({"tls_policy": {"example.org": value}}, Config)
    assert "tls_policy.example.org: " in str(caught.value)


def test_good_version_syntax() -> None:
    for value in ("verify", "encrypt protocols=>=TLSv1.3", "may protocols=>=TLSv1.2"):
        assert msgspec.convert({"tls_policy": {"example.org": value}}, Config)


# ----- the credentials file -----------------------------------------------------------------


def load(tmp_path: Path, text: str, mode: int = 0o600) -> Any:
    path = tmp_path / "auth"
    path.write_text(text)
    path.chmod(mode)
    return load_credentials(Config(delivery=DeliveryConfig(smtp_auth_file=str(path))))


def test_credentials_lookup_forms(tmp_path: Path) -> None:
    table = load(
        tmp_path,
        "# comment\n\n[A.test]:587 a:pw:with:colons\n[b.test]\tb:pw b\nC.test. c:x\n",
    )
    found = table.lookup(NextHop("smtp", "a.test", 587))
    assert (found.username, found.password) == ("a", "pw:with:colons")
    assert table.lookup(NextHop("smtp", "a.test", 25)) is None
    assert table.lookup(NextHop("smtp", "b.test", 2525)).password == "pw b"
    assert table.lookup(NextHop("smtp", "c.test", 25)).username == "c"
    assert table.lookup(NextHop("smtp", "c.test", 25, mx=True)) is None
    assert table.lookup(NextHop("lmtp", "c.test", 24)) is None
    assert "pw" not in repr(found)


def test_a_missing_credentials_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nonexistent"
    with pytest.raises(ConfigError) as caught:
        load_credentials(Config(delivery=DeliveryConfig(smtp_auth_file=str(path))))
    assert (
        str(caught.value)
        == f"delivery.smtp_auth_file: {path}: cannot read: No such file or directory"
    )


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("[a.test]:587 a:p\n", 0o640, "may be read by group or others (mode 0640)"),
        ("[a.test]:587 a:p\n", 0o604, "may be read by group or others"),
        ("# ok\n[a.test]:587 a\n", 0o600, "line 2: expected [host]:port username:password"),
        ("[a.test]:587 :p\n", 0o600, "line 1: expected"),
        ("[a.test]:x a:p\n", 0o600, "line 1: '[a.test]:x' has no valid port"),
        ("a.test a:p\nA.test b:q\n", 0o600, "line 2: a.test listed twice"),
    ],
)
def test_credentials_errors_name_file_and_line(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, mode)
    assert f"delivery.smtp_auth_file: {tmp_path / 'auth'}" in str(caught.value)
    assert message in str(caught.value)
    assert "a:p" not in str(caught.value) and ":q" not in str(caught.value)
