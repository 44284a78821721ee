"""deploy/systemd/mta.service as systemd reads it: valid (``systemd-analyze verify``),
hardened (``systemd-analyze security`` below 4), and MemoryDenyWriteExecute= compatible
with the relay (a real tree runs and relays under the kernel's equivalent, PR_SET_MDWE)."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess

UNIT = REPO / "deploy" / "systemd" / "mta.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_is_a_notify_service_with_state_and_logs_directories() -> None:
    unit = _settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["StateDirectory"] == ["mta"] and unit["LogsDirectory"] == ["mta"]
    assert unit["RestartPreventExitStatus"] == ["78"]  # EX_CONFIG is not restarted
    [start] = unit["ExecStart"]
    assert start.startswith("/usr/local/bin/mta ")  # where Debian's system pip installs
    assert unit["User"] == ["mta"] and unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """verify also checks that ExecStart is executable: aimed at this machine's ``mta``."""
    here = shutil.which("mta") or sys.executable
    unit = tmp_path / "mta.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/mta", here))
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_analyze
def test_systemd_analyze_security_scores_below_4() -> None:
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    found = re.search(r"Overall exposure level for mta\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) < 4.0, done.stdout


_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # Linux 6.3: systemd's MDWE, in the kernel
_UNDER_MDWE = (
    "import ctypes, runpy, sys\n"
    f"if ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_MDWE}, {_PR_MDWE_REFUSE_EXEC_GAIN},"
    " 0, 0, 0) != 0: sys.exit('PR_SET_MDWE: ' + str(ctypes.get_errno()))\n"
    "sys.argv = sys.argv[2:]\n"  # what follows: -m mta ARGS
    "runpy.run_module('mta', run_name='__main__', alter_sys=True)\n"
)


def _mdwe_works() -> bool:
    """Whether PR_SET_MDWE exists here and refuses a writable, executable mapping."""
    probe = (
        "import ctypes, mmap, sys\n"
        f"if ctypes.CDLL(None).prctl({_PR_SET_MDWE}, 1, 0, 0, 0) != 0: sys.exit(2)\n"
        "try:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except OSError:\n    sys.exit(0)\nsys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


def test_the_relay_runs_under_memory_deny_write_execute(tmp_path: Path, sink: CaptureSink) -> None:
    """MemoryDenyWriteExecute=true: no process of the tree maps memory writable and
    executable (CPython, the Cython parser, uvloop, cryptography): mail goes through."""
    if not _mdwe_works():
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3)")
    server = MtaProcess(
        tmp_path, {"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}},
        python=[sys.executable, "-c", _UNDER_MDWE],
    )  # fmt: skip
    try:
        server.start()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.sendmail("a@client.test", ["b@example.org"], b"Subject: mdwe\r\n\r\nhi\r\n")
        sink.wait_for(1)
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log
    if not os.environ.get("MTA_NO_EXTENSIONS"):
        assert "parser backend: c" in log  # the Cython parser ran under it too
