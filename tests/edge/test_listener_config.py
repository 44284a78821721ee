"""The listeners' configuration: errors that name the key, the README's example, and how
a worker pairs its sockets with the listeners (no sockets served here)."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import msgspec
import pytest

from mta.config import Config, ConfigError, load_config
from mta.server.context import session_limits
from mta.server.listeners import listener_states, pair_sockets
from tests.helpers import REPO


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return str(caught.value).removeprefix(f"{path}: ")


def test_proxy_protocol_needs_proxy_networks(tmp_path: Path) -> None:
    text = '[listeners.edge]\nlisten = ["127.0.0.1:2526"]\nproxy_protocol = true\n'
    message = _error(tmp_path, text)
    assert message.startswith("listeners.edge.proxy_protocol: needs smtp.proxy_networks")


def test_an_address_in_two_listeners_is_an_error(tmp_path: Path) -> None:
    text = '[smtp]\nlisten = ["127.0.0.1:2525"]\n[listeners.other]\nlisten = ["127.0.0.1:2525"]\n'
    assert _error(tmp_path, text) == "listeners.other.listen: 127.0.0.1:2525 is also smtp's"


@pytest.mark.parametrize("value", ["0", "-1", '"soon"'])
def test_proxy_timeout_must_be_positive_seconds(tmp_path: Path, value: str) -> None:
    message = _error(tmp_path, f"[smtp]\nproxy_timeout = {value}\n")
    assert message.startswith("smtp.proxy_timeout: ") and "unknown" not in message


def test_proxy_timeout_defaults_to_postfix_5_seconds(tmp_path: Path) -> None:
    assert Config().smtp.proxy_timeout == 5.0
    path = tmp_path / "mta.toml"
    path.write_text("[smtp]\nproxy_timeout = 2.5\n")
    assert load_config(str(path)).smtp.proxy_timeout == 2.5


def test_the_readme_listeners_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Listeners", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "mta.toml"
    path.write_text(example.group(1))
    listeners = {x.name: x for x in load_config(str(path)).resolved_listeners()}
    assert [(x.role, x.tls, x.proxy_protocol) for x in listeners.values()] == [
        ("mx", "offered", True),
        ("submission", "required", True),
        ("submissions", "implicit", True),
    ]


def test_each_socket_is_paired_with_its_listener(tmp_path: Path) -> None:
    config = msgspec.convert(
        {
            "smtp": {"listen": ["127.0.0.1:2525", "127.0.0.1:2526"]},
            "listeners": {"sub": {"listen": ["127.0.0.1:2587"], "role": "mx", "tls": "off"}},
        },
        Config,
    )
    states = listener_states(config, session_limits)
    sockets = [socket.socket() for _ in range(3)]
    try:
        names = [state.name for _, state in pair_sockets(states, sockets)]
        assert names == ["smtp", "smtp", "sub"]
        with pytest.raises(ValueError, match="2 sockets for 3 listening addresses"):
            pair_sockets(states, sockets[:2])
    finally:
        for sock in sockets:
            sock.close()


def test_a_worker_that_cannot_load_a_certificate_exits_with_exit_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The master checks the files first; a worker that still cannot read them (another
    account, a file replaced meanwhile) stops the master instead of restarting in a loop."""
    from mta.exitcodes import EXIT_CONFIG
    from mta.server.worker import run_smtpd

    missing = tmp_path / "missing.pem"
    config = msgspec.convert(
        {
            "queue": {"path": str(tmp_path / "spool")},
            "smtp": {"tls_cert": str(missing), "tls_key": str(missing)},
        },
        Config,
    )
    try:
        with pytest.raises(SystemExit) as exited:
            run_smtpd(config, [])
    finally:
        asyncio.set_event_loop(None)  # run_smtpd left its own (closed) loop set
    assert exited.value.code == EXIT_CONFIG
    assert f"smtp.tls_cert: cannot load {missing}" in caplog.text
