"""Configuration: one TOML file decoded into frozen msgspec Structs.

Every key has a default, so an empty file (or none) gives a working local relay on
127.0.0.1:2525 with its spool in ``./spool``.  Unknown keys and bad values are errors that
name the key (``$.smtp.max_recipients``) and say what is wrong; :class:`ConfigError` carries
that text to the command line and to the master's reload.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from typing import Annotated, Literal

import msgspec

__all__ = ["Config", "ConfigError", "load_config", "parse_hostport", "parse_route"]

Seconds = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into its parts; raise ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if value.startswith("[") and value.endswith("]") and default_port is not None:
        host, sep, port = value, ":", str(default_port)
    if not sep or not host:
        if default_port is None:
            raise ValueError(f"{value!r} is not host:port")
        host, port = value, str(default_port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} has no valid port")
    return host, int(port)


_ROUTE_KINDS = ("smtp", "lmtp", "maildir", "discard")


def parse_route(value: str) -> tuple[str, str]:
    """Split a route like ``smtp:[10.0.0.5]:25`` into kind and target; check the target."""
    kind, _, target = value.partition(":")
    if kind not in _ROUTE_KINDS:
        raise ValueError(f"route {value!r} must start with one of {', '.join(_ROUTE_KINDS)}")
    if kind in ("smtp", "lmtp"):
        parse_hostport(target, 25 if kind == "smtp" else 24)
    elif kind == "maildir":
        if not target.startswith("/"):
            raise ValueError(f"maildir route {value!r} needs an absolute path")
        try:
            target.format(user="u", domain="d")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"maildir route {value!r}: only {{user}} and {{domain}} may be used ({exc})"
            ) from None
    return kind, target


def _check_networks(key: str, networks: tuple[str, ...]) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ValueError(f"{key}: {network!r} is not a network: {exc}") from None


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every section: unknown keys are errors.

    msgspec passes ``frozen`` on to subclasses, but type checkers follow PEP 681
    (``dataclass_transform``), where a subclass must say ``frozen=True`` again or it is
    taken for a non-frozen one (msgspec issue #657); so every section says it.
    """


class SmtpConfig(_Section, frozen=True):
    listen: tuple[str, ...] = ("127.0.0.1:2525",)
    workers: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0 = one per CPU
    max_message_size: PositiveInt = 26_214_400
    max_recipients: PositiveInt = 1000
    max_line_length: Annotated[int, msgspec.Meta(ge=512)] = 2048
    idle_timeout: Seconds = 300.0
    # Deadlines that trickled bytes do not push back (mta.server.smtpd explains them):
    # a command line (or the message content, plus 1 s per min_data_rate octets) must
    # arrive within command_timeout of its first byte (Postfix's smtpd_timeout taken per
    # request, smtpd_per_request_deadline); a session ends after session_timeout.
    command_timeout: Seconds = 300.0
    min_data_rate: PositiveInt = 500  # octets/s, like Postfix's smtpd_min_data_rate
    session_timeout: Seconds = 3600.0
    max_errors: PositiveInt = 10
    max_connections: PositiveInt = 20_000  # for the node: all smtpd workers together
    # Stress mode (Postfix's ${stress?10}{300}): from this fraction of max_connections on,
    # the idle and command timeouts drop to stress_timeout.
    stress_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    stress_timeout: Seconds = 10.0
    bare_lf: Literal["reject", "normalize"] = "reject"
    nul: Literal["reject", "strip"] = "reject"  # NUL octets in DATA
    # Clients here get bare_lf = "normalize" and nul = "strip" whatever those say (like
    # Postfix's smtpd_forbid_bare_newline_exclusions): old senders on the inside.
    normalize_networks: tuple[str, ...] = ()
    reuse_port: bool = False
    tls_cert: str = ""  # PEM certificate chain; with tls_key, STARTTLS is offered
    tls_key: str = ""

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("at least one listen address is needed")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert: tls_cert and tls_key go together")
        for address in self.listen:
            try:
                parse_hostport(address)
            except ValueError as exc:
                raise ValueError(f"listen: {exc}") from None
        _check_networks("normalize_networks", self.normalize_networks)


class RelayConfig(_Section, frozen=True):
    networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for network in self.networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"networks: {network!r} is not a network: {exc}") from None


class QueueConfig(_Section, frozen=True):
    path: str = "spool"
    group_commit: bool = True  # false: one flush per message (for measurements)
    # octets that must stay free after a message is stored, else MAIL gets 452 4.3.1; at
    # least 1.5 x smtp.max_message_size is always needed (mta/queue/space.py).  Default:
    # one segment (16 MiB), so the queue manager can still copy out what it must keep.
    min_free: Annotated[int, msgspec.Meta(ge=0)] = 16_777_216


class DeliveryConfig(_Section, frozen=True):
    workers: PositiveInt = 2
    relayhost: str = ""
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    dns_servers: tuple[str, ...] = ()
    min_backoff: Seconds = 300.0
    max_backoff: Seconds = 3600.0
    max_lifetime: Seconds = 432_000.0
    connect_timeout: Seconds = 30.0
    command_timeout: Seconds = 300.0
    destination_concurrency: PositiveInt = 20
    max_recipients_per_transaction: PositiveInt = 50  # like Postfix's recipient limit
    local_domains: tuple[str, ...] = ()
    tls: Literal["may", "none"] = "may"  # opportunistic STARTTLS on outbound SMTP
    # CPU niceness of the queue manager and delivery processes, added to smtpd's
    nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 10

    def __post_init__(self) -> None:
        try:
            if self.relayhost:
                parse_hostport(self.relayhost, 25)
        except ValueError as exc:
            raise ValueError(f"relayhost: {exc}") from None
        for server in self.dns_servers:
            try:
                parse_hostport(server, 53)
            except ValueError as exc:
                raise ValueError(f"dns_servers: {exc}") from None
        if self.max_backoff < self.min_backoff:
            raise ValueError("max_backoff: must not be smaller than min_backoff")


class MasterConfig(_Section, frozen=True):
    graceful_timeout: Seconds = 30.0
    heartbeat_timeout: Seconds = 10.0
    pidfile: str = ""
    user: str = "mta"  # started as root, the children run as this account (privileges.py)
    allow_root: bool = False  # let ``user`` be root

    def __post_init__(self) -> None:
        if not self.user:
            raise ValueError("user: must name an account")


class MetricsConfig(_Section, frozen=True):
    listen: str = "127.0.0.1:9125"
    top_domains: Annotated[int, msgspec.Meta(ge=0)] = 20

    def __post_init__(self) -> None:
        if self.listen:
            try:
                parse_hostport(self.listen)
            except ValueError as exc:
                raise ValueError(f"listen: {exc}") from None


class LogConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Section, frozen=True):
    hostname: str = ""
    smtp: SmtpConfig = SmtpConfig()
    relay: RelayConfig = RelayConfig()
    queue: QueueConfig = QueueConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    routes: dict[str, str] = {}
    master: MasterConfig = MasterConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    def __post_init__(self) -> None:
        for domain, route in self.routes.items():
            try:
                parse_route(route)
            except ValueError as exc:
                raise ValueError(f"routes.{domain}: {exc}") from None

    @property
    def fqdn(self) -> str:
        """The name this host uses in greetings, Received headers and DSNs."""
        return self.hostname or _default_hostname()


def _default_hostname() -> str:
    return os.uname().nodename or "localhost"


def load_config(path: str | None) -> Config:
    """Read and validate ``path`` (``None`` = all defaults); raise ConfigError on problems."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(exc)}") from None


def _explain(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's ``... - at `$.smtp.x``` into ``smtp.x: ...`` with the key first.

    Our own checks (``__post_init__``) start their text with the key inside the section,
    e.g. ``listen: ...``, so that also reads ``smtp.listen: ...``.
    """
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if not sep:  # msgspec names no path at the top level
        if text.startswith("Object contains unknown field `"):
            return f"unknown key {text.split('`')[1]!r}"
        return text
    key = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    if message.startswith("Object contains unknown field"):
        return f"{key}: unknown key {message.split('`')[1]!r}" if "`" in message else text
    inner, colon, rest = message.partition(": ")
    if colon and inner.isidentifier():
        return f"{key}.{inner}: {rest}" if key != "(top level)" else message
    return f"{key}: {message}"
