"""No open relay through any trick, against a real ``mta serve`` over loopback.

The client connects from 127.0.0.2, outside ``relay.networks`` (127.0.0.1/32 here), and
tries the old ways of making a relay forward mail elsewhere.  Each is refused, or accepted
only as mail for the accepted domain and delivered only there: ``accepted.test`` (and bare
``postmaster``, delivered by the route of ``localhost``) lead to one sink, everything else
(the relayhost) to another, which must never receive a message.  Postfix's answers are the
reference: ``554 5.7.1 <addr>: Relay access denied`` for routing in the local part
(``allow_untrusted_routing = no``), ``501`` for addresses that are not addresses.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until

pytestmark = pytest.mark.timeout(60)

CLIENT = "127.0.0.2"  # outside relay.networks
DENIED = "554 5.7.1"


@pytest.fixture(scope="module")
def ours() -> Iterator[CaptureSink]:
    with CaptureSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[CaptureSink]:
    with CaptureSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, ours: CaptureSink, elsewhere: CaptureSink
) -> Iterator[MtaProcess]:
    route = f"smtp:[127.0.0.1]:{ours.port}"
    config = {
        "relay": {
            "networks": ["127.0.0.1/32"],
            "domains": ["accepted.test"],
            "recipients": "any",
        },
        "routes": {"accepted.test": route, "localhost": route, "routed.test": route},
        "delivery": {"relayhost": f"127.0.0.1:{elsewhere.port}"},
    }
    proc = MtaProcess(tmp_path_factory.mktemp("relay"), config).start()
    try:
        yield proc
    finally:
        try:
            proc.stop(timeout=30)
        except Exception:  # noqa: BLE001  -- teardown must kill whatever is left
            proc.kill_tree()


def rcpt(relay: MtaProcess, recipient: str) -> tuple[int, str]:
    """RCPT ``recipient`` (the text inside <>) from the outside client; the reply."""
    with smtplib.SMTP("127.0.0.1", relay.port, source_address=(CLIENT, 0), timeout=10) as c:
        c.ehlo("client.example")
        assert c.mail("s@client.example")[0] == 250
        code, text = c.docmd(f"RCPT TO:<{recipient}>")
        return code, text.decode()


REFUSED = [
    # the percent hack: the next hop would forward to other.test
    ("user%other.test@accepted.test", DENIED),
    ("USER%OTHER.TEST@ACCEPTED.TEST", DENIED),
    # a source route naming us first, then the real destination elsewhere
    ("@accepted.test:user@other.test", DENIED),
    ("@accepted.test,@other.test:user@other.test", DENIED),
    # quoted local parts hiding an address or a route
    ('"user@other.test"@accepted.test', DENIED),
    ('"user%other.test"@accepted.test', DENIED),
    ('"other.test!user"@accepted.test', DENIED),
    # a bang path (UUCP)
    ("other.test!user@accepted.test", DENIED),
    # an address literal: a relay to any host by its address
    ("user@[127.0.0.1]", DENIED),
    ("user@[IPv6:::1]", DENIED),
    # a domain that is only routed, not accepted; look-alikes of the accepted one
    ("user@routed.test", DENIED),
    ("user@sub.accepted.test", DENIED),
    ("user@accepted.test.other.test", DENIED),
    ("postmaster@other.test", DENIED),
    # trailing dots: not a domain in RFC 5321's syntax
    ("user@accepted.test.", "501 5.1.3"),
    ("user@other.test.", "501 5.1.3"),
    ("user@other.test", DENIED),
]


@pytest.mark.parametrize(("recipient", "refusal"), REFUSED)
def test_tricks_are_refused(relay: MtaProcess, recipient: str, refusal: str) -> None:
    code, text = rcpt(relay, recipient)
    assert f"{code} {text}".startswith(refusal), (code, text)
    if refusal == DENIED:
        assert text.endswith("Relay access denied")


ACCEPTED = [
    # (as sent, as the next hop of accepted.test receives it)
    ("user@accepted.test", "user@accepted.test"),
    ("USER@ACCEPTED.TEST", "USER@ACCEPTED.TEST"),
    ("@other.test:route@accepted.test", "route@accepted.test"),  # the route is dropped
    ('"quoted user"@accepted.test', '"quoted user"@accepted.test'),
    ("postmaster", "postmaster"),  # RFC 5321 §4.5.1; delivered by the route of localhost
    ("PostMaster", "PostMaster"),
]


def test_what_is_accepted_is_delivered_only_to_the_accepted_domain(
    relay: MtaProcess, ours: CaptureSink, elsewhere: CaptureSink
) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, source_address=(CLIENT, 0), timeout=10) as c:
        c.ehlo("client.example")
        for sent, _ in ACCEPTED:
            assert c.mail("s@client.example")[0] == 250
            code, text = c.docmd(f"RCPT TO:<{sent}>")
            assert code == 250, (sent, text)
            assert c.data(b"Subject: relay test\r\n\r\n" + sent.encode() + b"\r\n")[0] == 250
    messages = ours.wait_for(len(ACCEPTED), timeout=20)
    received = sorted(r for m in messages for r in m.rcpt_tos)
    assert received == sorted(expected for _, expected in ACCEPTED)
    wait_until(relay.queue_empty, timeout=20)  # every delivery is done: none went astray
    assert elsewhere.messages == []


def test_the_trusted_network_still_relays(relay: MtaProcess, elsewhere: CaptureSink) -> None:
    """The control case: 127.0.0.1 is in relay.networks and may send anywhere."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as c:
        c.sendmail("s@inside.test", ["friend@other.test"], b"Subject: out\r\n\r\nhi\r\n")
    (message,) = elsewhere.wait_for(1, timeout=20)
    assert message.rcpt_tos == ["friend@other.test"]
