"""The fuzz driver, run as CI runs it: a crash fails the run and shows its reproducer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

FAILING_HARNESS = """
from tests.fuzz.registry import harness


@harness("selftest", lambda: [b"fine", b"boom!"], max_len=64)
def one_input(data: bytes) -> None:
    if b"boom" in data:
        raise ValueError("boom found")
"""


def test_a_crash_fails_the_run_and_prints_the_input_and_traceback(tmp_path: Path) -> None:
    (tmp_path / "fuzz_selftest.py").write_text(FAILING_HARNESS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]),
        "MTA_FUZZ_MODULES": "fuzz_selftest",
    }
    corpus = tmp_path / "corpus"
    command = [sys.executable, "-m", "tests.fuzz", "run", "selftest", "--seconds", "20"]
    done = subprocess.run(
        [*command, "--corpus", str(corpus)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "fuzz selftest: failing input (5 octets" in out, out
    assert "b'boom!'" in out and "ValueError: boom found" in out, out
    assert "replay: python -m tests.fuzz replay selftest " in out, out
    assert out.rstrip().endswith("fuzz: FAILED: selftest"), out
    (crash,) = (corpus / "selftest-crashes").iterdir()
    assert crash.read_bytes() == b"boom!"
