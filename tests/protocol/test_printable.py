"""Client text copied into headers and logs: no control character survives."""

from __future__ import annotations

import pytest

from mta.protocol.printable import for_header, for_log

UNSAFE = ["\x00", "\x1b", "\x7f", "\r", "\n", "\t", "\x85", "\x9f", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", UNSAFE, ids=[repr(c) for c in UNSAFE])
def test_every_control_character_is_replaced(char: str) -> None:
    text = f"a{char}b"
    assert for_header(text) == "a?b"
    logged = for_log(text)
    assert char not in logged and len(logged.splitlines()) == 1
    assert logged.startswith("a\\") and logged.endswith("b")


def test_forged_log_line() -> None:
    logged = for_log("x@y.test>\nDec  1 00:00:00 mx postfix/smtpd[1]: fake")
    assert logged.splitlines() == [logged]
    assert "\\n" in logged


@pytest.mark.parametrize("text", ["plain@example.org", "δοκιμή@παράδειγμα.test", "a b", ""])
def test_printable_text_is_kept(text: str) -> None:
    assert for_header(text) == text
    assert for_log(text) == text
