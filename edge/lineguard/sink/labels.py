"""Labels on the sink's frames: the queue a person works through, and the append-only label log.

Data flow: sink store (``index.sqlite3``, table ``frames``, written by :mod:`lineguard.sink.store`)
-> :class:`LabelBook` -> labelling web page (``lineguard.labelling``) -> :meth:`LabelBook.label`
-> table ``label_events`` (append-only: a correction is a new event, the latest one counts) and a
hard link of the frame's files under ``labels/`` -> ``lineguard_models.datastore`` imports the
events into the versioned dataset store.

The order of the queue: frames chosen for this shift by active learning
(``lineguard_models.active``, written here with :meth:`LabelBook.set_selection`) first, in their
rank; then the rest, most informative first (unknown defects, then scores nearest the middle of
the uncertainty band, audit frames last).

Must never: delete or rewrite a label event, or lose a labelled image. The files are hard-linked
under ``labels/`` *before* the event commits, so even a frame the sink evicts in the same instant
(its eviction is planned outside the transaction) keeps its image for the dataset store.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineguard.decision import band_width, class_guess_of
from lineguard.errors import PublisherError

GOOD = "good"
LABEL_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,      -- order of labelling; importers resume after an id
    message_id TEXT NOT NULL,
    label TEXT NOT NULL,                       -- 'good' or a defect class
    labeller TEXT NOT NULL,
    labelled_utc TEXT NOT NULL,
    image_path TEXT NOT NULL,                  -- hard link under labels/, relative to the store root
    map_path TEXT,
    header_json TEXT NOT NULL                  -- the wire header, copied: provenance travels with the label
);
CREATE INDEX IF NOT EXISTS label_events_msg ON label_events (message_id, id);
CREATE TABLE IF NOT EXISTS label_selection (
    shift TEXT NOT NULL,
    message_id TEXT NOT NULL,
    rank INTEGER NOT NULL,                     -- 0 = label first
    reason TEXT NOT NULL,                      -- 'uncertain', 'diverse', 'audit', 'unknown_defect'
    PRIMARY KEY (shift, message_id)
);
"""


class LabelError(PublisherError):
    """A label cannot be recorded (unknown frame, bad class name)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedFrame:
    """A stored frame as the labelling page shows it."""

    message_id: str
    kind: str
    verdict: str
    anomaly_score: float | None
    lower: float | None
    upper: float | None
    defect_class: str
    class_confidence: float | None
    class_guess: str = ""  # the classifier's best guess (the class itself, or the arg-max of an unknown defect)
    bundle_id: str
    camera_id: str
    received_utc: str
    image_path: Path
    map_path: Path | None
    map_shape: tuple[int, int] | None
    label: str | None  # latest label, None when unlabelled
    informativeness: float  # 0..1, see informativeness()
    selected: str  # selection reason this shift, '' when not selected
    rank: int | None

    def public(self) -> dict[str, Any]:
        """JSON for the web page (no file paths)."""
        return {k: getattr(self, k) for k in (
            "message_id", "kind", "verdict", "anomaly_score", "lower", "upper", "defect_class",
            "class_confidence", "class_guess", "bundle_id", "camera_id", "received_utc", "label", "informativeness",
            "selected", "rank")} | {"has_map": self.map_path is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelEvent:
    """One row of the append-only label log."""

    event_id: int
    message_id: str
    label: str
    labeller: str
    labelled_utc: str
    image_path: Path  # absolute, under labels/
    map_path: Path | None
    header: dict[str, Any]


_EDGE_WIDTH_BANDS = 0.25  # as SelectionConfig.edge_width_bands


def informativeness(*, kind: str, score: float | None, lower: float | None, upper: float | None) -> float:
    """How much a label of this frame is likely to teach, in [0, 1].

    Unknown defects (the classifier did not recognise them) teach most; then frames whose score is
    close to either threshold, where a label changes what the retrained bundle decides (a good part
    near the reject threshold, a defect near the accept threshold); the middle of a wide band
    changes neither (measured on casting: docs/benchmarks/data-loop.md). Closeness falls by a factor
    e per quarter band width from the nearest threshold, the same shape as the shift selection
    (``lineguard_models.active.decision_value``, default settings). Audit frames (confident
    verdicts sampled at random) count half: they measure, they rarely teach. ``near_reject``
    frames (rejects the publisher found just above the reject threshold: possible false rejects)
    count in full, by the same closeness.
    """
    if kind == "unknown_defect":
        return 1.0
    if score is None or lower is None or upper is None or not math.isfinite(score):
        return 0.5
    width = band_width(lower, upper)
    distance_bands = min(abs(score - lower), abs(score - upper)) / width
    closeness = math.exp(-distance_bands / _EDGE_WIDTH_BANDS)
    base = 0.1 + 0.8 * closeness  # in (0.1, 0.9): between audit-without-score and unknown
    return base * (0.5 if kind == "audit" else 1.0)


def check_label(label: str) -> str:
    if not LABEL_PATTERN.fullmatch(label):
        raise LabelError(f"label {label!r} is not a class name: lower-case letters, digits, '_' or '-', "
                         "starting with a letter, at most 32 characters")
    return label


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra space, survives the sink unlinking the original); copy across filesystems."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)


class LabelBook:
    """Labels of one sink store; thread-safe (the web server is threaded). Open with :meth:`open`."""

    def __init__(self, *, root: Path, db: sqlite3.Connection) -> None:
        self.root = root
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store_root: str | Path) -> LabelBook:
        """Open the sink store's index (it must exist: the sink creates it) and add the label tables."""
        root = Path(store_root)
        index = root / "index.sqlite3"
        if not index.is_file():
            raise LabelError(f"{root} is not a sink store (no index.sqlite3); start `lineguard sink` first "
                             "or pass the sink's store_dir")
        try:
            (root / "labels").mkdir(exist_ok=True)
            db = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 5000")  # the sink process writes the same index
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LabelError(f"cannot open the label tables in {index} ({exc})") from exc
        return cls(root=root, db=db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reading ------------------------------------------------------------------------------
    def _rows(self, where: str, args: Sequence[object]) -> list[QueuedFrame]:
        sql = (
            "SELECT f.message_id, f.kind, f.verdict, f.anomaly_score, f.defect_class, f.bundle_id, f.camera_id, "
            "f.received_utc, f.image_path, f.map_path, f.map_height, f.map_width, f.header_json, "
            "(SELECT label FROM label_events e WHERE e.message_id = f.message_id ORDER BY e.id DESC LIMIT 1), "
            "s.reason, s.rank FROM frames f LEFT JOIN label_selection s ON s.message_id = f.message_id "
            f"AND s.shift = ? {where}"
        )
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for (mid, kind, verdict, score, dclass, bid, cam, received, img, mp, mh, mw, hj, label,
             reason, rank) in rows:
            header = json.loads(hj)
            th = header.get("thresholds", {})
            lower, upper = th.get("lower"), th.get("upper")
            out.append(QueuedFrame(
                message_id=mid, kind=kind, verdict=verdict, anomaly_score=score, lower=lower, upper=upper,
                defect_class=dclass, class_confidence=header.get("class_confidence"),
                class_guess=class_guess_of(header.get("reasons", []), dclass), bundle_id=bid,
                camera_id=cam, received_utc=received, image_path=self.root / img,
                map_path=self.root / mp if mp else None, map_shape=(int(mh), int(mw)) if mp else None,
                label=label, informativeness=informativeness(kind=kind, score=score, lower=lower, upper=upper),
                selected=reason or "", rank=rank))
        return out

    def queue(self, *, shift: str = "", limit: int = 50, include_labelled: bool = False) -> list[QueuedFrame]:
        """Frames to label: this shift's selection by rank, then the rest by informativeness."""
        where = "" if include_labelled else "WHERE f.labelled = 0"
        frames = self._rows(where, [shift])
        frames.sort(key=lambda f: (f.rank is None, f.rank if f.rank is not None else 0,
                                   -f.informativeness, f.received_utc))
        return frames[:limit]

    def frame(self, message_id: str, *, shift: str = "") -> QueuedFrame | None:
        found = self._rows("WHERE f.message_id = ?", [shift, message_id])
        return found[0] if found else None

    def unlabelled(self) -> list[QueuedFrame]:
        """Every unlabelled frame in arrival order (the active-learning candidates)."""
        frames = self._rows("WHERE f.labelled = 0", [""])
        frames.sort(key=lambda f: f.received_utc)
        return frames

    def classes(self) -> list[str]:
        """Defect classes known so far: labelled ones and those the bundles reported (sorted)."""
        with self._lock:
            labelled = {r[0] for r in self._db.execute("SELECT DISTINCT label FROM label_events")}
            reported = {r[0] for r in self._db.execute("SELECT DISTINCT defect_class FROM frames")}
        names = (labelled | reported) - {GOOD, "", "unknown"}
        return sorted(n for n in names if LABEL_PATTERN.fullmatch(n))

    def events(self, *, after_id: int = 0) -> list[LabelEvent]:
        """Label events after ``after_id`` in order (an importer resumes where it stopped)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, message_id, label, labeller, labelled_utc, image_path, map_path, header_json "
                "FROM label_events WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        return [LabelEvent(event_id=int(i), message_id=m, label=lab, labeller=who, labelled_utc=t,
                           image_path=self.root / img, map_path=self.root / mp if mp else None,
                           header=json.loads(hj)) for i, m, lab, who, t, img, mp, hj in rows]

    def labelled_count(self, *, since_utc: str = "") -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(DISTINCT message_id) FROM label_events WHERE labelled_utc >= ?",
                                   (since_utc,)).fetchone()
        return int(row[0])

    def selection_size(self, shift: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM label_selection WHERE shift = ?",
                                        (shift,)).fetchone()[0])

    # --- writing ------------------------------------------------------------------------------
    def label(self, message_id: str, label: str, *, labeller: str) -> LabelEvent:
        """Record a label: link the files under labels/, then one transaction (event + labelled flag)."""
        check_label(label)
        if not labeller or len(labeller) > 64:
            raise LabelError("labeller must be 1..64 characters")
        with self._lock:
            row = self._db.execute("SELECT image_path, map_path, header_json FROM frames WHERE message_id = ?",
                                   (message_id,)).fetchone()
            if row is None:
                raise LabelError(f"frame {message_id} is not in the store (evicted or never stored)")
            img, mp, hj = row
            links = [(self.root / rel, Path("labels") / Path(rel).name) for rel in (img, mp) if rel]
            try:
                for src, rel in links:
                    _link_or_copy(src, self.root / rel)
            except OSError as exc:
                raise LabelError(f"frame {message_id}: cannot keep its files under labels/ ({exc})") from exc
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
            img_rel = str(links[0][1])
            map_rel = str(links[1][1]) if len(links) > 1 else None
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO label_events (message_id, label, labeller, labelled_utc, image_path, map_path, "
                    "header_json) VALUES (?, ?, ?, ?, ?, ?, ?)", (message_id, label, labeller, now, img_rel,
                                                                  map_rel, hj))
                self._db.execute("UPDATE frames SET labelled = 1 WHERE message_id = ?", (message_id,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise LabelError(f"frame {message_id}: label not recorded ({exc}); try again") from exc
        return LabelEvent(event_id=int(cur.lastrowid or 0), message_id=message_id, label=label, labeller=labeller,
                          labelled_utc=now, image_path=self.root / img_rel,
                          map_path=self.root / map_rel if map_rel else None, header=json.loads(hj))

    def set_selection(self, shift: str, ranked: Iterable[tuple[str, str]]) -> int:
        """Append frames (message_id, reason) to a shift's selection after those already there."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                start = int(self._db.execute("SELECT COALESCE(MAX(rank) + 1, 0) FROM label_selection WHERE "
                                             "shift = ?", (shift,)).fetchone()[0])
                rows = [(shift, mid, start + i, reason) for i, (mid, reason) in enumerate(ranked)]
                self._db.executemany("INSERT OR IGNORE INTO label_selection VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise LabelError(f"selection for shift {shift} not stored ({exc})") from exc
        return len(rows)
