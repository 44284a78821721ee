"""Guard: the compiled parser is what ``auto`` picks, unless extensions are switched off.

``parser_backend.select("auto")`` falls back to the pure-Python twin silently when the
compiled module is missing; this test is what makes that fallback loud in CI.
"""

from __future__ import annotations

import os

import pytest

from mta import parser_backend

NO_EXTENSIONS = os.environ.get("MTA_NO_EXTENSIONS") == "1"
AVAILABLE = ["python"] if NO_EXTENSIONS else ["python", "c"]


def test_auto_selects_compiled_backend() -> None:
    expected = "python" if NO_EXTENSIONS else "c"
    assert parser_backend.backend_name(parser_backend.select("auto")) == expected, (
        "the compiled parser is missing: build it with `python setup.py build_ext --inplace`"
        " or set MTA_NO_EXTENSIONS=1 on purpose"
    )


@pytest.mark.parametrize("choice", ["auto", "c", "python"])
def test_no_extensions_forces_python(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    monkeypatch.setenv("MTA_NO_EXTENSIONS", "1")
    assert parser_backend.backend_name(parser_backend.select(choice)) == "python"


@pytest.mark.parametrize("choice", AVAILABLE)
def test_parser_env_gives_the_default_choice(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    monkeypatch.delenv("MTA_NO_EXTENSIONS", raising=False)
    monkeypatch.setenv("MTA_PARSER", choice)
    assert parser_backend.backend_name(parser_backend.select()) == choice


def test_unknown_choice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTA_PARSER", "rust")
    with pytest.raises(ValueError, match="auto, c or python"):
        parser_backend.select()
