"""The password file of SMTP AUTH (``auth.passwords``): one user per line, never a password.

    # comments and blank lines are ignored
    alice:$scrypt$ln=14,r=8,p=1$<salt, base64>$<key, base64>

Each hash is scrypt (hashlib, RFC 7914) with a random salt of its own and its cost written
beside it (``ln`` is log2 of N), so the default can be raised later and old lines keep
verifying.  ``mta passwd`` writes the file (:func:`write_entries`: atomically, mode 0600,
the other users kept).

Invariants and failures:

* A file that cannot be read, or a line that is not ``user:$scrypt$...`` with a sane cost, is
  a :class:`~mta.config.ConfigError` naming ``auth.passwords``, the file and the line, raised
  when the file is loaded (at smtpd start; a HUP replaces the workers, which load it anew).
* A file that other users may read or write is refused, as Postfix refuses unsafe files
  (``postfix check``): whoever reads the hashes can guess passwords offline.
* :meth:`PasswordFile.verify` costs the same for an unknown user as for a known one (a dummy
  hash of the default cost) and compares in constant time; it is CPU work for the caller to
  run off the event loop.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import stat
import tempfile
from dataclasses import dataclass

from mta.config import ConfigError
from mta.private_file import read_private_text

__all__ = ["PasswordFile", "ScryptHash", "hash_password", "read_entries", "write_entries"]

KEY = "auth.passwords"
DEFAULT_LN = 14  # N = 16384, r = 8: 16 MiB and ~70 ms a check (Django's scrypt default)
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_LN = 20  # N = 2**20 with r = 8 needs 1 GiB: beyond that a line is a mistake
_MAX_R, _MAX_P = 32, 16


@dataclass(frozen=True, slots=True)
class ScryptHash:
    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes = b""

    def derive(self, password: str) -> bytes:
        n = 1 << self.ln
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=self.salt,
            n=n,
            r=self.r,
            p=self.p,
            maxmem=256 * n * self.r + (1 << 20),  # scrypt needs 128·N·r octets, plus room
            dklen=_KEY_BYTES,
        )

    def encode(self) -> str:
        salt = binascii.b2a_base64(self.salt, newline=False).decode()
        key = binascii.b2a_base64(self.key, newline=False).decode()
        return f"$scrypt$ln={self.ln},r={self.r},p={self.p}${salt}${key}"

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        """Read ``$scrypt$ln=..,r=..,p=..$salt$key``; ValueError says what is wrong."""
        parts = text.split("$")
        if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
            raise ValueError("not a $scrypt$ hash (make one with `mta passwd`)")
        try:
            cost = dict(item.split("=", 1) for item in parts[2].split(","))
            ln, r, p = int(cost["ln"]), int(cost["r"]), int(cost["p"])
            salt = binascii.a2b_base64(parts[3], strict_mode=True)
            key = binascii.a2b_base64(parts[4], strict_mode=True)
        except (ValueError, KeyError, binascii.Error):
            raise ValueError("malformed $scrypt$ hash") from None
        if not (1 <= ln <= _MAX_LN and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
            raise ValueError(f"scrypt cost out of range (ln 1..{_MAX_LN}, r 1..32, p 1..16)")
        if len(key) != _KEY_BYTES or len(salt) < 8:
            raise ValueError("scrypt salt or key of the wrong length")
        return cls(ln, r, p, salt, key)


def hash_password(password: str, ln: int = DEFAULT_LN, r: int = 8, p: int = 1) -> str:
    """A new ``$scrypt$`` hash of ``password`` with a random salt."""
    unkeyed = ScryptHash(ln, r, p, os.urandom(_SALT_BYTES))
    return ScryptHash(ln, r, p, unkeyed.salt, unkeyed.derive(password)).encode()


# For unknown users: the default cost, a salt and a key nobody knows (nothing matches it).
_DUMMY = ScryptHash(DEFAULT_LN, 8, 1, os.urandom(_SALT_BYTES), os.urandom(_KEY_BYTES))


def valid_username(name: str) -> bool:
    """A name the file can hold: not empty, no ``:``, no white space or control character."""
    return bool(name) and ":" not in name and all(c.isprintable() and not c.isspace() for c in name)


class PasswordFile:
    """The users and their hashes, as loaded once."""

    def __init__(self, hashes: dict[str, ScryptHash]) -> None:
        self._hashes = hashes

    def __len__(self) -> int:
        return len(self._hashes)

    @classmethod
    def load(cls, path: str) -> PasswordFile:
        hashes: dict[str, ScryptHash] = {}
        for number, user, text in _read_lines(path):
            try:
                hashes[user] = ScryptHash.parse(text)
            except ValueError as exc:
                raise ConfigError(f"{KEY}: {path} line {number}: {exc}") from None
        return cls(hashes)

    def verify(self, username: str, password: str) -> bool:
        """Is ``password`` the user's?  Same work for unknown users; constant-time compare."""
        known = self._hashes.get(username)
        expected = known or _DUMMY
        matches = hmac.compare_digest(expected.derive(password), expected.key)
        return matches and known is not None


def _read_lines(path: str) -> list[tuple[int, str, str]]:
    """(line number, user, hash text) of each entry; ConfigError for what cannot be used."""
    text = read_private_text(path, KEY, stat.S_IROTH | stat.S_IWOTH, "o-rwx")
    entries: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep or not valid_username(user):
            raise ConfigError(f"{KEY}: {path} line {number}: expected user:$scrypt$...")
        if user in seen:
            raise ConfigError(f"{KEY}: {path} line {number}: user {user!r} listed twice")
        seen.add(user)
        entries.append((number, user, rest))
    return entries


def read_entries(path: str) -> dict[str, str]:
    """The file's users and hash texts, in file order ({} when there is no file yet)."""
    if not os.path.exists(path):
        return {}
    return {user: text for _, user, text in _read_lines(path)}


def write_entries(path: str, entries: dict[str, str]) -> None:
    """Replace the file atomically (write a temporary file, fsync, rename) with mode 0600
    (an existing file keeps its owner, and its group's read bit, so that the smtpd account
    that reads it still can)."""
    directory = os.path.dirname(os.path.abspath(path))
    mode, owner = 0o600, None
    try:
        st = os.stat(path)
        mode, owner = st.st_mode & 0o640, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        pass
    fd, temporary = tempfile.mkstemp(prefix=".passwd.", dir=directory)
    try:
        os.fchmod(fd, mode)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"{user}:{text}\n" for user, text in entries.items())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
