"""Configuration: defaults, every documented key, and errors that name the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mta.config import Config, ConfigError, load_config
from tests.helpers import REPO

DOCUMENTED = """\
hostname = "mx.example.test"
[smtp]
listen = []
max_message_size = 26214400
max_recipients = 1000
idle_timeout = 300
max_errors = 10
bare_lf = "reject"
[relay]
networks = ["127.0.0.0/8", "::1/128"]
domains = []
[queue]
path = "spool"
[delivery]
workers = 2
relayhost = ""
smtp_port = 25
dns_servers = []
min_backoff = 300
max_backoff = 3600
max_lifetime = 432000
connect_timeout = 30
command_timeout = 300
destination_concurrency = 20
[routes]
"example.org" = "smtp:[10.0.0.5]:25"
"lmtp.example" = "lmtp:127.0.0.1:24"
"local.example" = "maildir:/var/mail/{domain}/{user}"
"null.example" = "discard"
"""

# The same keys, every value away from its default.
CHANGED = """\
hostname = "mx2.example.test"
[smtp]
listen = ["0.0.0.0:25", "[::]:587"]
max_message_size = 1048576
max_recipients = 50
idle_timeout = 60.5
max_errors = 3
bare_lf = "normalize"
[relay]
networks = ["10.0.0.0/8", "2001:db8::/32"]
domains = ["example.org", "example.net"]
recipients = "/etc/mta/recipients"
[queue]
path = "/var/spool/mta"
[delivery]
workers = 8
relayhost = "[smarthost.example]:587"
smtp_port = 2525
dns_servers = ["192.0.2.53", "[2001:db8::53]:5353"]
min_backoff = 60
max_backoff = 7200
max_lifetime = 86400
connect_timeout = 10
command_timeout = 120
destination_concurrency = 5
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return str(path)


def config_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")  # the file is named first
    return message[len(path) + 2 :]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "mta", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


# ----- defaults ---------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.smtp.listen == ()
    assert config.listen_addresses() == ("127.0.0.1:2525",)
    assert config.queue.path == "spool"
    assert config.smtp.max_message_size == 26_214_400
    assert config.smtp.max_recipients == 1000
    assert config.smtp.idle_timeout == 300
    assert config.smtp.max_errors == 10
    assert config.smtp.bare_lf == "reject"
    assert config.relay.networks == ("127.0.0.0/8", "::1/128")  # no open relay by default
    assert config.relay.domains == ()
    assert config.delivery.relayhost == ""
    assert (config.delivery.min_backoff, config.delivery.max_backoff) == (300, 3600)
    assert config.delivery.max_lifetime == 5 * 86400
    assert config.routes == {}
    assert config.fqdn  # some name for the greeting, even without hostname


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_check_config_without_a_file_prints_the_defaults(tmp_path: Path) -> None:
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["listeners"]["smtp"]["listen"] == ["127.0.0.1:2525"]
    assert settings["listeners"]["smtp"]["role"] == "mx"
    assert settings["queue"]["path"] == "spool"
    assert settings["smtp"]["max_message_size"] == 26_214_400
    assert settings["relay"]["networks"] == ["127.0.0.0/8", "::1/128"]
    assert settings["routes"] == {}


# ----- the documented keys ---------------------------------------------------------------------


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DOCUMENTED))
    assert config.hostname == "mx.example.test"
    assert config.fqdn == "mx.example.test"
    assert config.listen_addresses() == ("127.0.0.1:2525",)
    assert config.relay.networks == ("127.0.0.0/8", "::1/128")
    assert config.queue.path == "spool"
    assert config.delivery.workers == 2
    assert config.routes == {
        "example.org": "smtp:[10.0.0.5]:25",
        "lmtp.example": "lmtp:127.0.0.1:24",
        "local.example": "maildir:/var/mail/{domain}/{user}",
        "null.example": "discard",
    }
    # the documented values are the defaults
    assert (config.smtp, config.relay, config.queue, config.delivery) == (
        Config().smtp,
        Config().relay,
        Config().queue,
        Config().delivery,
    )


def test_every_documented_key_takes_effect(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CHANGED))
    assert config.hostname == "mx2.example.test"
    smtp = config.smtp
    assert smtp.listen == ("0.0.0.0:25", "[::]:587")
    assert (smtp.max_message_size, smtp.max_recipients) == (1_048_576, 50)
    assert (smtp.idle_timeout, smtp.max_errors, smtp.bare_lf) == (60.5, 3, "normalize")
    assert config.relay.networks == ("10.0.0.0/8", "2001:db8::/32")
    assert config.relay.domains == ("example.org", "example.net")
    assert config.relay.recipients == "/etc/mta/recipients"
    assert config.queue.path == "/var/spool/mta"
    d = config.delivery
    assert (d.workers, d.relayhost, d.smtp_port) == (8, "[smarthost.example]:587", 2525)
    assert d.dns_servers == ("192.0.2.53", "[2001:db8::53]:5353")
    assert (d.min_backoff, d.max_backoff, d.max_lifetime) == (60, 7200, 86400)
    assert (d.connect_timeout, d.command_timeout, d.destination_concurrency) == (10, 120, 5)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DOCUMENTED))
    with pytest.raises(AttributeError):
        config.smtp.max_errors = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "section", ["smtp", "relay", "queue", "delivery", "master", "metrics", "log", None]
)
def test_every_section_is_frozen(section: str | None) -> None:
    struct = Config() if section is None else getattr(Config(), section)
    name = struct.__struct_fields__[0]
    with pytest.raises(AttributeError):
        setattr(struct, name, getattr(struct, name))


# ----- errors name the key --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[smtp]\nbogus = 1\n", "smtp: unknown key 'bogus'"),
        ("[delivery]\nrelay_host = 'x'\n", "delivery: unknown key 'relay_host'"),
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[bogus]\nx = 1\n", "unknown key 'bogus'"),
    ],
)
def test_unknown_key_is_an_error(tmp_path: Path, text: str, expected: str) -> None:
    assert config_error(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[smtp]\nmax_recipients = 0\n", "smtp.max_recipients"),
        ("[smtp]\nmax_message_size = 'big'\n", "smtp.max_message_size"),
        ("[smtp]\nidle_timeout = 0\n", "smtp.idle_timeout"),
        ("[smtp]\nmax_errors = -1\n", "smtp.max_errors"),
        ('[smtp]\nbare_lf = "x"\n', "smtp.bare_lf"),
        ('[smtp]\nlisten = ["nope"]\n', "smtp.listen"),
        ('[smtp]\nlisten = ["127.0.0.1:99999"]\n', "smtp.listen"),
        ('[smtp]\nlisten = "127.0.0.1:25"\n', "smtp.listen"),
        ("[delivery]\nnice = 20\n", "delivery.nice"),
        ("[delivery]\nnice = -1\n", "delivery.nice"),
        ('[relay]\nnetworks = ["not-a-net"]\n', "relay.networks"),
        ('[relay]\ndomains = "example.org"\n', "relay.domains"),
        ("[queue]\npath = 1\n", "queue.path"),
        ("[delivery]\nworkers = 0\n", "delivery.workers"),
        ('[delivery]\nrelayhost = "host:port"\n', "delivery.relayhost"),
        ("[delivery]\nsmtp_port = 70000\n", "delivery.smtp_port"),
        ('[delivery]\ndns_servers = ["1.2.3.4:x"]\n', "delivery.dns_servers"),
        ("[delivery]\nmin_backoff = 600\nmax_backoff = 300\n", "delivery.max_backoff"),
        ("[delivery]\nconnect_timeout = -5\n", "delivery.connect_timeout"),
        ('[routes]\n"example.org" = "ftp:[10.0.0.5]:25"\n', "routes.example.org"),
        ('[routes]\n"example.org" = "smtp:[10.0.0.5]:x"\n', "routes.example.org"),
        ('[routes]\n"local.example" = "maildir:relative/path"\n', "routes.local.example"),
        ("hostname = 5\n", "hostname"),
        ('[relay]\ndomains = ["example.org"]\n', "relay.recipients"),
        ('[delivery]\nlocal_domains = ["example.org"]\n', "relay.recipients"),
        ("[access]\ngreet_pause = -1\n", "access.greet_pause"),
        ("[access]\nclient = 5\n", "access.client"),
        ('[dnsbl]\nzones = ["bl.test*x"]\n', "dnsbl.zones"),
        ('[dnsbl]\nzones = ["."]\n', "dnsbl.zones"),
        ("[dnsbl]\nthreshold = 0\n", "dnsbl.threshold"),
        ('[dnsbl]\ndns_servers = ["1.2.3.4:x"]\n', "dnsbl.dns_servers"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{key}: ") or message.startswith(f"{key.rsplit('.', 1)[0]}: ")
    assert key.rsplit(".", 1)[-1] in message


def test_accepted_domains_need_a_recipient_table_or_any(tmp_path: Path) -> None:
    """Unknown recipients at an accepted domain are refused at RCPT; "any" must be said."""
    message = config_error(tmp_path, '[relay]\ndomains = ["example.org"]\n')
    assert message.startswith("relay.recipients: ") and '"any"' in message
    config = load_config(
        write(tmp_path, '[relay]\ndomains = ["Example.ORG."]\nrecipients = "any"\n')
    )
    assert config.accepted_domains() == frozenset({"example.org"})
    routed = load_config(write(tmp_path, '[routes]\n"routed.test" = "smtp:[10.0.0.5]:25"\n'))
    assert routed.accepted_domains() == frozenset()  # a route alone accepts nothing


def test_bad_route_kind_says_which_kinds_exist(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[routes]\n"example.org" = "ftp:x"\n')
    assert message.startswith("routes.example.org: ")
    assert "smtp" in message and "lmtp" in message and "maildir" in message


def test_not_toml_is_an_error(tmp_path: Path) -> None:
    assert "not valid TOML" in config_error(tmp_path, "[smtp\nlisten = \n")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


# ----- mta check-config -----------------------------------------------------------------------


def test_check_config_with_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, DOCUMENTED)
    result = run_cli("--config", path, "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["hostname"] == "mx.example.test"
    assert settings["routes"]["null.example"] == "discard"
    assert settings["delivery"]["destination_concurrency"] == 20


def test_check_config_takes_the_option_after_the_command(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "after.example.test"\n')
    result = run_cli("check-config", "--config", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hostname"] == "after.example.test"


@pytest.mark.parametrize(
    ("text", "key"),
    [("[smtp]\nbogus = 1\n", "bogus"), ("[smtp]\nmax_recipients = 0\n", "smtp.max_recipients")],
)
def test_check_config_with_a_bad_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    result = run_cli("--config", path, "check-config", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert key in result.stderr
    assert path in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_with_a_missing_file(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "absent.toml"), "check-config", cwd=tmp_path)
    assert result.returncode == 1
    assert "absent.toml" in result.stderr
    assert "Traceback" not in result.stderr
