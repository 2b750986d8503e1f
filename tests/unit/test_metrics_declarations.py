"""Edge and sink metrics: declared once, fixed labels, millisecond buckets, helpers record correctly."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from lineguard.metrics import STAGES, EdgeMetrics, SinkMetrics

EXPECTED_EDGE = {
    "lineguard_frames": ("counter", set()),
    "lineguard_verdicts": ("counter", {"verdict", "defect_class"}),
    "lineguard_stage_latency_seconds": ("histogram", {"stage"}),
    "lineguard_e2e_latency_seconds": ("histogram", {"verdict"}),
    "lineguard_anomaly_score": ("histogram", set()),
    "lineguard_drops": ("counter", {"reason"}),
    "lineguard_camera_reconnects": ("counter", {"camera_id"}),
    "lineguard_camera_incomplete_frames": ("counter", {"camera_id"}),
    "lineguard_camera_gap_excess": ("counter", {"camera_id"}),
    "lineguard_camera_frame_id_resets": ("counter", {"camera_id"}),
    "lineguard_publisher_drops": ("counter", {"reason"}),
    "lineguard_publisher_sent": ("counter", {"kind"}),
    "lineguard_publisher_queue_depth": ("gauge", set()),
    "lineguard_bundle": ("info", {"bundle_id", "product", "recipe"}),
    "lineguard_execution_provider": ("info", {"engine", "provider"}),
    "lineguard_last_frame_timestamp_seconds": ("gauge", set()),
    "lineguard_last_frame_age_seconds": ("gauge", set()),
    "lineguard_failsafe_verdicts": ("counter", {"reason"}),
    "lineguard_decision_log_written_lines": ("counter", set()),
    "lineguard_decision_log_lost_lines": ("counter", {"reason"}),
    "lineguard_decision_log_fault_episodes": ("counter", set()),
    "lineguard_decision_log_fault": ("gauge", set()),
    "lineguard_decision_log_backlog_lines": ("gauge", set()),
}


def families(registry: CollectorRegistry) -> dict[str, object]:
    return {f.name: f for f in registry.collect()}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} not exposed"
    return value


def test_every_edge_metric_is_declared_with_its_type_and_labels() -> None:
    reg = CollectorRegistry()
    m = EdgeMetrics(reg, camera_ids=["cam-a"])
    m.set_bundle(bundle_id="b1", product="p", recipe="7")
    m.set_execution_provider(engine="anomaly", provider="CPUExecutionProvider")
    m.verdicts_total.labels(verdict="accept", defect_class="").inc()
    m.anomaly_score.observe(0.1)
    fams = families(reg)
    assert set(fams) == set(EXPECTED_EDGE)
    for name, (kind, labels) in EXPECTED_EDGE.items():
        fam = fams[name]
        assert fam.type == kind, name  # type: ignore[attr-defined]
        seen = {k for s in fam.samples for k in s.labels if k != "le"}  # type: ignore[attr-defined]
        assert fam.documentation, name  # type: ignore[attr-defined]
        assert seen == labels, name
    assert not any(n.startswith("lineguard_plc_") for n in fams)  # owned by the PLC module


def test_latency_helpers_take_milliseconds_and_land_in_ms_buckets() -> None:
    reg = CollectorRegistry()
    m = EdgeMetrics(reg)
    m.observe_stage_ms("inference", 4.0)
    m.observe_verdict(verdict="reject", defect_class="scratch", e2e_ms=12.0, score=0.95)
    m.observe_verdict(verdict="failsafe", defect_class="", e2e_ms=40.0, score=float("nan"))
    h = "lineguard_stage_latency_seconds_bucket"
    assert sample(reg, h, stage="inference", le="0.003") == 0
    assert sample(reg, h, stage="inference", le="0.005") == 1
    assert sample(reg, h, stage="e2e", le="0.015") == 1
    assert sample(reg, "lineguard_e2e_latency_seconds_count", verdict="failsafe") == 1
    assert sample(reg, "lineguard_verdicts_total", verdict="reject", defect_class="scratch") == 1
    assert sample(reg, "lineguard_anomaly_score_count") == 1  # NaN score not observed
    with pytest.raises(ValueError, match="unknown stage"):
        m.observe_stage_ms("postprocess", 1.0)


def test_known_label_values_are_exposed_at_zero() -> None:
    reg = CollectorRegistry()
    EdgeMetrics(reg)
    for stage in STAGES:
        assert sample(reg, "lineguard_stage_latency_seconds_count", stage=stage) == 0
    assert sample(reg, "lineguard_publisher_drops_total", reason="hwm") == 0
    assert sample(reg, "lineguard_failsafe_verdicts_total", reason="deadline") == 0


def test_last_frame_age_grows_and_resets() -> None:
    reg = CollectorRegistry()
    m = EdgeMetrics(reg)
    time.sleep(0.05)
    before = sample(reg, "lineguard_last_frame_age_seconds")
    assert before >= 0.05
    m.frame_arrived()
    assert sample(reg, "lineguard_last_frame_age_seconds") < before
    assert sample(reg, "lineguard_frames_total") == 1
    assert abs(sample(reg, "lineguard_last_frame_timestamp_seconds") - time.time()) < 5


def test_bundle_info_is_replaced_on_hot_swap() -> None:
    reg = CollectorRegistry()
    m = EdgeMetrics(reg)
    m.set_bundle(bundle_id="old", product="p", recipe="1")
    m.set_bundle(bundle_id="new", product="p", recipe="2")
    text = generate_latest(reg).decode()
    assert 'bundle_id="new"' in text and 'bundle_id="old"' not in text


def test_fresh_registries_do_not_collide_and_sink_metrics_are_prefixed() -> None:
    EdgeMetrics(CollectorRegistry())
    EdgeMetrics(CollectorRegistry())
    reg = CollectorRegistry()
    SinkMetrics(reg)
    names = set(families(reg))
    assert names and all(n.startswith("lineguard_sink_") for n in names)
    assert sample(reg, "lineguard_sink_rejected_total", reason="bad_magic") == 0
