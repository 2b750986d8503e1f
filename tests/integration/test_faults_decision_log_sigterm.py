"""Fault suite (issue 21, "decision log on a full disk", the SIGTERM half): ``lineguard run`` as its
own process with its decision log on /dev/full (every write fails with ENOSPC), against the PLC
simulator on loopback, stopped with SIGTERM mid-run.

Exact counts: the parts at the PLC are exactly the ones the run's summary says were written, each
once, ids 1..n without a gap; the summary's PLC outcomes add up to its decisions; the one shutdown
line says every decision (none of which reached the disk) was not written; exit 0, no traceback.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image
from lineguard.plc.sim import PlcSimulator

pytestmark = pytest.mark.timeout(120)


def test_sigterm_on_a_full_log_disk_every_part_once_at_the_plc_and_counted_unwritten(
        tmp_path: Path, sim: PlcSimulator) -> None:
    bundle = build_synthetic_bundle(tmp_path / "bundle", input_size=64)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(4)
    for i in range(20):
        kind = ("good", "bright", "faint", "dark")[i % 4]
        cv2.imwrite(str(frames / f"{i:02d}.png"), synthetic_image(kind, bundle.manifest.input, rng))  # type: ignore[arg-type]
    config = {
        "bundle": {"path": str(tmp_path / "bundle")},
        "source": {"type": "replay", "paths": [str(frames)], "rate_parts_per_s": 40.0, "loop": True},
        "plc": {"transport": {"type": "tcp", "host": sim.host, "port": sim.port}, "deadline_ms": 1000.0},
        "publisher": {"enabled": False},
        "metrics": {"enabled": False},
        "service": {"decision_log_path": "/dev/full", "decision_log_retry_ms": 100},
    }
    (tmp_path / "line.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", "run", "--config", str(tmp_path / "line.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(sim.results()) < 40 and proc.poll() is None:
            assert time.monotonic() < deadline, "40 results at the PLC"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    decided = int(out.split("decisions ")[1].split()[0])
    outcomes = ast.literal_eval(out.split("plc ")[1].split("  never acknowledged")[0])
    assert sum(outcomes.values()) == decided, (outcomes, decided)
    reached = outcomes.get("written", 0) + outcomes.get("failsafe_deadline", 0)  # a late part: its fail-safe
    assert reached >= 40
    time.sleep(0.2)  # the simulator's records of the last writes
    by_part = sim.verdicts_by_part()
    assert len(by_part) == reached and set(by_part) <= set(range(1, decided + 1)), (len(by_part), reached)
    assert all(len(v) == 1 for v in by_part.values()), "each once"
    lines = err.splitlines()
    unwritten = [ln for ln in lines if "could not be written before shutdown" in ln]
    assert len(unwritten) == 1 and f" {decided} lines" in unwritten[0], (decided, unwritten)
    assert sum("cannot be written" in ln for ln in lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Logging error" not in err
