"""Per-line automatic configuration: the recipe that suits this line, chosen on its own images.

Data flow (``lineguard train`` without ``--no-auto``, before :func:`pipeline.train`): the dataset
folder -> a small list of candidate recipes (:func:`default_candidates`: changes to
:class:`~lineguard_models.pipeline.TrainConfig`, the current default first) -> for each candidate,
within a time budget: the good training images dealt into K seeded folds (``crossfit.fold_of``, the
same folds the bundle's out-of-fold calibration uses), a bank fitted without each fold, exported to
ONNX and run in ONNX Runtime through ``lineguard.preprocess.prepare`` (the edge's path) on the fold's
good images and on a share of the defect images (or, without defect images, on synthetic defects
drawn on the fold's good images) -> :func:`lineguard_models.calibration.calibrate` at the line's
policy -> automated share, AUROC, separation, engine p50 -> the winner -> :func:`pipeline.train`
with the winner's settings, reusing its out-of-fold good scores, and the record of every candidate
in the report and the manifest (``calibration.auto``). One deadline covers the whole call: the
first candidate's folds price the final training, which is reserved; later candidates are skipped
or stopped between folds when they would eat into it (``autobudget.py``).

Why out-of-fold: a good image fitted into the bank scores about 0 on it, so a candidate can only be
judged on images its bank did not see. Why the automated share: it is what the line feels (parts
decided without a person) and it already folds in the escape target and the false-reject budget
(the thresholds keep both, the share is what is left to decide). Without defect images the share
is measured against synthetic defects (scratches, pits, cracks, stains from ``synth.py``) drawn on
the line's own good images: a proxy, flagged as such in the record (docs/training.md).

Must never: let a defect image reach a bank, choose a candidate whose engine is slower than the
latency budget while one within it was measured, or run past the time budget without saying so.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from lineguard.bundle import Bundle
from lineguard.errors import BundleError, ConfigError
from lineguard.preprocess import InputSpec
from lineguard_models.autobudget import (
    SAFETY,
    Clock,
    Deadline,
    FinalEstimate,
    FoldGuard,
    FoldTimes,
    Plan,
    Work,
    classifier_select_budget,
    correction,
    overrun_warning,
    work_of,
)
from lineguard_models.autocandidates import Candidate, candidate_config, default_candidates
from lineguard_models.autoprice import price_candidates
from lineguard_models.calibration import CalibrationResult, calibrate
from lineguard_models.classifier_bundle import classifier_reserve_ms
from lineguard_models.crossfit import OutOfFold, fold_of
from lineguard_models.data import Dataset, Sample
from lineguard_models.ortscore import OrtScorer, Progress, Scored, iter_batches, score_samples
from lineguard_models.pipeline import (
    TrainConfig,
    anomaly_model_config,
    load_camera_profile,
    make_input_spec,
    pick_defects,
    split_good,
    train,
)
from lineguard_models.pseudo_defects import PSEUDO, pseudo_scored

log = logging.getLogger(__name__)


class AutoConfig(BaseModel):
    """How automatic configuration searches (``lineguard train`` options; recorded in the manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folds: int = Field(3, ge=2, le=10, description="out-of-fold folds per candidate (and of the bundle's calibration)")
    time_budget_s: float = Field(600.0, gt=0.0, description="wall time of the whole train_auto call: scan, "
                                  "search and final training (module autobudget)")
    latency_budget_ms: float = Field(40.0, gt=0.0, description="most engine p50 (2 CPU threads) a chosen candidate "
                                     "may have")
    latency_runs: int = Field(15, ge=3, le=1000, description="timed engine runs per candidate")


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What one candidate achieved out-of-fold (JSON-safe through :meth:`record`)."""

    name: str
    settings: str
    why: str
    status: str = "tried"  # tried | skipped: engine priced at (...) | skipped: time budget (...) | stopped: (...)
    seconds: float | None = None
    predicted_s: float | None = None  # the time budget's cost model (module autobudget), before it ran
    engine_p50_ms: float | None = None  # the final bank's engine, priced before the folds (module autoprice)
    bank_rows: int | None = None
    automated_share: float | None = None
    auroc: float | None = None  # worst class (or synthetic defects) against the out-of-fold goods
    separation: float | None = None  # (accept-side defect score - reject-side good score) / good IQR
    tail: float | None = None  # (max - median) / IQR of the out-of-fold good scores: heavier = riskier
    note: str = ""
    n_scored: int | None = None  # images the automated share is counted over (its standard error)
    # the goods-only criterion's figures on the same folds when real defects decide (the suite checks
    # that both criteria rank the candidates alike: the justification of the goods-only mode)
    synthetic_share: float | None = None
    synthetic_auroc: float | None = None
    oof: OutOfFold = field(default_factory=lambda: OutOfFold(goods=[]))  # pipeline.train calibrates on these

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "oof"}


def _settings(cfg: TrainConfig, spec: InputSpec, cand: Candidate) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in cand.updates.items() if k not in ("input_size_px",))
    return f"{spec.input_width}x{spec.input_height} x {spec.tiles.count} tiles" + (f"; {extra}" if extra else "")


@dataclass(slots=True)
class _Folds:
    """A candidate's folds: out-of-fold good scores, the other images' scores, timings, and the
    status that stopped it early ("" = every fold ran)."""

    goods: list[Scored] = field(default_factory=list)
    rest: list[Scored] = field(default_factory=list)
    times: FoldTimes = field(default_factory=FoldTimes)
    stopped: str = ""


def _fold_scores(ds: Dataset, cfg: TrainConfig, spec: InputSpec, train_s: Sequence[Sample],
                 others: Sequence[Sample], auto: AutoConfig, scratch: Path, progress: Progress, *,
                 clock: Clock, guard: FoldGuard | None) -> _Folds:
    """Out-of-fold good scores of ``train_s``, scores of ``others`` (each by one fold's bank) or of
    synthetic defects when there are none; ``guard`` (None for the first candidate) is asked before
    each later fold."""
    from lineguard_models.backbone import load_backbone

    model_cfg = anomaly_model_config(cfg, spec)
    profile = load_camera_profile(cfg.camera_profile, spec)
    backbone = load_backbone(model_cfg.backbone)
    fold = fold_of(train_s, auto.folds, cfg.seed)  # the very folds pipeline.train's calibration uses
    run = _Folds()
    for k in range(auto.folds):
        if guard is not None and k > 0:
            run.stopped = guard.before_fold(k, run.times) or ""
            if run.stopped:
                break
        fit_s = [s for s, f in zip(train_s, fold, strict=True) if f != k]
        held = [s for s, f in zip(train_s, fold, strict=True) if f == k]
        t = clock()
        onnx_path = scratch / f"fold{k}.onnx"
        coreset_s = _fit_export(ds, cfg, spec, fit_s, model_cfg, profile, backbone, onnx_path, clock)
        t_fit = clock()
        ort_scorer = OrtScorer(onnx_path, spec)
        mine = [s for i, s in enumerate(others) if i % auto.folds == k]
        run.goods += score_samples(ort_scorer, ds, held, _quiet)
        run.rest += score_samples(ort_scorer, ds, mine, _quiet)
        run.rest += pseudo_scored(ort_scorer, ds, held, spec, cfg.seed)  # label PSEUDO: criterion or check
        mine = [*mine, *held]
        run.times.fit_s.append(t_fit - t)
        run.times.coreset_s.append(coreset_s)
        run.times.score_s.append(clock() - t_fit)
        run.times.fitted.append(len(fit_s))
        run.times.scored.append(len(held) + len(mine))
        onnx_path.unlink()
        progress(f"  fold {k + 1}/{auto.folds}: {len(fit_s)} fitted, {len(held)} good scored")
    return run


def _fit_export(ds: Dataset, cfg: TrainConfig, spec: InputSpec, fit_s: Sequence[Sample], model_cfg: Any,
                profile: Any, backbone: Any, onnx_path: Path, clock: Clock) -> float:
    """Fit a fold's bank and export it; returns the ``clock`` seconds after the feature pass (the
    coreset selection, which the time budget scales quadratically)."""
    from lineguard_models.anomaly import batched, fit_anomaly_model
    from lineguard_models.export import export_onnx

    marks = [clock()]
    batches = iter_batches(ds, fit_s, spec, profile=profile, bank=cfg.anomaly_bank, seed=cfg.seed)
    scorer = fit_anomaly_model(batched(batches, model_cfg.batch_size), config=model_cfg,
                               channels=spec.channels, max_value=spec.max_value, backbone=backbone,
                               progress=lambda _: marks.append(clock()))  # after every feature batch
    coreset_s = clock() - marks[-1]
    export_onnx(scorer, onnx_path)
    return coreset_s


def _quiet(_: str) -> None:
    """Progress sink for a fold's scoring: the fold's own line says what was scored."""


def _figures(outcome: Outcome, result: CalibrationResult, good: npt.NDArray[np.float64]) -> None:
    q25, q50, q75 = np.percentile(good, [25, 50, 75])
    iqr = max(float(q75 - q25), 1e-12)
    outcome.automated_share = result.automated_share
    outcome.auroc = min((c.auroc for c in result.classes), default=None)
    if result.t_escape is not None:
        outcome.separation = (result.t_escape - result.t_false_reject) / iqr
    outcome.tail = float((good.max() - q50) / iqr)


def evaluate(ds: Dataset, base: TrainConfig, cand: Candidate, auto: AutoConfig, scratch: Path,
             progress: Progress, *, clock: Clock = time.monotonic,
             guard: FoldGuard | None = None, price: tuple[float, int]) -> tuple[Outcome, FoldTimes]:
    """One candidate's out-of-fold figures on the line's images (see the module docstring) and what
    its folds took; stopped by ``guard`` it keeps the stop as its status and has no figures.
    ``price``: its engine p50 ms and bank rows (``autoprice.price_candidates``)."""
    cfg = candidate_config(base, cand, auto.folds)
    train_s, extra_good = split_good(ds, cfg)
    spec = make_input_spec(ds, train_s, cfg)
    outcome = Outcome(name=cand.name, settings=_settings(cfg, spec, cand), why=cand.why, engine_p50_ms=price[0],
                      bank_rows=price[1])
    t0 = clock()
    scratch.mkdir(parents=True, exist_ok=True)
    others = extra_good + pick_defects(ds, cfg.max_defects_per_class, cfg.seed)
    run = _fold_scores(ds, cfg, spec, train_s, others, auto, scratch, progress, clock=clock, guard=guard)
    if run.stopped:  # incomplete out-of-fold scores: no figures, never chosen
        outcome.status, outcome.seconds = run.stopped, round(clock() - t0, 1)
        return outcome, run.times
    outcome.oof = OutOfFold(goods=[s for s in run.goods if s.rel not in ds.fit_only],  # fit_only never calibrates
                            reference={s.rel: s.score for s in run.rest if s.label == "good"})  # held out of every bank
    good = np.array([s.score for s in outcome.oof.goods + run.rest if s.label == "good"])
    defects: dict[str, list[float]] = {}
    for s in run.rest:
        if s.label != "good":
            defects.setdefault(s.label, []).append(s.score)
    synthetic = {PSEUDO: defects.pop(PSEUDO)}
    logging.disable(logging.WARNING)  # a candidate's calibration warnings are not the bundle's
    try:
        result = calibrate(good, defects or synthetic, cfg.policy)
        check = calibrate(good, synthetic, cfg.policy) if defects else result
    finally:
        logging.disable(logging.NOTSET)
    _figures(outcome, result, good)
    outcome.n_scored = int(good.size + sum(len(v) for v in (defects or synthetic).values()))
    outcome.synthetic_share = check.automated_share
    outcome.synthetic_auroc = min((c.auroc for c in check.classes), default=None)
    if not defects:
        defects = synthetic
    outcome.seconds = round(clock() - t0, 1)
    if PSEUDO in defects:
        outcome.note = "share and AUROC against synthetic defects (no defect images)"
    return outcome, run.times


def _work(ds: Dataset, base: TrainConfig, cand: Candidate, folds: int) -> Work:
    cfg = candidate_config(base, cand, folds)
    return work_of(cfg, make_input_spec(ds, split_good(ds, cfg)[0], cfg))


def _key(o: Outcome) -> tuple[float, float, float, float]:
    """Larger is better: automated share, then worst AUROC, then separation, then speed."""
    return (o.automated_share or 0.0, o.auroc if o.auroc is not None else 0.0,
            o.separation if o.separation is not None else -math.inf, -(o.engine_p50_ms or math.inf))


def choose(outcomes: Sequence[Outcome], latency_budget_ms: float) -> tuple[Outcome, str]:
    """The winner among the candidates whose every fold ran (a stopped or skipped one never wins)
    and why (within the latency budget when any is). The first of them (the product default, or its
    lean version) is kept unless another beats it clearly: an out-of-fold share higher by more than one
    standard error (:func:`_share_se`: a share that differs by a few images is noise) and an out-of-fold
    AUROC no lower (:func:`_ranks_as_well`: a share is one operating point's count, the AUROC the
    ranking behind every threshold). The default is the recipe the quality suite chose across lines."""
    tried = [o for o in outcomes if o.status == "tried"]
    if not tried:
        raise ConfigError("automatic configuration tried no candidate: raise --auto-time-budget-s or use --no-auto")
    fast = [o for o in tried if (o.engine_p50_ms or math.inf) <= latency_budget_ms]
    if not fast:
        best = min(tried, key=lambda o: o.engine_p50_ms or math.inf)
        return best, (f"no candidate within the latency budget {latency_budget_ms:g} ms: the fastest "
                      f"({best.engine_p50_ms:.1f} ms) is taken")
    first, top = fast[0], max(fast, key=_key)
    clear = [o for o in fast[1:] if _clearly_above(o, first)]
    best = max([first, *(o for o in clear if _ranks_as_well(o, first))], key=_key)
    share = {o.name: f"{100 * (o.automated_share or 0):.1f} %" for o in fast}
    margin = _share_se(top if best is first else best, first)
    if best is first and clear:
        o = max(clear, key=_key)
        return first, (f"{first.name} kept: {o.name}'s out-of-fold automated share {share[o.name]} is above its "
                       f"{share[first.name]}, but its out-of-fold AUROC {o.auroc or 0:.3f} is below "
                       f"{first.auroc or 0:.3f}: more parts decided at one threshold on a worse ranking is luck")
    if best is first and top is not first and margin is not None:
        return first, (f"{first.name} kept: the best other out-of-fold automated share ({top.name} {share[top.name]} "
                       f"against {share[first.name]}) is within one standard error ({100 * margin:.1f} points) of it")
    ties = [o.name for o in fast if o is not best and o.automated_share == best.automated_share]
    why = f"largest out-of-fold automated share ({100 * (best.automated_share or 0):.1f} %)"
    if best is not first and margin is not None:
        why += (f", more than one standard error ({100 * margin:.1f} points) above {first.name}'s, "
                f"with an out-of-fold AUROC no lower ({best.auroc or 0:.3f} against {first.auroc or 0:.3f})")
    if ties:
        why += f"; tied with {', '.join(ties)} on the share, ahead on AUROC / separation / speed"
    slow = [o.name for o in tried if o not in fast]
    if slow:
        why += f"; over the latency budget, not chosen: {', '.join(slow)}"
    return best, why


def _clearly_above(o: Outcome, first: Outcome) -> bool:
    """``o``'s share beats ``first``'s by more than one standard error; any higher share where the image
    counts are unknown."""
    margin = _share_se(o, first)
    gain = (o.automated_share or 0.0) - (first.automated_share or 0.0)
    return gain > margin if margin is not None else _key(o) > _key(first)


def _ranks_as_well(o: Outcome, first: Outcome) -> bool:
    """``o``'s out-of-fold AUROC is no lower than ``first``'s (unknown counts as no lower). Quality suite:
    elpv_poly seed 1 chose lite0 on 68.8 % against the default's 51.2 % with an out-of-fold AUROC of
    0.917 against 0.922, and its test AUROC was 0.857 against 0.886; every switch the test images
    confirmed (deeppcb, casting, metal plate, bsdata) also ranked better out of fold."""
    return o.auroc is None or first.auroc is None or o.auroc >= first.auroc


def _share_se(a: Outcome, b: Outcome) -> float | None:
    """Standard error of the difference of two out-of-fold automated shares (binomial, each over its own
    images); None when either count is unknown (then the largest share wins). On 60 goods + 20
    defects a share moves by whole images (1.25 points each): on elpv_mono seed 0 (quality suite)
    auto chose stage3 at 352 px on 10.0 % against the default's 6.2 % and lost 0.032 test AUROC,
    while deeppcb's 55 % against 26 % was a real gain."""
    if not a.n_scored or not b.n_scored:
        return None
    pa, pb = a.automated_share or 0.0, b.automated_share or 0.0
    return math.sqrt(pa * (1 - pa) / a.n_scored + pb * (1 - pb) / b.n_scored)


def _guard(plan: Plan, work: Work, deadline: Deadline, reserve_s: float, auto: AutoConfig) -> FoldGuard:
    lin, quad = plan.ratios(work)
    return FoldGuard(deadline=deadline.t0 + deadline.budget_s - reserve_s, folds=auto.folds,
                     predicted_fold_s=plan.first.scaled_fold_s(lin, quad), clock=deadline.clock)


def _skipped(ds: Dataset, base: TrainConfig, cand: Candidate, folds: int, price: tuple[float, int], status: str,
             predicted_s: float | None = None) -> Outcome:
    """The record of a candidate that gets no folds (``status`` says why)."""
    cfg = candidate_config(base, cand, folds)
    return Outcome(name=cand.name, settings=_settings(cfg, make_input_spec(ds, split_good(ds, cfg)[0], cfg), cand),
                   why=cand.why, status=status, predicted_s=predicted_s, engine_p50_ms=price[0], bank_rows=price[1])


def _run(ds: Dataset, base: TrainConfig, cand: Candidate, auto: AutoConfig, scratch: Path, progress: Progress,
         deadline: Deadline, guard: FoldGuard | None, price: tuple[float, int]) -> tuple[Outcome, FoldTimes]:
    try:
        o, times = evaluate(ds, base, cand, auto, scratch / cand.name, progress, clock=deadline.clock, guard=guard,
                            price=price)
    finally:
        shutil.rmtree(scratch / cand.name, ignore_errors=True)
    if o.status == "tried":
        progress(f"auto: {o.name}: automated share {100 * (o.automated_share or 0):.1f} %, AUROC "
                 f"{o.auroc if o.auroc is not None else float('nan'):.3f}, engine p50 {o.engine_p50_ms:.1f} ms, "
                 f"{o.seconds:.0f} s")
    else:
        progress(f"auto: {o.name}: {o.status} ({o.seconds:.0f} s)")
    return o, times


def select(ds: Dataset, base: TrainConfig, auto: AutoConfig, scratch: Path, *, progress: Progress = print,
           candidates: Sequence[Candidate] | None = None,
           deadline: Deadline | None = None) -> tuple[TrainConfig, OutOfFold, dict[str, Any]]:
    """Try the candidates within the time budget (``deadline``: the whole ``train_auto`` call's, else
    one started now); returns (winner's config, its out-of-fold scores for ``pipeline.train``, the
    record for the report and the manifest). The first candidate always runs; its folds price the final training,
    whose reserve the later candidates may not touch (module ``autobudget``). Every engine is priced
    first (``autoprice.price_candidates``): one over the latency budget is not run while another is within it."""
    size = _median_size(ds)
    deadline = deadline or Deadline(auto.time_budget_s)
    extra, priced = classifier_reserve_ms(ds, make_input_spec(ds, [], base), base.classifier)  # measured here
    if extra:  # the classifier's share of a flagged part: preprocessing + its costliest candidate on this CPU
        auto = auto.model_copy(update={"latency_budget_ms": max(round(auto.latency_budget_ms - extra, 1),
                                                                auto.latency_budget_ms / 4)})  # never raised
        progress(f"auto: anomaly engine budget {auto.latency_budget_ms:g} ms p50 ({extra:.1f} ms kept: {priced})")
    cands, prices = price_candidates(ds, base, candidates if candidates is not None else default_candidates(base, size),
                                     folds=auto.folds, budget_ms=auto.latency_budget_ms, runs=auto.latency_runs,
                                     progress=progress, image_size=size if candidates is None else None)
    works = [_work(ds, base, c, auto.folds) for c in cands]
    any_fast = any(prices[c.name][0] <= auto.latency_budget_ms for c in cands)
    outcomes: list[Outcome] = []
    plan: Plan | None = None
    first: Candidate | None = None
    for i, (cand, work) in enumerate(zip(cands, works, strict=True), start=1):
        guard, need, price = None, None, prices[cand.name]
        skip: Outcome | None = None
        if price[0] > auto.latency_budget_ms and any_fast:
            skip = _skipped(ds, base, cand, auto.folds, price, f"skipped: engine priced at {price[0]:.1f} ms p50, "
                            f"over the {auto.latency_budget_ms:g} ms budget")
        elif plan is not None:
            reserve = plan.estimate(work).reserve_s()
            need = plan.predict_s(work, auto.folds)
            if need > deadline.left(reserve):
                skip = _skipped(ds, base, cand, auto.folds, price, f"skipped: time budget (needs about {need:.0f} s, "
                                f"{max(deadline.left(reserve), 0):.0f} s left)", predicted_s=round(need, 1))
            else:
                guard = _guard(plan, work, deadline, reserve, auto)
        if skip is not None:
            outcomes.append(skip)
            progress(f"auto: candidate {i}/{len(cands)} {cand.name}: {skip.status}")
            continue
        progress(f"auto: candidate {i}/{len(cands)} {cand.name} ({cand.why}), {deadline.elapsed():.0f} s "
                 f"of {auto.time_budget_s:.0f} s used" + (f", needs about {need:.0f} s" if need else ""))
        o, times = _run(ds, base, cand, auto, scratch, progress, deadline, guard, price)
        o.predicted_s = None if need is None else round(need, 1)
        outcomes.append(o)
        if plan is None:
            plan, first = Plan.measured(ds, candidate_config(base, cand, auto.folds), times, work), cand
        elif guard is not None and times.fit_s:  # later predictions learn from its folds, stopped or not
            done = len(times.fit_s)
            plan.pairs.append((times.total_s(), guard.predicted_fold_s * done / correction(plan.pairs)))
    assert plan is not None  # the first candidate within the latency budget always runs
    best, why = choose(outcomes, auto.latency_budget_ms)
    winner = cands[next(i for i, o in enumerate(outcomes) if o is best)]
    estimate = plan.estimate(works[cands.index(winner)], corrected=winner is not first)
    record = _record(outcomes, best, why, winner, auto, deadline.elapsed(), ds, estimate, extra)
    progress(f"auto: chose {best.name}: {why}")
    return candidate_config(base, winner, auto.folds), best.oof, record


def _median_size(ds: Dataset) -> tuple[int, int]:
    widths, heights = sorted(w for w, _ in ds.sizes), sorted(h for _, h in ds.sizes)
    return widths[len(widths) // 2], heights[len(heights) // 2]


def _record(outcomes: Sequence[Outcome], best: Outcome, why: str, winner: Candidate, auto: AutoConfig,
            seconds: float, ds: Dataset, estimate: FinalEstimate, classifier_ms: float) -> dict[str, Any]:
    skipped = [o.name for o in outcomes if o.status.startswith("skipped: time")]
    slow = [o.name for o in outcomes if o.status.startswith("skipped: engine")]
    stopped = [o.name for o in outcomes if o.status.startswith("stopped")]
    with_defects = bool(ds.defect_classes)
    crit = ("automated share at the line's policy on out-of-fold scores of its own good images and a share of "
            "its defect images" if with_defects else
            "no defect images: automated share against synthetic defects drawn on out-of-fold good images (a proxy)")
    tried = len(outcomes) - len(skipped) - len(stopped) - len(slow)
    note = (f"time budget {auto.time_budget_s:.0f} s for the whole training: {tried} of {len(outcomes)} candidates "
            f"tried in {seconds:.0f} s" + (f"; stopped in flight: {', '.join(stopped)}" if stopped else "")
            + (f"; stopped before {', '.join(skipped)}" if skipped else "")
            + (f"; engine priced over the latency budget, not run: {', '.join(slow)}" if slow else "")
            + f"; final training estimated {estimate.total_s:.0f} s, {estimate.reserve_s():.0f} s reserved"
            + f"; latency budget {auto.latency_budget_ms:g} ms engine p50 (2 CPU threads, the final bank's rows, "
            "priced before the folds" + (f"; the line's budget less {classifier_ms:.1f} ms for a flagged part's "
                                         "classifier, measured on this CPU" if classifier_ms else "") + ")")
    return {"chosen": best.name, "reason": why, "criterion": crit + "; ties: worst-class AUROC, separation, speed",
            "budget_note": note, "settings": winner.updates, "search_seconds": round(seconds, 1), "budget_s":
            auto.time_budget_s, "final_estimate": estimate.record(), "classifier_ms": round(classifier_ms, 1),
            "final_reserve_s": round(estimate.reserve_s(), 1), "safety": SAFETY,
            "config": auto.model_dump(), "candidates": [o.record() for o in outcomes]}


def _cap_classifier(cfg: TrainConfig, record: dict[str, Any], deadline: Deadline,
                    progress: Progress) -> TrainConfig:
    """The classifier's selection gets what the search left, less the rest of the final training."""
    est = record["final_estimate"]
    if not est["classifier_s"]:
        return cfg
    rest = FinalEstimate(fit_s=est["fit_s"], score_s=est["score_s"], classifier_s=0.0, report_s=est["report_s"])
    left = deadline.left()
    cap = classifier_select_budget(left, rest, cfg.classifier.select_time_budget_s)
    # the fine-tuning candidate's budget counts the frozen candidates' time too: the same share caps it
    tune_cap = classifier_select_budget(left, rest, cfg.classifier.finetune_candidate_budget_s)
    update: dict[str, float] = {}
    if cap is not None:
        update["select_time_budget_s"] = record["classifier_select_budget_s"] = cap
        progress(f"auto: classifier selection budget {cap:.0f} s (of {cfg.classifier.select_time_budget_s:.0f} s): "
                 f"what the search left")
    if tune_cap is not None and cfg.classifier.finetune_candidate is not None:
        update["finetune_candidate_budget_s"] = record["classifier_finetune_budget_s"] = tune_cap
    if not update:
        return cfg
    return cfg.model_copy(update={"classifier": cfg.classifier.model_copy(update=update)})


def train_auto(data: Path, out: Path, base: TrainConfig, auto: AutoConfig | None = None, *,
               progress: Progress = print, overwrite: bool = False,
               candidates: Sequence[Candidate] | None = None, clock: Clock = time.monotonic) -> Bundle:
    """``lineguard train`` in automatic mode: choose the recipe, then train the bundle with it (the
    winner's out-of-fold scores calibrate; the record goes to the report and ``calibration.auto``).
    One deadline, from this call's start, covers the scan, the search and the final training."""
    from lineguard_models.data import scan_dataset

    auto = auto or AutoConfig()
    deadline = Deadline(auto.time_budget_s, clock)  # before the scan: the budget is the whole call's
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists (choose another --out or remove it)")
    ds = scan_dataset(data, allow_unreadable=base.allow_unreadable)
    scratch = out.parent / f".{out.name}.auto"
    try:
        cfg, oof, record = select(ds, base, auto, scratch, progress=progress, candidates=candidates,
                                  deadline=deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cfg = _cap_classifier(cfg, record, deadline, progress)
    search_s = deadline.elapsed()
    bundle = train(data, out, cfg, progress=progress, overwrite=overwrite, oof=oof, auto=record, clock=clock)
    total = deadline.elapsed()
    parts = {f"candidate {c['name']}": c["seconds"] for c in record["candidates"] if c["seconds"] is not None}
    parts |= {"final training": total - search_s, "final training estimated": record["final_estimate"]["total_s"]}
    progress(f"auto: {total:.0f} s in all of the {auto.time_budget_s:.0f} s budget (search {search_s:.0f} s, "
             f"final training {total - search_s:.0f} s, estimated {record['final_estimate']['total_s']:.0f} s)")
    warning = overrun_warning(total, auto.time_budget_s, parts)
    if warning:
        log.warning("%s", warning)
    return bundle
