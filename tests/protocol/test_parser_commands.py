"""Command-line parsing: ``split_command`` and ``parse_path_argument`` (RFC 5321 §4.1).

Tables of inputs and the exact result -- or the exact reply code and text -- run against
both parser twins through the ``parser`` fixture.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from mta.protocol.errors import CommandSyntaxError

# ----- split_command -------------------------------------------------------------------

SPLIT_CASES = [
    (b"MAIL FROM:<a@b>", ("MAIL", b"FROM:<a@b>")),
    (b"mail from:<a@b>", ("MAIL", b"from:<a@b>")),
    (b"Ehlo client.example", ("EHLO", b"client.example")),
    (b"QUIT", ("QUIT", b"")),
    (b"NOOP  \t ", ("NOOP", b"")),
    (b"RCPT TO:<a@b>\t \t", ("RCPT", b"TO:<a@b>")),
    (b"EHLO  client.example ", ("EHLO", b" client.example")),  # only the first space splits
    (b"HELO a b  c", ("HELO", b"a b  c")),
    (b"DATA\tx", ("DATA\tX", b"")),  # a tab does not separate the verb
    (b"", ("", b"")),
    (b"   ", ("", b"")),
    (b" x", ("", b"x")),
    (b"h\xe9lo x", ("H\xe9LO", b"x")),  # only ASCII is upper-cased; latin-1 keeps any octet
    (b"\x00\xff y\x00", ("\x00\xff", b"y\x00")),
    (b"A" * 300, ("A" * 300, b"")),
]


@pytest.mark.parametrize(("line", "expected"), SPLIT_CASES)
def test_split_command(parser: ModuleType, line: bytes, expected: tuple[str, bytes]) -> None:
    verb, argument = parser.split_command(line)
    assert (verb, argument) == expected
    assert type(verb) is str
    assert type(argument) is bytes


# ----- parse_path_argument: valid ------------------------------------------------------

LONGEST_LOCAL = b"x" * (256 - len(b"<@b.example>"))  # the path is exactly 256 octets

VALID_PATHS = [
    (b"FROM:<>", b"FROM", "", {}),
    (b"FROM:<> SIZE=100", b"FROM", "", {"SIZE": "100"}),
    (b"TO:<postmaster>", b"TO", "postmaster", {}),
    (b"TO:<PostMaster>", b"TO", "PostMaster", {}),
    (b"FROM:<a@b.example>", b"FROM", "a@b.example", {}),
    (b"FROM: <a@b.example>", b"FROM", "a@b.example", {}),  # the common space after ":"
    (b"FROM:   <a@b.example>", b"FROM", "a@b.example", {}),
    (b"from:<a@b>", b"FROM", "a@b", {}),
    (b"To:<a@b>", b"TO", "a@b", {}),
    (b"TO:<@relay.example:user@dom.example>", b"TO", "user@dom.example", {}),
    (b"TO:<@r1.example,@r2.example:user@dom.example>", b"TO", "user@dom.example", {}),
    (b"TO:<@r1.example:postmaster>", b"TO", "postmaster", {}),
    (b'FROM:<"john doe"@example.com>', b"FROM", '"john doe"@example.com', {}),
    (b'FROM:<"a\\"b>c"@x>', b"FROM", '"a\\"b>c"@x', {}),  # escaped quote, ">" inside quotes
    (b'FROM:<""@x>', b"FROM", '""@x', {}),
    (b'TO:<"a@b"@c>', b"TO", '"a@b"@c', {}),
    (b'TO:<"\\\\"@c>', b"TO", '"\\\\"@c', {}),
    (b"TO:<user@[192.0.2.1]>", b"TO", "user@[192.0.2.1]", {}),
    (b"TO:<user@[IPv6:2001:db8::1]>", b"TO", "user@[IPv6:2001:db8::1]", {}),
    (b"TO:<a.b+c_d!#$%&'*/=?^`{|}~@x-y.example>", b"TO", "a.b+c_d!#$%&'*/=?^`{|}~@x-y.example", {}),
    ("TO:<δοκιμή@παράδειγμα.δοκιμή>".encode(), b"TO", "δοκιμή@παράδειγμα.δοκιμή", {}),
    ('FROM:<"j\u00f6rg"@b>'.encode(), b"FROM", '"j\u00f6rg"@b', {}),
    (
        b"FROM:<a@b> SIZE=1000 BODY=8BITMIME SMTPUTF8",
        b"FROM",
        "a@b",
        {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None},
    ),
    (b"FROM:<a@b> size=10 body=7bit", b"FROM", "a@b", {"SIZE": "10", "BODY": "7bit"}),
    (b"FROM:<a@b>  SIZE=1   X-FOO-2", b"FROM", "a@b", {"SIZE": "1", "X-FOO-2": None}),
    (b"FROM:<a@b> AUTH=a=b", b"FROM", "a@b", {"AUTH": "a=b"}),
    (b"FROM:<a@b> ENVID=+2Bx~!", b"FROM", "a@b", {"ENVID": "+2Bx~!"}),
    (
        b"FROM:<" + LONGEST_LOCAL + b"@b.example>",
        b"FROM",
        LONGEST_LOCAL.decode() + "@b.example",
        {},
    ),
]


@pytest.mark.parametrize(("argument", "keyword", "address", "params"), VALID_PATHS)
def test_parse_path_argument_valid(
    parser: ModuleType,
    argument: bytes,
    keyword: bytes,
    address: str,
    params: dict[str, str | None],
) -> None:
    got_address, got_params = parser.parse_path_argument(argument, keyword)
    assert got_address == address
    assert got_params == params
    assert list(got_params) == list(params)  # in the order given


def test_params_keep_their_order(parser: ModuleType) -> None:
    _, params = parser.parse_path_argument(b"FROM:<a@b> Z=1 A B=2", b"FROM")
    assert list(params.items()) == [("Z", "1"), ("A", None), ("B", "2")]


# ----- parse_path_argument: invalid ----------------------------------------------------

SYNTAX_FROM = (501, "5.5.4 Syntax: MAIL FROM:<address>")
SYNTAX_TO = (501, "5.5.4 Syntax: RCPT TO:<address>")
BAD_FROM = (501, "5.1.7 Bad sender address syntax")
BAD_TO = (501, "5.1.3 Bad recipient address syntax")
TOO_LONG = (501, "5.5.4 Address too long")
BAD_PARAM = (555, "5.5.4 Invalid ESMTP parameter syntax")
DUP_PARAM = (555, "5.5.4 Duplicate ESMTP parameter")

INVALID_PATHS = [
    # the keyword, the colon and the brackets
    (b"", b"FROM", SYNTAX_FROM),
    (b"FROM", b"FROM", SYNTAX_FROM),
    (b"FROM:", b"FROM", SYNTAX_FROM),
    (b"FROM: ", b"FROM", SYNTAX_FROM),
    (b"FROM <a@b>", b"FROM", SYNTAX_FROM),
    (b"FROMX:<a@b>", b"FROM", SYNTAX_FROM),
    (b" FROM:<a@b>", b"FROM", SYNTAX_FROM),
    (b"TO:<a@b>", b"FROM", SYNTAX_FROM),
    (b"FROM:<a@b>", b"TO", SYNTAX_TO),
    (b"FROM:a@b", b"FROM", SYNTAX_FROM),
    (b"TO:a@b", b"TO", SYNTAX_TO),
    (b"FROM:a@b>", b"FROM", SYNTAX_FROM),
    (b"FROM:\t<a@b>", b"FROM", SYNTAX_FROM),
    (b"FROM:<a@b", b"FROM", SYNTAX_FROM),
    (b"TO:<", b"TO", SYNTAX_TO),
    (b'FROM:<"a@b>', b"FROM", SYNTAX_FROM),  # the ">" is inside the open quote
    (b'FROM:<"a\\">', b"FROM", SYNTAX_FROM),
    (b"FROM:<a@b>junk", b"FROM", SYNTAX_FROM),
    (b"FROM:<a@b>>", b"FROM", SYNTAX_FROM),
    (b"FROM:<a@b>\tSIZE=1", b"FROM", SYNTAX_FROM),
    (b"TO:<a@b>,<c@d>", b"TO", SYNTAX_TO),
    # the address
    (b"FROM:<ab>", b"FROM", BAD_FROM),
    (b"TO:<ab>", b"TO", BAD_TO),
    (b"FROM:<pastmaster>", b"FROM", BAD_FROM),
    (b"TO:<postmaster@>", b"TO", BAD_TO),
    (b"TO:<@b>", b"TO", BAD_TO),  # a route without ":"
    (b"TO:<@a:>", b"TO", BAD_TO),  # a route without a mailbox is not the null path
    (b"FROM:<@a,@b:>", b"FROM", BAD_FROM),
    (b"TO:<a@>", b"TO", BAD_TO),
    (b"TO:<@>", b"TO", BAD_TO),
    (b"TO:<.a@b>", b"TO", BAD_TO),
    (b"TO:<a.@b>", b"TO", BAD_TO),
    (b"TO:<a..b@c>", b"TO", BAD_TO),
    (b"TO:<a@.b>", b"TO", BAD_TO),
    (b"TO:<a@b.>", b"TO", BAD_TO),
    (b"TO:<a@b..c>", b"TO", BAD_TO),
    (b"TO:<a b@c>", b"TO", BAD_TO),
    (b"TO:<a@b c>", b"TO", BAD_TO),
    (b"TO:<a(b)@c>", b"TO", BAD_TO),
    (b"TO:<a@b,c>", b"TO", BAD_TO),
    (b"TO:<a;b@c>", b"TO", BAD_TO),
    (b"TO:<a\x00@b>", b"TO", BAD_TO),
    (b"TO:<a@b\x7f>", b"TO", BAD_TO),
    (b"TO:<a\x01b@c>", b"TO", BAD_TO),
    (b'TO:<"a\x01"@c>', b"TO", BAD_TO),
    (b'TO:<"a\x7f"@c>', b"TO", BAD_TO),
    (b'TO:<"a\\\x00"@c>', b"TO", BAD_TO),  # quoted-pair is %d92 %d32-126 only
    (b'TO:<"a\\\n"@c>', b"TO", BAD_TO),
    (b'TO:<"a\\\xc3\xa9"@c>', b"TO", BAD_TO),
    (b'TO:<"a"b@c>', b"TO", BAD_TO),
    (b'TO:<"@c>', b"TO", SYNTAX_TO),
    (b"TO:<a@[]>", b"TO", BAD_TO),
    (b"TO:<a@[1.2.3.4>", b"TO", BAD_TO),
    (b"TO:<a@[1.2\\3]>", b"TO", BAD_TO),
    (b"TO:<a@[1 2]>", b"TO", BAD_TO),
    (b"TO:<a@[1[2]>", b"TO", BAD_TO),
    (b"TO:<a\xff@b>", b"TO", BAD_TO),  # not UTF-8
    (b"TO:<\xc3@b>", b"TO", BAD_TO),
    (b"FROM:<a@\xed\xa0\x80>", b"FROM", BAD_FROM),  # a UTF-8 encoded surrogate
    (b"FROM:<ab>junk", b"FROM", BAD_FROM),  # the address is checked before what follows
    # the length (RFC 5321 §4.5.3.1.3), checked before the address itself
    (b"FROM:<x" + LONGEST_LOCAL + b"@b.example>", b"FROM", TOO_LONG),
    (b"TO:<" + b"x" * 300 + b">", b"TO", TOO_LONG),
    (b"TO:<" + b"@r," * 100 + b":a@b>", b"TO", TOO_LONG),
    # the parameters (RFC 5321 §4.1.2: esmtp-keyword and esmtp-value)
    (b"FROM:<a@b> =x", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> -X=1", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> SI_ZE=1", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> SIZE=", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> SIZE=\x01", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> SIZE=1\t", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> SIZE=\xe9", b"FROM", BAD_PARAM),
    (b"FROM:<a@b> K\xc3\xa9Y", b"FROM", BAD_PARAM),
    (b"TO:<a@b> NOTIFY=\x7f", b"TO", BAD_PARAM),
    (b"FROM:<a@b> SIZE=1 SIZE=2", b"FROM", DUP_PARAM),
    (b"FROM:<a@b> size=1 SIZE=1", b"FROM", DUP_PARAM),
    (b"FROM:<a@b> SMTPUTF8 smtputf8", b"FROM", DUP_PARAM),
    (b"FROM:<a@b> SIZE=1 SIZE=2 -BAD", b"FROM", DUP_PARAM),  # the first error wins
    (b"FROM:<a@b> -BAD SIZE=1 SIZE=2", b"FROM", BAD_PARAM),
]


@pytest.mark.parametrize(("argument", "keyword", "error"), INVALID_PATHS)
def test_parse_path_argument_invalid(
    parser: ModuleType, argument: bytes, keyword: bytes, error: tuple[int, str]
) -> None:
    with pytest.raises(CommandSyntaxError) as caught:
        parser.parse_path_argument(argument, keyword)
    assert (caught.value.code, caught.value.text) == error


def test_max_path_length(parser: ModuleType) -> None:
    assert parser.MAX_PATH_LENGTH == 256
