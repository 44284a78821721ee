"""Configuration: one TOML file decoded into frozen msgspec Structs.

Every key has a default, so an empty file (or none) gives a working local relay on
127.0.0.1:2525 with its spool in ``./spool``.  Unknown keys and bad values are errors that
name the key (``$.smtp.max_recipients``) and say what is wrong; :class:`ConfigError` carries
that text to the command line and to the master's reload.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import msgspec

__all__ = [
    "Config",
    "ConfigError",
    "Listener",
    "ListenerConfig",
    "load_config",
    "parse_hostport",
    "parse_route",
]

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


# outbound TLS security levels (Postfix's); mta/delivery/tls_policy.py gives their meaning
# dane: TLSA records when DNSSEC-authenticated, else may; dane-only: DANE or defer
TlsLevel = Literal["none", "may", "encrypt", "verify", "dane", "dane-only"]
TLS_LEVELS: tuple[str, ...] = get_args(TlsLevel)


# A [tls_policy] value is a level, optionally followed by Postfix's attribute for the
# lowest protocol version (smtp_tls_policy_maps' "protocols=>=TLSv1.3"); TLS 1.2 is the floor.
TLS_MIN_VERSIONS = {">=TLSv1.2": "1.2", ">=TLSv1.3": "1.3"}


def split_tls_policy(value: str) -> tuple[str, str]:
    """``"verify protocols=>=TLSv1.3"`` → ("verify", "1.3"); ValueError says what is wrong."""
    level, *attributes = value.split() or [""]
    if level not in TLS_LEVELS:
        raise ValueError(f"level {level!r} is not one of {', '.join(TLS_LEVELS)}")
    minimum = "1.2"
    for attribute in attributes:
        name, _, setting = attribute.partition("=")
        if name != "protocols" or setting not in TLS_MIN_VERSIONS:
            raise ValueError(
                f"{attribute!r}: the one attribute is protocols=>=TLSv1.2 or protocols=>=TLSv1.3"
            )
        minimum = TLS_MIN_VERSIONS[setting]
    return level, minimum


def tls_policy_problem(destination: str, level: str) -> str:
    """What is wrong with a ``[tls_policy]`` entry ("domain", ".parent", "[host]:port")."""
    try:
        split_tls_policy(level)
    except ValueError as exc:
        return str(exc)
    if destination.startswith("["):
        close = destination.find("]")
        port = destination[close + 2 :]
        if close < 2 or destination[close + 1 : close + 2] != ":" or not port.isdigit():
            return "a next hop is written [host]:port"
        return ""
    if not destination.strip(".") or any(c.isspace() or c in "[]:@" for c in destination):
        return "not a domain"
    return ""


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


DEFAULT_LISTEN = ("127.0.0.1:2525",)  # the MX listener when none is configured


class SmtpConfig(_Section, frozen=True):
    # MX listeners (role "mx", STARTTLS offered when tls_cert is set); empty: 127.0.0.1:2525
    # unless [listeners] tables are configured (see Config.resolved_listeners)
    listen: tuple[str, ...] = ()
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

    # PROXY protocol headers are accepted only from these (listeners with proxy_protocol)
    proxy_networks: tuple[str, ...] = ()
    # the whole PROXY header must arrive within this (Postfix's postscreen_upstream_proxy_timeout)
    proxy_timeout: Seconds = 5.0
    vrfy: bool = True  # VRFY gets 252, no user disclosed; false: 502 (disable_vrfy_command)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert: tls_cert and tls_key go together")
        for address in self.listen:
            try:
                parse_hostport(address)
            except ValueError as exc:
                raise ValueError(f"listen: {exc}") from None
        _check_networks("normalize_networks", self.normalize_networks)
        _check_networks("proxy_networks", self.proxy_networks)


Role = Literal["mx", "submission", "submissions"]
TlsMode = Literal["off", "offered", "required", "implicit"]


class ListenerConfig(_Section, frozen=True):
    """One ``[listeners.NAME]`` table: addresses and what is offered there, like a service
    line of Postfix's master.cf (``smtp``, ``submission``, ``submissions``/``smtps``).

    Unset keys (None) take the role's defaults (:func:`resolve_listener`): ``mx`` offers
    STARTTLS when a certificate is configured and no AUTH; ``submission`` requires STARTTLS
    and AUTH (RFC 6409); ``submissions`` is implicit TLS with AUTH required (RFC 8314).
    """

    listen: tuple[str, ...]
    role: Role = "mx"
    tls: TlsMode | None = None  # off | offered (STARTTLS) | required | implicit
    tls_cert: str = ""  # default: smtp.tls_cert / smtp.tls_key
    tls_key: str = ""
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    proxy_protocol: bool = False  # a PROXY v1/v2 header first, from smtp.proxy_networks
    auth: bool | None = None  # offer AUTH (only under TLS unless auth_plaintext)
    auth_plaintext: bool = False  # AUTH without TLS: for tests on loopback only
    require_auth: bool | None = None  # MAIL needs AUTH first (530 5.7.0)

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("listen: at least one address is needed")
        for address in self.listen:
            try:
                parse_hostport(address)
            except ValueError as exc:
                raise ValueError(f"listen: {exc}") from None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert: tls_cert and tls_key go together")


@dataclass(frozen=True, slots=True)
class Listener:
    """A listener with every setting decided (no None left); what smtpd serves."""

    name: str
    listen: tuple[str, ...]
    role: Role
    tls: TlsMode
    tls_cert: str
    tls_key: str
    tls_min_version: str
    proxy_protocol: bool
    auth: bool
    auth_plaintext: bool
    require_auth: bool


def resolve_listener(name: str, entry: ListenerConfig, smtp: SmtpConfig) -> Listener:
    """Fill the unset keys of ``entry`` from its role and the [smtp] defaults."""
    cert, key = entry.tls_cert or smtp.tls_cert, entry.tls_key or smtp.tls_key
    submission = entry.role != "mx"
    default_tls: TlsMode = (
        "implicit" if entry.role == "submissions" else "required" if submission else "offered"
    )
    tls = entry.tls if entry.tls is not None else default_tls
    if tls == "offered" and not cert and entry.tls is None:
        tls = "off"  # an MX listener offers STARTTLS only when there is a certificate
    if tls != "off" and not cert:
        raise ValueError(f"{name}.tls: TLS mode {tls!r} needs tls_cert and tls_key")
    if entry.proxy_protocol and not smtp.proxy_networks:
        raise ValueError(
            f"{name}.proxy_protocol: needs smtp.proxy_networks (the balancers it trusts)"
        )
    return Listener(
        name=name,
        listen=entry.listen,
        role=entry.role,
        tls=tls,
        tls_cert=cert if tls != "off" else "",
        tls_key=key if tls != "off" else "",
        tls_min_version=entry.tls_min_version,
        proxy_protocol=entry.proxy_protocol,
        auth=entry.auth if entry.auth is not None else submission,
        auth_plaintext=entry.auth_plaintext,
        require_auth=entry.require_auth if entry.require_auth is not None else submission,
    )


class RelayConfig(_Section, frozen=True):
    networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    domains: tuple[str, ...] = ()  # accepted from anyone (with delivery.local_domains)
    # Valid recipients at the accepted domains (Postfix's relay_recipient_maps /
    # local_recipient_maps): a file of ``user@domain`` / ``@domain`` lines, or "any".
    # Required once there are accepted domains: unknown recipients are refused at RCPT
    # (550 5.1.1), never accepted and bounced later (backscatter).
    recipients: str = ""

    def __post_init__(self) -> None:
        for network in self.networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"networks: {network!r} is not a network: {exc}") from None


class AuthConfig(_Section, frozen=True):
    """SMTP AUTH (RFC 4954) on the listeners that offer it (``[listeners.NAME] auth``)."""

    passwords: str = ""  # file of password hashes (``mta passwd``); "": AUTH is not offered
    sender_logins: str = ""  # file: which sender addresses each login may use; "": any
    failure_delay: Annotated[float, msgspec.Meta(ge=0)] = 1.0  # seconds before a 535
    # "(Authenticated sender: USER)" in Received: (Postfix's smtpd_sasl_authenticated_header)
    authenticated_header: bool = False


class LimitsConfig(_Section, frozen=True):
    """Per-client limits that hold across all smtpd workers of the node (Postfix's anvil).
    Rates count per minute; 0 turns a limit off."""

    # Postfix's smtpd_client_connection_count_limit: open at once, per client address
    connections: Annotated[int, msgspec.Meta(ge=0)] = 50
    # smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit (MAIL commands),
    # smtpd_client_recipient_rate_limit (accepted RCPTs), per anvil_rate_time_unit (60 s)
    connection_rate: Annotated[int, msgspec.Meta(ge=0)] = 0
    message_rate: Annotated[int, msgspec.Meta(ge=0)] = 0
    recipient_rate: Annotated[int, msgspec.Meta(ge=0)] = 0
    # failed AUTH per minute (Postfix counts AUTH commands: smtpd_client_auth_rate_limit);
    # beyond: 421 4.7.0 and disconnect
    auth_failures: Annotated[int, msgspec.Meta(ge=0)] = 5
    # smtpd_client_event_limit_exceptions; None: relay.networks
    exempt_networks: tuple[str, ...] | None = None
    store: Literal["local"] = "local"  # the counters' owner: this node's anvil

    def __post_init__(self) -> None:
        _check_networks("exempt_networks", self.exempt_networks or ())

    @property
    def any_on(self) -> bool:
        """Whether any limit is on (then the node runs anvil)."""
        return any(
            (
                self.connections,
                self.connection_rate,
                self.message_rate,
                self.recipient_rate,
                self.auth_failures,
            )
        )


class AccessConfig(_Section, frozen=True):
    """Access tables (Postfix's access(5), check_{client,helo,sender,recipient}_access):
    file paths, "" for none; read by every smtpd worker at start (so again on HUP)."""

    client: str = ""  # IP addresses and networks
    helo: str = ""  # HELO/EHLO names and parent domains
    sender: str = ""  # MAIL FROM addresses, domains, user@
    recipient: str = ""  # RCPT TO addresses, domains, user@
    # Seconds to wait before the greeting; a client that talks meanwhile is refused
    # (postscreen_greet_wait / smtpd's pre-greeting check).  0: off; relay.networks exempt.
    greet_pause: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


class DnsblConfig(_Section, frozen=True):
    """DNS blocklists of client addresses (Postfix's reject_rbl_client, postscreen's
    postscreen_dnsbl_sites with ``zone*weight`` and postscreen_dnsbl_threshold)."""

    zones: tuple[str, ...] = ()  # e.g. ["zen.spamhaus.org", "bl.example*2"]; empty: off
    threshold: PositiveInt = 1  # the sum of the listing zones' weights that refuses
    dns_servers: tuple[str, ...] = ()  # "host[:port]"; empty: the system resolver
    timeout: Seconds = 5.0  # a lookup not answered by then counts as not listed
    cache_size: PositiveInt = 10_000  # addresses remembered (each for its answer's TTL)

    def __post_init__(self) -> None:
        for zone in self.zones:
            name, star, weight = zone.partition("*")
            if not name.strip(".") or (star and not weight.isdigit()):
                raise ValueError(f"zones: {zone!r} is not a zone or zone*weight")
        for server in self.dns_servers:
            try:
                parse_hostport(server, 53)
            except ValueError as exc:
                raise ValueError(f"dns_servers: {exc}") from None


Rate = Annotated[float, msgspec.Meta(ge=0)]  # messages per minute; 0: no limit


def _check_bind_address(key: str, value: str, version: int) -> None:
    if not value:
        return
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not an IP address") from None
    if address.version != version:
        raise ValueError(f"{key}: {value!r} is not an IPv{version} address")


class DestinationConfig(_Section, frozen=True):
    """``[destinations."example.com"]``: shaping for one destination, by the recipient
    domain (MX delivery) or the host of the relayhost or of an smtp:/lmtp: route."""

    concurrency: PositiveInt | None = None  # default: delivery.destination_concurrency
    rate: Rate | None = None  # messages per minute; default: delivery.destination_rate


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
    # default outbound TLS level (Postfix's smtp_tls_security_level); [tls_policy] overrides
    # it per destination (smtp_tls_policy_maps); see mta/delivery/tls_policy.py
    tls: TlsLevel = "may"  # "dane"/"dane-only" need a validating resolver in dns_servers
    tls_ca_file: str = ""  # PEM trust anchors for "verify" (smtp_tls_CAfile); "": system store
    # smarthost: "[host]:port user:password" lines (smtp_sasl_password_maps), mode 0600;
    # a next hop on one of tls_wrapper_ports gets TLS before EHLO (smtp_tls_wrappermode)
    smtp_auth_file: str = ""
    tls_wrapper_ports: tuple[Annotated[int, msgspec.Meta(ge=1, le=65535)], ...] = (465,)
    # BDAT to next hops that offer CHUNKING (RFC 3030); false: always DATA (Postfix has no
    # switch: smtp_discard_ehlo_keywords = chunking is its way to the same)
    chunking: bool = True
    # CPU niceness of the queue manager and delivery processes, added to smtpd's
    nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 10
    # Destination shaping, owned by the queue manager (mta/qmgr/shaping.py); the
    # destination_concurrency above is the limit across all delivery processes.
    initial_destination_concurrency: PositiveInt = 5  # Postfix's, the slow start's window
    destination_rate: Rate = 0.0  # messages per minute per destination; 0: no limit
    dead_after: PositiveInt = 5  # consecutive unreachable attempts that suspend a destination
    dead_backoff: Seconds = 300.0  # first suspension (Postfix's minimal_backoff_time) ...
    dead_max_backoff: Seconds = 3600.0  # ... doubling while probes fail (maximal_backoff_time)
    bind_address: str = ""  # source of outbound IPv4 connections (smtp_bind_address)
    bind_address6: str = ""  # source of outbound IPv6 connections (smtp_bind_address6)
    address_preference: Literal["any", "ipv6", "ipv4"] = "any"  # smtp_address_preference
    # a "delayed" DSN once a message has waited this long with recipients still deferred
    # (Postfix's delay_warning_time); 0: never, as in Postfix
    delay_warning_time: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        _check_bind_address("bind_address", self.bind_address, 4)
        _check_bind_address("bind_address6", self.bind_address6, 6)
        if self.dead_max_backoff < self.dead_backoff:
            raise ValueError("dead_max_backoff: must not be smaller than dead_backoff")
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
        if self.tls_ca_file and not os.access(self.tls_ca_file, os.R_OK):
            raise ValueError(f"tls_ca_file: cannot read {self.tls_ca_file}")


# Signed by default (RFC 6376 §5.4.1's list); From is signed once more than it occurs
# (oversigned), so that no From can be added below the signature without breaking it.
# RFC 6376 §5.4.1's list (signed where present), plus Sender, Message-ID and the MIME
# fields, as dkimpy's and OpenDKIM's defaults also sign.
DKIM_HEADERS = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Resent-Date", "Resent-From",
    "Resent-To", "Resent-Cc", "In-Reply-To", "References", "List-Id", "List-Help",
    "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
    "Sender", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)  # fmt: skip
# RFC 6376 §5.4.1: SHOULD NOT be signed (receivers' relays add or change them), with Bcc
# (removed before delivery) and DKIM-Signature itself, as dkimpy refuses them.
DKIM_UNSIGNABLE = frozenset(
    ("return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature")
)


class MtaStsConfig(_Section, frozen=True):
    """MTA-STS (RFC 8461) for MX deliveries: mta/delivery/mta_sts*.py.  Postfix has none
    built in; postfix-mta-sts-resolver's defaults are a 4 s fetch and 10,000 cached."""

    enabled: bool = True  # apply the policies domains publish ([tls_policy] entries win)
    fetch_timeout: Seconds = 10.0  # the whole HTTPS fetch of a policy, connection included
    cache_size: PositiveInt = 10_000  # parsed policies kept in memory (the spool keeps all)


class DkimKeyConfig(_Section, frozen=True):
    selector: str  # the DNS label: SELECTOR._domainkey.DOMAIN
    key: str  # private key file: PEM (RSA or Ed25519) or dkimpy's base64 Ed25519 seed

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})", self.selector):
            raise ValueError("selector: must be a DNS label such as 's1' or '2026.s1'")
        if not self.key:
            raise ValueError("key: must name the private key file")


class DkimConfig(_Section, frozen=True):
    """Outbound DKIM signing (OpenDKIM's KeyTable/SigningTable, in one table)."""

    keys: dict[str, DkimKeyConfig] = {}  # From: domain (and its subdomains) -> key
    headers: tuple[str, ...] = DKIM_HEADERS
    oversign: tuple[str, ...] = ("From",)  # OpenDKIM's OversignHeaders

    def __post_init__(self) -> None:
        if "from" not in {h.lower() for h in self.headers}:
            raise ValueError("headers: must include From (RFC 6376 §5.4)")
        for key, names in (("headers", self.headers), ("oversign", self.oversign)):
            bad = sorted({h for h in names if h.lower() in DKIM_UNSIGNABLE})
            if bad:
                raise ValueError(f"{key}: {', '.join(bad)} must not be signed (RFC 6376 §5.4.1)")
        for domain in self.keys:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", domain) or domain.startswith("."):
                raise ValueError(f'keys."{domain}": not a domain name')


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
    format: Literal["text", "syslog", "json"] = "text"  # syslog: Postfix's lines (mta/logs.py)
    output: Literal["stderr", "syslog", "journald"] = "stderr"
    syslog_name: str = "mta"  # Postfix's syslog_name: the "mta" of "mta/smtpd[pid]"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.syslog_name):
            raise ValueError("syslog_name: letters, digits, '.', '_' and '-' only")


class SendmailConfig(_Section, frozen=True):
    """The ``sendmail`` command (mta/sendmail/)."""

    # host:port local submission connects to; "": the first plain listener that needs no
    # AUTH (Postfix's sendmail goes through postdrop/pickup instead, with no listener)
    submit_address: str = ""

    def __post_init__(self) -> None:
        if self.submit_address:
            try:
                parse_hostport(self.submit_address)
            except ValueError as exc:
                raise ValueError(f"submit_address: {exc}") from None


class Config(_Section, frozen=True):
    hostname: str = ""
    smtp: SmtpConfig = SmtpConfig()
    relay: RelayConfig = RelayConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    access: AccessConfig = AccessConfig()
    dnsbl: DnsblConfig = DnsblConfig()
    queue: QueueConfig = QueueConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    dkim: DkimConfig = DkimConfig()
    mta_sts: MtaStsConfig = MtaStsConfig()
    routes: dict[str, str] = {}
    tls_policy: dict[str, str] = {}  # destination -> TLS level (smtp_tls_policy_maps)
    destinations: dict[str, DestinationConfig] = {}  # per-destination shaping overrides
    listeners: dict[str, ListenerConfig] = {}
    master: MasterConfig = MasterConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    sendmail: SendmailConfig = SendmailConfig()

    def __post_init__(self) -> None:
        for domain, route in self.routes.items():
            try:
                parse_route(route)
            except ValueError as exc:
                raise ValueError(f"routes.{domain}: {exc}") from None
        for destination, level in self.tls_policy.items():
            problem = tls_policy_problem(destination, level)
            if problem:
                raise ValueError(f"tls_policy.{destination}: {problem}")
        try:
            listeners = self.resolved_listeners()
        except ValueError as exc:
            raise ValueError(f"listeners.{exc}") from None
        seen: dict[str, str] = {}
        for listener in listeners:
            for address in listener.listen:
                if address in seen:
                    raise ValueError(
                        f"listeners.{listener.name}.listen: {address} is also {seen[address]}'s"
                    )
                seen[address] = listener.name
        if self.accepted_domains() and not self.relay.recipients:
            raise ValueError(
                "relay.recipients: relay.domains / delivery.local_domains are set, so give "
                'a file of valid recipients, or "any" to accept every local part explicitly'
            )

    def accepted_domains(self) -> frozenset[str]:
        """The domains anyone may send mail to (a [routes] entry alone is not one)."""
        domains = (*self.relay.domains, *self.delivery.local_domains)
        return frozenset(d.lower().rstrip(".") for d in domains)

    def resolved_listeners(self) -> list[Listener]:
        """Every listener, its settings decided: ``smtp.listen`` as the MX listener named
        ``smtp`` (127.0.0.1:2525 when neither it nor [listeners] is set), then [listeners]."""
        smtp = self.smtp
        listen = smtp.listen or (() if self.listeners else DEFAULT_LISTEN)
        entries = dict(self.listeners)
        if listen:
            if "smtp" in entries:
                raise ValueError("smtp: name taken by [smtp] listen; choose another name")
            entries = {"smtp": ListenerConfig(listen=listen, role="mx"), **entries}
        return [resolve_listener(name, entry, smtp) for name, entry in entries.items()]

    def listen_addresses(self) -> tuple[str, ...]:
        """Every address to bind, listener by listener (the order smtpd's sockets come in)."""
        return tuple(a for listener in self.resolved_listeners() for a in listener.listen)

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
