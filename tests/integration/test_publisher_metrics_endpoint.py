"""The edge /metrics endpoint, scraped over real HTTP and parsed by Prometheus' own text parser."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.metrics import EdgeMetrics, start_metrics_server
from lineguard.publisher import PublisherConfig, UncertainPublisher
from lineguard.wire import MessageKind

EDGE_FAMILIES = {
    "lineguard_frames": "counter", "lineguard_verdicts": "counter",
    "lineguard_stage_latency_seconds": "histogram", "lineguard_e2e_latency_seconds": "histogram",
    "lineguard_anomaly_score": "histogram", "lineguard_drops": "counter",
    "lineguard_camera_reconnects": "counter", "lineguard_camera_incomplete_frames": "counter",
    "lineguard_publisher_drops": "counter", "lineguard_publisher_sent": "counter",
    "lineguard_publisher_queue_depth": "gauge",
    # Info metrics travel as gauges named *_info in the text format.
    "lineguard_bundle_info": "gauge", "lineguard_execution_provider_info": "gauge",
    "lineguard_last_frame_timestamp_seconds": "gauge",
    "lineguard_last_frame_age_seconds": "gauge", "lineguard_failsafe_verdicts": "counter",
}


def scrape(port: int) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = (fam.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples})
    return out


def test_edge_endpoint_exposes_every_metric_and_live_publisher_counts() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    rx = ctx.socket(zmq.PULL)
    port = rx.bind_to_random_port("tcp://127.0.0.1")
    reg = CollectorRegistry()
    metrics = EdgeMetrics(reg, camera_ids=["cam-a"])
    server = start_metrics_server(reg, "127.0.0.1", 0)
    try:
        pub = UncertainPublisher.from_config(PublisherConfig(endpoint=f"tcp://127.0.0.1:{port}"),
                                             metrics=metrics, context=ctx)
        t0 = time.monotonic_ns()
        image = np.zeros((16, 16), np.uint8)
        for seq in range(3):
            metrics.frame_arrived()
            d = Decision(seq=seq, part_id=seq, verdict=Verdict.RECHECK, anomaly_score=0.6, bundle_id="b1",
                         camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0 + 2_000_000)
            metrics.observe_verdict(verdict="recheck", defect_class="", e2e_ms=d.latency_ms, score=0.6)
            pub.publish(d, Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=image, camera_id="cam-a"),
                        None, MessageKind.UNCERTAIN)
        for _ in range(3):
            rx.recv_multipart()
        pub.close()
        metrics.set_bundle(bundle_id="b1", product="bracket", recipe="12")
        fams = scrape(server.port)
        for name, kind in EDGE_FAMILIES.items():
            assert fams[name][0] == kind, name
        assert fams["lineguard_frames"][1][("lineguard_frames_total", ())] == 3
        sent = fams["lineguard_publisher_sent"][1]
        assert sent[("lineguard_publisher_sent_total", (("kind", "uncertain"),))] == 3
        e2e = fams["lineguard_e2e_latency_seconds"][1]
        assert e2e[("lineguard_e2e_latency_seconds_bucket", (("le", "0.002"), ("verdict", "recheck")))] == 3
        assert e2e[("lineguard_e2e_latency_seconds_bucket", (("le", "0.001"), ("verdict", "recheck")))] == 0
        info = fams["lineguard_bundle_info"][1]
        assert info[("lineguard_bundle_info", (("bundle_id", "b1"), ("product", "bracket"),
                                               ("recipe", "12")))] == 1
    finally:
        server.stop()
        rx.close(0)
        ctx.term()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)
    again = start_metrics_server(reg, "127.0.0.1", server.port)  # the port is free again after stop()
    again.stop()
