"""kill -9 the real ``lineguard sink`` process during a flood; the store must stay whole.

After each SIGKILL, before anything repairs it: every indexed row's file exists and decodes, and
every file visible under frames/ is a complete PNG. After re-opening: nothing indexed before the
kill is lost, leftovers are cleaned, and a restarted sink de-duplicates what it already stored.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import zmq

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.sink.store import FrameStore, verify_store
from lineguard.wire import MessageKind, build_header, encode_message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def messages(n: int, offset: int) -> list[list[bytes]]:
    ramp = np.add.outer(np.arange(300), np.arange(300))
    out = []
    for i in range(offset, offset + n):
        image = ((ramp * (1 + i % 7) + i) % 256).astype(np.uint8)  # distinct, and quick to PNG-encode
        t0 = time.monotonic_ns()
        frame = Frame(seq=i, part_id=i, t_capture_ns=t0, image=image, camera_id="cam-a")
        decision = Decision(seq=i, part_id=i, verdict=Verdict.RECHECK, anomaly_score=0.5, bundle_id="b1",
                            camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
        header = build_header(decision=decision, frame=frame, kind=MessageKind.UNCERTAIN, anomaly_map=None)
        out.append(encode_message(header, image, None))
    return out


def start_sink(store: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineguard.cli", "sink", "--bind", f"tcp://127.0.0.1:{port}", "--store",
         str(store)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("sink listening on"), line
    return proc


def indexed_ids(store: Path) -> set[str]:
    db = sqlite3.connect(f"file:{store / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT message_id FROM frames")}
    finally:
        db.close()


def visible_files_are_complete(store: Path) -> None:
    for p in (store / "frames").rglob("*.png"):
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None, f"partial file visible: {p}"


def flood(port: int, payload: list[list[bytes]], stop: threading.Event) -> None:
    ctx = zmq.Context.instance()
    tx = ctx.socket(zmq.PUSH)
    tx.setsockopt(zmq.SNDHWM, 50)
    tx.setsockopt(zmq.LINGER, 0)
    tx.connect(f"tcp://127.0.0.1:{port}")
    i = 0
    while not stop.is_set():
        try:
            tx.send_multipart(payload[i % len(payload)], flags=zmq.NOBLOCK)
            i += 1
        except zmq.Again:
            time.sleep(0.001)
    tx.close()


def test_sigkill_during_flood_never_loses_or_corrupts_a_stored_frame(tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = free_port()
    before: set[str] = set()
    rng = np.random.default_rng(0)
    # Each round floods 150 messages, 50 of them already sent in the round before (de-duplication).
    everything = messages(350, 0)
    for round_no in range(3):
        payload = everything[round_no * 100:round_no * 100 + 150]
        proc = start_sink(store, port)
        stop = threading.Event()
        sender = threading.Thread(target=flood, args=(port, payload, stop), daemon=True)
        sender.start()
        # Kill at a different moment each round, once this round has stored something new.
        deadline = time.monotonic() + 20
        while len(indexed_ids(store) - before) < 5 + round_no * 10:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        sender.join(5)
        # State exactly as the kill left it: no repair has run yet.
        assert verify_store(store) == []
        visible_files_are_complete(store)
        at_kill = indexed_ids(store)
        assert before <= at_kill, "a frame stored before an earlier kill was lost"
        assert len(at_kill) > len(before)
        print(f"round {round_no}: {len(at_kill) - len(before)} new frames stored before SIGKILL")
        before = at_kill
    # Re-open: recovery cleans leftovers and keeps every indexed frame; repeats stay de-duplicated.
    reopened = FrameStore.open(store, quota_bytes=10**10)
    assert {f.message_id for f in reopened.frames()} == before
    assert not any((store / "tmp").iterdir())
    on_disk = {p.stem for p in (store / "frames").rglob("*.png")}
    assert on_disk == before
    assert len(before) <= len(everything)
    reopened.close()
    assert verify_store(store) == []
