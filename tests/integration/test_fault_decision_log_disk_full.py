"""Decision log on a full disk, through the real service (issue 21, "disk faults").

replay source -> ONNX Runtime -> decision -> PLC link over Modbus TCP to the PLC simulator on
loopback; the decision log sits on a small tmpfs filled by a ballast file, or on /dev/full.
Asserted: every part gets its verdict at the PLC during the episode, one WARNING for the episode
(not one per part), the episode counted on the real metrics endpoint, every line written once
when space returns, a clean stop; ``lineguard run`` on SIGTERM exits 0 with its summary.
"""

from __future__ import annotations

import ast
import json
import logging
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
from lineguard.sources import ReplaySourceConfig

pytestmark = pytest.mark.timeout(120)
N_PARTS = 40
LOGGER = "lineguard.decisionlog"


def make_frames(tmp: Path) -> Path:
    bundle = build_synthetic_bundle(tmp / "bundle", input_size=64)
    rng = np.random.default_rng(5)
    folder = tmp / "frames"
    folder.mkdir()
    for i in range(N_PARTS):
        kind = ("good", "bright", "good", "dark")[i % 4]
        cv2.imwrite(str(folder / f"{i:03d}.png"), synthetic_image(kind, bundle.manifest.input, rng))  # type: ignore[arg-type]
    return folder


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"{name} not on the metrics endpoint")


def wait(cond: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_full_disk_every_part_reaches_the_plc_one_warning_lines_written_when_space_returns(
        tmp_path: Path, small_disk: Callable[[int], Any], sim: PlcSimulator,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    frames = make_frames(tmp_path)
    disk = small_disk(512 * 1024)
    log_path = disk.path / "decisions.jsonl"
    ballast = disk.fill()  # the disk is full before the line starts
    cfg = LineConfig(
        bundle=BundleSection(path=tmp_path / "bundle"),
        source=ReplaySourceConfig(type="replay", paths=(str(frames),), rate_parts_per_s=25.0),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=1000.0),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(port=0),
        service=ServiceSection(decision_log_path=log_path, decision_log_retry_ms=50),
    )
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    try:
        service.start()
        port = service.metrics_server.port if service.metrics_server else 0
        wait(lambda: len(sim.verdicts_by_part()) >= N_PARTS // 2, "half the parts at the PLC")
        wait(lambda: metric(port, "lineguard_decision_log_fault") == 1, "the fault on /metrics")
        assert metric(port, "lineguard_decision_log_written_lines_total") == 0
        assert log_path.stat().st_size == 0
        ballast.unlink()  # space returns while the line runs
        wait(lambda: len(sim.verdicts_by_part()) == N_PARTS, "every part at the PLC")
        wait(lambda: metric(port, "lineguard_decision_log_written_lines_total") == N_PARTS, "every line written")
        assert metric(port, "lineguard_decision_log_fault_episodes_total") == 1
        assert metric(port, "lineguard_decision_log_fault") == 0
        assert metric(port, "lineguard_decision_log_backlog_lines") == 0
    finally:
        service.stop()
    by_part = sim.verdicts_by_part()
    assert sorted(by_part) == list(range(1, N_PARTS + 1)) and all(len(v) == 1 for v in by_part.values())
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    assert sorted(r["part_id"] for r in rows) == list(range(1, N_PARTS + 1)), "every part exactly one line"
    ours = [r for r in caplog.records if r.name == LOGGER]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "ENOSPC" in warnings[0] and "verdicts still go to the PLC" in warnings[0]
    assert len(infos) == 1 and "lines deferred and written, 0 lost" in infos[0], infos
    assert not [r for r in ours if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in caplog.records), "no traceback"


def test_lineguard_run_with_the_decision_log_on_dev_full_stops_with_exit_0_and_its_summary(
        tmp_path: Path, sim: PlcSimulator) -> None:
    frames = make_frames(tmp_path)
    config = {
        "bundle": {"path": str(tmp_path / "bundle")},
        "source": {"type": "replay", "paths": [str(frames)], "rate_parts_per_s": 50.0, "loop": True},
        "plc": {"transport": {"type": "tcp", "host": sim.host, "port": sim.port}, "deadline_ms": 1000.0},
        "publisher": {"enabled": False},
        "metrics": {"enabled": False},
        "service": {"decision_log_path": "/dev/full", "decision_log_retry_ms": 100},
    }
    (tmp_path / "line.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", "run", "--config", str(tmp_path / "line.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: len(sim.results()) >= 60 or proc.poll() is not None, "60 results at the PLC", 60)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "frames " in out and "decisions " in out, out  # the summary
    decided = int(out.split("decisions ")[1].split()[0])
    assert decided >= 60
    # exact counts: the parts at the PLC are the ones the summary says reached it, each once
    outcomes = ast.literal_eval(out.split("plc ")[1].split("  never acknowledged")[0])
    assert sum(outcomes.values()) == decided, (outcomes, decided)
    reached = outcomes.get("written", 0) + outcomes.get("failsafe_deadline", 0)  # a late part: its fail-safe
    time.sleep(0.2)  # the simulator's records of the last writes
    by_part = sim.verdicts_by_part()
    assert len(by_part) == reached and set(by_part) <= set(range(1, decided + 1)), (len(by_part), reached)
    assert all(len(v) == 1 for v in by_part.values()), "each once"
    assert "Logging error" not in err and "Traceback" not in err, err[-3000:]
    lines = err.splitlines()
    assert sum("cannot be written" in ln for ln in lines) == 1, err[-3000:]
    unwritten = [ln for ln in lines if "could not be written before shutdown" in ln]
    assert len(unwritten) == 1 and f" {decided} lines" in unwritten[0], (decided, unwritten)
