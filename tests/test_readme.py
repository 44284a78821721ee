"""README.md is what users copy: its commands and its configuration reference must be true."""

from __future__ import annotations

import re
from pathlib import Path

from mta.config import load_config
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert blocks[0].strip() == "pip install . && mta serve"
    assert "python -m pytest" in blocks[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci  # CI runs exactly README's test command


def test_configuration_reference_is_a_valid_config(tmp_path: Path) -> None:
    toml = re.search(r"```toml\n(.*?)```", README, re.S)
    assert toml is not None
    path = tmp_path / "mta.toml"
    path.write_text(toml.group(1))
    config = load_config(str(path))
    assert config.listen_addresses() == ("127.0.0.1:2525",)
    assert config.routes["local.example"] == "maildir:/var/mail/{domain}/{user}"
