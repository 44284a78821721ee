"""Checks before serving (mta/master/preflight.py): ``check-config`` lists every problem
``serve`` would stop on, naming the key, the file and what is wrong; ``serve`` stops with
EX_CONFIG (78) instead of starting children that cannot work."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers import REPO, MtaProcess, free_port, to_toml


def _mta(config: dict[str, Any], tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "mta.toml"
    path.write_text(to_toml(config))
    return subprocess.run(
        [sys.executable, "-m", "mta", "--config", str(path), *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def _pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert = trustme.CA().issue_cert("mx.test")
    cert_path, key_path = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def test_check_config_lists_every_problem_with_key_and_file(tmp_path: Path) -> None:
    cert_a, key_a = _pair(tmp_path, "a")
    _, key_b = _pair(tmp_path, "b")
    spool_file = tmp_path / "spool"
    spool_file.write_text("not a directory")
    config = {
        "smtp": {"listen": [f"127.0.0.1:{free_port()}"], "tls_cert": str(tmp_path / "missing.pem"),
                 "tls_key": str(key_a)},
        "listeners": {"sub": {"listen": [f"127.0.0.1:{free_port()}"], "role": "submission",
                              "tls_cert": str(cert_a), "tls_key": str(key_b)},
                      "far": {"listen": ["192.0.2.1:2525"]}},
        "access": {"client": str(tmp_path / "no-such-table")},
        "queue": {"path": str(spool_file)},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }  # fmt: skip
    result = _mta(config, tmp_path, "check-config")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "configuration error" in line]
    joined = "\n".join(errors)
    assert len(errors) == 5, joined
    assert f"smtp.tls_cert: cannot load {tmp_path / 'missing.pem'}" in joined
    assert "No such file" in joined
    assert f"listeners.sub.tls_cert: cannot load {cert_a} with {key_b}" in joined
    assert "KEY_VALUES_MISMATCH" in joined or "key values mismatch" in joined
    assert f"access.client: {tmp_path / 'no-such-table'}" in joined
    assert f"queue.path: {spool_file}: not a directory" in joined
    assert "listeners.far.listen: 192.0.2.1:2525: cannot bind" in joined
    assert f"mta: check-config: 5 problem(s) in {tmp_path / 'mta.toml'}" in result.stderr


def test_a_port_in_use_is_a_note_not_an_error(tmp_path: Path) -> None:
    """check-config next to the running relay: its own listener is bound, and that is fine."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = {"smtp": {"listen": [f"127.0.0.1:{port}"]}, "queue": {"path": "spool"},
                  "metrics": {"listen": f"127.0.0.1:{free_port()}"}}  # fmt: skip
        result = _mta(config, tmp_path, "check-config")
    assert result.returncode == 0, result.stderr
    assert f"mta: note: smtp.listen: 127.0.0.1:{port} is in use" in result.stderr


def test_serve_stops_with_ex_config_on_a_spool_it_cannot_create(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    """/proc takes no new directory, not even from root: every child would fail on it."""
    server = mta_factory({"queue": {"path": "/proc/mta-test-spool"}}, wait=False)
    assert server.proc is not None and server.proc.wait(30) == 78
    log = server.log()
    assert "queue.path: cannot prepare the spool /proc/mta-test-spool" in log
    assert "started smtpd" not in log  # no child, so no respawn loop


def test_serve_stops_with_ex_config_naming_every_problem(
    mta_factory: Callable[..., MtaProcess], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    server = mta_factory(
        {"queue": {"path": str(blocker / "spool")},
         "smtp": {"tls_cert": str(tmp_path / "nope.pem"), "tls_key": str(tmp_path / "nope.key")}},
        wait=False,
    )  # fmt: skip
    assert server.proc is not None and server.proc.wait(30) == 78
    log = server.log()
    assert f"smtp.tls_cert: cannot load {tmp_path / 'nope.pem'}" in log
    assert (
        f"queue.path: {blocker / 'spool'}: cannot be created: {blocker} is not a directory" in log
    )
    assert f"2 configuration problem(s) in {server.config_path}: not starting" in log
    assert "started smtpd" not in log


def test_check_config_as_root_probes_the_childrens_account(tmp_path: Path) -> None:
    """What serve's children could not use, as master.user, is a problem check-config names
    too: here the spool under pytest's 0700 tmp_path (or Python's library, if that is
    under /root too)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    config = {"queue": {"path": str(spool)}, "master": {"user": "nobody"},
              "smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
              "metrics": {"listen": f"127.0.0.1:{free_port()}"}}  # fmt: skip
    result = _mta(config, tmp_path, "check-config")
    assert result.returncode == 1, result.stderr
    assert "user nobody cannot" in result.stderr


def test_a_privileged_port_is_a_note_for_an_unprivileged_check(tmp_path: Path) -> None:
    """Run without CAP_NET_BIND_SERVICE (as the service's account is, outside the unit that
    grants it to serve alone), check-config cannot bind port 25: said, but no error."""
    config = {"smtp": {"listen": ["127.0.0.1:25"]}, "queue": {"path": str(tmp_path / "q")},
              "metrics": {"listen": f"127.0.0.1:{free_port()}"},
              "master": {"user": "root", "allow_root": True}}  # fmt: skip
    path = tmp_path / "mta.toml"
    path.write_text(to_toml(config))
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    no_caps = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]  # even as root
    result = subprocess.run(
        [*no_caps, sys.executable, "-m", "mta", "--config", str(path), "check-config"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mta: note: smtp.listen: 127.0.0.1:25: uid" in result.stderr
    assert "needs root or CAP_NET_BIND_SERVICE" in result.stderr
