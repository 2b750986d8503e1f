"""Sink store on a real small disk (a tmpfs far smaller than the 20 GB default quota).

The quota follows the disk's free space (min_free_bytes kept free): the store evicts its oldest
unlabelled frames and keeps storing instead of refusing every frame as ``store_error``. A store
fault the quota cannot see (no inode left: ENOSPC with bytes free) is refused as ``store_error``,
counted on the real metrics endpoint, logged once, and storing resumes when inodes are freed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
from prometheus_client.parser import text_string_to_metric_families

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.sink.headroom import HEADROOM_BYTES
from lineguard.sink.store import FrameStore, verify_store
from lineguard.wire import MessageKind, WireMessage, build_header, decode_message, encode_message

DEFAULT_QUOTA = 20 * 1024**3
MB = 1024 * 1024


def wire_parts(seq: int, side: int = 256) -> list[bytes]:
    """An incompressible frame: the PNG is ~side² bytes (64 KB at 256)."""
    image = np.random.default_rng(seq).integers(0, 255, (side, side), dtype=np.uint8)
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=image, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=seq, verdict=Verdict.RECHECK, anomaly_score=0.5, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
    header = build_header(decision=decision, frame=frame, kind=MessageKind.UNCERTAIN, anomaly_map=None)
    return encode_message(header, image, None)


def message(seq: int) -> WireMessage:
    return decode_message(wire_parts(seq))


def test_store_on_a_disk_smaller_than_its_quota_evicts_and_keeps_storing(small_disk: Callable[[int], Any]) -> None:
    disk = small_disk(8 * MB)
    reserve = 512 * 1024
    store = FrameStore.open(disk.path / "store", quota_bytes=DEFAULT_QUOTA, min_free_bytes=reserve)
    first = [message(i) for i in range(3)]
    store.store_batch(first)
    for m in first:  # labelled frames are never evicted, also when the disk is the limit
        store.set_labelled(m.header.message_id)
    evicted, lowest_free = 0, disk.free_bytes()
    for i in range(3, 200):  # ~12.8 MB of frames through an 8 MB disk
        last = message(i)
        r = store.store_batch([last])
        assert r.stored_kinds == ["uncertain"] and not r.store_errors and not r.quota_refused, (i, r)
        evicted += r.evicted
        lowest_free = min(lowest_free, disk.free_bytes())
        assert r.quota_bytes < DEFAULT_QUOTA
    assert evicted > 50 and store.count() == 200 - evicted
    ids = [f.message_id for f in store.frames()]
    assert ids[:3] == [m.header.message_id for m in first], "labelled frames kept"
    assert ids[-1] == last.header.message_id, "the newest frame is stored"
    # what the reserve is for: the store never takes the last free bytes (page rounding aside)
    assert lowest_free >= reserve - 128 * 1024, lowest_free
    store.close()
    assert verify_store(disk.path / "store") == []


def scrape(port: int) -> dict[tuple[str, str], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:  # summed over other labels (stored_total's kind)
            key = (s.name, s.labels.get("reason", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def test_sink_process_on_a_full_small_disk_keeps_collecting_and_counts_store_errors(
        small_disk: Callable[[int], Any]) -> None:
    disk = small_disk(8 * MB, nr_inodes=2000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineguard.cli", "sink", "--bind", "tcp://127.0.0.1:*", "--store",
         str(disk.path / "store"), "--metrics-port", "0", "--min-free-mb", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().split()[-1]
    port = int(proc.stdout.readline().split()[-1])
    tx = zmq.Context.instance().socket(zmq.PUSH)
    tx.connect(endpoint)

    def send_and_wait(seqs: range, name: str, reason: str, total: float) -> dict[tuple[str, str], float]:
        for seq in seqs:
            tx.send_multipart(wire_parts(seq))
        deadline = time.monotonic() + 30
        while (m := scrape(port)).get((name, reason), 0.0) < total:
            assert time.monotonic() < deadline, (name, reason, m.get((name, reason)))
            time.sleep(0.05)
        return m

    try:
        m = send_and_wait(range(4), "lineguard_sink_stored_total", "", 4)
        assert m[("lineguard_sink_rejected_total", "store_error")] == 0  # exposed from the start
        ballast = disk.fill_inodes()  # another program takes every inode: file creation fails (ENOSPC)
        m = send_and_wait(range(4, 10), "lineguard_sink_rejected_total", "store_error", 6)
        assert m[("lineguard_sink_store_fault", "")] == 1
        shutil.rmtree(ballast)
        m = send_and_wait(range(10, 160), "lineguard_sink_stored_total", "", 154)  # ~9.6 MB onto 8 MB
        assert m[("lineguard_sink_store_fault", "")] == 0
        assert m[("lineguard_sink_rejected_total", "store_error")] == 6
        assert m[("lineguard_sink_rejected_total", "quota_full")] == 0
        assert m[("lineguard_sink_evicted_total", "")] > 30
        assert m[("lineguard_sink_quota_bytes", "")] < 8 * MB
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        tx.close(0)
    assert proc.returncode == 0, err[-2000:]
    assert "received 160, stored 154, duplicates 0, rejected 6" in err
    warnings = [ln for ln in err.splitlines() if "cannot be written" in ln]
    recovered = [ln for ln in err.splitlines() if "writable again" in ln]
    assert len(warnings) == 1 and "store_error" in warnings[0], err[-3000:]
    assert len(recovered) == 1 and "6 frames refused during the fault" in recovered[0], err[-3000:]
    assert "No space left on device" in warnings[0]
    assert "Traceback" not in err and " ERROR " not in err, "no line per refused frame"


def test_store_reopened_on_a_disk_others_filled_evicts_to_its_reserve(small_disk: Callable[[int], Any]) -> None:
    """Without the headroom file SQLite cannot even open the index here ("disk I/O error")."""
    disk = small_disk(8 * MB)
    root = disk.path / "store"
    store = FrameStore.open(root, quota_bytes=DEFAULT_QUOTA, min_free_bytes=256 * 1024)
    for i in range(40):  # ~2.6 MB
        store.store_batch([message(i)])
    store.close()
    disk.fill()  # another program takes every free byte while the sink is stopped
    store = FrameStore.open(root, quota_bytes=DEFAULT_QUOTA, min_free_bytes=256 * 1024)
    before = store.count()
    r = store.store_batch([message(100)])
    assert r.stored_kinds == ["uncertain"] and r.evicted >= 4 and not r.store_errors, r
    assert store.count() == before + 1 - r.evicted
    assert disk.free_bytes() >= 128 * 1024  # the reserve is free again (page rounding aside)
    assert (root / "headroom").stat().st_size == HEADROOM_BYTES  # and SQLite's headroom is back
    store.close()
    assert verify_store(root) == []
