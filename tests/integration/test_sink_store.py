"""Sink store on a real file system: atomic files + SQLite WAL index, dedup, quota, crash recovery."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.errors import PublisherError
from lineguard.sink.store import FrameStore, verify_store
from lineguard.wire import MessageKind, WireMessage, build_header, decode_message, encode_message


def message(seq: int, *, side: int = 40, with_map: bool = False) -> WireMessage:
    image = np.random.default_rng(seq).integers(0, 255, (side, side), dtype=np.uint8)
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=image, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=seq, verdict=Verdict.RECHECK, anomaly_score=0.5, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
    amap = np.full((4, 5), 0.25, np.float32) if with_map else None
    header = build_header(decision=decision, frame=frame, kind=MessageKind.UNCERTAIN, anomaly_map=amap)
    return decode_message(encode_message(header, image, amap))


def test_frames_are_stored_losslessly_and_indexed_in_wal_mode(tmp_path: Path) -> None:
    store = FrameStore.open(tmp_path, quota_bytes=10**9)
    msgs = [message(i, with_map=i % 2 == 0) for i in range(4)]
    result = store.store_batch(msgs)
    assert result.stored_kinds == ["uncertain"] * 4
    rows = list(store.frames())
    assert [r.message_id for r in rows] == [m.header.message_id for m in msgs]
    for row, msg in zip(rows, msgs, strict=True):
        on_disk = cv2.imread(str(row.image_path), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(on_disk, msg.image)
        assert row.labelled is False
        if msg.map_bytes is not None:
            assert row.map_path is not None and row.map_shape == (4, 5)
            stored_map = np.fromfile(row.map_path, dtype="<f2").reshape(row.map_shape)
            assert np.all(stored_map == np.float16(0.25))
    assert store.total_bytes == sum(len(m.image_png) + len(m.map_bytes or b"") for m in msgs)
    store.close()
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert verify_store(tmp_path) == []
    assert not any((tmp_path / "tmp").iterdir())


def test_repeated_message_ids_are_stored_once(tmp_path: Path) -> None:
    store = FrameStore.open(tmp_path, quota_bytes=10**9)
    a, b = message(1), message(2)
    r1 = store.store_batch([a, a, b])
    r2 = store.store_batch([b])
    store.close()
    reopened = FrameStore.open(tmp_path, quota_bytes=10**9)
    r3 = reopened.store_batch([a])
    assert (len(r1.stored_kinds), r1.duplicates, len(r2.stored_kinds), r2.duplicates) == (2, 1, 0, 1)
    assert r3.duplicates == 1 and reopened.count() == 2


def test_quota_evicts_oldest_unlabelled_and_never_labelled(tmp_path: Path) -> None:
    one = len(message(0).image_png)
    store = FrameStore.open(tmp_path, quota_bytes=int(one * 5.5))  # five frames fit (all the same size)
    msgs = [message(i) for i in range(5)]
    store.store_batch(msgs)
    store.set_labelled(msgs[0].header.message_id)
    store.set_labelled(msgs[2].header.message_id)
    newer = [message(10), message(11)]
    r = store.store_batch(newer)
    kept = [f.message_id for f in store.frames()]
    assert r.evicted == 2 and len(r.stored_kinds) == 2
    # msgs[1] and msgs[3] were the oldest unlabelled; labelled 0 and 2 survive although older.
    assert kept == [m.header.message_id for m in (msgs[0], msgs[2], msgs[4], *newer)]
    assert store.total_bytes <= int(one * 5.5)
    assert verify_store(tmp_path) == []
    files = {p.name for p in (tmp_path / "frames").rglob("*.png")}
    assert len(files) == 5


def test_only_labelled_frames_left_means_new_frames_are_refused(tmp_path: Path) -> None:
    one = len(message(0).image_png)
    store = FrameStore.open(tmp_path, quota_bytes=int(one * 2.5))
    msgs = [message(i) for i in range(2)]
    store.store_batch(msgs)
    for m in msgs:
        store.set_labelled(m.header.message_id)
    r = store.store_batch([message(7)])
    assert r.quota_refused == 1 and r.evicted == 0 and not r.stored_kinds
    assert [f.labelled for f in store.frames()] == [True, True]


def test_open_removes_what_a_crash_left_behind(tmp_path: Path) -> None:
    store = FrameStore.open(tmp_path, quota_bytes=10**9)
    kept = message(1)
    store.store_batch([kept])
    store.close()
    # A kill during step 1 (temp file), between 1 and 2 (renamed, never indexed), and a lost file.
    (tmp_path / "tmp" / "x.png.tmp").write_bytes(b"\x89PNG half")
    day = next((tmp_path / "frames").iterdir())
    (day / "00000000-0000-4000-8000-000000000000.png").write_bytes(message(2).image_png)
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("INSERT INTO frames (message_id, kind, received_utc, image_path, bytes, camera_id, "
                   "bundle_id, verdict, defect_class, seq, part_id, header_json) VALUES "
                   "('gone', 'audit', '', 'frames/x/gone.png', 1, '', '', '', '', 0, 0, '{}')")
    reopened = FrameStore.open(tmp_path, quota_bytes=10**9)
    assert (reopened.recovery.temp_files_removed, reopened.recovery.orphan_files_removed,
            reopened.recovery.rows_without_file) == (1, 1, 1)
    assert [f.message_id for f in reopened.frames()] == [kept.header.message_id]
    assert verify_store(tmp_path) == []
    assert reopened.total_bytes == len(kept.image_png)


def test_verify_store_reports_a_corrupted_file(tmp_path: Path) -> None:
    store = FrameStore.open(tmp_path, quota_bytes=10**9)
    store.store_batch([message(1)])
    row = next(store.frames())
    row.image_path.write_bytes(row.image_path.read_bytes()[:30])
    problems = verify_store(tmp_path)
    assert len(problems) == 1 and row.message_id in problems[0]


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PublisherError, match="cannot open"):
        FrameStore.open(blocker / "store", quota_bytes=10**9)


def test_frame_labelled_while_a_batch_is_written_is_not_evicted(tmp_path: Path) -> None:
    one = len(message(0).image_png)
    store = FrameStore.open(tmp_path, quota_bytes=int(one * 2.5))
    old = [message(1), message(2)]
    store.store_batch(old)
    labeller = sqlite3.connect(tmp_path / "index.sqlite3")  # the labelling tool's own connection
    original_commit = store._commit

    def label_then_commit(rows, evict):  # type: ignore[no-untyped-def]
        # The eviction of old[0] is planned by now; a person labels it before the transaction.
        with labeller:
            labeller.execute("UPDATE frames SET labelled = 1 WHERE message_id = ?", (old[0].header.message_id,))
        return original_commit(rows, evict)

    store._commit = label_then_commit  # type: ignore[method-assign]
    newer = message(3)
    result = store.store_batch([newer])
    labeller.close()
    kept = {f.message_id: f.labelled for f in store.frames()}
    assert kept[old[0].header.message_id] is True  # labelled in between: kept, file and row
    assert result.evicted == 0 and newer.header.message_id in kept
    assert verify_store(tmp_path) == []
    assert store.total_bytes == sum(len(m.image_png) for m in (*old, newer))


def test_write_failures_are_counted_and_the_store_keeps_working(tmp_path: Path) -> None:
    store = FrameStore.open(tmp_path, quota_bytes=10**9)
    (tmp_path / "tmp").rmdir()
    (tmp_path / "tmp").write_bytes(b"")  # every temp write now fails, as on a broken disk
    result = store.store_batch([message(1), message(2)])
    assert result.store_errors == 2 and not result.stored_kinds and store.count() == 0
    (tmp_path / "tmp").unlink()
    (tmp_path / "tmp").mkdir()
    assert store.store_batch([message(3)]).stored_kinds == ["uncertain"]
    assert verify_store(tmp_path) == []
