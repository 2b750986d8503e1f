"""Dataset store: append-only versions, frozen splits, provenance, sink label import."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.errors import DatasetError
from lineguard.sink.labels import LabelBook, LabelError
from lineguard.sink.store import FrameStore
from lineguard.wire import MessageKind
from lineguard_models.backtest import store_decision
from lineguard_models.datastore import DatasetStore, NewImage
from lineguard_models.synth import SynthConfig, write_dataset


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "d", SynthConfig(width_px=48, height_px=40, n_good=10, n_defect_per_class=4,
                                              defect_classes=("scratch", "pit"), seed=2))
    return tmp_path / "d"


def test_import_versions_and_frozen_regression_split(folder: Path, tmp_path: Path) -> None:
    ds = DatasetStore.open(tmp_path / "store", regression_fraction=0.3)
    assert ds.import_folder(folder) == 1
    assert ds.import_folder(folder) == 1  # nothing new: no empty version
    snap = ds.snapshot()
    counts = snap.counts()
    assert counts["regression"] == {"good": 3, "pit": 2, "scratch": 2}  # ceil(0.3 n) per class
    assert counts["train"] == {"good": 7, "pit": 2, "scratch": 2}
    reg = {r.sha256 for r in snap.select("regression")}
    # a new class appears later: it gets regression images too, old splits do not move
    extra = tmp_path / "extra"
    write_dataset(extra, SynthConfig(width_px=48, height_px=40, n_good=0, n_defect_per_class=3,
                                     defect_classes=("crack",), seed=2))
    assert ds.import_folder(extra) == 2
    snap2 = ds.snapshot()
    assert reg <= {r.sha256 for r in snap2.select("regression")}
    assert snap2.counts()["regression"]["crack"] == 1 and snap2.classes() == ["crack", "pit", "scratch"]
    assert ds.snapshot(1).classes() == ["pit", "scratch"]  # old versions stay readable


def test_relabel_keeps_history_split_and_image(folder: Path, tmp_path: Path) -> None:
    ds = DatasetStore.open(tmp_path / "store")
    ds.import_folder(folder)
    target = ds.snapshot().select(exclude_classes=("good", "pit"))[0]
    path = ds.path_of(target)
    v = ds.add([NewImage(path=path, label="good", provenance={"source": "review"})], note="relabel")
    rec = ds.snapshot().records[target.sha256]
    assert (rec.label, rec.history, rec.split, rec.version) == ("good", ("scratch",), target.split, v)
    assert ds.snapshot(v - 1).records[target.sha256].label == "scratch"
    assert path.is_file()  # the image is kept for good
    with pytest.raises(LabelError):
        ds.add([NewImage(path=path, label="Bad Name", provenance={})], note="x")


def test_materialize_excludes_regression_and_refuses_non_empty(folder: Path, tmp_path: Path) -> None:
    ds = DatasetStore.open(tmp_path / "store")
    ds.import_folder(folder)
    snap = ds.materialize(tmp_path / "train")
    files = sorted(p.relative_to(tmp_path / "train").parts[0] for p in (tmp_path / "train").rglob("*.png"))
    assert files.count("good") == 7 and "pit" in files
    reg = {r.sha256[:16] for r in snap.select("regression")}
    assert not reg & {p.stem for p in (tmp_path / "train").rglob("*.png")}
    ds.materialize(tmp_path / "noscratch", exclude_classes=("scratch",))
    assert not (tmp_path / "noscratch" / "scratch").exists()
    with pytest.raises(DatasetError, match="not empty"):
        ds.materialize(tmp_path / "train")


def _sink_with_frames(root: Path, n: int) -> list[str]:
    store = FrameStore.open(root, quota_bytes=2**30, fsync=False)
    ids = []
    for i in range(n):
        img = np.full((32, 40), 20 * i, np.uint8)
        frame = Frame(seq=i, part_id=i, t_capture_ns=1, image=img, camera_id="cam")
        d = Decision(seq=i, part_id=i, verdict=Verdict.RECHECK, anomaly_score=1.5, bundle_id="b7",
                     camera_id="cam", t_capture_ns=1, t_decided_ns=2)
        ids.append(store_decision(store, d, frame, None, MessageKind.UNCERTAIN, {"lower": 1.0, "upper": 2.0}))
    store.close()
    return ids


def test_sink_labels_import_once_with_provenance(tmp_path: Path) -> None:
    ids = _sink_with_frames(tmp_path / "sink", 4)
    book = LabelBook.open(tmp_path / "sink")
    book.label(ids[0], "dent", labeller="ana")
    book.label(ids[1], "good", labeller="ana")
    book.label(ids[0], "scratch", labeller="bo")  # correction: latest wins, both events kept
    ds = DatasetStore.open(tmp_path / "store")
    version, n = ds.import_sink(tmp_path / "sink")
    assert (version, n) == (1, 3)
    assert ds.import_sink(tmp_path / "sink") == (1, 0)  # the cursor remembers
    recs = {r.provenance["message_id"]: r for r in ds.snapshot().records.values()}
    assert recs[ids[0]].label == "scratch" and recs[ids[0]].provenance["labeller"] == "bo"
    assert recs[ids[0]].provenance["bundle_id"] == "b7"
    book.label(ids[2], "dent", labeller="ana")
    assert ds.import_sink(tmp_path / "sink") == (2, 1)
    doc = json.loads((tmp_path / "store" / "versions" / "000002.json").read_text())
    assert doc["parent"] == 1 and len(doc["added"]) == 1
    book.close()


def test_label_book_refuses_unknown_frames_and_keeps_files(tmp_path: Path) -> None:
    ids = _sink_with_frames(tmp_path / "sink", 2)
    book = LabelBook.open(tmp_path / "sink")
    with pytest.raises(LabelError, match="not in the store"):
        book.label("00000000-0000-4000-8000-000000000000", "good", labeller="ana")
    ev = book.label(ids[0], "pit", labeller="ana")
    original = book.frame(ids[0])
    assert original is not None and original.label == "pit"
    original.image_path.unlink()  # the sink evicting it (a race) must not lose the labelled image
    assert ev.image_path.is_file() and book.classes() == ["pit"]
    assert [f.message_id for f in book.queue()] == [ids[1]]
    book.close()
    with pytest.raises(LabelError, match="not a sink store"):
        LabelBook.open(tmp_path / "nothing")


def _sink_with_verdicts(root: Path, verdicts: list[Verdict], kinds: list[MessageKind] | None = None) -> list[str]:
    """One frame per verdict; kind: ``kinds`` or uncertain for a recheck, audit otherwise."""
    store = FrameStore.open(root, quota_bytes=2**30, fsync=False)
    ids = []
    for i, verdict in enumerate(verdicts):
        img = np.full((32, 40), 7 * i + 3, np.uint8)
        frame = Frame(seq=i, part_id=i, t_capture_ns=1, image=img, camera_id="cam")
        d = Decision(seq=i, part_id=i, verdict=verdict, anomaly_score=1.5, bundle_id="b7", camera_id="cam",
                     t_capture_ns=1, t_decided_ns=2)
        kind = kinds[i] if kinds else MessageKind.UNCERTAIN if verdict is Verdict.RECHECK else MessageKind.AUDIT
        ids.append(store_decision(store, d, frame, None, kind, {"lower": 1.0, "upper": 2.0}))
    store.close()
    return ids


@pytest.mark.parametrize(("good_use", "expected"), [
    ("fit_flagged", {"accept": "calibrate", "recheck": "fit", "reject": "fit"}),
    ("calibrate_flagged", {"accept": "fit", "recheck": "calibrate", "reject": "calibrate"}),
    ("fit", {"accept": "fit", "recheck": "fit", "reject": "fit"}),
    ("calibrate", {"accept": "calibrate", "recheck": "calibrate", "reject": "calibrate"}),
    # the recheck came as 'uncertain' (chosen for its score): it fits and never calibrates; the
    # reject came through the audit lottery (a sample of the line): it fits and may calibrate
    ("fit_flagged_unbiased", {"accept": "calibrate", "recheck": "fit_only", "reject": "fit"}),
])
def test_sink_goods_fit_or_calibrate_by_the_line_verdict(tmp_path: Path, good_use: str,
                                                         expected: dict[str, str]) -> None:
    verdicts = [Verdict.ACCEPT, Verdict.RECHECK, Verdict.REJECT, Verdict.RECHECK]
    ids = _sink_with_verdicts(tmp_path / "sink", verdicts)
    book = LabelBook.open(tmp_path / "sink")
    for mid in ids[:3]:
        book.label(mid, "good", labeller="ana")
    book.label(ids[3], "dent", labeller="ana")
    book.close()
    ds = DatasetStore.open(tmp_path / "store", regression_fraction=0.01)  # 1 regression image per class
    ds.import_sink(tmp_path / "sink", good_use=good_use)  # type: ignore[arg-type]
    recs = {r.provenance["verdict"]: r for r in ds.snapshot().records.values() if r.label == "good"}
    assert {v: r.use for v, r in recs.items()} == expected
    # the use is frozen like the split: a later relabel keeps it
    first = ds.snapshot().records
    some = next(r for r in first.values() if r.label == "good")
    ds.add([NewImage(path=ds.path_of(some), label="dent", provenance={}, use="fit")], note="relabel")
    ds.add([NewImage(path=ds.path_of(some), label="good", provenance={}, use="fit")], note="relabel back")
    assert ds.snapshot().records[some.sha256].use == some.use


def test_materialize_puts_calibration_goods_where_the_pipeline_only_calibrates(tmp_path: Path) -> None:
    from lineguard_models.data import scan_dataset

    ids = _sink_with_verdicts(tmp_path / "sink", [Verdict.ACCEPT] * 3 + [Verdict.RECHECK] * 3)
    book = LabelBook.open(tmp_path / "sink")
    for mid in ids:
        book.label(mid, "good", labeller="ana")
    book.close()
    ds = DatasetStore.open(tmp_path / "store", regression_fraction=0.01)
    ds.import_sink(tmp_path / "sink")  # default fit_flagged: accepted goods calibrate
    snap = ds.materialize(tmp_path / "m")
    train = {r.sha256[:16] for r in snap.select("train")}
    scanned = scan_dataset(tmp_path / "m", require_good=True)
    calib = {Path(s.rel).stem for s in scanned.good("test")}
    fit = {Path(s.rel).stem for s in scanned.good("train")}
    want_calib = {r.sha256[:16] for r in snap.select("train") if r.use == "calibrate"}
    assert calib == want_calib and len(train) == 5  # 6 goods, 1 went to the regression split
    assert 2 <= len(calib) <= 3 and fit | calib == train and not fit & calib


def test_version_files_without_use_read_as_fit(folder: Path, tmp_path: Path) -> None:
    ds = DatasetStore.open(tmp_path / "store")
    ds.import_folder(folder)
    path = tmp_path / "store" / "versions" / "000001.json"
    doc = json.loads(path.read_text())
    for r in doc["added"]:
        del r["use"]
    path.write_text(json.dumps(doc))
    assert {r.use for r in ds.snapshot().records.values()} == {"fit"}
    ds.materialize(tmp_path / "flat")
    assert (tmp_path / "flat" / "good").is_dir() and not (tmp_path / "flat" / "train").exists()


def test_score_selected_goods_are_listed_fit_only_and_training_reads_the_list(tmp_path: Path) -> None:
    from lineguard_models.data import FIT_ONLY_FILE, scan_dataset

    verdicts = [Verdict.ACCEPT] * 3 + [Verdict.RECHECK] * 3 + [Verdict.REJECT] * 2
    kinds = [MessageKind.AUDIT] * 3 + [MessageKind.UNCERTAIN] * 3 + [MessageKind.NEAR_REJECT, MessageKind.AUDIT]
    ids = _sink_with_verdicts(tmp_path / "sink", verdicts, kinds)
    book = LabelBook.open(tmp_path / "sink")
    for mid in ids:
        book.label(mid, "good", labeller="ana")
    book.close()
    ds = DatasetStore.open(tmp_path / "store", regression_fraction=0.01)
    ds.import_sink(tmp_path / "sink", good_use="fit_flagged_unbiased")
    snap = ds.materialize(tmp_path / "m")
    train = snap.select("train")
    want = {r.sha256[:16] for r in train if r.use == "fit_only"}
    by_kind = {r.provenance["message_id"]: r.use for r in train}
    assert {by_kind[m] for m in ids[3:7] if m in by_kind} == {"fit_only"}  # uncertain + near_reject
    assert {by_kind[m] for m in ids[:3] if m in by_kind} == {"calibrate"}
    assert by_kind.get(ids[7], "fit") == "fit"  # the audited reject
    scanned = scan_dataset(tmp_path / "m")
    assert {Path(rel).stem for rel in scanned.fit_only} == want and len(want) >= 3
    assert all(rel.startswith("train/good/") for rel in scanned.fit_only)  # fitted, not calibration-only
    assert (tmp_path / "m" / FIT_ONLY_FILE).read_text().startswith("#")
    assert scanned.summary()["fit_only"] == len(want)


def test_retrain_cli_imports_sink_labels_with_the_chosen_good_use(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from lineguard.cli import main

    verdicts = [Verdict.ACCEPT, Verdict.RECHECK, Verdict.RECHECK, Verdict.REJECT]
    ids = _sink_with_verdicts(tmp_path / "sink", verdicts)
    book = LabelBook.open(tmp_path / "sink")
    for mid in ids:
        book.label(mid, "good", labeller="ana")
    book.close()
    store = tmp_path / "store"
    assert main(["retrain", "--datastore", str(store), "--sink", str(tmp_path / "sink"),
                 "--good-use", "fit_flagged_unbiased"]) == 0
    assert "4 label events" in capsys.readouterr().out
    uses = {r.provenance["verdict"]: r.use for r in DatasetStore.open(store).snapshot().records.values()}
    assert uses["recheck"] == "fit_only" and uses["accept"] == "calibrate" and uses["reject"] == "fit"
    with pytest.raises(SystemExit) as exc:
        main(["retrain", "--datastore", str(store), "--good-use", "everything"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
