"""The inspection service end to end with real peers on loopback.

replay source (PNG files) -> ONNX Runtime (real graphs) -> decision -> PLC link over Modbus TCP to
the PLC simulator; uncertain frames over ZeroMQ to the real sink; /metrics scraped over HTTP.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.contracts import Verdict
from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image
from lineguard.errors import BundleError
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator, free_port
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sink.config import SinkConfig
from lineguard.sink.server import SinkServer
from lineguard.sources import ReplaySourceConfig

KINDS = ["good", "good", "bright", "faint", "dark", "good"]


@pytest.fixture()
def line(tmp_path: Path) -> Iterator[dict[str, object]]:
    bundle = build_synthetic_bundle(tmp_path / "bundle", input_size=64)
    spec = bundle.manifest.input
    rng = np.random.default_rng(3)
    files, truth = [], {}
    for i in range(36):
        kind = KINDS[i % len(KINDS)]
        p = tmp_path / "frames" / f"{i:03d}_{kind}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), synthetic_image(kind, spec, rng))  # type: ignore[arg-type]
        files.append(str(p))
        truth[i + 1] = kind
    # one corrupt file in the stream (the last, part 37): never fed as garbage, answered with the fail-safe
    (tmp_path / "frames" / "999_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    sim = PlcSimulator().start()
    sink = SinkServer.from_config(SinkConfig(bind=f"tcp://127.0.0.1:{free_port()}", store_dir=tmp_path / "sink"))
    th = threading.Thread(target=sink.serve_forever, daemon=True)
    th.start()
    yield {"bundle": bundle, "files": files, "truth": truth, "sim": sim, "sink": sink, "tmp": tmp_path}
    sink.stop()
    th.join(5)
    sim.stop()


def _config(line: dict[str, object], **overrides: object) -> LineConfig:
    sim, sink, tmp = line["sim"], line["sink"], line["tmp"]
    assert isinstance(sim, PlcSimulator) and isinstance(sink, SinkServer) and isinstance(tmp, Path)
    base: dict[str, object] = {
        "bundle": BundleSection(path=tmp / "bundle"),
        "source": ReplaySourceConfig(type="replay", paths=(str(tmp / "frames"),), rate_parts_per_s=60.0),
        "plc": PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=1000.0),
        "publisher": PublisherConfig(endpoint=sink.endpoint),
        "metrics": MetricsSection(port=0),
        "service": ServiceSection(decision_log_path=tmp / "decisions.jsonl"),
    }
    base.update(overrides)
    return LineConfig(**base)  # type: ignore[arg-type]


def _run(service: InspectionService, timeout_s: float = 30.0) -> None:
    """Run until every frame is decided and the PLC has acknowledged every result block."""
    service.start()
    t0 = time.monotonic()
    while not service.finished():
        assert time.monotonic() - t0 < timeout_s, "replay did not finish"
        time.sleep(0.05)
    health = getattr(service.plc, "health", None)
    while health is not None and (h := health()).queued_results + h.inbox > 0:
        assert time.monotonic() - t0 < timeout_s, f"PLC results not acknowledged: {h}"
        time.sleep(0.02)


def test_every_part_gets_one_verdict_and_uncertain_frames_reach_the_sink(line: dict[str, object]) -> None:
    service = InspectionService.from_config(_config(line), registry=CollectorRegistry())
    try:
        _run(service)
        port = service.metrics_server.port if service.metrics_server else 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        service.stop()
    sim, sink = line["sim"], line["sink"]
    assert isinstance(sim, PlcSimulator) and isinstance(sink, SinkServer)
    truth = line["truth"]
    assert isinstance(truth, dict)
    by_part = sim.verdicts_by_part()
    corrupt = len(truth) + 1
    # on a miss, say what the link did with each part (written / missed_deadline / unsent / in_doubt ...)
    outcomes = getattr(service.plc, "outcomes", None)
    assert sorted(by_part) == [*sorted(truth), corrupt], ("every replayed file has a result block at the PLC",
                                                          sorted(by_part), outcomes)
    assert all(len(v) == 1 for v in by_part.values()), "exactly one verdict per part"
    verdicts = {p: next(iter(v))[1] for p, v in by_part.items()}  # (seq, verdict)
    # the unreadable file: the configured fail-safe verdict (reject) with result_flags bit1
    assert verdicts[corrupt] == int(Verdict.REJECT)
    assert [r.flags for r in sim.results() if r.part_id == corrupt] == [0b10]
    for part, kind in truth.items():
        expected = {"good": Verdict.ACCEPT, "bright": Verdict.REJECT, "dark": Verdict.REJECT,
                    "faint": Verdict.RECHECK}[kind]
        assert verdicts[part] == int(expected), (part, kind, verdicts[part])
    # the faint (recheck) parts are uncertain -> published -> stored by the sink
    n_recheck = sum(1 for k in truth.values() if k == "faint")
    deadline = time.monotonic() + 10
    while sink.stats.stored < n_recheck and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.stats.stored >= n_recheck
    stored = list(sink.store.frames())
    # uncertain frames carry the anomaly map (image pixels) for the labelling overlay
    assert stored and all(f.map_path is not None and f.map_shape == (64, 64) for f in stored)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    frames = sum(s.value for s in families["lineguard_frames"].samples if s.name.endswith("_total"))
    assert frames == len(truth) + 1
    assert service.stats.failsafe == 1 and service.stats.source_faults == {"unreadable_frame": 1}
    log_lines = (line["tmp"] / "decisions.jsonl").read_text().splitlines()  # type: ignore[operator]
    assert len(log_lines) == len(truth) + 1 and all('"bundle_id": "synthetic-1"' in ln for ln in log_lines)


def test_wrong_frame_size_gets_failsafe_not_silence(line: dict[str, object], tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    for i in range(3):
        cv2.imwrite(str(odd / f"{i}.png"), np.full((50, 70), 128, np.uint8))
    cfg = _config(line, source=ReplaySourceConfig(type="replay", paths=(str(odd),), rate_parts_per_s=50.0))
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    try:
        _run(service)
    finally:
        service.stop()
    sim = line["sim"]
    assert isinstance(sim, PlcSimulator)
    by_part = sim.verdicts_by_part()
    assert sorted(by_part) == [1, 2, 3]
    # the link writes the configured fail-safe verdict (reject by default) for frames that cannot be judged
    assert all(next(iter(v))[1] == int(Verdict.REJECT) for v in by_part.values())
    assert service.stats.failsafe == 3


def test_tampered_bundle_is_refused_before_start(line: dict[str, object]) -> None:
    tmp = line["tmp"]
    assert isinstance(tmp, Path)
    onnx_file = tmp / "bundle" / "anomaly.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        InspectionService.from_config(_config(line), registry=CollectorRegistry())


def test_defect_class_codes_follow_the_bundle_class_list(line: dict[str, object]) -> None:
    service = InspectionService.from_config(_config(line), registry=CollectorRegistry())
    try:
        _run(service)
    finally:
        service.stop()
    sim, truth = line["sim"], line["truth"]
    assert isinstance(sim, PlcSimulator) and isinstance(truth, dict)
    codes = {r.part_id: r.defect_class for r in sim.results()}
    # docs/plc.md: code = 1-based index in the bundle's class list ("bright", "dark"), 0 = none
    for part, kind in truth.items():
        if kind in ("bright", "dark"):
            assert codes[part] == {"bright": 1, "dark": 2}[kind], (part, kind, codes[part])
        elif kind == "good":
            assert codes[part] == 0


def test_missing_bundle_is_a_clear_error(line: dict[str, object]) -> None:
    tmp = line["tmp"]
    assert isinstance(tmp, Path)
    cfg = _config(line, bundle=BundleSection(path=tmp / "no-such-bundle"))
    with pytest.raises(BundleError, match="does not exist"):
        InspectionService.from_config(cfg, registry=CollectorRegistry())


def test_sink_down_costs_no_verdict(line: dict[str, object]) -> None:
    # nobody listens on this endpoint: uncertain frames queue up to the HWM and are then dropped (counted)
    cfg = _config(line, publisher=PublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}", sndhwm_msgs=1,
                                                  queue_size_msgs=1))
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    try:
        _run(service)
    finally:
        service.stop()
    sim, truth = line["sim"], line["truth"]
    assert isinstance(sim, PlcSimulator) and isinstance(truth, dict)
    by_part = sim.verdicts_by_part()
    assert sorted(by_part) == [*sorted(truth), len(truth) + 1] and all(len(v) == 1 for v in by_part.values())
    assert service.stats.failsafe == 1  # the corrupt file only
