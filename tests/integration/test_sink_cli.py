"""``lineguard sink`` as an operator runs it: ready line, metrics port, clean SIGTERM, option errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import zmq

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.wire import MessageKind, build_header, decode_message, encode_message


def wire_parts(seq: int) -> list[bytes]:
    image = np.random.default_rng(seq).integers(0, 255, (30, 40), dtype=np.uint8)
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=image, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=seq, verdict=Verdict.ACCEPT, anomaly_score=0.1, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
    header = build_header(decision=decision, frame=frame, kind=MessageKind.AUDIT, anomaly_map=None)
    return encode_message(header, image, None)


def test_sigterm_stops_cleanly_with_totals(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineguard.cli", "sink", "--bind", "tcp://127.0.0.1:*", "--store",
         str(tmp_path), "--metrics-port", "0", "--no-fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().split()[-1]
    port = int(proc.stdout.readline().split()[-1])
    ctx = zmq.Context.instance()
    tx = ctx.socket(zmq.PUSH)
    tx.connect(endpoint)
    parts = wire_parts(3)
    tx.send_multipart(parts)
    tx.send_multipart([b"junk"])
    text = ""
    deadline = time.monotonic() + 10
    stored_line = 'lineguard_sink_stored_total{kind="audit"} 1.0'
    rejected_line = 'lineguard_sink_rejected_total{reason="bad_frame_count"} 1.0'
    while not (stored_line in text and rejected_line in text) and time.monotonic() < deadline:
        time.sleep(0.05)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert stored_line in text and rejected_line in text
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    tx.close(0)
    assert proc.returncode == 0
    assert "received 2, stored 1, duplicates 0, rejected 1" in err
    stored = next((tmp_path / "frames").rglob("*.png")).read_bytes()
    assert stored == decode_message(parts).image_png  # byte for byte what was sent


def test_option_errors_are_reported_not_raised(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "lineguard.cli", "sink", "--store", str(tmp_path), "--curve-secret-key",
         str(tmp_path / "x.key_secret")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "go together" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "lineguard.cli", "sink", "--store", str(tmp_path), "--quota-mb", "0.1"],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "quota_bytes" in res.stderr
