"""Fault suite (issue 21, "sink store on a full small disk"), the whole line: the real service (replay
source -> ONNX Runtime -> decision -> PLC link over Modbus TCP to the PLC simulator, decision log,
publisher over ZeroMQ) sending every frame to the real ``lineguard sink`` whose store sits on a
tmpfs far smaller than the 20 GB default quota and than what the line sends.

Exact counts: every part once at the PLC, every part once in the decision log, every frame the
edge sent stored by the sink (its quota follows the disk: it evicts its oldest frames) and none
refused, neither as ``store_error`` nor as ``quota_full``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sink.store import verify_store
from lineguard.sources import ReplaySourceConfig

pytestmark = pytest.mark.timeout(120)
N_PARTS = 80  # 256x256 frames, ~190 KB each at the sink (PNG + anomaly map): ~15 MB through 8 MB
DISK = 8 * 1024 * 1024


def sink_metrics(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:  # summed over kind; refusals keyed by reason
            key = s.name + (f":{s.labels['reason']}" if "reason" in s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
    return out


def test_edge_line_with_its_sink_on_a_full_small_disk(
        tmp_path: Path, small_disk: Callable[..., Any], sim: PlcSimulator) -> None:
    disk = small_disk(DISK)
    bundle = build_synthetic_bundle(tmp_path / "bundle", input_size=256)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(11)
    for i in range(N_PARTS):
        kind = ("good", "bright", "faint", "dark")[i % 4]
        cv2.imwrite(str(frames / f"{i:03d}.png"), synthetic_image(kind, bundle.manifest.input, rng))  # type: ignore[arg-type]
    sink = subprocess.Popen(
        [sys.executable, "-m", "lineguard.cli", "sink", "--bind", "tcp://127.0.0.1:*", "--store",
         str(disk.path / "store"), "--metrics-port", "0", "--min-free-mb", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    endpoint = sink.stdout.readline().split()[-1]
    port = int(sink.stdout.readline().split()[-1])
    cfg = LineConfig(
        bundle=BundleSection(path=tmp_path / "bundle"),
        source=ReplaySourceConfig(type="replay", paths=(str(frames),), rate_parts_per_s=40.0),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=1000.0),
        # linger: close() waits for ZeroMQ to deliver what it holds (PUSH has no reply to count on)
        publisher=PublisherConfig(endpoint=endpoint, audit_fraction=1.0, audit_seed=1, linger_ms=5000),
        metrics=MetricsSection(enabled=False),
        service=ServiceSection(decision_log_path=tmp_path / "decisions.jsonl"),
    )
    registry = CollectorRegistry()
    service = InspectionService.from_config(cfg, registry=registry)
    stopped = False
    try:
        service.start()
        deadline = time.monotonic() + 60
        while not service.finished(ack_timeout_s=2.0):
            assert time.monotonic() < deadline, "replay did not finish"
            time.sleep(0.05)
        service.stop()  # the publisher flushes what it still holds
        stopped = True
        sent = sum(s.value for f in registry.collect() if f.name == "lineguard_publisher_sent"
                   for s in f.samples if s.name.endswith("_total"))
        dropped = sum(s.value for f in registry.collect() if f.name == "lineguard_publisher_drops"
                      for s in f.samples if s.name.endswith("_total"))
        assert sent + dropped == N_PARTS and sent >= N_PARTS * 3 // 4, (sent, dropped)  # a busy box may drop a few
        while (m := sink_metrics(port)).get("lineguard_sink_received_total", 0) < sent:
            assert time.monotonic() < deadline, m.get("lineguard_sink_received_total")
            time.sleep(0.05)
    finally:
        if not stopped:
            service.stop()
        sink.send_signal(signal.SIGTERM)
        _, err = sink.communicate(timeout=30)
    assert sink.returncode == 0, err[-2000:]
    by_part = sim.verdicts_by_part()
    assert sorted(by_part) == list(range(1, N_PARTS + 1)) and all(len(v) == 1 for v in by_part.values())
    lines = [json.loads(ln) for ln in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert sorted(r["part_id"] for r in lines) == list(range(1, N_PARTS + 1)), "each part once in the log"
    assert {r["plc"] for r in lines} == {"written"}
    refused = {k: v for k, v in m.items() if k.startswith("lineguard_sink_rejected_total:") and v}
    assert refused == {}, refused
    assert m["lineguard_sink_stored_total"] == sent, "every frame the edge sent is stored"
    kept = m["lineguard_sink_store_frames"]
    assert kept + m["lineguard_sink_evicted_total"] == sent, "each frame kept or evicted, none lost"
    assert kept < sent * 2 // 3, "the disk (room for ~38), not the 20 GB quota, was the limit"
    assert m["lineguard_sink_quota_bytes"] < DISK
    assert f"received {int(sent)}, stored {int(sent)}, duplicates 0, rejected 0" in err, err[-2000:]
    assert verify_store(disk.path / "store") == []
