"""Read the monitoring files in deploy/monitoring/: PromQL of alert rules and dashboards, and the
metric names they query.

Not part of the frame path: used by the ops tests (every queried metric must be exported) and by
anyone reviewing a dashboard change. Never talks to Prometheus or Grafana; pure file parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

# Metric names in PromQL: ours, node_exporter's, and Prometheus' own `up` / `ALERTS`.
_METRIC = re.compile(r"(?<![\w:])(lineguard_[a-z0-9_]+|node_[a-z0-9_]+|up|ALERTS)(?![\w:])")
# Grafana template variables become regex matchers; replace them so promtool can parse the query.
_GRAFANA_VARS = {"$instance": ".*", "$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def rule_exprs(path: Path) -> dict[str, str]:
    """``{alert or record name: expr}`` of a Prometheus rule file."""
    doc = YAML(typ="safe").load(path.read_text())
    out: dict[str, str] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            out[str(rule.get("alert") or rule.get("record"))] = str(rule["expr"])
    return out


def dashboard_exprs(path: Path) -> dict[str, str]:
    """``{"<panel title> #<refId>": expr}`` of a Grafana dashboard JSON (rows' nested panels too)."""
    dash = json.loads(path.read_text())
    out: dict[str, str] = {}
    for panel in _panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out[f"{panel.get('title', '?')} #{target.get('refId', '?')}"] = str(target["expr"])
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def substitute_grafana_vars(expr: str) -> str:
    """The expression with Grafana variables replaced by values PromQL accepts."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def referenced_metrics(expr: str) -> set[str]:
    """Metric names an expression selects (label matchers and strings stripped first)."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", no_matchers)
    return set(_METRIC.findall(no_groupings))


def as_rule_file(exprs: dict[str, str]) -> str:
    """A rule file with each expression as a recording rule, so ``promtool check rules`` parses it."""
    lines = ["groups:", "  - name: parse-check", "    rules:"]
    for i, expr in enumerate(exprs.values()):
        lines.append(f"      - record: check:expr_{i}")
        lines.append(f"        expr: {json.dumps(substitute_grafana_vars(expr))}")
    return "\n".join(lines) + "\n"
