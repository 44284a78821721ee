"""Guard: the compiled parser is what ``auto`` picks, unless extensions are switched off.

``parser.select("auto")`` falls back to the pure-Python twin silently when the compiled
module is missing; this test is what makes that fallback loud in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mta import parser_backend as parser

NO_EXTENSIONS = os.environ.get("MTA_NO_EXTENSIONS") == "1"


@pytest.fixture
def restore_backend() -> Iterator[None]:
    """Put the process-wide backend choice back as it was (request before monkeypatch)."""
    before = parser.backend_name()
    yield
    parser.select(before)


def test_auto_selects_compiled_backend(restore_backend: None) -> None:
    parser.select("auto")
    expected = "python" if NO_EXTENSIONS else "c"
    assert parser.backend_name() == expected, (
        "the compiled parser is missing: build it with `python setup.py build_ext --inplace`"
        " or set MTA_NO_EXTENSIONS=1 on purpose"
    )


@pytest.mark.parametrize("choice", ["auto", "c", "python"])
def test_no_extensions_forces_python(
    restore_backend: None, monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    monkeypatch.setenv("MTA_NO_EXTENSIONS", "1")
    parser.select(choice)
    assert parser.backend_name() == "python"
