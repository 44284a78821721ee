"""The fuzz harnesses by name, their seeds, and the parser backends they compare.

A harness is a function ``one_input(data: bytes) -> None`` that raises (AssertionError or
whatever escaped the code under test) when ``data`` shows a bug; it must be deterministic
and must not keep state from one input to the next.  Each ``harness_*.py`` module in this
package registers its harnesses with :func:`harness`; :func:`load_all` imports them all, so
a new harness is one new module (the driver and the seed test find it by itself).  Modules
elsewhere can be named in ``MTA_FUZZ_MODULES`` (comma-separated; the driver's own test uses
it for a harness that fails on purpose).

Seeds are made at run time from the project's own tables (tests/protocol), so that the
fuzzer starts from the inputs the tests already know; inputs the fuzzer found that once
failed live in ``regressions/<harness>/`` and are replayed by the normal suite.

The backends: both twins unless ``MTA_NO_EXTENSIONS=1`` (the Python twin only) or
``MTA_PARSER`` names one (``c`` or ``python``).  The compiled twin missing otherwise is an
error, never a silent fall back to one twin compared with itself.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from mta.parser_backend import BACKENDS

__all__ = ["HARNESSES", "Harness", "backends", "harness", "load_all", "regressions"]

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"


@dataclass(frozen=True, slots=True)
class Harness:
    name: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], Iterable[bytes]]  # called once per run; may import test tables
    max_len: int  # libFuzzer's -max_len: the longest input worth trying
    dictionary: tuple[bytes, ...]  # tokens libFuzzer may insert (its -dict file)


HARNESSES: dict[str, Harness] = {}


def harness(
    name: str,
    seeds: Callable[[], Iterable[bytes]],
    max_len: int = 4096,
    dictionary: Iterable[bytes] = (),
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Register the decorated ``one_input`` function as the harness ``name``."""

    def register(one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
        if name in HARNESSES:
            raise ValueError(f"fuzz harness {name!r} registered twice")
        HARNESSES[name] = Harness(name, one_input, seeds, max_len, tuple(dictionary))
        return one_input

    return register


# Tokens of SMTP that the harnesses share in their dictionaries.
SMTP_TOKENS = (
    b"\r\n",
    b"\r\n.\r\n",
    b"\x00",
    b"<>",
    b"FROM:<",
    b"TO:<",
    b"@[IPv6:",
    b"postmaster",
    b" SIZE=",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" AUTH=<>",
)


def load_all() -> dict[str, Harness]:
    """Import every ``tests/fuzz/harness_*.py`` module and those named in
    ``MTA_FUZZ_MODULES``; return the registry."""
    names = [
        f"{__package__}.{module.name}"
        for module in pkgutil.iter_modules([str(HERE)])
        if module.name.startswith("harness_")
    ]
    names += [name for name in os.environ.get("MTA_FUZZ_MODULES", "").split(",") if name]
    for name in names:
        importlib.import_module(name)
    return HARNESSES


def backend_names() -> list[str]:
    """The parser backends under test, the Python twin (the reference) first."""
    if os.environ.get("MTA_NO_EXTENSIONS") == "1":
        return ["python"]
    choice = os.environ.get("MTA_PARSER", "auto")
    return [choice] if choice in BACKENDS else ["python", "c"]


def backends() -> list[ModuleType]:
    """The backend modules (imported by name: a missing compiled twin raises ImportError)."""
    return [importlib.import_module(BACKENDS[name]) for name in backend_names()]


def regressions(name: str) -> list[tuple[str, bytes]]:
    """The committed inputs that once failed harness ``name``: (file name, bytes)."""
    folder = REGRESSIONS / name
    if not folder.is_dir():
        return []
    return [(path.name, path.read_bytes()) for path in sorted(folder.iterdir())]
