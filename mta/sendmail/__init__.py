"""``sendmail`` (and ``mailq``): local submission the way cron, PHP's mail(), git send-email
and mutt expect it, after Postfix's sendmail(1).

The message comes on stdin and goes to the running relay over a local SMTP connection (the
first plain listener that needs no AUTH).  If the relay does not answer, or answers with a
temporary failure, the message is written straight into the queue with the writer smtpd
uses (``Spool.new_message``, an envelope, a durable commit into ``incoming/``) and the
queue manager is woken, so nothing is lost: it goes out once the relay runs.

Exit codes are sysexits.h, as callers of sendmail test them: 0 queued, 64 bad usage,
65 a message or sender the relay refused, 67 a recipient refused, 75 nothing was queued
but trying again may work, 78 the configuration cannot be read.

Modules: options.py (the flags), local.py (the relay's address, the sender, added
headers), submit.py (stdin to the relay), queue_write.py (straight into the queue when
the relay is down), smtp_stdin.py (``-bs``), mailq.py (Postfix's listing).
"""

from __future__ import annotations

import os
import sys

from mta.config import Config, ConfigError, load_config
from mta.sendmail.options import (
    EX_CONFIG,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    UsageError,
    parse_options,
)

__all__ = ["find_config_path", "mailq_main", "main"]

CONFIG_ENV = "MTA_CONFIG"
DEFAULT_CONFIG = "/etc/mta/mta.toml"


def find_config_path(explicit: str | None) -> str | None:
    """The configuration as ``mta`` finds it: the option, then $MTA_CONFIG, then
    /etc/mta/mta.toml if it exists; None means every default."""
    if explicit:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def _load(explicit: str | None, prog: str) -> Config | None:
    try:
        return load_config(find_config_path(explicit))
    except ConfigError as exc:
        print(f"{prog}: fatal: configuration error: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    """The ``sendmail`` command (console script and ``mta sendmail``)."""
    from mta.queue_cli import pipe_safe

    try:
        opts = parse_options(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    config = _load(opts.config, "sendmail")
    if config is None:
        return EX_CONFIG
    if opts.verbose and opts.ignored:
        print(f"sendmail: ignored as Postfix does: {' '.join(opts.ignored)}", file=sys.stderr)
    if opts.mode == "mailq":
        return pipe_safe(lambda: _mailq(config))
    if opts.mode == "flush":
        return _flush(config)
    if opts.mode == "smtp":
        from mta.sendmail.smtp_stdin import relay_smtp_session

        return relay_smtp_session(config, opts.verbose)
    from mta.sendmail.submit import submit

    return submit(config, opts, sys.stdin.buffer)


def mailq_main(argv: list[str] | None = None) -> int:
    """The ``mailq`` command (= ``sendmail -bp``); ``-C FILE`` names the configuration."""
    args = sys.argv[1:] if argv is None else argv
    explicit = None
    if len(args) == 2 and args[0] in ("-C", "--config", "-c"):
        explicit = args[1]
    elif args:
        print("usage: mailq [-C config]", file=sys.stderr)
        return EX_USAGE
    config = _load(explicit, "mailq")
    if config is None:
        return EX_CONFIG
    from mta.queue_cli import pipe_safe

    return pipe_safe(lambda: _mailq(config))


def _mailq(config: Config) -> int:
    from mta.queue.admin import AdminError, QueueAdmin
    from mta.sendmail.mailq import print_mailq

    try:
        admin = QueueAdmin(config.queue.path)
    except AdminError as exc:
        print(f"mailq: fatal: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    print_mailq(admin.entries(), sys.stdout)
    return EX_OK


def _flush(config: Config) -> int:
    from mta.queue.admin import AdminError, QueueAdmin

    try:
        QueueAdmin(config.queue.path).flush()
    except AdminError as exc:
        print(f"sendmail: fatal: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    return EX_OK
