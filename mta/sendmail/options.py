"""sendmail's command line (Postfix's sendmail(1)) and its sysexits.h exit codes.

The parser is hand-written: sendmail's flags are not getopt's (``-oi``, ``-bs``, a value
glued or as the next word: ``-Ffull name`` / ``-F 'full name'``).  Used: ``-t -i -oi -f
-r -F -bs -bp -bm -q -v -N -R -V -B -C``, ``--`` then recipients.  Taken and ignored, as
Postfix ignores them: ``-Am -Ac -G -U -n -c -m -s -x``, ``-h N``, ``-L label``, ``-X file``,
every other ``-o`` option (``-oem``, ``-oee``, ``-odi``, ``-odb``, ``-om``, ``-o7``,
``-oQ dir``, ``-oA file`` ...) and ``-q`` with an interval (``-q1h``: the relay's own
schedule applies).  Any other flag is a usage error (EX_USAGE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Options", "UsageError", "parse_options"]

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

# Flags that take a value (glued, ``-fme@x``, or as the next word, ``-f me@x``).
_WITH_VALUE = frozenset("fFCNRVBhLXr")
# Taken and ignored, as Postfix's sendmail(1) ignores them.
_IGNORED_BARE = frozenset(("-Am", "-Ac", "-G", "-U", "-n", "-c", "-m", "-s", "-x"))
_IGNORED_VALUE = frozenset("hLX")


class UsageError(Exception):
    """Bad command-line use (EX_USAGE)."""


@dataclass
class Options:
    mode: str = "deliver"  # "deliver" (-bm), "smtp" (-bs), "mailq" (-bp), "flush" (-q)
    extract: bool = False  # -t
    dots: bool = True  # a line with a lone dot ends the message (off with -i / -oi)
    sender: str | None = None  # -f
    fullname: str = ""  # -F
    config: str | None = None  # -C
    verbose: bool = False  # -v
    notify: str = ""  # -N: DSN NOTIFY (RFC 3461)
    ret: str = ""  # -R: DSN RET
    envid: str = ""  # -V: DSN ENVID
    body: str = ""  # -B: 7BIT or 8BITMIME
    recipients: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def parse_options(argv: list[str]) -> Options:
    """sendmail's command line; UsageError on a flag it does not know."""
    opts = Options()
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--":
            opts.recipients.extend(words)
            break
        if not word.startswith("-") or word == "-":
            opts.recipients.append(word)
            continue
        _parse_flag(opts, word, words)
    return opts


def _parse_flag(opts: Options, word: str, words: list[str]) -> None:
    flag, glued = word[1], word[2:]
    if word in _IGNORED_BARE:
        opts.ignored.append(word)
    elif flag in _WITH_VALUE:
        if not glued and not words:
            raise UsageError(f"option requires an argument -- '{flag}'")
        value = glued or words.pop(0)
        if flag in _IGNORED_VALUE:
            opts.ignored.append(f"-{flag} {value}")
        else:
            _set_value(opts, flag, value)
    elif flag == "o":
        if glued == "i":
            opts.dots = False
        elif glued == "Q" or glued == "A":  # -oQ dir / -oA file: a value, ignored
            opts.ignored.append(f"{word} {words.pop(0) if words else ''}".strip())
        else:
            opts.ignored.append(word)  # -oem, -odi, -odb, -om, -o7, -oQdir ...
    elif flag == "b":
        opts.mode = _mode(glued)
    elif flag == "q":
        # a bare -q flushes; -q1h asks for a daemon's interval, which the relay has
        opts.mode = "flush" if not glued else opts.mode
        if glued:
            opts.ignored.append(word)
    else:
        _parse_switches(opts, word)


def _parse_switches(opts: Options, word: str) -> None:
    """``-t``, ``-i``, ``-v`` and groups of them (``-ti``)."""
    for letter in word[1:]:
        if letter == "t":
            opts.extract = True
        elif letter == "i":
            opts.dots = False
        elif letter == "v":
            opts.verbose = True
        else:
            raise UsageError(f"invalid option -- '{letter}'")


def _set_value(opts: Options, flag: str, value: str) -> None:
    if flag == "f" or flag == "r":  # -r: the old name of -f
        opts.sender = value.strip().removeprefix("<").removesuffix(">")
    elif flag == "F":
        opts.fullname = value
    elif flag == "C":
        opts.config = value
    elif flag == "N":
        opts.notify = value.upper()
    elif flag == "R":
        opts.ret = value.upper()
    elif flag == "V":
        opts.envid = value
    elif flag == "B":
        if value.upper() not in ("7BIT", "8BITMIME"):
            raise UsageError(f"-B {value}: 7BIT or 8BITMIME")
        opts.body = value.upper()


def _mode(glued: str) -> str:
    modes = {"m": "deliver", "s": "smtp", "p": "mailq"}
    if glued not in modes:
        raise UsageError(f"-b{glued}: unsupported mode (use -bm, -bs or -bp)")
    return modes[glued]
