"""The RCPT stage as a pure function: the order of the checks and each verdict."""

from __future__ import annotations

from typing import Any

import pytest

from mta.policy.access import parse_table
from mta.policy.decide import Facts, Verdict, recipient_stage
from mta.policy.recipients import RecipientTable, parse_recipients
from mta.policy.tables import PolicyTables

OUTSIDER = "192.0.2.1"


def tables(
    client: str = "", helo: str = "", sender: str = "", recipient: str = "", **kw: Any
) -> PolicyTables:
    return PolicyTables(
        client=parse_table(client, "client", client=True),
        helo=parse_table(helo, "helo"),
        sender=parse_table(sender, "sender"),
        recipient=parse_table(recipient, "recipient"),
        accepted_domains=kw.get("domains", frozenset({"ours.test"})),
        recipients=kw.get("recipients", parse_recipients("alice@ours.test\n", "r")),
    )


def facts(recipient: str = "alice@ours.test", **kw: Any) -> Facts:
    settings: dict[str, Any] = {
        "client_ip": OUTSIDER,
        "helo": "client.example",
        "sender": "s@client.example",
        "trusted_network": False,
    }
    settings.update(kw)
    return Facts(recipient=recipient, **settings)


def reply(verdict: Verdict) -> str:
    assert verdict.reply is not None, verdict
    return verdict.reply.decode()


def test_a_known_recipient_at_an_accepted_domain_is_accepted() -> None:
    verdict = recipient_stage(facts(), tables())
    assert verdict.accepted and not (verdict.hold or verdict.discard)


def test_relay_is_denied_postfix_s_way() -> None:
    verdict = recipient_stage(facts("bob@other.test"), tables())
    assert reply(verdict) == "554 5.7.1 <bob@other.test>: Relay access denied\r\n"
    assert verdict.reason == "relay_denied"


def test_an_unknown_recipient_is_refused_at_rcpt() -> None:
    verdict = recipient_stage(facts("bob@ours.test"), tables())
    assert reply(verdict) == (
        "550 5.1.1 <bob@ours.test>: Recipient address rejected: "
        "User unknown in relay recipient table\r\n"
    )
    assert verdict.reason == "unknown_recipient"


def test_recipients_are_validated_for_trusted_clients_too() -> None:
    """Postfix's smtpd_reject_unlisted_recipient holds whoever the client is; the trusted
    client may relay elsewhere, but not invent users of our domains."""
    trusted = {"trusted_network": True}
    assert reply(recipient_stage(facts("bob@ours.test", **trusted), tables())).startswith("550")
    assert recipient_stage(facts("bob@other.test", **trusted), tables()).accepted
    assert recipient_stage(facts("bob@other.test", authenticated="alice"), tables()).accepted


def test_any_accepts_every_local_part_and_postmaster_is_always_valid() -> None:
    t = tables(recipients=RecipientTable.accepting_any())
    assert recipient_stage(facts("whoever@ours.test"), t).accepted
    assert recipient_stage(facts("postmaster@ours.test"), tables()).accepted
    assert recipient_stage(facts("postmaster"), tables()).accepted


@pytest.mark.parametrize(
    ("table", "wording", "key", "reason"),
    [
        ({"client": "192.0.2.0/24 REJECT"}, "Client host", f"unknown[{OUTSIDER}]", "access_client"),
        ({"helo": ".example REJECT"}, "Helo command", "client.example", "access_helo"),
        (
            {"sender": "client.example REJECT"},
            "Sender address",
            "s@client.example",
            "access_sender",
        ),
        (
            {"recipient": "alice@ REJECT"},
            "Recipient address",
            "alice@ours.test",
            "access_recipient",
        ),
    ],
)
def test_each_table_rejects_with_its_own_wording(
    table: dict[str, str], wording: str, key: str, reason: str
) -> None:
    verdict = recipient_stage(facts(), tables(**table))
    assert reply(verdict) == f"554 5.7.1 <{key}>: {wording} rejected: Access denied\r\n"
    assert verdict.reason == reason


def test_defer_and_numeric_actions() -> None:
    assert reply(recipient_stage(facts(), tables(client="192.0.2.1 DEFER busy"))) == (
        f"450 4.7.1 <unknown[{OUTSIDER}]>: Client host rejected: busy\r\n"
    )
    assert recipient_stage(facts(), tables(sender="<> 550 5.7.0 no bounces")).accepted
    null = recipient_stage(facts(sender=""), tables(sender="<> 550 5.7.0 no bounces"))
    assert reply(null) == "550 5.7.0 <>: Sender address rejected: no bounces\r\n"


def test_access_tables_come_before_relay_control() -> None:
    """A refused client hears the table's reply even for a recipient it may not relay to."""
    verdict = recipient_stage(facts("x@other.test"), tables(client="192.0.2.1 REJECT"))
    assert verdict.reason == "access_client"


def test_ok_never_permits_relaying() -> None:
    """An access table's OK skips the other access checks and the DNSBL, never relay
    control (Postfix ≥ 2.10's smtpd_relay_restrictions): no table makes an open relay."""
    for t in (
        tables(client="192.0.2.0/24 OK"),
        tables(sender="client.example OK"),
        tables(recipient="other.test OK"),
        tables(helo="client.example OK"),
        tables(recipient="other.test DISCARD"),
    ):
        assert recipient_stage(facts("x@other.test"), t).reason == "relay_denied"


def test_ok_skips_later_tables_and_the_dnsbl() -> None:
    t = tables(client="192.0.2.1 OK", sender="client.example REJECT")
    assert recipient_stage(facts(dnsbl_zone="bl.test"), t).accepted
    t = tables(sender="client.example REJECT", client="192.0.2.1 DEFER")
    assert recipient_stage(facts(), t).reason == "access_client"  # client first


def test_hold_marks_and_goes_on_discard_marks_and_stops() -> None:
    held = recipient_stage(facts(), tables(sender="client.example HOLD"))
    assert held.accepted and held.hold and not held.discard
    assert held.note == "<s@client.example>: Sender address triggers HOLD action"
    held_then_refused = recipient_stage(
        facts(), tables(sender="client.example HOLD", recipient="alice@ours.test REJECT")
    )
    assert held_then_refused.reason == "access_recipient"
    dropped = recipient_stage(facts(), tables(recipient="alice@ours.test DISCARD"))
    assert dropped.accepted and dropped.discard
    assert dropped.note == "<alice@ours.test>: Recipient address triggers DISCARD action"
    # DISCARD does not make an unknown recipient known
    assert recipient_stage(
        facts("bob@ours.test"), tables(recipient="ours.test DISCARD")
    ).reason == ("unknown_recipient")


def test_dnsbl_refuses_outsiders_only() -> None:
    listed = facts(dnsbl_zone="zen.example.test")
    verdict = recipient_stage(listed, tables())
    assert reply(verdict) == (
        f"554 5.7.1 Service unavailable; Client host [{OUTSIDER}] blocked using "
        "zen.example.test\r\n"
    )
    assert verdict.reason == "dnsbl"
    trusted = facts(dnsbl_zone="zen.example.test", trusted_network=True)
    assert recipient_stage(trusted, tables()).accepted
    assert recipient_stage(
        facts(dnsbl_zone="zen.example.test", authenticated="a"), tables()
    ).accepted
