"""The AUTH tables: the scrypt password file and ``mta passwd``, the sender logins, the
failure window and verification off the event loop."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mta.config import Config, ConfigError
from mta.policy import passwords
from mta.policy.auth import Authenticator, SenderLogins, sender_refusal
from mta.policy.passwords import PasswordFile, ScryptHash, hash_password
from mta.protocol.events import AuthRequest
from tests.helpers import REPO, to_toml

CHEAP = 4  # log2 N for tests: the cost is read from each hash, so any works


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_hash_verifies_its_password_only() -> None:
    line = hash_password("s3cret", ln=CHEAP)
    assert line.startswith(f"$scrypt$ln={CHEAP},r=8,p=1$") and "s3cret" not in line
    table = PasswordFile({"alice": ScryptHash.parse(line)})
    assert table.verify("alice", "s3cret")
    assert not table.verify("alice", "s3cret ") and not table.verify("alice", "")
    assert not table.verify("bob", "s3cret")


def test_each_hash_has_its_own_salt_and_keeps_its_cost() -> None:
    a, b = hash_password("same", ln=CHEAP), hash_password("same", ln=CHEAP + 1, r=4)
    assert a.split("$")[3] != b.split("$")[3]
    table = PasswordFile({"a": ScryptHash.parse(a), "b": ScryptHash.parse(b)})
    assert table.verify("a", "same") and table.verify("b", "same")  # old costs keep working
    assert ScryptHash.parse(b).ln == CHEAP + 1 and ScryptHash.parse(b).r == 4


def test_unknown_users_cost_the_same_as_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    derived: list[tuple[int, int, int]] = []
    real = ScryptHash.derive

    def spy(self: ScryptHash, password: str) -> bytes:
        derived.append((self.ln, self.r, self.p))
        return real(self, password)

    monkeypatch.setattr(ScryptHash, "derive", spy)
    table = PasswordFile({"alice": ScryptHash.parse(hash_password("pw"))})  # default cost
    derived.clear()
    assert not table.verify("alice", "wrong")
    assert not table.verify("nobody", "pw")
    assert derived == [(passwords.DEFAULT_LN, 8, 1)] * 2  # one full scrypt each


def test_load_reads_users_and_skips_comments(tmp_path: Path) -> None:
    path = write_private(
        tmp_path / "passwd",
        f"# users\n\nalice:{hash_password('a', ln=CHEAP)}\nbob:{hash_password('b', ln=CHEAP)}\n",
    )
    table = PasswordFile.load(str(path))
    assert len(table) == 2 and table.verify("bob", "b") and not table.verify("bob", "a")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("alice", "expected user:$scrypt$"),
        ("alice:plaintext", "not a $scrypt$ hash"),
        ("alice:$scrypt$ln=14,r=8$c2FsdHNhbHQ=$AAAA", "malformed"),
        ("alice:$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ=$" + "A" * 44, "cost out of range"),
        ("al ice:$scrypt$", "expected user:$scrypt$"),
    ],
)
def test_a_bad_line_is_a_config_error_naming_key_file_and_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = write_private(tmp_path / "passwd", f"# ok\nbob:{hash_password('b', ln=CHEAP)}\n{line}\n")
    with pytest.raises(ConfigError) as raised:
        PasswordFile.load(str(path))
    assert str(raised.value).startswith(f"auth.passwords: {path} line 3: ")
    assert problem in str(raised.value)


def test_a_user_twice_is_an_error(tmp_path: Path) -> None:
    entry = f"alice:{hash_password('a', ln=CHEAP)}\n"
    path = write_private(tmp_path / "passwd", entry * 2)
    with pytest.raises(ConfigError, match="line 2: user 'alice' listed twice"):
        PasswordFile.load(str(path))


def test_a_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = write_private(tmp_path / "passwd", f"alice:{hash_password('a', ln=CHEAP)}\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"auth.passwords: .* other users \(mode 0644\)"):
        PasswordFile.load(str(path))
    path.chmod(0o640)  # the group (the smtpd account's) may read it
    assert len(PasswordFile.load(str(path))) == 1


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth.passwords: .*/absent: cannot read"):
        PasswordFile.load(str(tmp_path / "absent"))


def test_check_config_names_a_broken_password_file(tmp_path: Path) -> None:
    path = write_private(tmp_path / "passwd", "alice:nope\n")
    config = tmp_path / "mta.toml"
    config.write_text(to_toml({"auth": {"passwords": str(path)}}))
    done = run_mta(["--config", str(config), "check-config"], tmp_path)
    assert done.returncode == 1
    assert f"configuration error: auth.passwords: {path} line 1: not a $scrypt$" in done.stderr


# ----- mta passwd -----------------------------------------------------------------------------


def run_mta(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mta", *args],
        input=stdin, capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
    )  # fmt: skip


def test_mta_passwd_adds_changes_and_deletes_users(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert run_mta(["passwd", "alice", "--file", str(path)], tmp_path, "first\n").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run_mta(["passwd", "bob", "-f", str(path)], tmp_path, "bobs\n").returncode == 0
    assert run_mta(["passwd", "alice", "-f", str(path)], tmp_path, "second\n").returncode == 0
    text = path.read_text()
    assert "first" not in text and "second" not in text and "bobs" not in text
    table = PasswordFile.load(str(path))
    assert table.verify("alice", "second") and not table.verify("alice", "first")
    assert table.verify("bob", "bobs")  # kept when alice changed
    done = run_mta(["passwd", "--delete", "bob", "-f", str(path)], tmp_path)
    assert done.returncode == 0 and list(passwords.read_entries(str(path))) == ["alice"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".passwd")] == []


def test_mta_passwd_uses_auth_passwords_and_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "users"
    config = tmp_path / "mta.toml"
    config.write_text(to_toml({"auth": {"passwords": str(path)}}))
    assert run_mta(["-c", str(config), "passwd", "carol"], tmp_path, "pw\n").returncode == 0
    assert PasswordFile.load(str(path)).verify("carol", "pw")
    assert run_mta(["passwd", "x:y", "-f", str(path)], tmp_path, "pw\n").returncode == 2
    assert run_mta(["passwd", "dave", "-f", str(path)], tmp_path, "\n").returncode == 1
    assert run_mta(["passwd", "--delete", "nobody", "-f", str(path)], tmp_path).returncode == 1
    assert run_mta(["passwd", "dave"], tmp_path, "pw\n").returncode == 2  # no file named
    assert list(passwords.read_entries(str(path))) == ["carol"]


def test_mta_passwd_asks_twice_on_a_terminal(tmp_path: Path) -> None:
    import pty

    path = tmp_path / "passwd"
    pid, fd = pty.fork()
    if pid == 0:  # the child: mta passwd on a terminal
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "mta", "passwd", "eve", "-f", str(path)])
    transcript = b""
    for answer in (b"tty-pw\n", b"tty-pw\n"):
        transcript += _read_until(fd, b": ")
        os.write(fd, answer)
    transcript += _read_until(fd, b"set eve")
    os.waitpid(pid, 0)
    assert b"New password: " in transcript and b"Again: " in transcript
    assert b"tty-pw" not in transcript  # not echoed
    assert PasswordFile.load(str(path)).verify("eve", "tty-pw")


def _read_until(fd: int, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        data += chunk
    return data


# ----- sender logins ----------------------------------------------------------------------------


def test_sender_logins_own_addresses_and_domains(tmp_path: Path) -> None:
    path = tmp_path / "logins"
    path.write_text("# who may send as whom\nalice: alice@example.org, @alice.example\n")
    logins = SenderLogins.load(str(path))
    assert logins.owns("alice", "alice@example.org") and logins.owns("alice", "Alice@Example.ORG")
    assert logins.owns("alice", "anyone@alice.example")
    assert not logins.owns("alice", "bob@example.org")
    assert not logins.owns("alice", "x@sub.alice.example")
    assert not logins.owns("bob", "bob@example.org")  # a login not listed owns nothing
    assert logins.owns("bob", "")  # the null sender, always
    assert sender_refusal(logins, "alice", "bob@example.org") == (
        b"553 5.7.1 <bob@example.org>: Sender address rejected: not owned by user alice\r\n"
    )
    assert sender_refusal(logins, None, "bob@example.org") is None  # not authenticated
    assert sender_refusal(None, "alice", "bob@example.org") is None  # no table


@pytest.mark.parametrize("line", ["alice", "alice:", "alice: example.org", ": a@b.test"])
def test_a_bad_sender_logins_line_names_key_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "logins"
    path.write_text(f"ok: a@b.test\n{line}\n")
    with pytest.raises(ConfigError, match=rf"^auth.sender_logins: {path} line 2: "):
        SenderLogins.load(str(path))


# ----- failures and verification -----------------------------------------------------------


def test_verification_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    table = PasswordFile({"alice": ScryptHash.parse(hash_password("pw", ln=CHEAP))})
    real = table.verify

    def spy(username: str, password: str) -> bool:
        threads.append(threading.get_ident())
        return real(username, password)

    monkeypatch.setattr(table, "verify", spy)
    authenticator = Authenticator(table)

    async def check() -> list[bool]:
        return [
            await authenticator.verify(AuthRequest("PLAIN", "", "alice", "pw")),
            await authenticator.verify(AuthRequest("PLAIN", "alice", "alice", "pw")),
            await authenticator.verify(AuthRequest("PLAIN", "boss", "alice", "pw")),  # act as
            await authenticator.verify(AuthRequest("LOGIN", "", "alice", "nope")),
        ]

    try:
        assert asyncio.run(check()) == [True, True, False, False]
    finally:
        authenticator.close()
    assert threads and threading.get_ident() not in threads
    assert "pw" not in repr(AuthRequest("PLAIN", "", "alice", "pw")).replace("PLAIN", "")


def test_default_config_loads_no_tables() -> None:
    from mta.policy.auth import load_auth_tables

    assert load_auth_tables(Config()) == (None, None)
