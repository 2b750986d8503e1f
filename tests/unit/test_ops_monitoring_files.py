"""Monitoring files pass Prometheus' own tools: `promtool check config` (line and plant-level
federation configs), `promtool check rules`, the rule unit tests (`promtool test rules`), and every
dashboard query parses as PromQL. Skips with the reason when promtool is not installed
(scripts/ci-system-deps.sh installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lineguard.ops.promfiles import as_rule_file, dashboard_exprs, referenced_metrics, rule_exprs

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "deploy" / "monitoring"
DASHBOARD = MON / "grafana" / "dashboards" / "lineguard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/ci-system-deps.sh)")


def promtool(*args: str, cwd: Path = MON) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-plant.yml"])
def test_promtool_check_config(config: str) -> None:
    out = promtool("check", "config", config)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_check_and_unit_test_rules() -> None:
    out = promtool("check", "rules", "lineguard.rules.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    out = promtool("test", "rules", "tests/lineguard.rules.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs(DASHBOARD)
    assert len(exprs) >= 20
    rules = tmp_path / "dashboard-exprs.yml"
    rules.write_text(as_rule_file(exprs))
    out = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_a_broken_query_is_caught(tmp_path: Path) -> None:
    """The parse check above must be able to fail."""
    rules = tmp_path / "broken.yml"
    rules.write_text(as_rule_file({"bad": "sum by (instance (rate(lineguard_frames_total[1m]))"}))
    assert promtool("check", "rules", str(rules), cwd=tmp_path).returncode != 0


def test_dashboard_layout_and_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), f"panel {p['title']!r} overlaps another"
        cells |= mine
    provisioned = (MON / "grafana/provisioning/datasources/lineguard.yml").read_text()
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    assert uids == {"lineguard-prometheus"} and "uid: lineguard-prometheus" in provisioned


def test_metric_name_extraction() -> None:
    expr = 'sum by (instance) (rate(lineguard_frames_total{instance=~"lineguard_x"}[1m])) / on (job) up'
    assert referenced_metrics(expr) == {"lineguard_frames_total", "up"}
    assert referenced_metrics("lineguard:e2e_latency_seconds:p99_5m > 0.8 * 0.15") == set()


def test_every_alert_of_the_issue_exists() -> None:
    alerts = set(rule_exprs(MON / "lineguard.rules.yml"))
    for name in ("LineGuardCameraNoFrames", "LineGuardPlcLinkDown", "LineGuardLatencyOverBudget",
                 "LineGuardFailsafeVerdicts", "LineGuardImagingDrift", "LineGuardProcessDrift",
                 "LineGuardDiskAlmostFull", "LineGuardSinkUnreachable"):
        assert name in alerts
