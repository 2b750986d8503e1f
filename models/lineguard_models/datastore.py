"""Append-only, versioned dataset store with provenance: the memory of the data loop.

Data flow: dataset folders (the first teach) and the sink's label log
(``lineguard.sink.labels.LabelBook.events``) -> :meth:`DatasetStore.add` -> a new version ->
:meth:`DatasetStore.materialize` -> a dataset folder in the training contract (``good/``,
``<class>/``) -> ``lineguard_models.pipeline.train`` / the regression evaluation of ``retrain``.

Layout::

    <root>/objects/<aa>/<sha256><ext>   image files, content-addressed, written once, never deleted
    <root>/versions/000001.json         one file per version: parent, note, added records, sink cursors
    <root>/LOCK                         one writer at a time (flock)

A record is (sha256, label, split, use, provenance). Resolving version *v* replays versions 1..v;
the latest record of an image decides its label (a correction is a new record, the old one stays).
An image's **split** is fixed the first time the store sees it: about ``regression_fraction`` of
each class, and at least one image of every class, goes to the frozen **regression** set that
every retrain is judged on; the rest is **train**. So the regression set only grows, and holds
every defect class ever seen.

A train image's **use** is fixed the same way: ``fit`` (a good image may join the memory bank;
the pipeline still holds a seeded share of them out for calibration), ``calibrate`` (a good
image only ever sets thresholds) or ``fit_only`` (a good image chosen for its score: it may join
the memory bank and never sets a threshold). Defect images are calibration-only whatever their use (the
anomaly model never fits a defect). Who decides: :meth:`import_sink` by
:class:`GoodUse` (why: docs/data-loop.md, "How labels are used"); folder imports are ``fit``.
:meth:`materialize` writes ``calibrate`` goods to ``test/good`` -- the training contract's
"calibration only" folder -- and everything else under ``train/``, listing ``fit_only`` goods in
``fit_only.txt``.

Must never: delete or rewrite an object or a version file (historical defect images are kept for
good), move an image between splits, or let a regression image reach training.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lineguard.errors import DatasetError
from lineguard.fsutil import sha256_file, write_atomic
from lineguard.imageio import IMAGE_SUFFIXES
from lineguard.sink.labels import GOOD, LabelBook, check_label
from lineguard_models.data import FIT_ONLY_FILE

Split = Literal["train", "regression"]
Use = Literal["fit", "calibrate", "fit_only"]
GoodUse = Literal["fit", "calibrate", "fit_flagged", "calibrate_flagged", "fit_flagged_unbiased"]
"""How :meth:`DatasetStore.import_sink` uses a frame labelled good: ``fit`` all of them,
``calibrate`` all of them, or split by the verdict the line gave it: ``fit_flagged`` fits the
frames the line flagged (recheck, reject, fail-safe) and calibrates the accepted ones;
``calibrate_flagged`` the reverse: flagged goods set the thresholds, accepted goods join the
memory bank (measured: docs/benchmarks/data-loop.md). ``fit_flagged_unbiased``: as ``fit_flagged``,
but a flagged good the publisher sent *for its score* (kind ``uncertain``, ``near_reject``,
``unknown_defect``: the high-scoring goods, not a sample of the line) is ``fit_only``: it joins the
memory bank and never sets a threshold. Only the publisher's random audit frames calibrate, so the
thresholds stay an estimate for the whole line."""
_VERSION_DIGITS = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class NewImage:
    """An image to add: its file, its label and where it came from."""

    path: Path
    label: str
    provenance: dict[str, Any]
    use: Use = "fit"  # only read when the store sees the image for the first time


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One image in a resolved version."""

    sha256: str
    ext: str
    label: str
    split: Split
    provenance: dict[str, Any]
    version: int  # version that set the current label
    history: tuple[str, ...] = ()  # earlier labels, oldest first
    use: Use = "fit"  # frozen at first sight like the split; version files before it existed: fit

    @property
    def object_rel(self) -> str:
        return f"objects/{self.sha256[:2]}/{self.sha256}{self.ext}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A resolved version: every image with its current label and split."""

    version: int
    records: dict[str, Record]
    cursors: dict[str, int] = field(default_factory=dict)  # sink store -> last imported label event

    def select(self, split: Split | None = None, exclude_classes: Iterable[str] = ()) -> list[Record]:
        excluded = set(exclude_classes)
        return sorted((r for r in self.records.values() if (split is None or r.split == split)
                       and r.label not in excluded), key=lambda r: (r.label, r.sha256))

    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records.values()} - {GOOD})

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records.values():
            out.setdefault(r.split, Counter())[r.label] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}




class DatasetStore:
    """One store on disk. Reads are lock-free (version files are immutable); writes take LOCK."""

    def __init__(self, *, root: Path, regression_fraction: float) -> None:
        self.root = root
        self.regression_fraction = regression_fraction

    @classmethod
    def open(cls, root: str | Path, *, regression_fraction: float = 0.3, create: bool = True) -> DatasetStore:
        base = Path(root)
        if not 0.0 < regression_fraction < 1.0:
            raise DatasetError(f"regression_fraction must be in (0, 1), got {regression_fraction}")
        if not (base / "versions").is_dir():
            if not create:
                raise DatasetError(f"{base} is not a dataset store (no versions/); create it with an import")
            (base / "objects").mkdir(parents=True, exist_ok=True)
            (base / "versions").mkdir(exist_ok=True)
        return cls(root=base, regression_fraction=regression_fraction)

    # --- reading ------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.root / "versions").glob("*.json") if p.stem.isdigit())

    def head(self) -> int:
        v = self.versions()
        return v[-1] if v else 0

    def version_info(self, version: int) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self._version_path(version).read_text(encoding="utf-8"))
        return doc

    def _version_path(self, version: int) -> Path:
        return self.root / "versions" / f"{version:0{_VERSION_DIGITS}d}.json"

    def snapshot(self, version: int | None = None) -> Snapshot:
        """Replay versions 1..``version`` (default: head)."""
        upto = self.head() if version is None else version
        if upto and upto not in self.versions():
            raise DatasetError(f"dataset store {self.root} has no version {upto} (head is {self.head()})")
        records: dict[str, Record] = {}
        cursors: dict[str, int] = {}
        for v in (x for x in self.versions() if x <= upto):
            doc = self.version_info(v)
            cursors.update(doc.get("cursors", {}))
            for r in doc["added"]:
                old = records.get(r["sha256"])
                history = (*old.history, old.label) if old is not None else ()
                records[r["sha256"]] = Record(sha256=r["sha256"], ext=r["ext"], label=r["label"],
                                              split=old.split if old else r["split"], provenance=r["provenance"],
                                              version=v, history=history,
                                              use=old.use if old else r.get("use", "fit"))
        return Snapshot(version=upto, records=records, cursors=cursors)

    def path_of(self, record: Record) -> Path:
        return self.root / record.object_rel

    # --- writing ------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / "LOCK", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def add(self, images: Sequence[NewImage], *, note: str, cursors: dict[str, int] | None = None) -> int:
        """Add images (new ones, or new labels of known ones) as one new version; returns it.

        Returns the current head without writing when nothing changes (same image, same label).
        """
        for im in images:
            check_label(im.label)
        with self._locked():
            snap = self.snapshot()
            split_counts: Counter[tuple[str, str]] = Counter((r.label, r.split) for r in snap.records.values())
            class_counts: Counter[str] = Counter(r.label for r in snap.records.values())
            added: list[dict[str, Any]] = []
            seen: set[str] = set()
            # sha order: the split of a batch does not depend on the order the caller listed it in
            hashed = sorted(((sha256_file(im.path), im) for im in images), key=lambda t: t[0])
            for sha, im in hashed:
                if sha in seen:
                    continue
                seen.add(sha)
                old = snap.records.get(sha)
                if old is not None and old.label == im.label:
                    continue
                ext = old.ext if old else (im.path.suffix.lower() if im.path.suffix.lower() in IMAGE_SUFFIXES
                                           else ".png")
                if old is None:
                    class_counts[im.label] += 1
                    want = math.ceil(self.regression_fraction * class_counts[im.label])
                    split: Split = "regression" if split_counts[(im.label, "regression")] < want else "train"
                    split_counts[(im.label, split)] += 1
                    use = im.use
                    self._store_object(im.path, sha, ext)
                else:
                    split, use = old.split, old.use  # frozen at first sight
                added.append({"sha256": sha, "ext": ext, "label": im.label, "split": split, "use": use,
                              "provenance": im.provenance})
            new_cursors = {k: v for k, v in (cursors or {}).items() if snap.cursors.get(k) != v}
            if not added and not new_cursors:
                return snap.version
            version = snap.version + 1
            doc = {"version": version, "parent": snap.version or None, "note": note,
                   "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "added": added, "cursors": new_cursors}
            write_atomic(self._version_path(version), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
            return version

    def _store_object(self, src: Path, sha: str, ext: str) -> None:
        dst = self.root / "objects" / sha[:2] / f"{sha}{ext}"
        if dst.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)

    def import_folder(self, folder: str | Path, *, note: str = "") -> int:
        """Add a dataset folder in the training contract (``good/``, ``<class>/``, optional splits)."""
        from lineguard_models.data import scan_dataset

        ds = scan_dataset(folder, require_good=False)
        images = [NewImage(path=s.path, label=s.label, provenance={"source": "folder", "dataset": str(ds.root),
                                                                   "file": s.rel, "fingerprint": ds.fingerprint})
                  for s in ds.samples]
        return self.add(images, note=note or f"import of {ds.root}")

    def import_sink(self, sink_root: str | Path, *, note: str = "",
                    good_use: GoodUse = "fit_flagged") -> tuple[int, int]:
        """Add the sink's label events not imported yet; returns (version, events imported).

        ``good_use`` decides, per frame labelled good, whether it may fit the model or only
        calibrates (:data:`GoodUse`); the verdict the line gave travels in the frame's header.
        """
        key = str(Path(sink_root).resolve())
        book = LabelBook.open(sink_root)
        try:
            events = book.events(after_id=self.snapshot().cursors.get(key, 0))
        finally:
            book.close()
        if not events:
            return self.head(), 0
        latest = {e.message_id: e for e in events}  # a correction in the same batch wins
        images = [NewImage(path=e.image_path, label=e.label,
                           use=sink_use(good_use, e.header.get("verdict"), e.header.get("kind")),
                           provenance={
            "source": "sink", "sink": key, "message_id": e.message_id, "event_id": e.event_id,
            "labeller": e.labeller, "labelled_utc": e.labelled_utc, "bundle_id": e.header.get("bundle_id"),
            "camera_id": e.header.get("camera_id"), "verdict": e.header.get("verdict"),
            "anomaly_score": e.header.get("anomaly_score"), "captured_utc": e.header.get("captured_utc"),
        }) for e in latest.values()]
        version = self.add(images, note=note or f"labels from sink {key}", cursors={key: events[-1].event_id})
        return version, len(events)

    def materialize(self, dest: str | Path, *, version: int | None = None, split: Split = "train",
                    exclude_classes: Iterable[str] = ()) -> Snapshot:
        """Write ``split`` of a version as a dataset folder (hard links; copies across filesystems).

        Flat layout (``good/``, ``<class>/``) when every good image may fit; otherwise the split
        layout: ``train/good`` (fit), ``test/good`` (calibration only), ``train/<class>``. Good images
        whose use is ``fit_only`` go where fitted ones go and are listed in ``fit_only.txt``
        (``data.FIT_ONLY_FILE``), so training fits them and never calibrates on them.
        """
        out = Path(dest)
        if out.exists() and any(out.iterdir()):
            raise DatasetError(f"{out} is not empty; materialize into a fresh folder")
        snap = self.snapshot(version)
        records = snap.select(split, exclude_classes)
        split_layout = any(r.use == "calibrate" and r.label == GOOD for r in records)
        fit_only: list[str] = []
        for r in records:
            folder = Path(r.label)
            if split_layout:
                folder = Path("test" if r.use == "calibrate" and r.label == GOOD else "train") / r.label
            target = out / folder / f"{r.sha256[:16]}{r.ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.path_of(r), target)
            except OSError:
                shutil.copyfile(self.path_of(r), target)
            if r.use == "fit_only" and r.label == GOOD:
                fit_only.append(target.relative_to(out).as_posix())
        if fit_only:
            (out / FIT_ONLY_FILE).write_text(
                "# good images chosen for their score: they fit the model and never set a threshold\n"
                + "".join(f"{rel}\n" for rel in sorted(fit_only)), encoding="utf-8")
        return snap


def sink_use(good_use: GoodUse, verdict: object, kind: object = None) -> Use:
    """The use of a frame labelled good, given the verdict the line gave it and the kind the publisher
    sent it as (see :data:`GoodUse`)."""
    if good_use in ("fit", "calibrate"):
        return "fit" if good_use == "fit" else "calibrate"
    flagged = verdict != "accept"
    use: Use = "fit" if flagged == (good_use != "calibrate_flagged") else "calibrate"
    if good_use == "fit_flagged_unbiased" and use == "fit" and kind != "audit":
        return "fit_only"
    return use
