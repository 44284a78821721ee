"""``mta --version`` names the distribution, its version and the parser backend; ``auto``
falls back to the pure-Python parser with a warning when the extension is not installed.
(tests/packaging checks the same on real installs, from the installed metadata.)"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import mta
from mta import parser_backend
from mta.cli import main
from tests.helpers import REPO


@pytest.mark.parametrize(("no_extensions", "parser"), [("0", "c"), ("1", "python")])
def test_version_names_distribution_and_parser(
    no_extensions: str,
    parser: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MTA_PARSER", raising=False)
    monkeypatch.setenv("MTA_NO_EXTENSIONS", no_extensions)
    if parser == "c":
        pytest.importorskip("mta.protocol._parser_c", reason="the compiled parser is built")
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"mta-relay {mta.__version__} (parser: {parser})\n"


def test_python_dash_m_mta_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mta", "--version"], cwd=REPO, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"mta-relay {mta.__version__} (parser: ")


def test_auto_falls_back_to_python_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MTA_NO_EXTENSIONS", raising=False)
    monkeypatch.setitem(parser_backend.BACKENDS, "c", "mta.protocol._parser_not_built")
    with caplog.at_level(logging.INFO, logger="mta.parser"):
        parser = parser_backend.select("auto")
    assert parser_backend.backend_name(parser) == "python"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "compiled parser not available (No module named 'mta.protocol._parser_not_built'): "
        "using the pure-Python twin"
    ]
    assert "parser backend: python" in caplog.messages
