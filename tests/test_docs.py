"""The operator guide in docs/ matches the code: the generated references are current, and
every alert rule has a runbook that its runbook_url points at."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from types import ModuleType

import yaml

from tests.helpers import REPO

DOCS = REPO / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_generated_from_the_schema() -> None:
    page = (DOCS / "configuration.md").read_text()
    assert page == _generator().configuration(), (
        "docs/configuration.md drifted from mta/config.py: "
        "run python docs/generate.py configuration > docs/configuration.md"
    )


def test_every_config_key_is_in_the_reference() -> None:
    import msgspec

    from mta.config import Config

    page = (DOCS / "configuration.md").read_text()
    sections = {
        name: type(getattr(Config(), name))
        for name in Config.__struct_fields__
        if isinstance(getattr(Config(), name), msgspec.Struct)
    }
    for section, cls in sections.items():
        chunk = page.split(f"## [{section}]\n", 1)[1].split("\n## ", 1)[0]
        for key in cls.__struct_fields__:
            assert f"| `{key}` |" in chunk or isinstance(getattr(cls(), key, None), dict), (
                f"{section}.{key}"
            )


def test_metrics_reference_is_generated_from_mta_metrics() -> None:
    page = (DOCS / "metrics.md").read_text()
    assert page == _generator().metrics(), (
        "docs/metrics.md drifted from mta/metrics.py: "
        "run python docs/generate.py metrics > docs/metrics.md"
    )
    assert "| `mta_smtpd_replies_total` | counter | `code_class` |" in page


def test_the_generator_runs_as_a_command() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCS / "generate.py"), "metrics"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (DOCS / "metrics.md").read_text()


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, spaces to '-', punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_alert_has_a_runbook_section_and_a_url_to_it() -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    runbooks = (DOCS / "runbooks.md").read_text()
    anchors = _anchors(runbooks)
    for rule in alerts:
        assert f"\n## {rule['alert']}\n" in runbooks, rule["alert"]
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/runbooks.md" and anchor == rule["alert"].lower(), url
        assert anchor in anchors


def test_links_between_the_pages_resolve() -> None:
    pages = {path.name: path.read_text() for path in DOCS.glob("*.md")}
    for name, text in pages.items():
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
            assert (DOCS / target).resolve().exists(), f"{name} links to {target}"
        for target, anchor in re.findall(r"\]\(([^)#:]*\.md)?#([^)]+)\)", text):
            assert anchor in _anchors(pages[target or name]), f"{name}: #{anchor}"
    readme = (REPO / "README.md").read_text()
    assert "docs/README.md" in readme
