"""The service on a real GenTL camera path: viky.cti (the simulator inside the genicam wheel) through
harvesters -> ONNX Runtime -> decision -> PLC simulator over Modbus TCP, with metrics scraped."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

pytest.importorskip("harvesters.core", reason="harvesters is not installed")

from lineguard.config import BundleSection, LineConfig, MetricsSection
from lineguard.engines.synthetic import build_synthetic_bundle
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import GenICamSourceConfig
from lineguard.sources.genicam import viky_cti_path

VIKY = viky_cti_path()
pytestmark = pytest.mark.skipif(VIKY is None, reason="viky.cti is not inside this genicam wheel")


def test_camera_frames_get_one_verdict_each_at_the_plc(tmp_path: Path) -> None:
    # viky's smallest frame is 100x100 Mono8: a real two-graph bundle for exactly that input
    build_synthetic_bundle(tmp_path / "bundle", input_size=100)
    sim = PlcSimulator().start()
    cfg = LineConfig(
        bundle=BundleSection(path=tmp_path / "bundle"),
        source=GenICamSourceConfig(type="genicam", cti_path=str(VIKY), serial="0", pixel_format="Mono8",
                                   width=100, height=100, frame_rate_hz=20.0),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=1000.0),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(port=0),
    )
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    try:
        service.start()
        deadline = time.monotonic() + 20
        while service.stats.decided < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
            service.supervise_once()
        sim.wait_until(lambda: sim.status_bits()["ready"], timeout_s=5)
        running_status = sim.status_bits()
        port = service.metrics_server.port if service.metrics_server else 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        service.stop()
    # stop() flushes the PLC link: every frame the camera delivered has its result block by now
    sim.wait_until(lambda: len(sim.verdicts_by_part()) >= service.stats.frames, timeout_s=5)
    sim.stop()
    assert service.stats.decided >= 20, service.stats
    by_part = sim.verdicts_by_part()
    # every frame the camera delivered got exactly one verdict at the PLC (the in-flight ones at stop
    # got the fail-safe, also exactly one)
    # on a miss, say what the link did with each part (written / missed_deadline / unsent / in_doubt ...)
    outcomes = getattr(service.plc, "outcomes", None)
    assert len(by_part) == service.stats.frames, (service.stats, outcomes, sorted(by_part))
    assert all(len(v) == 1 for v in by_part.values())
    assert service.stats.failsafe <= 2  # at most the frames caught in flight by stop()
    assert running_status["ready"] and running_status["camera_ok"] and running_status["model_loaded"]
    assert not running_status["fault"]
    assert not sim.status_bits()["ready"], "stop() clears 'ready' so the PLC stops sending parts"
    assert 'lineguard_execution_provider_info{' in body and "CPUExecutionProvider" in body
