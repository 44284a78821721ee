"""The distribution as a user gets it: ``python -m build`` makes an sdist and a wheel (the
wheel from the sdist, so the sdist holds all a build needs), each installs into a fresh
venv and runs there, and an install with no working C compiler falls back to the
pure-Python parser with a warning.

These tests build and install for real (about two minutes), so they carry the
``packaging`` mark; CI runs them once, in README's test command.  Only the dependencies come
from the network (PyPI, or the pip cache): they are made into a wheelhouse once, and every
install after that is ``--no-index``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import mta
from tests.helpers import REPO

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

DIST_NAME = "mta-relay"
STEP_TIMEOUT = 300  # seconds for any one build or install step


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this tree on the path or a forced parser: the venv must
    import its own installed ``mta``, and a build must not skip the extension."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "MTA_NO_EXTENSIONS", "MTA_PARSER", "VIRTUAL_ENV")
    }
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=cwd, env=clean_env(**extra_env), capture_output=True, text=True,
        timeout=STEP_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def source_copy(dest: Path) -> Path:
    """The tree without build products or local state, so that the build cannot pick up
    an in-place extension and writes nothing into the working tree."""
    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "spool", "*.egg-info", "__pycache__", "*.so", "*.pyc",
        ".*_cache", ".hypothesis", "results",
    )  # fmt: skip
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel) from ``python -m build``, the wheel built from the sdist."""
    work = tmp_path_factory.mktemp("build")
    src = source_copy(work / "src")
    out = work / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=work)
    (sdist,) = out.glob("mta_relay-*.tar.gz")
    (wheel,) = out.glob("mta_relay-*.whl")
    yield sdist, wheel


@pytest.fixture(scope="module")
def wheelhouse(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's dependencies and the build requirements, as wheels (some, like dkimpy,
    exist only as an sdist)."""
    house = tmp_path_factory.mktemp("wheelhouse")
    _, wheel = dist
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), str(wheel),
         "setuptools>=77", "Cython>=3.0"],
        cwd=house,
    )  # fmt: skip
    return house


def fresh_venv(where: Path) -> Path:
    """A venv without pip (``pip --python`` installs into it, saving ensurepip's time)."""
    run([sys.executable, "-m", "venv", "--without-pip", str(where)], cwd=where.parent)
    return where / "bin"


def pip_install(bin_dir: Path, house: Path, target: Path, **env: str) -> str:
    cmd = [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-v",
           "--no-index", "--find-links", str(house), "--find-links", str(target.parent),
           str(target)]  # fmt: skip
    result = run(cmd, cwd=bin_dir.parent, **env)
    return result.stdout + result.stderr


def check_installed(bin_dir: Path, cwd: Path, parser: str) -> None:
    """``mta --version`` (both ways), a tiny ``check-config`` and the parser backend."""
    expected = f"{DIST_NAME} {mta.__version__} (parser: {parser})"
    assert run([str(bin_dir / "mta"), "--version"], cwd=cwd).stdout.strip() == expected
    version = run([str(bin_dir / "python"), "-m", "mta", "--version"], cwd=cwd)
    assert version.stdout.strip() == expected
    config = cwd / "mta.toml"
    config.write_text('hostname = "mx.example.test"\n[queue]\npath = "spool"\n')
    checked = run([str(bin_dir / "mta"), "--config", str(config), "check-config"], cwd=cwd)
    assert json.loads(checked.stdout)["hostname"] == "mx.example.test"
    probe = (
        "import mta, mta.parser_backend as p; "
        "print(mta.__file__); print(p.backend_name(p.select()))"
    )
    selected = run([str(bin_dir / "python"), "-c", probe], cwd=cwd)
    where, backend = selected.stdout.split()
    assert Path(where).is_relative_to(bin_dir.parent), "the venv must import its own mta"
    assert backend == parser


def test_sdist_holds_what_a_build_needs(dist: tuple[Path, Path]) -> None:
    sdist, _ = dist
    root = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.removeprefix(root + "/") for name in tar.getnames()}
    for needed in ("ext/_parser_c.pyx", "ext/_parser_c.c", "setup.py", "pyproject.toml",
                   "README.md", "LICENSE", "mta/py.typed", "mta/protocol/_parser_py.py",
                   "tests/conftest.py"):  # fmt: skip
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith("spool/")]


def test_wheel_installs_into_a_fresh_venv_and_runs(
    dist: tuple[Path, Path], wheelhouse: Path, tmp_path: Path
) -> None:
    _, wheel = dist
    assert "-cp3" in wheel.name, "with a compiler the wheel carries the compiled parser"
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, wheelhouse, wheel)
    check_installed(bin_dir, tmp_path, parser="c")
    meta = (
        "import importlib.metadata as m, importlib.resources as r; "
        f"d = m.metadata({DIST_NAME!r}); "
        "print(d['License-Expression'], d.get_all('License-File'), "
        "r.files('mta').joinpath('py.typed').is_file())"
    )
    assert run([str(bin_dir / "python"), "-c", meta], cwd=tmp_path).stdout.split() == [
        "MIT", "['LICENSE']", "True",
    ]  # fmt: skip


def test_sdist_installs_without_a_compiler_on_the_python_parser(
    dist: tuple[Path, Path], wheelhouse: Path, tmp_path: Path
) -> None:
    sdist, _ = dist
    bin_dir = fresh_venv(tmp_path / "venv")
    # CC is what setuptools compiles with; /bin/false fails every compile, like a machine
    # without gcc.  The install must still succeed, and say why the extension is missing.
    output = pip_install(bin_dir, wheelhouse, sdist, CC="/bin/false", CXX="/bin/false")
    assert "WARNING: the compiled SMTP parser (mta.protocol._parser_c) was not built" in output
    check_installed(bin_dir, tmp_path, parser="python")
    fallback = run(
        [str(bin_dir / "python"), "-c", "import mta.parser_backend as p; p.select()"],
        cwd=tmp_path,
    )
    assert "compiled parser not available" in fallback.stderr
