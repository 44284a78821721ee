"""What a local submission needs to know about this host: where the relay listens, who
submits, and the headers Postfix's cleanup adds to local mail that lacks them."""

from __future__ import annotations

import datetime
import os
import pwd
import smtplib
import time
from email.utils import format_datetime, getaddresses, make_msgid

from mta.config import Config, parse_hostport

__all__ = [
    "default_sender",
    "extract_recipients",
    "local_relay_address",
    "login_name",
    "new_headers",
    "smtp_client",
]

SUBMIT_TIMEOUT = 60.0  # seconds per SMTP step to the local relay


def local_relay_address(config: Config) -> tuple[str, int]:
    """Where local submission connects: sendmail.submit_address, else the first listener
    that speaks plain SMTP and needs no AUTH (an MX listener first), a wildcard address
    taken as loopback."""
    if config.sendmail.submit_address:
        return parse_hostport(config.sendmail.submit_address)
    listeners = config.resolved_listeners()
    usable = [
        lst
        for lst in listeners
        if lst.tls != "implicit"
        and lst.tls != "required"
        and not lst.proxy_protocol
        and not lst.require_auth
    ]
    chosen = sorted(usable, key=lambda lst: lst.role != "mx") or listeners
    host, port = parse_hostport(chosen[0].listen[0])
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def default_sender(config: Config) -> str:
    """``user@hostname``, as Postfix's myorigin makes it."""
    return f"{login_name()}@{config.fqdn}"


def extract_recipients(header_values: list[str]) -> list[str]:
    """Addresses in To/Cc/Bcc values (``-t``)."""
    return [addr for _, addr in getaddresses(header_values) if addr]


def new_headers(config: Config, present: set[str], sender: str, fullname: str) -> bytes:
    """The headers Postfix's cleanup adds to a local submission that lacks them."""
    added = []
    if "from" not in present:
        name = f'"{fullname}" ' if fullname else ""
        added.append(f"From: {name}<{sender}>" if sender else "From: <MAILER-DAEMON>")
    if "date" not in present:
        added.append(f"Date: {format_datetime(_local_now())}")
    if "message-id" not in present:
        added.append(f"Message-ID: {make_msgid(domain=config.fqdn)}")
    return "".join(f"{line}\r\n" for line in added).encode("utf-8")


def _local_now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(time.time()).astimezone()


def smtp_client(config: Config, verbose: bool) -> smtplib.SMTP:
    """A connection to the local relay; OSError if it does not answer."""
    host, port = local_relay_address(config)
    client = smtplib.SMTP(host, port, local_hostname="localhost", timeout=SUBMIT_TIMEOUT)
    if verbose:
        client.set_debuglevel(1)
    return client
