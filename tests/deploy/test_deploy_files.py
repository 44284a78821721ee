"""The operational files in deploy/ are valid for the tools that read them."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML, one of the test extras

from mta import metrics
from mta.config import load_config, parse_hostport
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


# ----- the account mta runs as (issue 10 item 9) ------------------------------------------


def _unit() -> dict[str, str]:
    settings = {}
    for line in (DEPLOY / "systemd" / "mta.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def test_systemd_creates_the_account_and_spool_the_unit_runs_with(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles, run for real into a scratch root, make the
    account the unit names and its working directory, 0700 and owned by that account."""
    unit = _unit()
    user, directory = unit["User"], unit["WorkingDirectory"]
    assert unit["Group"] == user
    assert "CAP_NET_BIND_SERVICE" in unit["AmbientCapabilities"]
    assert unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert directory == "/var/lib/" + unit["StateDirectory"]  # writable under ProtectSystem
    sysusers = shutil.which("systemd-sysusers")
    tmpfiles = shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers/systemd-tmpfiles are not installed")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(DEPLOY / "systemd" / "mta.sysusers")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    assert user in passwd
    uid = int(passwd[user][2])
    assert 0 < uid < 1000  # a system account, not root
    assert passwd[user][5] == directory
    subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(DEPLOY / "systemd" / "mta.tmpfiles")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    st = os.stat(tmp_path / directory.lstrip("/"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, uid)


def _container_account() -> tuple[int, int]:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    uid = re.search(r"useradd [^\n]*--uid (\d+)[^\n]* mta\b", text)
    gid = re.search(r"groupadd [^\n]*--gid (\d+) mta\b", text)
    assert uid and gid, "the image creates the mta account with a fixed uid and gid"
    return int(uid.group(1)), int(gid.group(1))


def test_the_container_runs_as_its_mta_account_not_root() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    uid, gid = _container_account()
    assert uid != 0 and gid != 0
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users[-1] == f"{uid}:{gid}"  # numeric: Kubernetes can verify runAsNonRoot
    assert "chown mta:mta /var/spool/mta" in text and "chmod 0700 /var/spool/mta" in text


def test_kubernetes_pods_run_as_the_image_account_without_privileges(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "mta.yaml").read_text()))
    [statefulset] = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    uid, gid = _container_account()
    security = pod["securityContext"]
    assert security == {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid, "runAsNonRoot": True}
    [container] = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    if container["securityContext"].get("readOnlyRootFilesystem"):  # the master needs /tmp
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    # with no capability, it can only listen on unprivileged ports (the Service maps 25)
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    config_path = tmp_path / "mta.toml"
    config_path.write_text(configmap["data"]["mta.toml"])
    config = load_config(str(config_path))
    ports = {parse_hostport(address)[1] for address in config.listen_addresses()}
    assert all(port >= 1024 for port in ports)
    smtp_port = next(p for p in container["ports"] if p["name"] == "smtp")
    assert smtp_port["containerPort"] in ports
    spool_mount = next(m for m in container["volumeMounts"] if m["name"] == "spool")
    # the spool is a directory of its own inside the volume, which the master makes 0700
    assert Path(config.queue.path).parent == Path(spool_mount["mountPath"])
