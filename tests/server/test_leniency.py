"""Per-network DATA checks (``smtp.normalize_networks``) and their configuration keys."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from mta.config import Config, ConfigError, load_config
from mta.server.context import session_limits
from mta.server.leniency import DataLeniency


def leniency(networks: list[str], **smtp: object) -> DataLeniency:
    config = msgspec.convert({"smtp": {"normalize_networks": networks, **smtp}}, Config)
    return DataLeniency(session_limits(config), config.smtp.normalize_networks)


def test_strict_by_default() -> None:
    limits = session_limits(Config())
    assert (limits.normalize_bare_line_endings, limits.strip_nul) == (False, False)
    policy = leniency([])
    assert policy.limits_for("127.0.0.1") is policy.strict


def test_nul_strip_everywhere() -> None:
    assert session_limits(msgspec.convert({"smtp": {"nul": "strip"}}, Config)).strip_nul


@pytest.mark.parametrize(
    ("client", "lenient"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # a v4 client on a dual-stack socket
        ("2001:db8::5", True),
        ("fe80::1%eth0", False),
        ("10.2.0.1", False),
        ("192.0.2.1", False),
        ("", False),  # not an IP address (a UNIX socket, a test)
    ],
)
def test_listed_networks_are_normalised(client: str, lenient: bool) -> None:
    policy = leniency(["10.1.0.0/16", "2001:db8::/32"])
    limits = policy.limits_for(client)
    assert limits is (policy.lenient if lenient else policy.strict)
    assert (limits.normalize_bare_line_endings, limits.strip_nul) == (lenient, lenient)
    assert policy.limits_for(client) is limits  # cached, the same answer
    assert limits.hostname == policy.strict.hostname  # only the DATA checks differ


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[smtp]\nnormalize_networks = ["10.0.0.0/33"]\n', "smtp.normalize_networks"),
        ('[smtp]\nnormalize_networks = "10.0.0.0/8"\n', "smtp.normalize_networks"),
        ('[smtp]\nnul = "drop"\n', "smtp.nul"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert key in str(info.value)
