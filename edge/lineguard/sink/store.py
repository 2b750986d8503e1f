"""Crash-safe frame store of the collection sink: image files + a SQLite (WAL) index.

Data flow: sink server (validated :class:`~lineguard.wire.WireMessage`) -> :meth:`FrameStore.store_batch`
-> ``frames/<day>/<message_id>.png`` (+ ``.f16`` anomaly map) and one index row each. Later readers
(labelling, retraining) read the index and the files; they set ``labelled``.

Commit protocol, so a kill -9 at any instant leaves a consistent store:

1. each file of a batch is written under ``tmp/``; the batch is made durable (one ``syncfs``, or
   ``fsync`` per file where syncfs is missing), then renamed into ``frames/<day>/`` (rename is
   atomic: a visible file is always complete); the day folder is fsynced;
2. one SQLite transaction inserts the rows (and deletes rows evicted for the quota); the commit
   is the moment a frame counts as stored;
3. evicted files are unlinked after the commit.

The quota follows the disk: the effective quota of each batch is
``min(quota_bytes, stored bytes + free bytes - min_free_bytes)`` (free space measured per batch),
so a store on a disk smaller than its quota, or one that another process fills, evicts its oldest
unlabelled frames instead of failing every write. When the disk (not the configured quota) is the
limit, the evictions are committed and their files deleted *before* the batch is written, so the
space they free is there for it. A ``headroom`` file (:mod:`lineguard.sink.headroom`) holds 1 MB
back so SQLite can open the index and commit those evictions on a disk filled to the last byte.

A kill between 1 and 2 leaves complete but unindexed files; between 2 and 3 leaves files of
deleted rows. :meth:`FrameStore.open` removes both kinds and everything under ``tmp/``, so every
indexed row has its file and no file outlives its row. The store must never delete a labelled
frame and never index a file before it is durable.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lineguard.errors import PublisherError
from lineguard.fsutil import fsync_path
from lineguard.sink.headroom import Headroom
from lineguard.wire import WireMessage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,      -- arrival order; eviction goes oldest first
    message_id TEXT NOT NULL UNIQUE,           -- de-duplication key from the wire header
    kind TEXT NOT NULL,
    received_utc TEXT NOT NULL,
    image_path TEXT NOT NULL,                  -- relative to the store root
    map_path TEXT,                             -- raw float16, shape in map_height/map_width
    map_height INTEGER,
    map_width INTEGER,
    bytes INTEGER NOT NULL,                    -- image + map file sizes, for the quota
    camera_id TEXT NOT NULL,
    bundle_id TEXT NOT NULL,
    verdict TEXT NOT NULL,
    anomaly_score REAL,
    defect_class TEXT NOT NULL,
    seq INTEGER NOT NULL,
    part_id INTEGER NOT NULL,
    header_json TEXT NOT NULL,                 -- the full wire header, verbatim
    labelled INTEGER NOT NULL DEFAULT 0        -- set by the labelling tool; never evicted when 1
);
CREATE INDEX IF NOT EXISTS frames_unlabelled ON frames (labelled, id);
"""


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """One index row, as readers see it."""

    message_id: str
    kind: str
    image_path: Path  # absolute
    map_path: Path | None
    map_shape: tuple[int, int] | None
    bytes: int
    labelled: bool
    header_json: str


@dataclass(slots=True)
class BatchResult:
    """What one :meth:`FrameStore.store_batch` call did; the server turns it into metrics."""

    stored_kinds: list[str] = field(default_factory=list)
    duplicates: int = 0
    quota_refused: int = 0
    store_errors: int = 0
    evicted: int = 0
    quota_bytes: int = 0  # the effective quota this batch was fitted to
    free_bytes: int = 0  # free space on the store's disk before the batch
    disk_bound: bool = False  # the disk's free space, not the configured quota, set the limit
    first_error: str = ""  # the first file write error of the batch (store_errors > 0)


@dataclass(frozen=True, slots=True)
class _Eviction:
    row_id: int
    paths: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    temp_files_removed: int
    orphan_files_removed: int
    rows_without_file: int


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "syncfs", None)  # Linux only
    return fn  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()


def _sync_files(folder: Path, files: list[Path]) -> None:
    """Flush ``files`` to disk. One syncfs() for a whole batch costs about what one fsync does,
    where fsync per file costs one journal commit each (5 ms apiece on the dev VM)."""
    if not files:
        return
    if _SYNCFS is not None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in files:
        fsync_path(path)


class FrameStore:
    """Single-writer store; one instance per process (the sink's receive thread)."""

    def __init__(self, *, root: Path, db: sqlite3.Connection, quota_bytes: int, fsync: bool,
                 recovery: RecoveryReport, min_free_bytes: int = 0) -> None:
        self.root = root
        self._db = db
        self._quota = quota_bytes
        self._min_free = min_free_bytes
        self._headroom = Headroom(root / "headroom")
        self._fsync = fsync
        self.recovery = recovery
        total, count = db.execute("SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM frames").fetchone()
        self._total_bytes = int(total)
        self._count = int(count)

    @classmethod
    def open(cls, root: str | Path, *, quota_bytes: int, fsync: bool = True, min_free_bytes: int = 0) -> FrameStore:
        """Open (or create) a store and clean up whatever a crash left behind."""
        base = Path(root)
        headroom = Headroom(base / "headroom")
        headroom.release()  # room for SQLite to open even on a disk others filled while we were stopped
        try:
            (base / "tmp").mkdir(parents=True, exist_ok=True)
            (base / "frames").mkdir(exist_ok=True)
            db = sqlite3.connect(base / "index.sqlite3", isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            recovery = _recover(base, db)
        except (OSError, sqlite3.Error) as exc:
            raise PublisherError(f"sink store {base}: cannot open ({exc}); check the path and free space") from exc
        if recovery.temp_files_removed or recovery.orphan_files_removed or recovery.rows_without_file:
            log.warning("sink store %s recovered after an unclean stop: %s", base, recovery)
        store = cls(root=base, db=db, quota_bytes=quota_bytes, fsync=fsync, recovery=recovery,
                    min_free_bytes=min_free_bytes)
        store._headroom = headroom
        headroom.restore()  # when there is no room yet, the first batch's eviction makes it
        effective, free = store.effective_quota()
        if effective < quota_bytes:
            log.warning("sink store %s: quota %.1f MB is more than the disk can hold (%.1f MB stored + %.1f MB free "
                        "- %.1f MB kept free): the store is limited to %.1f MB and evicts its oldest unlabelled "
                        "frames beyond that", base, quota_bytes / 1e6, store.total_bytes / 1e6, free / 1e6,
                        min_free_bytes / 1e6, effective / 1e6)
        return store

    def close(self) -> None:
        self._db.close()

    # --- writing ---------------------------------------------------------------------------
    def effective_quota(self) -> tuple[int, int]:
        """(bytes the store may hold now, free bytes on its disk): the configured quota, lowered to what
        the disk can hold while ``min_free_bytes`` stay free. OSError when the disk cannot be read."""
        free = shutil.disk_usage(self.root).free
        keep = self._min_free + (0 if self._headroom.held else self._headroom.size)  # room to restore it
        return max(0, min(self._quota, self._total_bytes + free - keep)), free

    def store_batch(self, messages: Sequence[WireMessage]) -> BatchResult:
        """Store validated messages durably; duplicates and over-quota ones are skipped and counted.

        Raises :class:`PublisherError` when the batch cannot be made durable or committed (its files
        are removed again); per-file write errors are counted in ``store_errors``.
        """
        result = BatchResult()
        try:
            result.quota_bytes, result.free_bytes = self.effective_quota()
        except OSError as exc:
            raise PublisherError(f"sink store {self.root}: cannot read free space ({exc})") from exc
        result.disk_bound = result.quota_bytes < self._quota
        fresh, evict = self._fit_quota(self._new_messages(messages, result), result)
        if not fresh and not evict:
            return result
        if evict and result.disk_bound:  # free the space first: the batch needs it on this disk
            if result.free_bytes < self._headroom.size:
                self._headroom.release()  # the eviction's own WAL pages need room on a disk others filled
            result.evicted = self._evict_now(evict)
            evict = []
            self._headroom.restore()
        now = dt.datetime.now(dt.timezone.utc)
        rows: list[tuple[object, ...]] = []
        moves: list[tuple[Path, Path]] = []
        added = 0
        for msg in fresh:
            try:
                row, msg_moves = self._write_temp(msg, now)
            except OSError as exc:  # counted; the server logs the first of a fault episode, not each frame
                log.debug("sink store: cannot write frame %s: %s", msg.header.message_id, exc)
                result.store_errors += 1
                result.first_error = result.first_error or str(exc)
                continue
            rows.append(row)
            moves.extend(msg_moves)
            added += _size(msg)
            result.stored_kinds.append(msg.header.kind)
        try:
            self._publish_files(moves)
        except OSError as exc:
            for tmp, final in moves:  # a renamed, never indexed file would hold space until restart
                with contextlib.suppress(OSError):  # a failing disk: the next start removes them
                    tmp.unlink(missing_ok=True)
                    final.unlink(missing_ok=True)
            raise PublisherError(f"sink store: cannot make {len(rows)} frames durable ({exc}); "
                                 "check free space and the disk") from exc
        try:
            evict = self._commit(rows, evict)
        except PublisherError:
            for _, final in moves:  # not indexed: remove now rather than at the next start
                with contextlib.suppress(OSError):
                    final.unlink(missing_ok=True)
            raise
        self._unlink_evicted(evict)
        result.evicted += len(evict)
        self._total_bytes += added - sum(e.size for e in evict)
        self._count += len(rows) - len(evict)
        return result

    def _evict_now(self, evict: list[_Eviction]) -> int:
        """Delete planned evictions in a transaction of their own, then their files; returns how many."""
        done = self._commit([], evict)
        self._unlink_evicted(done)
        self._total_bytes -= sum(e.size for e in done)
        self._count -= len(done)
        return len(done)

    def _unlink_evicted(self, evict: list[_Eviction]) -> None:
        for e in evict:
            for rel in e.paths:
                try:
                    (self.root / rel).unlink(missing_ok=True)
                except OSError as exc:  # its row is gone; the next start removes the file
                    log.error("sink store: cannot delete evicted %s: %s", rel, exc)

    def _new_messages(self, messages: Sequence[WireMessage], result: BatchResult) -> list[WireMessage]:
        seen: set[str] = set()
        ids = [m.header.message_id for m in messages]
        marks = ",".join("?" * len(ids))
        if ids:
            seen.update(r[0] for r in self._db.execute(
                f"SELECT message_id FROM frames WHERE message_id IN ({marks})", ids))
        fresh = []
        for m in messages:
            if m.header.message_id in seen:
                result.duplicates += 1
                continue
            seen.add(m.header.message_id)
            fresh.append(m)
        return fresh

    def _fit_quota(self, fresh: list[WireMessage], result: BatchResult
                   ) -> tuple[list[WireMessage], list[_Eviction]]:
        """Plan evictions (oldest unlabelled first) so the batch fits; refuse what still does not."""
        evict: list[_Eviction] = []
        need = self._total_bytes + sum(_size(m) for m in fresh) - result.quota_bytes
        if need <= 0:
            return fresh, evict
        freed = 0
        for row_id, img, mp, size in self._db.execute(
                "SELECT id, image_path, map_path, bytes FROM frames WHERE labelled = 0 ORDER BY id"):
            if freed >= need:
                break
            evict.append(_Eviction(int(row_id), tuple(p for p in (img, mp) if p), int(size)))
            freed += int(size)
        # Labelled frames are never evicted: when that is not enough, the newest arrivals lose.
        while fresh and freed < need:
            need -= _size(fresh.pop())
            result.quota_refused += 1
        # Keep only the evictions the remaining batch needs (none if nothing new is stored).
        kept: list[_Eviction] = []
        freed = 0
        for e in evict:
            if freed >= need or not fresh:
                break
            kept.append(e)
            freed += e.size
        return fresh, kept

    def _write_temp(self, msg: WireMessage, now: dt.datetime
                    ) -> tuple[tuple[object, ...], list[tuple[Path, Path]]]:
        """Write a message's files under tmp/; return its index row and the (temp, final) moves."""
        h = msg.header
        day_rel = Path("frames") / now.strftime("%Y-%m-%d")
        image_rel = day_rel / f"{h.message_id}.png"
        map_rel = day_rel / f"{h.message_id}.f16" if msg.map_bytes is not None else None
        moves: list[tuple[Path, Path]] = []
        try:
            for rel, data in ((image_rel, msg.image_png), (map_rel, msg.map_bytes)):
                if rel is None or data is None:
                    continue
                tmp = self.root / "tmp" / (rel.name + ".tmp")
                moves.append((tmp, self.root / rel))
                with open(tmp, "wb") as f:
                    f.write(data)
        except OSError:
            for tmp, _ in moves:
                tmp.unlink(missing_ok=True)
            raise
        m = h.anomaly_map
        row = (h.message_id, h.kind, now.isoformat(timespec="microseconds"), str(image_rel),
               str(map_rel) if map_rel else None, m.height if m else None, m.width if m else None,
               h.camera_id, _size(msg), h.bundle_id, h.verdict, h.anomaly_score, h.defect_class,
               h.seq, h.part_id, h.model_dump_json())
        return row, moves

    def _publish_files(self, moves: list[tuple[Path, Path]]) -> None:
        """Make temp files durable, then rename them into place (a visible file is always complete)."""
        if self._fsync:
            _sync_files(self.root / "tmp", [tmp for tmp, _ in moves])
        dirs = {final.parent for _, final in moves}
        new_dirs = {d for d in dirs if not d.is_dir()}
        for d in new_dirs:
            d.mkdir(parents=True)
        for tmp, final in moves:
            os.replace(tmp, final)
        if self._fsync:
            # A new day folder is itself a directory entry of frames/: sync that too.
            for d in dirs | {d.parent for d in new_dirs}:
                fsync_path(d)

    def _commit(self, rows: list[tuple[object, ...]], evict: list[_Eviction]) -> list[_Eviction]:
        """Insert ``rows`` and delete the planned evictions in one transaction; return those deleted.

        Evictions are planned before the transaction, and the labelling tool may label a frame in
        between (another connection): the ``labelled = 0`` condition here is what guarantees a
        labelled frame is never evicted. A skipped eviction leaves the store over quota by that
        frame until the next batch.
        """
        done: list[_Eviction] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for e in evict:
                cur = self._db.execute("DELETE FROM frames WHERE id = ? AND labelled = 0", (e.row_id,))
                if cur.rowcount == 1:
                    done.append(e)
            self._db.executemany(
                "INSERT INTO frames (message_id, kind, received_utc, image_path, map_path, map_height, "
                "map_width, camera_id, bytes, bundle_id, verdict, anomaly_score, defect_class, seq, part_id, "
                "header_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise PublisherError(f"sink index commit failed ({exc}); files are cleaned up at next start") from exc
        return done

    # --- reading ---------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    def count(self) -> int:
        return self._count

    def contains(self, message_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM frames WHERE message_id = ?", (message_id,)).fetchone() is not None

    def frames(self) -> Iterator[StoredFrame]:
        """Every indexed frame in arrival order."""
        for mid, kind, img, mp, mh, mw, size, lab, hj in self._db.execute(
                "SELECT message_id, kind, image_path, map_path, map_height, map_width, bytes, labelled, "
                "header_json FROM frames ORDER BY id"):
            yield StoredFrame(message_id=mid, kind=kind, image_path=self.root / img,
                              map_path=self.root / mp if mp else None,
                              map_shape=(int(mh), int(mw)) if mp else None, bytes=int(size),
                              labelled=bool(lab), header_json=hj)

    def set_labelled(self, message_id: str, labelled: bool = True) -> None:
        """Mark a frame (the labelling tool's hook); labelled frames are never evicted."""
        self._db.execute("UPDATE frames SET labelled = ? WHERE message_id = ?", (int(labelled), message_id))


def _size(msg: WireMessage) -> int:
    return len(msg.image_png) + (len(msg.map_bytes) if msg.map_bytes is not None else 0)


def _recover(root: Path, db: sqlite3.Connection) -> RecoveryReport:
    temp = 0
    for p in (root / "tmp").iterdir():
        p.unlink()
        temp += 1
    indexed: set[str] = set()
    missing: list[str] = []
    for mid, img, mp in db.execute("SELECT message_id, image_path, map_path FROM frames"):
        paths = [p for p in (img, mp) if p]
        if not all((root / p).is_file() for p in paths):
            missing.append(mid)
        indexed.update(paths)
    if missing:  # should not happen with the commit protocol; refuse to keep a dangling row
        log.error("sink store: %d indexed frames have no file; removing their rows", len(missing))
        db.executemany("DELETE FROM frames WHERE message_id = ?", [(m,) for m in missing])
    orphans = 0
    for p in (root / "frames").rglob("*"):
        if p.is_file() and str(p.relative_to(root)) not in indexed:
            p.unlink()
            orphans += 1
    return RecoveryReport(temp_files_removed=temp, orphan_files_removed=orphans, rows_without_file=len(missing))


def verify_store(root: str | Path) -> list[str]:
    """Problems in a store, read-only: rows whose files are missing or do not decode to the header's size."""
    import json

    base = Path(root)
    problems: list[str] = []
    db = sqlite3.connect(f"file:{base / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        for mid, img, mp, mh, mw, hj in db.execute(
                "SELECT message_id, image_path, map_path, map_height, map_width, header_json FROM frames"):
            spec = json.loads(hj)["image"]
            data = np.fromfile(base / img, dtype=np.uint8) if (base / img).is_file() else None
            decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
            if decoded is None:
                problems.append(f"{mid}: image {img} missing or undecodable")
            elif decoded.shape[:2] != (spec["height"], spec["width"]):
                problems.append(f"{mid}: image {img} is {decoded.shape}, header says {spec}")
            if mp and (not (base / mp).is_file() or (base / mp).stat().st_size != 2 * int(mh) * int(mw)):
                problems.append(f"{mid}: map {mp} missing or wrong size")
    finally:
        db.close()
    return problems
