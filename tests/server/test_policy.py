"""Relay control: never an open relay; relay networks may send anywhere, others only to us."""

from __future__ import annotations

import pytest

from mta.server.policy import RelayPolicy

DEFAULT_NETWORKS = ["127.0.0.0/8", "::1/128"]


@pytest.fixture
def policy() -> RelayPolicy:
    return RelayPolicy([*DEFAULT_NETWORKS, "10.0.0.0/8", "fe80::/10"], ["example.org"])


@pytest.mark.parametrize("client", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_may_relay_anywhere(policy: RelayPolicy, client: str) -> None:
    assert policy.client_may_relay(client)
    assert policy.allows(client, "anyone@elsewhere.test")
    assert policy.allows(client, "x@example.org")


@pytest.mark.parametrize("client", ["10.1.2.3", "::ffff:10.1.2.3", "fe80::1%eth0", "fe80::2"])
def test_configured_networks_may_relay(policy: RelayPolicy, client: str) -> None:
    assert policy.allows(client, "anyone@elsewhere.test")


@pytest.mark.parametrize(
    "client", ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "11.0.0.1", "", "not-an-ip"]
)
def test_outsiders_may_not_relay(policy: RelayPolicy, client: str) -> None:
    assert not policy.client_may_relay(client)
    assert not policy.allows(client, "anyone@elsewhere.test")


@pytest.mark.parametrize(
    "recipient",
    [
        "user@example.org",
        "user@EXAMPLE.ORG",
        "User@Example.Org",
        "user@example.org.",
        '"john doe"@example.org',
    ],
)
def test_outsiders_may_send_to_our_domains(policy: RelayPolicy, recipient: str) -> None:
    assert policy.allows("192.0.2.1", recipient)


@pytest.mark.parametrize(
    "recipient",
    [
        "user@example.org.evil.test",
        "user@evil-example.org",
        "user@xexample.org",
        "user@sub.example.org",
        "user@example.or",
        '"user@example.org"@evil.test',
        "user%example.org@evil.test",
        "user@",
        "example.org",
        # routing in the local part of an accepted domain (Postfix's
        # allow_untrusted_routing = no): the next hop could relay it on
        '"a@b"@example.org',
        "user%evil.test@example.org",
        '"user%evil.test"@example.org',
        "evil.test!user@example.org",
        '"evil.test!user"@example.org',
        "user@[192.0.2.1]",
    ],
)
def test_outsiders_may_not_send_elsewhere(policy: RelayPolicy, recipient: str) -> None:
    assert not policy.allows("192.0.2.1", recipient)


@pytest.mark.parametrize("name", ["postmaster", "Postmaster", "POSTMASTER"])
def test_postmaster_is_always_accepted(policy: RelayPolicy, name: str) -> None:
    assert policy.allows("192.0.2.1", name)  # RFC 5321 §4.5.1
    assert policy.allows("192.0.2.1", f"{name}@example.org")


def test_postmaster_of_another_domain_is_relaying(policy: RelayPolicy) -> None:
    assert not policy.allows("192.0.2.1", "postmaster@elsewhere.test")


def test_local_part_without_domain_is_not_ours(policy: RelayPolicy) -> None:
    assert not policy.allows("192.0.2.1", "root")


def test_configured_domains_are_normalized() -> None:
    policy = RelayPolicy(DEFAULT_NETWORKS, ["Example.ORG.", "mail.Example.NET"])
    assert policy.allows("192.0.2.1", "u@example.org")
    assert policy.allows("192.0.2.1", "u@MAIL.EXAMPLE.NET.")
    assert not policy.allows("192.0.2.1", "u@example.net")


def test_no_networks_means_nobody_relays() -> None:
    policy = RelayPolicy([], ["example.org"])
    assert not policy.allows("127.0.0.1", "u@elsewhere.test")
    assert policy.allows("127.0.0.1", "u@example.org")


def test_answers_are_stable_when_cached(policy: RelayPolicy) -> None:
    for _ in range(3):
        assert policy.allows("10.0.0.1", "u@elsewhere.test")
        assert not policy.allows("192.0.2.1", "u@elsewhere.test")
