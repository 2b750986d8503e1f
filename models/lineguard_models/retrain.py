"""Retraining that never forgets: new labels + the whole history -> candidate -> promotion gate.

Data flow: sink label log -> :meth:`DatasetStore.import_sink` (new version) -> the version's
**train** split (every image ever labelled, all classes, minus the frozen regression split) ->
``pipeline.train`` (fit on good, calibrate on held-out good + every defect class) -> candidate
bundle -> :func:`evaluate` the active bundle and the candidate on the frozen **regression** split
(every defect class ever seen, never trained or calibrated on) through the edge's own engines and
decision -> :func:`gate` -> the candidate is written to ``out`` when it passes, to
``<out>.refused`` when it does not, with a report (Markdown + JSON) beside it.

The gate refuses a candidate when, on the regression set,

* the **recall** (share of a class's images *not accepted*: rejected or sent to recheck) of any
  class the active bundle was judged on drops by more than ``recall_tolerance``, or
* the **false-reject rate** (good images rejected) rises by more than ``false_reject_tolerance``.

Must never: train or calibrate on a regression image, promote a candidate the gate refused, or
evaluate the two bundles on different images.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from lineguard.bundle import Bundle, load_bundle
from lineguard.contracts import Verdict
from lineguard.errors import BundleError, DatasetError
from lineguard.imageio import is_grey_rgb, read_image
from lineguard.sink.labels import GOOD
from lineguard_models.backtest import Judge
from lineguard_models.datastore import DatasetStore, GoodUse, Record
from lineguard_models.pipeline import TrainConfig, train

Progress = Callable[[str], None]


class GateConfig(BaseModel):
    """Promotion gate tolerances (absolute, as fractions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recall_tolerance: float = Field(0.05, ge=0.0, le=1.0, description="largest allowed drop of any class's recall")
    false_reject_tolerance: float = Field(0.0, ge=0.0, le=1.0,
                                          description="largest allowed rise of the false-reject rate")
    min_class_images: int = Field(1, ge=1, le=10_000, description="classes with fewer regression images are "
                                                                  "reported but not gated")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One bundle on the regression set."""

    bundle_id: str
    class_images: dict[str, int]
    class_caught: dict[str, int]  # not accepted
    good_images: int
    good_rejected: int
    good_rechecked: int

    def recall(self, cls: str) -> float:
        n = self.class_images.get(cls, 0)
        return self.class_caught.get(cls, 0) / n if n else float("nan")

    @property
    def false_reject_rate(self) -> float:
        return self.good_rejected / self.good_images if self.good_images else 0.0


@dataclass(frozen=True, slots=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]  # why refused (empty when passed)
    notes: tuple[str, ...] = ()  # what was not gated and why


def _as_trained(image: npt.NDArray[Any], channels: int) -> npt.NDArray[Any]:
    """A grey image saved as RGB (identical channels) in its mono form when the bundle is mono: the
    training loader reads such files as mono (``data.load_image``), so the regression set must too."""
    if channels == 1 and is_grey_rgb(image):
        return np.ascontiguousarray(image[:, :, 0])
    return image


def evaluate(bundle: Bundle, store: DatasetStore, records: Sequence[Record]) -> Evaluation:
    """Judge every regression image with ``bundle`` as the line would."""
    judge = Judge(bundle)
    channels = bundle.manifest.input.channels
    images: dict[str, int] = {}
    caught: dict[str, int] = {}
    good = rejected = rechecked = 0
    try:
        for r in records:
            d, _, _ = judge.judge(_as_trained(read_image(store.path_of(r)), channels))
            if r.label == GOOD:
                good += 1
                rejected += d.verdict is Verdict.REJECT
                rechecked += d.verdict is Verdict.RECHECK
            else:
                images[r.label] = images.get(r.label, 0) + 1
                caught[r.label] = caught.get(r.label, 0) + (d.verdict is not Verdict.ACCEPT)
    finally:
        judge.close()
    return Evaluation(bundle_id=bundle.bundle_id, class_images=images, class_caught=caught, good_images=good,
                      good_rejected=rejected, good_rechecked=rechecked)


def gate(active: Evaluation, candidate: Evaluation, cfg: GateConfig) -> GateDecision:
    """Refuse a candidate that forgot a class or rejects more good parts (pure)."""
    reasons: list[str] = []
    notes: list[str] = []
    for cls in sorted(set(active.class_images) | set(candidate.class_images)):
        n = candidate.class_images.get(cls, 0)
        if n < cfg.min_class_images:
            notes.append(f"class {cls}: {n} regression images, not gated")
            continue
        old, new = active.recall(cls), candidate.recall(cls)
        if new < old - cfg.recall_tolerance:
            reasons.append(f"class {cls}: recall {old:.0%} -> {new:.0%} on {n} regression images "
                           f"(drop > {cfg.recall_tolerance:.0%}): the candidate forgot this class")
    fr_old, fr_new = active.false_reject_rate, candidate.false_reject_rate
    if fr_new > fr_old + cfg.false_reject_tolerance:
        reasons.append(f"false-reject rate {fr_old:.1%} -> {fr_new:.1%} on {candidate.good_images} good regression "
                       f"images (rise > {cfg.false_reject_tolerance:.1%})")
    return GateDecision(passed=not reasons, reasons=tuple(reasons), notes=tuple(notes))


@dataclass(frozen=True, slots=True)
class RetrainResult:
    candidate_path: Path  # out when promoted, <out>.refused otherwise
    dataset_version: int
    active: Evaluation
    candidate: Evaluation
    decision: GateDecision
    report_path: Path


def _report(res_path: Path, *, version: int, counts: dict[str, dict[str, int]], active: Evaluation,
            cand: Evaluation, decision: GateDecision, excluded: Sequence[str]) -> Path:
    lines = [f"# Retrain report: {cand.bundle_id}", "",
             f"**{'PROMOTABLE' if decision.passed else 'REFUSED'}** against active bundle {active.bundle_id}.", "",
             f"Dataset version {version}; images per split and class: `{json.dumps(counts)}`."]
    if excluded:
        lines.append(f"Classes left out of training on request: {', '.join(excluded)}.")
    lines += ["", "| regression set | n | active | candidate |", "|---|---|---|---|"]
    for cls in sorted(set(active.class_images) | set(cand.class_images)):
        lines.append(f"| recall {cls} | {cand.class_images.get(cls, 0)} | {active.recall(cls):.0%} | "
                     f"{cand.recall(cls):.0%} |")
    lines.append(f"| false-reject rate | {cand.good_images} | {active.false_reject_rate:.1%} | "
                 f"{cand.false_reject_rate:.1%} |")
    lines += ["", *(f"- refused: {r}" for r in decision.reasons), *(f"- note: {n}" for n in decision.notes)]
    md = res_path.with_name(res_path.name + ".md")  # not with_suffix: the stem holds a dot
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    doc = {"passed": decision.passed, "reasons": decision.reasons, "notes": decision.notes,
           "dataset_version": version, "counts": counts, "excluded_classes": list(excluded),
           "active": asdict(active), "candidate": asdict(cand)}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    res_path.with_name(res_path.name + ".json").write_text(text, encoding="utf-8")
    return md


def retrain(store_root: str | Path, active_bundle: str | Path, out: Path, *, train_cfg: TrainConfig,
            gate_cfg: GateConfig | None = None, sink: str | Path | None = None,
            exclude_classes: Iterable[str] = (), good_use: GoodUse = "fit_flagged",
            progress: Progress = print) -> RetrainResult:
    """Import new labels, train on the whole history, evaluate, gate; see the module docstring.

    ``exclude_classes`` leaves classes out of *training* (ablations and the forgetting test); the
    regression set always holds every class. ``good_use``: which new good labels may fit the
    model and which only calibrate (``datastore.GoodUse``); it is fixed per image at import.
    """
    gate_cfg = gate_cfg or GateConfig()
    excluded = sorted(set(exclude_classes))
    store = DatasetStore.open(store_root, create=False)
    if sink is not None:
        version, n = store.import_sink(sink, good_use=good_use)
        progress(f"imported {n} label events from {sink} -> dataset version {version}")
    active = load_bundle(active_bundle)
    snap = store.snapshot()
    regression = snap.select("regression")
    if not regression:
        raise DatasetError(f"dataset store {store_root} has no regression images; import data first")
    for path in (out, out.with_name(out.name + ".refused")):
        if path.exists():
            raise BundleError(f"{path} already exists (choose another --out or remove it)")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.retrain-", dir=out.parent))
    try:
        store.materialize(work / "data", version=snap.version, exclude_classes=excluded)
        progress(f"dataset version {snap.version}: {snap.counts()}; training the candidate")
        cand_bundle = train(work / "data", work / "candidate", train_cfg, progress=progress)
        progress(f"evaluating {active.bundle_id} and {cand_bundle.bundle_id} on {len(regression)} regression images")
        ev_active = evaluate(active, store, regression)
        ev_cand = evaluate(cand_bundle, store, regression)
        decision = gate(ev_active, ev_cand, gate_cfg)
        target = out if decision.passed else out.with_name(out.name + ".refused")
        (work / "candidate").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = _report(out.with_name(out.name + ".retrain-report"), version=snap.version, counts=snap.counts(),
                     active=ev_active, cand=ev_cand, decision=decision, excluded=excluded)
    progress(f"{'candidate promotable' if decision.passed else 'candidate REFUSED'}: {target} (report {report})")
    return RetrainResult(candidate_path=target, dataset_version=snap.version, active=ev_active, candidate=ev_cand,
                         decision=decision, report_path=report)
