"""The fuzz harnesses in the normal suite: each passes over its seeds and the inputs that
once failed it (``regressions/<harness>/``), on both parser backends (one without the
compiled twin); and each harness's checks catch the bugs they are there for."""

from __future__ import annotations

import dataclasses
import os
from types import ModuleType
from typing import Any

import pytest

from mta.protocol import _parser_py
from tests.fuzz import harness_command, harness_data, harness_session
from tests.fuzz.registry import backend_names, load_all, regressions

HARNESSES = load_all()


def test_every_harness_is_registered_and_both_twins_are_compared() -> None:
    assert {"command", "data", "session"} <= set(HARNESSES)
    if os.environ.get("MTA_NO_EXTENSIONS") != "1" and "MTA_PARSER" not in os.environ:
        assert backend_names() == ["python", "c"]


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_passes_its_seeds_and_regressions(name: str) -> None:
    harness = HARNESSES[name]
    inputs = [(f"seed {i}", seed) for i, seed in enumerate(harness.seeds())]
    inputs += regressions(name)
    assert len(inputs) >= 10
    for label, data in inputs:
        try:
            harness.one_input(data)
        except Exception as exc:
            raise AssertionError(f"{name} harness fails on {label}: {data!r}") from exc


# ----- the checks have teeth -----------------------------------------------------------


class Skewed:
    """The Python twin with one function changed, standing in for a diverging backend."""

    __name__ = "skewed"

    def __init__(self, **changed: Any) -> None:
        self.changed = changed

    def __getattr__(self, name: str) -> Any:
        return self.changed.get(name, getattr(_parser_py, name))


def with_backends(monkeypatch: pytest.MonkeyPatch, module: ModuleType, *extra: Any) -> None:
    monkeypatch.setattr(module, "BACKENDS", [_parser_py, *extra])


def test_command_harness_catches_a_diverging_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    def lenient(argument: bytes, keyword: bytes) -> Any:
        return (
            ("a@b", {})
            if argument.endswith(b"<a@b")
            else _parser_py.parse_path_argument(argument, keyword)
        )

    with_backends(monkeypatch, harness_command, Skewed(parse_path_argument=lenient))
    harness_command.one_input(b"MAIL FROM:<a@b>")
    with pytest.raises(AssertionError):
        harness_command.one_input(b"MAIL FROM:<a@b")


class Greedy:
    """A scanner that reports consuming the bytes after the end of data."""

    def __init__(self, normalize: bool, strip_nul: bool) -> None:
        self.inner = _parser_py.DataScanner(normalize, strip_nul)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def feed(self, data: Any) -> tuple[bytes, int]:
        decoded, _ = self.inner.feed(data)
        return decoded, len(data)


@pytest.mark.parametrize("compared", [False, True])
def test_data_harness_catches_consuming_past_the_end(
    monkeypatch: pytest.MonkeyPatch, compared: bool
) -> None:
    """Alone (as with MTA_NO_EXTENSIONS=1) the model catches it, compared the twin too."""
    greedy = Skewed(DataScanner=Greedy)
    harness_data.one_input(b"\x00\x00a\r\n.\r\nQUIT\r\n")
    monkeypatch.setattr(harness_data, "BACKENDS", [_parser_py, greedy] if compared else [greedy])
    with pytest.raises(AssertionError):
        harness_data.one_input(b"\x00\x00a\r\n.\r\nQUIT\r\n")


@pytest.mark.parametrize("hidden", [b"\n.\n", b"\r\n\x00.\r\n", b"\r.\r"])
def test_data_harness_catches_an_end_of_data_hidden_from_the_counters(hidden: bytes) -> None:
    """A message passed on with a line end or NUL the scanner did not count would end the
    data early at a lenient next hop."""
    message = b"a" + hidden + b"b\r\n"
    with pytest.raises(AssertionError):
        harness_data.check_next_hop(0, message, counted_clean(message))
    clean = b"a\r\n.\r\nb\r\n"
    harness_data.check_next_hop(0, clean, counted_clean(clean))


def counted_clean(message: bytes) -> tuple[Any, ...]:
    """A scanner's result for ``message`` in two chunks, done, with every counter 0."""
    fed = [(message[:3], 3), (message[3:], len(message) - 3)]
    return (fed, True, (b"", 0), (len(message), 0, 0, 0))


def checker(**overrides: Any) -> harness_session.Checker:
    limits = dataclasses.replace(harness_session.DEFAULT_LIMITS, **overrides)
    session = harness_session.ServerSession(limits, _parser_py)
    check = harness_session.Checker(session, limits)
    check.output(session.data_to_send())
    return check


@pytest.mark.parametrize(
    "reply",
    [
        b"250 2.0.0 Ok",  # no CRLF
        b"250 2.0.0 Ok\n",
        b"25 2.0.0 Ok\r\n",
        b"250 Ok\r\n",  # no enhanced status code
        b"550 2.0.0 Ok\r\n",  # of another class
        b"250-2.0.0 a\r\n251 2.0.0 b\r\n",
        b"250-2.0.0 a\r\n",  # unfinished
        b"250 2.0.0 " + b"x" * 501 + b"\r\n",  # 513 octets
        b"221 2.0.0 Bye\r\n",  # the session is not closing
    ],
    ids=lambda reply: repr(reply[:24]),
)
def test_session_checker_refuses_bad_replies(reply: bytes) -> None:
    check = checker()
    with pytest.raises(AssertionError):
        check.output(reply)


def test_session_checker_allows_nothing_after_closing() -> None:
    check = checker()
    check.session.timeout()
    check.output(check.session.data_to_send())
    with pytest.raises(AssertionError):
        check.output(b"250 2.0.0 Ok\r\n")


@pytest.mark.parametrize(
    ("limits", "keyword", "tls"),
    [
        ({}, b"STARTTLS", False),
        ({"starttls": True}, b"STARTTLS", True),
        ({"auth": True}, b"AUTH", False),
    ],
)
def test_session_checker_refuses_extensions_not_on_offer(
    limits: dict[str, bool], keyword: bytes, tls: bool
) -> None:
    check = checker(**limits)
    check.session.tls = tls
    ehlo = b"250-%s\r\n250-PIPELINING\r\n250 %s\r\n" % (harness_session.HOST.encode(), keyword)
    with pytest.raises(AssertionError):
        check.ehlo_keywords(ehlo)
    check.ehlo_keywords(ehlo.replace(keyword, b"8BITMIME"))


class ChunkBlindStuffer:
    """A DotStuffer that forgets where the previous chunk left off."""

    def feed(self, chunk: bytes) -> bytes:
        return chunk.replace(b"\r\n.", b"\r\n..")

    def end(self) -> bytes:
        return b".\r\n"


def test_data_harness_catches_a_stuffer_that_loses_a_dot_between_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = b"a\r\n.b\r\n"  # cut after the CRLF: the dot starts the second chunk
    harness_data.check_next_hop(0, message, counted_clean(message))
    monkeypatch.setattr(harness_data, "DotStuffer", ChunkBlindStuffer)
    with pytest.raises(AssertionError):
        harness_data.check_next_hop(0, message, counted_clean(message))
