"""Fuzz harness ``command``: the command-line parser, differential between the twins.

The input is one command line without its CRLF (any bytes: the parser API takes them, even
though the session never passes a CR or LF).  It goes through ``split_command``, then its
argument -- and the whole input too -- through ``parse_path_argument`` with ``FROM`` and
with ``TO``.  Every backend must give the same result, of the same types, or raise the same
:class:`CommandSyntaxError` (code and text); any other exception is a bug.  On the Python
twin's result, what the session relies on: the verb is the line's first word upper-cased,
the argument has no trailing blank, an address holds no control octet (it is copied into
logs and headers) and parameter names and values keep to RFC 5321's ``esmtp-param``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mta.protocol.errors import CommandSyntaxError
from tests.fuzz.registry import SMTP_TOKENS, backends, harness

BACKENDS = backends()
KEYWORDS = (b"FROM", b"TO")
_PARAM_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def seeds() -> Iterator[bytes]:
    """The command tables of tests/protocol: split cases, valid and invalid paths."""
    from tests.protocol import test_parser_commands as table

    for line, _ in table.SPLIT_CASES:
        yield line
    for argument, keyword, *_ in table.VALID_PATHS + table.INVALID_PATHS:
        yield (b"MAIL " if keyword == b"FROM" else b"RCPT ") + argument


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a parser call gave, comparable across backends: its value with the types of
    its parts, or the syntax error's code and text.  Other exceptions propagate."""
    try:
        value = call()
    except CommandSyntaxError as exc:
        return ("error", type(exc), exc.code, exc.text)
    first, second = value
    if isinstance(second, dict):  # parse_path_argument: parameter order is kept too
        items = [(k, type(k), v, type(v)) for k, v in second.items()]
        return ("ok", first, type(first), type(second), items)
    return ("ok", first, type(first), second, type(second))


def results(parser: Any, line: bytes) -> list[tuple[Any, ...]]:
    split = outcome(lambda: parser.split_command(line))
    found = [split]
    argument = split[3]
    for keyword in KEYWORDS:
        found.append(outcome(lambda k=keyword: parser.parse_path_argument(argument, k)))
        found.append(outcome(lambda k=keyword: parser.parse_path_argument(line, k)))
    return found


def check_split(line: bytes, verb: str, argument: bytes) -> None:
    assert type(verb) is str and type(argument) is bytes
    raw_verb = verb.encode("latin-1")
    assert line.upper().startswith(raw_verb), (line, verb)
    assert b" " not in raw_verb
    assert not argument.endswith((b" ", b"\t")), argument
    assert argument in line


def check_path(address: str, params: dict[str, str | None]) -> None:
    assert all(ord(c) >= 0x20 and c != "\x7f" for c in address), address
    assert len(address.encode()) <= 254, address  # 256 with the brackets
    for name, value in params.items():
        assert name and set(name) <= _PARAM_KEY and name[0] != "-", name
        assert value is None or (value and all("!" <= c <= "~" for c in value)), value


@harness("command", seeds, max_len=1024, dictionary=(*SMTP_TOKENS, b"MAIL ", b"RCPT ", b'"', b"\\"))
def one_input(line: bytes) -> None:
    reference, *others = [results(parser, line) for parser in BACKENDS]
    for parser, found in zip(BACKENDS[1:], others, strict=True):
        assert found == reference, (parser.__name__, line, reference, found)
    check_split(line, reference[0][1], reference[0][3])
    for result in reference[1:]:
        if result[0] == "ok":
            check_path(result[1], dict((k, v) for k, _, v, _ in result[4]))
