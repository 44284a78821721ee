"""Access tables (access(5)) and the recipient table: parsing and lookups, no I/O but files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.policy.access import (
    Kind,
    TableError,
    address_keys,
    domain_keys,
    load_table,
    parse_action,
    parse_table,
)
from mta.policy.recipients import TableError as RecipientsError
from mta.policy.recipients import load_recipients, parse_recipients

CLIENTS = """\
# comment lines and blank lines are ignored

192.0.2.7          REJECT
192.0.2.0/24       OK
2001:db8::/32      DEFER try later
10.0.0.0/8         550 5.7.2 not from there
"""

ADDRESSES = """\
spammer@example.com     REJECT go away
example.com             DEFER
.sub.example.net        HOLD
example.net             OK
postmaster@             DISCARD
<>                      REJECT no bounces here
Mixed.Case.Example.     OK
"""


@pytest.mark.parametrize(
    ("value", "kind", "code", "status", "text"),
    [
        ("OK", Kind.OK, 0, "", ""),
        ("ok", Kind.OK, 0, "", ""),
        ("REJECT", Kind.REJECT, 554, "5.7.1", ""),
        ("REJECT no thanks", Kind.REJECT, 554, "5.7.1", "no thanks"),
        ("DEFER", Kind.DEFER, 450, "4.7.1", ""),
        ("DEFER busy", Kind.DEFER, 450, "4.7.1", "busy"),
        ("HOLD", Kind.HOLD, 0, "", ""),
        ("DISCARD", Kind.DISCARD, 0, "", ""),
        ("550 no such user", Kind.REJECT, 550, "5.7.1", "no such user"),
        ("550 5.1.1 no such user", Kind.REJECT, 550, "5.1.1", "no such user"),
        ("421 4.3.2 later", Kind.DEFER, 421, "4.3.2", "later"),
    ],
)
def test_actions(value: str, kind: Kind, code: int, status: str, text: str) -> None:
    action = parse_action(value)
    assert (action.kind, action.code, action.status, action.text) == (kind, code, status, text)


@pytest.mark.parametrize(
    "value", ["PERMIT", "OK please", "250 fine", "550", "550 4.1.1 mismatch", "699 x", ""]
)
def test_bad_actions(value: str) -> None:
    with pytest.raises(ValueError):
        parse_action(value)


def test_reply_text_is_postfix_s() -> None:
    assert (
        parse_action("REJECT").reply_text("a@b.test", "Recipient address")
        == "554 5.7.1 <a@b.test>: Recipient address rejected: Access denied"
    )
    assert (
        parse_action("450 4.2.0 slow down").reply_text("unknown[192.0.2.1]", "Client host")
        == "450 4.2.0 <unknown[192.0.2.1]>: Client host rejected: slow down"
    )


def test_client_table() -> None:
    table = parse_table(CLIENTS, "clients", client=True)
    assert len(table) == 4
    kind = lambda ip: a.kind if (a := table.client(ip)) else None  # noqa: E731
    assert kind("192.0.2.7") is Kind.REJECT  # first match in file order, like cidr:
    assert kind("::ffff:192.0.2.7") is Kind.REJECT  # IPv4-mapped: its IPv4 address
    assert kind("192.0.2.8") is Kind.OK
    assert kind("2001:db8::25") is Kind.DEFER
    assert kind("2001:db9::25") is None
    assert kind("10.9.8.7") is Kind.REJECT
    assert table.client("10.9.8.7").code == 550  # type: ignore[union-attr]
    assert kind("198.51.100.1") is None
    assert kind("not an address") is None
    assert kind("fe80::1%eth0") is None


def test_domain_and_address_keys() -> None:
    assert domain_keys("A.B.Example.") == ["a.b.example", ".b.example", ".example"]
    assert address_keys("User@Mail.Example.COM") == [
        "user@mail.example.com",
        "mail.example.com",
        ".example.com",
        ".com",
        "user@",
    ]
    assert address_keys("") == ["<>"]
    assert address_keys("postmaster") == ["postmaster"]


def test_address_table() -> None:
    table = parse_table(ADDRESSES, "addresses")
    kind = lambda a: x.kind if (x := table.address(a)) else None  # noqa: E731
    assert kind("spammer@example.com") is Kind.REJECT
    assert table.address("SPAMMER@Example.Com").text == "go away"  # type: ignore[union-attr]
    assert kind("other@example.com") is Kind.DEFER  # the domain
    assert kind("x@sub.example.com") is None  # "example.com" is that domain only
    assert kind("x@deep.sub.example.net") is Kind.HOLD  # ".sub.example.net": below it
    assert kind("x@very.deep.sub.example.net.") is Kind.HOLD  # trailing dot ignored
    assert kind("x@sub.example.net") is None  # not the name itself
    assert kind("x@example.net") is Kind.OK
    assert kind("postmaster@anywhere.test") is Kind.DISCARD  # user@
    assert kind("") is Kind.REJECT  # the null sender's key
    assert kind("a@mixed.case.example") is Kind.OK
    assert kind("a@elsewhere.test") is None


def test_helo_table() -> None:
    table = parse_table("bad.example REJECT\n.spam.test REJECT\n[192.0.2.1] OK\n", "helo")
    assert table.helo("BAD.example.").kind is Kind.REJECT  # type: ignore[union-attr]
    assert table.helo("host.spam.test").kind is Kind.REJECT  # type: ignore[union-attr]
    assert table.helo("spam.test") is None
    assert table.helo("[192.0.2.1]").kind is Kind.OK  # type: ignore[union-attr]
    assert table.helo("") is None


@pytest.mark.parametrize(
    ("text", "client", "problem"),
    [
        ("good.test OK\nbad.test PERMIT\n", False, "line 2: 'bad.test'"),
        ("lonely.test\n", False, "line 1: 'lonely.test': no action"),
        ("192.0.2.0/33 OK\n", True, "line 1: '192.0.2.0/33': not an IP address or network"),
        ("host.test OK\n", True, "line 1: 'host.test': not an IP address or network"),
        ("@ OK\n", False, "line 1: '@': not a name or address"),
    ],
)
def test_a_bad_line_names_file_line_and_key(text: str, client: bool, problem: str) -> None:
    with pytest.raises(TableError, match="^table.txt, " + problem.replace("[", r"\[")):
        parse_table(text, "table.txt", client)


def test_load_table_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "clients"
    path.write_text(CLIENTS)
    assert len(load_table(str(path), client=True)) == 4
    with pytest.raises(TableError, match="cannot read"):
        load_table(str(tmp_path / "missing"))


def test_recipient_table(tmp_path: Path) -> None:
    table = parse_recipients("# users\nalice@example.org\n@catchall.test\n\n", "rcpts")
    assert table.knows("alice@example.org")
    assert table.knows("ALICE@Example.Org")
    assert not table.knows("bob@example.org")
    assert table.knows("anyone@catchall.test")
    assert table.knows("postmaster@example.org")  # RFC 5321 §4.5.1
    assert load_recipients("any").knows("whoever@anywhere.test")
    with pytest.raises(RecipientsError, match="rcpts, line 2: 'alice': not user@domain"):
        parse_recipients("a@b.test\nalice\n", "rcpts")
    with pytest.raises(RecipientsError, match="cannot read"):
        load_recipients(str(tmp_path / "missing"))


@given(
    st.lists(st.sampled_from(["a", "b", "x.y", "", "."]), min_size=0, max_size=4),
    st.sampled_from(["user", "USER", "", "other"]),
)
def test_address_lookup_walks_address_keys_in_order(labels: list[str], local: str) -> None:
    """The lookup without a list of keys finds what the documented order finds."""
    domain = ".".join(labels) or "example"
    keys = ["user@a.b", "a.b", ".b", ".x.y", "user@", "example", ".example", "<>", "other@"]
    table = parse_table("".join(f"{k} 550 5.7.1 {k}\n" for k in keys), "t")
    for address in (f"{local}@{domain}", "", domain):
        expected = next((k for k in address_keys(address) if k in table.names), None)
        found = table.address(address)
        assert (found.text if found else None) == expected, address
