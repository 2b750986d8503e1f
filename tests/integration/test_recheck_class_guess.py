"""Issue 16: a part the anomaly stage sends to recheck carries the classifier's best guess end to end.

replay source (PNG) -> ONNX Runtime (the synthetic bundle's real graphs) -> decision -> PLC link over
Modbus TCP to the PLC simulator (class_guess / class_confidence registers) and over ZeroMQ to the real
sink (header defect_class / class_confidence / reasons) -> the labelling queue (class_guess).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.contracts import Verdict
from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator, free_port
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sink.config import SinkConfig
from lineguard.sink.labels import LabelBook
from lineguard.sink.server import SinkServer
from lineguard.sources import ReplaySourceConfig

KINDS = ["good", "faint", "bright", "faint"]  # faint: score in the uncertainty band -> recheck


@pytest.fixture()
def peers(tmp_path: Path) -> Iterator[tuple[PlcSimulator, SinkServer]]:
    sim = PlcSimulator().start()
    sink = SinkServer.from_config(SinkConfig(bind=f"tcp://127.0.0.1:{free_port()}", store_dir=tmp_path / "sink"))
    th = threading.Thread(target=sink.serve_forever, daemon=True)
    th.start()
    yield sim, sink
    sink.stop()
    th.join(5)
    sim.stop()


def test_recheck_frames_carry_class_guess_and_confidence(
    tmp_path: Path, peers: tuple[PlcSimulator, SinkServer]
) -> None:
    sim, sink = peers
    bundle = build_synthetic_bundle(tmp_path / "bundle", input_size=64)
    rng = np.random.default_rng(5)
    (tmp_path / "frames").mkdir()
    for i in range(12):
        cv2.imwrite(str(tmp_path / "frames" / f"{i:03d}.png"),
                    synthetic_image(KINDS[i % 4], bundle.manifest.input, rng))  # type: ignore[arg-type]
    cfg = LineConfig(
        bundle=BundleSection(path=tmp_path / "bundle"),
        source=ReplaySourceConfig(type="replay", paths=(str(tmp_path / "frames"),), rate_parts_per_s=60.0),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=1000.0),
        publisher=PublisherConfig(endpoint=sink.endpoint, audit_fraction=0.0),
        metrics=MetricsSection(port=0),
        service=ServiceSection(decision_log_path=tmp_path / "decisions.jsonl"),
    )
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    try:
        service.start()
        t0 = time.monotonic()
        while not service.finished() or len(sim.results()) < 12:
            assert time.monotonic() - t0 < 30, "replay did not finish"
            time.sleep(0.05)
    finally:
        service.stop()
    log = {d["part_id"]: d for d in map(json.loads, (tmp_path / "decisions.jsonl").read_text().splitlines())}
    rechecks = [r for r in sim.results() if r.verdict == int(Verdict.RECHECK)]
    assert len(rechecks) == 6, [(r.part_id, r.verdict) for r in sim.results()]
    for r in rechecks:
        p = float(log[r.part_id]["class_confidence"])
        assert 0.5 <= p <= 1.0  # two classes: the arg-max has at least half
        assert r.class_guess == 1  # "bright" (faint blobs are bright), also when routed to unknown
        assert abs(r.class_confidence - p * 1000) <= 1  # per mille (the log rounds p to 5 digits)
    accepted = [r for r in sim.results() if r.verdict == int(Verdict.ACCEPT)]
    assert accepted and all((r.class_guess, r.class_confidence) == (0, 0xFFFF) for r in accepted)
    t0 = time.monotonic()
    while sink.stats.stored < 6:
        assert time.monotonic() - t0 < 10, f"sink stored {sink.stats.stored} of 6 rechecks"
        time.sleep(0.05)
    headers = [json.loads(f.header_json) for f in sink.store.frames()]
    recheck_headers = [h for h in headers if h["verdict"] == "recheck"]
    assert len(recheck_headers) == 6
    for h in recheck_headers:
        assert h["defect_class"] in ("bright", "unknown")
        assert h["class_confidence"] == pytest.approx(float(log[h["part_id"]]["class_confidence"]), abs=1e-5)
        if h["defect_class"] == "unknown":
            assert "class_guess=bright" in h["reasons"]
    book = LabelBook.open(tmp_path / "sink")
    try:
        queued = [f for f in book.unlabelled() if f.verdict == "recheck"]
    finally:
        book.close()
    assert len(queued) == 6 and all(f.class_guess == "bright" for f in queued)
    assert all(f.public()["class_guess"] == "bright" for f in queued)  # what the label page shows
