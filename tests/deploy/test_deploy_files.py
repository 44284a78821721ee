"""The operational files in deploy/ are valid for the tools that read them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from mta import metrics
from tests.helpers import REPO

DEPLOY = REPO / "deploy"


def test_prometheus_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (.ci/setup)"
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _metric_names() -> set[str]:
    from prometheus_client.metrics import MetricWrapperBase

    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            names.update(family.name for family in value.describe())
    return names


def test_rules_and_dashboard_only_use_metrics_that_exist() -> None:
    known = _metric_names()
    texts = [(DEPLOY / "prometheus" / "alerts.yml").read_text()]
    dashboard = json.loads((DEPLOY / "grafana" / "mta.json").read_text())
    texts += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for text in texts for m in re.findall(r"\bmta_[a-z_]+", text)}
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
        assert base in known, f"{name} is not defined in mta/metrics.py"
