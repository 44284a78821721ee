"""The fuzz driver: ``python -m tests.fuzz run [HARNESS ...] --seconds N --corpus DIR``.

``run`` fuzzes each harness in turn (default: all of them) for ``--seconds``, each in its own
atheris process (``child``) so that a crash ends only that run, starting from the harness's
seeds written into ``DIR/<harness>/`` (a temporary directory without ``--corpus``, removed
after a clean run and kept with the crash files otherwise).  It prints one summary line a
harness (executions, ``cov:``, corpus size) and, for a crash, the failing input as a Python
literal, the traceback and the command that replays it; the exit status is 1 if any harness
failed.  ``replay HARNESS PATH...`` runs a harness over files or
corpus directories without atheris (reproducing a crash, measuring line coverage with
``coverage run -m tests.fuzz replay ...``).  The backends are chosen as the registry says
(``MTA_NO_EXTENSIONS``, ``MTA_PARSER``).

mta's Python modules are instrumented for coverage (``atheris.instrument_imports``); the
compiled twin is not (it would need a sanitizer build) and is reached by comparison only.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

LOG_TAIL = 40  # lines of libFuzzer's log shown for a failed run
SHOWN_INPUT = 2000  # octets of a failing input printed in full


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "child":
        return child(args.harness, Path(args.corpus), Path(args.artifacts), args.libfuzzer)
    if args.command == "replay":
        return replay(args.harness, [Path(p) for p in args.paths])
    return run(args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fuzz = commands.add_parser("run", help="fuzz harnesses in turn")
    fuzz.add_argument("harnesses", nargs="*", help="names (default: all)")
    fuzz.add_argument("--seconds", type=int, default=10, help="per harness")
    fuzz.add_argument("--corpus", help="keep the corpora in DIR/<harness> (default: temporary)")
    fuzz.add_argument("--libfuzzer", nargs=argparse.REMAINDER, default=[], help="more flags")
    again = commands.add_parser("replay", help="run a harness over files or directories")
    again.add_argument("harness")
    again.add_argument("paths", nargs="+")
    inner = commands.add_parser("child")  # one atheris run, started by `run`
    for name in ("harness", "corpus", "artifacts"):
        inner.add_argument(name)
    inner.add_argument("libfuzzer", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from tests.fuzz.registry import load_all

    harnesses = load_all()
    names = args.harnesses or sorted(harnesses)
    unknown = sorted(set(names) - set(harnesses))
    if unknown:
        print(f"unknown harness {', '.join(unknown)}; known: {', '.join(sorted(harnesses))}")
        return 2
    base = Path(args.corpus or tempfile.mkdtemp(prefix="mta-fuzz-"))
    failed = [name for name in names if not fuzz_one(name, base, args)]
    if failed:  # the crash files stay for replay, in the temporary directory too
        print(f"fuzz: FAILED: {', '.join(failed)}")
        return 1
    if not args.corpus:
        shutil.rmtree(base)
    return 0


def fuzz_one(name: str, base: Path, args: argparse.Namespace) -> bool:
    """Fuzz one harness in a child process; print its summary (or its crash)."""
    from tests.fuzz.registry import HARNESSES

    corpus, artifacts = base / name, base / f"{name}-crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    write_seeds(corpus, HARNESSES[name].seeds())
    flags = []
    if HARNESSES[name].dictionary:  # libFuzzer refuses an empty dictionary file
        dictionary = base / f"{name}.dict"
        write_dictionary(dictionary, HARNESSES[name].dictionary)
        flags.append(f"-dict={dictionary}")
    flags += [
        f"-max_total_time={args.seconds}",
        f"-max_len={HARNESSES[name].max_len}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        *args.libfuzzer,
    ]
    command = [sys.executable, "-m", "tests.fuzz", "child", name, str(corpus), str(artifacts)]
    log = base / f"{name}.log"
    with log.open("wb") as out:
        status = subprocess.run([*command, *flags], stdout=out, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    print(f"fuzz {name}: {summary(text, corpus)}", flush=True)
    crashes = sorted(artifacts.iterdir())
    if status == 0 and not crashes:
        return True
    print(f"fuzz {name}: exit status {status}; the end of its log ({log}):")
    print("\n".join(text.splitlines()[-LOG_TAIL:]))
    for crash in crashes:
        show_crash(name, crash)
    return False


def write_seeds(corpus: Path, seeds: object) -> None:
    for seed in seeds:  # type: ignore[attr-defined]
        path = corpus / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}"
        if not path.exists():
            path.write_bytes(seed)


def write_dictionary(path: Path, tokens: tuple[bytes, ...]) -> None:
    """libFuzzer's dictionary format: one quoted token a line, octets escaped as \\xNN."""
    path.write_text("".join(f'"{dictionary_escape(token)}"\n' for token in tokens))


def dictionary_escape(token: bytes) -> str:
    plain = (chr(c) if 32 <= c < 127 and c not in b'"\\' else f"\\x{c:02x}" for c in token)
    return "".join(plain)


def summary(log: str, corpus: Path) -> str:
    """Executions, coverage and corpus from libFuzzer's last status line and final stats."""
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    status = re.findall(r"#(\d+)\s+\w+\s+(cov: \d+ ft: \d+ corp: \d+/\S+).*?exec/s: (\d+)", log)
    last = status[-1] if status else ("?", "cov: ? corp: ?", "?")
    runs = execs[-1] if execs else last[0]
    files = sum(1 for _ in corpus.iterdir())
    return f"{runs} executions, {last[1]}, {last[2]} exec/s, {files} files in {corpus}"


def show_crash(name: str, crash: Path) -> None:
    data = crash.read_bytes()
    shown = repr(data[:SHOWN_INPUT]) + (" ..." if len(data) > SHOWN_INPUT else "")
    print(f"fuzz {name}: failing input ({len(data)} octets, saved as {crash}):\n{shown}")
    print(f"hex: {data.hex()}")
    print(f"replay: python -m tests.fuzz replay {name} {crash}")
    replay(name, [crash])


def replay(name: str, paths: list[Path]) -> int:
    """Run harness ``name`` on every file named or found in the directories named."""
    from tests.fuzz.registry import load_all

    one_input = load_all()[name].one_input
    files = [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p])]
    failures = 0
    for path in files:
        try:
            one_input(path.read_bytes())
        except Exception:  # noqa: BLE001 -- any exception is the finding to report
            failures += 1
            print(f"{path}: FAILED\n{traceback.format_exc()}")
    print(f"replay {name}: {len(files)} inputs, {failures} failed")
    return 1 if failures else 0


def child(name: str, corpus: Path, artifacts: Path, libfuzzer: list[str]) -> int:
    """One atheris run (never returns: libFuzzer exits the process)."""
    import atheris

    with atheris.instrument_imports(include=["mta"]):
        from tests.fuzz.registry import load_all

        harnesses = load_all()
    argv = [sys.argv[0], f"-artifact_prefix={artifacts}/", *libfuzzer, str(corpus)]
    atheris.Setup(argv, harnesses[name].one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
