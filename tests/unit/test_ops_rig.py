"""HIL rig description: found from the environment, and the scrape URL of the line it drives."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard.config import LineConfig, MetricsSection
from lineguard.ops.rig import RIG_ENV, metrics_url, rig_from_env

EXAMPLE = Path(__file__).parents[2] / "hil" / "rig.example.yaml"


def test_rig_comes_from_the_environment_or_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RIG_ENV, raising=False)
    assert rig_from_env() is None
    monkeypatch.setenv(RIG_ENV, str(EXAMPLE))
    rig = rig_from_env()
    assert rig is not None and rig.name and rig.line_rate_parts_per_s > 0


def test_metrics_url_reaches_a_wildcard_bind_on_loopback() -> None:
    base = {"bundle": {"path": "b"}, "source": {"type": "synthetic"}}
    wildcard = LineConfig.model_validate({**base, "metrics": {"host": "0.0.0.0", "port": 9108}})
    assert metrics_url(wildcard) == "http://127.0.0.1:9108/metrics"
    named = wildcard.model_copy(update={"metrics": MetricsSection(host="10.1.2.3", port=9200)})
    assert metrics_url(named) == "http://10.1.2.3:9200/metrics"
