"""The ``mta`` command line: serve, check-config, passwd, queue ..., send, and the
sendmail-compatible ``mta sendmail`` / ``mta mailq`` (mta/sendmail/).

Exit codes: 0 success, 1 a problem the user can act on (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys

from mta.config import Config, ConfigError, load_config
from mta.logs import setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if (status := _sendmail_command(argv)) is not None:
        return status
    args = _parser().parse_args(argv)
    from mta.sendmail import find_config_path

    try:
        config = load_config(find_config_path(args.config))
    except ConfigError as exc:
        print(f"mta: configuration error: {exc}", file=sys.stderr)
        return 1
    handler = args.handler
    from mta.queue_cli import pipe_safe

    return pipe_safe(lambda: int(handler(config, args) or 0))


def _sendmail_command(argv: list[str]) -> int | None:
    """``mta [--config FILE] sendmail|mailq ...``: sendmail's own flags, not argparse's."""
    config: list[str] = []
    words = list(argv)
    while len(words) >= 2 and words[0] in ("--config", "-c"):
        config = ["-C", words[1]]
        words = words[2:]
    if not words or words[0] not in ("sendmail", "mailq"):
        return None
    from mta import sendmail

    if words[0] == "mailq":
        return sendmail.mailq_main(config + words[1:])
    return sendmail.main(config + words[1:])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mta", description="mail transfer agent")
    p.add_argument("--version", action="version", version=version_text())
    p.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    # listed for --help; main() hands them their own command line (mta/sendmail/)
    sub.add_parser("sendmail", help="submit a message from stdin (sendmail -t -i ...)")
    sub.add_parser("mailq", help="the queue in Postfix's mailq format")
    serve = sub.add_parser("serve", help="run the relay (master, smtpd and delivery)")
    serve.set_defaults(handler=_serve)
    check = sub.add_parser("check-config", help="print the effective settings or the errors")
    check.set_defaults(handler=_check_config)
    passwd = sub.add_parser("passwd", help="add, change or delete an SMTP AUTH user")
    passwd.add_argument("user")
    passwd.add_argument("--file", "-f", metavar="FILE", help="password file (auth.passwords)")
    passwd.add_argument("--delete", action="store_true", help="remove the user")
    passwd.set_defaults(handler=_passwd)
    dkim = sub.add_parser("dkim", help="DKIM keys")
    dkim_sub = dkim.add_subparsers(required=True, metavar="ACTION")
    keygen = dkim_sub.add_parser("keygen", help="write a private key, print its DNS record")
    keygen.add_argument("domain")
    keygen.add_argument("selector")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--dir", default=".", help="where DOMAIN.SELECTOR.key is written")
    keygen.set_defaults(handler=_dkim_keygen)
    from mta.queue_cli import add_commands

    for command in (serve, check, passwd, keygen, *add_commands(sub)):
        command.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS)
    return p


def version_text() -> str:
    """``mta-relay 0.1.0 (parser: c)``: the installed distribution's version (the source
    tree's when it is not installed) and the parser backend ``serve`` would pick."""
    import importlib.util
    from importlib import metadata

    import mta

    try:
        version = metadata.version(mta.DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree (PYTHONPATH)
        version = mta.__version__
    compiled = importlib.util.find_spec("mta.protocol._parser_c") is not None
    forced = os.environ.get("MTA_NO_EXTENSIONS") == "1" or os.environ.get("MTA_PARSER") == "python"
    parser = "c" if compiled and not forced else "python"
    return f"{mta.DISTRIBUTION} {version} (parser: {parser})"


def _serve(config: Config, args: argparse.Namespace) -> int:
    setup_logging(config.log.level, config.log.format, config.log.output, config.log.syslog_name)
    from mta.master import metrics_dir

    metrics_dir.prepare()  # before anything imports prometheus_client
    from mta.master.arbiter import run_master

    # Every configuration problem (mta/master/preflight.py) is EX_CONFIG before anything
    # starts: a service manager does not restart it in a loop.
    return run_master(config, config_path=args.config)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    """Every problem ``serve`` would stop on, and whether the ports can be bound
    (mta/master/preflight.py): 1 with all of them listed, else the effective settings."""
    import msgspec

    from mta.master import preflight

    findings = preflight.check(config, ports=True)
    for note in findings.notes:
        print(f"mta: note: {note}", file=sys.stderr)
    for problem in findings.problems:
        print(f"mta: configuration error: {problem}", file=sys.stderr)
    if findings.problems:
        count = len(findings.problems)
        where = args.config or "the defaults (no --config)"
        print(f"mta: check-config: {count} problem(s) in {where}", file=sys.stderr)
        return 1
    # The listeners as served: smtp.listen and [listeners] with every default filled in.
    settings = msgspec.to_builtins(config)
    settings["listeners"] = {
        listener.name: msgspec.to_builtins(listener) for listener in config.resolved_listeners()
    }
    print(msgspec.json.format(msgspec.json.encode(settings), indent=2).decode())
    return 0


def _dkim_keygen(config: Config, args: argparse.Namespace) -> int:
    """``mta dkim keygen DOMAIN SELECTOR``: DIR/DOMAIN.SELECTOR.key (0600, never over an
    existing file) and, on stdout, the TXT record to publish (RSA 2048 or Ed25519)."""
    import os

    from mta.delivery.signing import generate_key

    domain = args.domain.lower().rstrip(".")
    path = os.path.join(args.dir, f"{domain}.{args.selector}.key")
    pem, record = generate_key(args.type)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"mta dkim keygen: cannot create {path}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(f"mta dkim keygen: wrote the private key to {path}", file=sys.stderr)
    key_path = os.path.abspath(path)
    print(f'; for the configuration: [dkim.keys."{domain}"]', file=sys.stderr)
    print(f'; selector = "{args.selector}"\n; key = "{key_path}"', file=sys.stderr)
    # DNS TXT strings are at most 255 octets each (RFC 1035): an RSA record is split.
    chunks = " ".join(f'"{record[i : i + 250]}"' for i in range(0, len(record), 250))
    print(f"{args.selector}._domainkey.{domain}. IN TXT ( {chunks} )")
    return 0


def _passwd(config: Config, args: argparse.Namespace) -> int:
    """``mta passwd USER``: the password from a prompt (asked twice) or, when stdin is not
    a terminal, its first line; the file is rewritten atomically, other users kept."""
    from mta.policy import passwords

    path = args.file or config.auth.passwords
    if not path:
        print("mta passwd: no password file: set auth.passwords or use --file", file=sys.stderr)
        return 2
    if not passwords.valid_username(args.user):
        print(f"mta passwd: {args.user!r}: no ':', space or control character", file=sys.stderr)
        return 2
    try:
        entries = passwords.read_entries(path)
    except ConfigError as exc:
        print(f"mta passwd: {exc}", file=sys.stderr)
        return 1
    if args.delete:
        if entries.pop(args.user, None) is None:
            print(f"mta passwd: no user {args.user!r} in {path}", file=sys.stderr)
            return 1
    else:
        password = _read_new_password()
        if password is None:
            return 1
        entries[args.user] = passwords.hash_password(password)
    try:
        passwords.write_entries(path, entries)
    except OSError as exc:
        print(f"mta passwd: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"mta passwd: {'deleted' if args.delete else 'set'} {args.user} in {path}")
    return 0


def _read_new_password() -> str | None:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            print("mta passwd: the passwords differ; nothing changed", file=sys.stderr)
            return None
    if not password:
        print("mta passwd: an empty password is not allowed", file=sys.stderr)
        return None
    return password
