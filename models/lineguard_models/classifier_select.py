"""Per-line choice of the classifier recipe by cross-validation on the line's own labelled images.

Where it sits: ``lineguard train`` -> ``classifier_bundle.classifier_for_bundle`` ->
``classifier.train_classifier(selector=select_and_fit)`` (with ``ClassifierConfig.select``)
-> features of every labelled image for the union of the candidates' stages (one backbone pass per
image and copy) -> :func:`evaluate` runs the library's own cross-validation (``fit_from_features``:
CV-chosen L2, out-of-fold probabilities, per-class ``min_confidence``) for each candidate on column
slices of those features -> :func:`pick` -> the classifier is fitted and exported with the chosen
stages and copies; every candidate's CV figures go into ``calibration.classifier.selection``.

Candidates (docs/benchmarks/quality-classifier.md): pooled stages {5,6} (the default) with the
camera profile's photometric copies and without, {5,6,7} and {4,5,6,7} with them. Then fine-tuning
(:func:`consider_finetuning`, since stop 20): stage6 and the head fine-tuned on every orientation view, tried
where every class has ``finetune_candidate_min_per_class`` images (30) and views are allowed, within its time
and latency budgets, kept only if its out-of-fold accuracy beats the frozen choice's by one image.
Views: a line that declared its camera profile gets the views it allows, in every candidate. A line that
declared none (``lineguard train`` without ``--camera-profile``: orientation unknown) keeps the identity
in the candidates above and gets two more, ``views`` and ``s4567_views``: the same stage sets trained on
every flip and 90-degree turn of its images as well (copies in feature space; the exported graph is
unchanged, so a flagged part costs the same). Cross-validation decides: where a class is tied to its
orientation (a scratch along the feed), its turned copies teach the wrong thing and the CV accuracy
falls (X-SDD), where it is not they add examples (DeepPCB crops, 20 per class: 88.8 -> 94.6 % held out).
Each evaluated views candidate then gets a twin (:func:`views_twin`): the same head, read through every view
averaged where one view is unsure (a second engine, run only for those parts), judged by the same CV.

A candidate replaces the default only when its CV accuracy is higher by at least one image of the
line's labelled set (ties and noise keep the measured default); among those, the higher CV accuracy
wins, then the lower CV log-loss. A candidate whose estimated latency exceeds the budget, or that
does not fit in the remaining time budget, is skipped and the reason recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lineguard_models.classifier import FeatureExtractor, fit_from_features, out_of_fold_probs
from lineguard_models.classifier_features import FeatureSet, build_features
from lineguard_models.classifier_finetuned import OverBudget, finetuned
from lineguard_models.classifier_graph import POOL_WIDTH
from lineguard_models.classifier_head import SoftmaxHead, cv_folds, cv_summary, stratified_folds
from lineguard_models.finetune import cascade_probs, choose_views_below
from lineguard_models.views import IDENTITY, Views

# One latency model of a flagged part (anomaly engine + the frame's preprocessing + classifier), used both
# by automatic configuration (the anomaly engine's budget keeps the classifier's share, measured on the
# training machine: classifier_bundle.classifier_reserve_ms) and by the per-line classifier choice below (a
# candidate whose flagged part would exceed the budget is not considered). The table prices a candidate only
# where nothing was measured (library calls without a line). Classifier p50 in ms: the 224 px image-path
# graph (ClassifierConfig.input_px), ONNX Runtime CPU, 2 threads, idle 2-core box. stage5+6 7.8 ms on the
# quality suite's mvtec_bottle auto bundles through the edge's BundleRunner (stop 12, docs/classifier.md);
# the other stage sets by their measured ratio to stage5+6 (stop 11, quiet box, 60 runs: stage5+6+7 and
# stage4+5+6+7 5.78 ms against 5.34 ms, 1.08x). A smaller frame costs less.
CLASSIFIER_P50_MS: dict[str, float] = {
    "stage5+stage6": 7.8,
    "stage5+stage6+stage7": 8.4,
    "stage4+stage5+stage6+stage7": 8.4,
}
# the edge's work on a flagged part besides the two engines (preprocessing, map stitching), same measurement
PREPROCESS_MS = 1.2
# the anomaly engine's p50 where it was not measured (the classifier trained without a bundle): the default
# engine (Lite2, 288 px, stage3+4) on the quality suite's square sets, priced 25.9-27.8 ms (stop 11)
ANOMALY_P50_MS = 27.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One recipe: which pooled stages feed the head, how many photometric copies per image."""

    name: str
    stages: tuple[str, ...]
    copies: int  # photometric copies per image (0 = none; the default profile makes 2)
    # "mean" or "mean_gem"; "" in CANDIDATES = the line's configured pooling, filled in by line_candidates
    pooling: str = ""
    # trained on every orientation view as well (only offered where the line declared no camera profile)
    views: bool = False
    # a views candidate's twin (:func:`views_twin`): the same head, read through one view and through every view
    # averaged where that one's top probability is below a threshold chosen out of fold
    views_when_unsure: bool = False


# four, not every combination: each costs len(l2_grid) x folds + 1 head fits (minutes on a loaded
# 2-core box at 40 images per class with copies)
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("default", ("stage5", "stage6"), 2),
    Candidate("views", (), 2, views=True),  # () = the line's configured stages, as the default
    Candidate("s56_nocopies", ("stage5", "stage6"), 0),
    Candidate("s567", ("stage5", "stage6", "stage7"), 2),
    Candidate("s4567", ("stage4", "stage5", "stage6", "stage7"), 2),
    Candidate("s4567_views", ("stage4", "stage5", "stage6", "stage7"), 2, views=True),
)
# the views candidates (stop 14) come right after the default, so a tight time budget skips the others first:
# they moved the most held-out images where they applied (DeepPCB crops, docs/benchmarks/quality-classifier.md)
# s4567 (stop 11) replaced s56_mean (average pooling alone), which never beat the default on the
# suite's held-out images and whose CV pick on mvtec_bottle lost 6 points there. Stage4 helps small
# structures: DeepPCB crops 85.8 -> 87.9 % named right at 20/class, NEU 93.9 -> 94.6, X-SDD 95.6 -> 95.0
# (docs/classifier.md), so it is a per-line candidate, not the default. It still shares the backbone
# pass with a Lite0 anomaly engine whose deepest stage is stage4 (shared.shared_stage_for refuses only
# classifier stages before that one); with the Lite2 default nothing is shared anyway.


@dataclass(slots=True)
class Evaluated:
    """A candidate's cross-validation on the line's images, and its head fitted on all of them."""

    candidate: Candidate
    cv_accuracy: float
    cv_log_loss: float
    fit_s: float
    n_images: int = 0
    head: SoftmaxHead | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""  # why it was not evaluated ("" = evaluated)

    def summary(self) -> dict[str, Any]:
        """The figures that go into the training report."""
        c = self.candidate
        done = not self.skipped  # a skipped one has no figures (NaN is not JSON: the manifest refuses it)
        return {"name": c.name, "stages": list(c.stages), "copies": c.copies, "pooling": c.pooling,
                "views": c.views, "cv_accuracy": self.cv_accuracy if done else None,
                "cv_log_loss": self.cv_log_loss if done else None,
                "cv_unknown_rate": self.report.get("unknown_rate"), "fit_s": round(self.fit_s, 2),
                "skipped": self.skipped,
                **({"views_when_unsure": self.report.get("views_only_when_unsure")} if c.views_when_unsure else {})}


def estimated_p50_ms(stages: Sequence[str], anomaly_p50_ms: float | None = None,
                     classifier_p50_ms: Mapping[str, float] | None = None) -> float:
    """A flagged part's p50 ms with a classifier of these stages: the anomaly engine (``anomaly_p50_ms``, as
    measured on the line's bundle; else :data:`ANOMALY_P50_MS`) + :data:`PREPROCESS_MS` + the classifier
    (``classifier_p50_ms``: measured on this CPU per stage set, ``"stage5+stage6"`` -> ms; else the table
    :data:`CLASSIFIER_P50_MS`).

    Stage sets never measured count as over any budget (inf): they are not chosen blind.
    """
    anomaly = ANOMALY_P50_MS if anomaly_p50_ms is None else anomaly_p50_ms
    key = "+".join(stages)
    clf = (classifier_p50_ms or {}).get(key, CLASSIFIER_P50_MS.get(key, float("inf")))
    return anomaly + PREPROCESS_MS + clf


def evaluate(
    feature_set: Callable[[Candidate], Any],
    candidates: Sequence[Candidate],
    *,
    config: Any,
    seed: int,
    time_budget_s: float | None = None,
) -> list[Evaluated]:
    """Cross-validate every candidate on ``feature_set(candidate)`` (a ``classifier_features.FeatureSet``).

    ``config`` is the ``ClassifierConfig`` whose CV settings (folds, L2 grid, quantile) apply; its
    ``stages`` and ``pooling`` are replaced by each candidate's (candidates from :func:`line_candidates`).
    The default (first) candidate always runs; a later one is skipped once ``time_budget_s`` is spent.
    """
    out: list[Evaluated] = []
    t_start = time.perf_counter()
    for i, cand in enumerate(candidates):
        spent = time.perf_counter() - t_start
        if i and time_budget_s is not None and spent > time_budget_s:
            out.append(Evaluated(cand, float("nan"), float("nan"), 0.0,
                                 skipped=f"time budget {time_budget_s:.0f} s spent ({spent:.0f} s)"))
            continue
        t0 = time.perf_counter()
        fs = feature_set(cand)
        cfg = config.model_copy(update={"stages": cand.stages, "pooling": cand.pooling})
        head, thr, report = fit_from_features(fs, config=cfg, seed=seed)
        out.append(Evaluated(cand, float(report["accuracy"]), float(report["cv_log_loss"][str(report["l2"])]),
                             time.perf_counter() - t0, n_images=len(fs.y), head=head, thresholds=thr,
                             report=report))
    return out


def pick(evaluated: Sequence[Evaluated]) -> Candidate:
    """The default unless a candidate's CV accuracy beats it by at least one image (see module doc)."""
    done = [e for e in evaluated if not e.skipped]
    default = done[0]
    n = max(1, default.n_images)
    better = [e for e in done[1:] if e.cv_accuracy >= default.cv_accuracy + 1.0 / n - 1e-9]
    if not better:
        return default.candidate
    best = max(better, key=lambda e: (round(e.cv_accuracy, 6), -e.cv_log_loss))
    return best.candidate


MAX_THROUGH_VIEWS = 0.5  # a twin above this out-of-fold share through the views: the median part would pay them
TWIN_SUFFIX = "_tta"


def twin_of(c: Candidate) -> Candidate:
    """The views twin's candidate entry of the views candidate ``c``."""
    return replace(c, name=c.name + TWIN_SUFFIX, views_when_unsure=True)


def views_oof(fs: FeatureSet, folds: np.ndarray, *, l2: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold class probabilities of ``fs`` through the identity view and averaged over every view."""
    return (out_of_fold_probs(replace(fs, average_views=False), folds, l2=l2, max_iter=max_iter),
            out_of_fold_probs(replace(fs, average_views=True), folds, l2=l2, max_iter=max_iter))


def views_twin(ev: Evaluated, fs: FeatureSet, *, config: Any, seed: int) -> Evaluated:
    """The twin of the views candidate ``ev`` (stop 22; docs/classifier.md "Views twins"): its head read through
    one view and, below ``views_below``, through every view averaged (the ``classifier_views`` engine). On ``ev``'s
    folds and L2 (:func:`views_oof`); ``views_below`` by ``finetune.choose_views_below``; CV figures from the
    cascade; ``min_confidence`` stays ``ev``'s (identity-view floors: floors set on the flatter averaged
    probabilities sent right answers to ``unknown``). ``fs``: ``ev``'s features with their views."""
    c = ev.candidate
    twin = twin_of(c)
    if not c.views or ev.skipped or ev.head is None or fs.x_views is None:
        return Evaluated(twin, float("nan"), float("nan"), 0.0, skipped=f"{c.name} has no views to read")
    t0 = time.perf_counter()
    one, every = views_oof(fs, cv_folds(fs.y, config.cv_folds, seed), l2=float(ev.report["l2"]),
                           max_iter=config.max_iter)
    below = choose_views_below(one, every, fs.y)
    oof = cascade_probs(one, every, below)
    n_views = int(fs.x_views.shape[1]) + 1
    cascade = {"views_below": below, "views": n_views,
               "through_views_oof": float((one.max(1) < below).mean()),
               "accuracy_identity_oof": float((one.argmax(1) == fs.y).mean()),
               "accuracy_views_oof": float((every.argmax(1) == fs.y).mean())}
    fit_s = time.perf_counter() - t0
    if cascade["through_views_oof"] > MAX_THROUGH_VIEWS:
        return Evaluated(twin, float("nan"), float("nan"), fit_s, report={"views_only_when_unsure": cascade},
                         skipped=f"{cascade['through_views_oof'] * 100:.0f} % of the images out of fold would go "
                                 f"through the views (> {MAX_THROUGH_VIEWS * 100:.0f} %: the median flagged part "
                                 f"would pay {n_views} backbone passes)")
    report = {**ev.report, **cv_summary(oof, fs.y, fs.classes, ev.thresholds), "views_only_when_unsure": cascade,
              "method": f"{ev.report.get('method', c.name)}; read through one view, and the {n_views} orientation "
                        f"views averaged where its top probability is below {below:g} "
                        f"({cascade['through_views_oof'] * 100:.0f} % of the images out of fold)"}
    log_loss = float(-np.log(np.clip(oof[np.arange(len(fs.y)), fs.y], 1e-7, 1.0)).mean())
    return Evaluated(twin, float(report["accuracy"]), log_loss, fit_s, n_images=ev.n_images, head=ev.head,
                     thresholds=dict(ev.thresholds), report=report)


def with_views_twins(evaluated: Sequence[Evaluated], feature_set: Callable[[Candidate], FeatureSet], *,
                     config: Any, seed: int, time_left_s: float | None = None) -> list[Evaluated]:
    """``evaluated`` and, with ``config.views_when_unsure``, a :func:`views_twin` of each evaluated views candidate
    after them (the default stays first for :func:`pick`); a twin past ``time_left_s`` is skipped with the reason."""
    out = list(evaluated)
    if not getattr(config, "views_when_unsure", False):
        return out
    t0 = time.perf_counter()
    for ev in evaluated:
        if not ev.candidate.views or ev.skipped:
            continue
        spent = time.perf_counter() - t0
        if time_left_s is not None and spent > time_left_s:
            out.append(Evaluated(twin_of(ev.candidate), float("nan"), float("nan"), 0.0,
                                 skipped=f"time budget spent ({spent:.0f} s of the {time_left_s:.0f} s left)"))
            continue
        out.append(views_twin(ev, feature_set(ev.candidate), config=config, seed=seed))
    return out


def probs_as_read(ev: Evaluated, fs: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """Class probabilities of ``rows`` as the edge reads ``ev``'s bundle: one view (or the views averaged where
    the classifier graph averages them), and for a twin the views engine below ``views_below``. ``fs`` holds the
    rows' views where ``ev`` reads them."""
    assert ev.head is not None
    if not ev.candidate.views_when_unsure:
        return fs.probs(ev.head, rows)
    below = float(ev.report["views_only_when_unsure"]["views_below"])
    return cascade_probs(replace(fs, average_views=False).probs(ev.head, rows),
                         replace(fs, average_views=True).probs(ev.head, rows), below)


def price_twins(evaluated: Sequence[Evaluated], price: Callable[..., Mapping[str, float]], views: Views,
                anomaly_p50_ms: float | None, single: Mapping[str, float] | None) -> None:
    """For each evaluated twin's report (``views_only_when_unsure``): ``views_p50_ms``, its views graph on this CPU,
    and ``flagged_through_views_p50_ms``, a flagged part through it (for the PLC deadline; the budget is a p50)."""
    twins = [e for e in evaluated if e.candidate.views_when_unsure and not e.skipped]
    if not twins:
        return
    ms = price(sorted({e.candidate.stages for e in twins}), views=views)
    for e in twins:
        key = "+".join(e.candidate.stages)
        cascade = e.report["views_only_when_unsure"]
        cascade["views_p50_ms"] = round(ms[key], 2)
        cascade["flagged_through_views_p50_ms"] = round(estimated_p50_ms(e.candidate.stages, anomaly_p50_ms, single)
                                                        + ms[key], 1)


def feature_columns(dims: dict[str, int], have: Sequence[str], want: Sequence[str], *, have_pooling: str = "mean",
                    want_pooling: str = "mean") -> np.ndarray:
    """Column indices of ``want`` stages pooled by ``want_pooling`` inside features of ``have`` stages pooled
    by ``have_pooling`` (``classifier_graph.PooledFeatures`` layout: per stage in order, [mean] or
    [mean, gem]); a "mean" candidate takes the average half of "mean_gem" features."""
    width = POOL_WIDTH[have_pooling]
    if POOL_WIDTH[want_pooling] > width:
        raise ValueError(f"{want_pooling} features cannot be cut from {have_pooling} features")
    cols: list[int] = []
    start = 0
    for s in have:
        if s in want:
            cols += range(start, start + dims[s] * POOL_WIDTH[want_pooling])
        start += dims[s] * width
    return np.array(cols, np.int64)


FINETUNE_SMALL = (
    "{n} images in the smallest class, below finetune_candidate_min_per_class {need}: at 10-20 per class "
    "cross-validation never kept fine-tuning on the classifier suite's splits, and held out it was worse on 4 "
    "of 6 (docs/classifier.md)"
)
FINETUNE_NO_VIEWS = ("no orientation views allowed (the declared camera profile ties the classes to "
                     "orientation): fine-tuning sees each image once per epoch, too few steps to pay")


def finetuned_p50_ms(stages: Sequence[str], price: Callable[[], Mapping[str, float]] | None) -> float:
    """The fine-tuned classifier's single-view graph, p50 ms: measured (``price``: ``classifier_bundle.
    classifier_prices`` of its stage set, pooled by the average, on this CPU) or the table's price of its stages
    (:data:`CLASSIFIER_P50_MS`; the graph scales the frame to ``input_px`` like the frozen one)."""
    key = "+".join(stages)
    return (price() if price is not None else CLASSIFIER_P50_MS).get(key, float("inf"))


def consider_finetuning(
    images_by_class: Any, fs: FeatureSet, extractor: Callable[[], Any], views: Views, frozen_report: dict[str, Any], *,
    config: Any, seed: int, progress: Any = None, anomaly_p50_ms: float | None = None,
    price: Callable[[], Mapping[str, float]] | None = None, spent_s: float = 0.0, force: bool = False,
) -> tuple[Any, dict[str, float], dict[str, Any], float | None] | None:
    """The per-line choice's fine-tuning candidate (``ClassifierConfig.finetune_candidate``), after the frozen
    choice (``frozen_report["selection"]``, which gets the candidate's figures or the reason it was skipped).

    Tried where the smallest class has ``finetune_candidate_min_per_class`` images, ``views`` has more than the
    identity, its flagged part fits ``select_latency_budget_ms`` and its estimated time what is left of
    ``finetune_candidate_budget_s`` after the frozen choice (``spent_s``); kept only where its out-of-fold
    accuracy (3 folds, as the edge reads it) beats the frozen choice's cross-validated accuracy by one image or
    more, both measured on the same folds: the frozen choice's features are cross-validated again on the
    fine-tuning's 3 folds (its own 5-fold figure comes from more training images per fold, and it won a
    comparison among several candidates). Returns ``classifier_finetuned.finetuned``'s (graph, thresholds,
    report, views_below) when kept, else None. ``force`` (benchmarks) returns it whenever it was trained; the
    entry still says what the rule decided (``beats_frozen``). ``extractor`` builds the fine-tuning's feature
    extractor (called only once the cheap checks pass). ``config``: the line's
    ``ClassifierConfig`` with ``finetune`` set to the candidate recipe (``classifier.train_classifier``)."""
    sel = frozen_report["selection"]
    entry: dict[str, Any] = {"name": "finetune", "stages": list(config.stages), "copies": 0, "pooling": "mean",
                             "views": len(views) > 1, "cv_accuracy": None, "cv_log_loss": None, "skipped": ""}
    sel["candidates"].append(entry)
    n_min = int(np.bincount(fs.y).min())
    need = config.finetune_candidate_min_per_class
    if n_min < need:
        entry["skipped"] = FINETUNE_SMALL.format(n=n_min, need=need)
        return None
    if len(views) < 2:
        entry["skipped"] = FINETUNE_NO_VIEWS
        return None
    clf_ms = finetuned_p50_ms(config.stages, price)
    flagged = (ANOMALY_P50_MS if anomaly_p50_ms is None else anomaly_p50_ms) + PREPROCESS_MS + clf_ms
    entry.update(flagged_p50_ms=round(flagged, 1), classifier_p50_ms=round(clf_ms, 2),
                 classifier_p50_source="measured on this CPU (its stage set, pooled by the average)"
                 if price is not None else "table CLASSIFIER_P50_MS")
    if flagged > config.select_latency_budget_ms:
        entry["skipped"] = (f"estimated flagged part {flagged:.0f} ms p50 (one view) > budget "
                            f"{config.select_latency_budget_ms:.0f} ms")
        return None
    left = config.finetune_candidate_budget_s - spent_s
    if left <= 0:
        entry["skipped"] = (f"time budget {config.finetune_candidate_budget_s:.0f} s spent by the frozen candidates "
                            f"({spent_s:.0f} s)")
        return None
    t0 = time.perf_counter()
    try:
        graph, thr, report, views_below = finetuned(images_by_class, fs, extractor(), views, frozen_report,
                                                    config=config, seed=seed, progress=progress, time_budget_s=left)
    except OverBudget as e:
        entry["skipped"] = str(e)
        return None
    n = len(fs.y)
    folds = stratified_folds(fs.y, int(report["folds"]), seed)  # the fine-tuning's own folds
    l2 = float(frozen_report["l2"])
    if sel.get("views_below") is not None:  # the frozen choice is a views twin: read it as the edge would
        oof = cascade_probs(*views_oof(fs, folds, l2=l2, max_iter=config.max_iter), float(sel["views_below"]))
    else:
        oof = out_of_fold_probs(fs, folds, l2=l2, max_iter=config.max_iter)
    cv_t, cv_f = float(report["accuracy"]), float((oof.argmax(1) == fs.y).mean())
    cascade = report.get("views_only_when_unsure", {})
    beats = cv_t >= cv_f + 1.0 / n - 1e-9
    entry.update(cv_accuracy=cv_t, frozen_cv_same_folds=round(cv_f, 4), beats_frozen=beats,
                 cv_unknown_rate=report.get("unknown_rate"), fit_s=round(time.perf_counter() - t0, 2),
                 estimated_s=report.get("finetune", {}).get("estimated_s"), views_below=views_below,
                 through_views_oof=cascade.get("through_views_oof"))
    if not beats and not force:
        return None
    report["selection"] = {**sel, "chosen": "finetune", "stages": list(config.stages), "copies": 0,
                           "pooling": "mean", "views": list(views.names),
                           "reason": f"fine-tuned CV accuracy {cv_t:.4f} vs the frozen choice {sel['chosen']} "
                                     f"{cv_f:.4f} on the same {len(np.unique(folds))} folds (>= one image of {n} "
                                     "better)" if beats else "forced (benchmark)"}
    return graph, thr, report, views_below


def line_candidates(default_stages: Sequence[str], copies: int, pooling: str = "mean_gem", *,
                    free_views: bool = False) -> list[Candidate]:
    """:data:`CANDIDATES` for a line: the configured stages, pooling and the profile's copy count as the
    default; a candidate equal to one before it is dropped, and the views candidates unless ``free_views``
    (the line declared no camera profile, so whether orientation matters is for cross-validation to say)."""
    out = [Candidate("default", tuple(default_stages), copies, pooling)]
    for c in CANDIDATES[1:]:
        cand = Candidate(c.name, c.stages or tuple(default_stages), copies if c.copies else 0, c.pooling or pooling,
                         c.views)
        if cand.views and not free_views:
            continue
        if all((cand.stages, cand.copies, cand.pooling, cand.views) != (o.stages, o.copies, o.pooling, o.views)
               for o in out):
            out.append(cand)
    return out


def select_and_fit(
    images_by_class: Any, *, spec: Any, config: Any, plausible: Any, copies: int, views: Views, seed: int,
    progress: Any = None, anomaly_p50_ms: float | None = None, free_views: Views | None = None,
    classifier_price: Callable[..., dict[str, float]] | None = None,
) -> tuple[Any, Any, SoftmaxHead, dict[str, float], dict[str, Any]]:
    """Features once for the union of the candidates' stages, CV of each, the chosen one fitted.

    Returns (feature extractor with the chosen stages, its FeatureSet, head, min_confidence, CV
    report with ``selection``, whose ``views`` are the orientation views the chosen one trained on). Called
    by ``classifier.train_classifier`` when ``config.select``; ``views``: the declared profile's views (every
    candidate trains on them); ``free_views``: where the line declared no profile, the views its input allows,
    tried by the views candidates only; ``anomaly_p50_ms``: the line's anomaly engine as measured
    (``classifier_bundle``), for the latency filter; ``classifier_price``: measures the candidates' classifier
    graphs on this CPU (stage sets -> ``{"stage5+stage6": ms}``, ``classifier_bundle.classifier_prices``), else
    the table :data:`CLASSIFIER_P50_MS` prices them.
    """
    t0 = time.perf_counter()
    free = free_views if free_views is not None and len(free_views) > 1 else None
    every = line_candidates(config.stages, copies, config.pooling, free_views=free is not None)
    prices = classifier_price(sorted({c.stages for c in every})) if classifier_price is not None else None

    def flagged_ms(c: Candidate) -> float:
        return estimated_p50_ms(c.stages, anomaly_p50_ms, prices)

    # the default is what the line gets anyway: it always runs; another only within the flagged part's budget
    cands = every[:1] + [c for c in every[1:] if flagged_ms(c) <= config.select_latency_budget_ms]
    over = [c for c in every if c not in cands]
    union = tuple(sorted({s for c in cands for s in c.stages}, key=lambda s: int(s.removeprefix("stage"))))
    pool_all = max((c.pooling for c in cands), key=lambda p: POOL_WIDTH[p])  # the widest holds the others
    extract_all = FeatureExtractor.from_config(spec, config.model_copy(update={"stages": union, "pooling": pool_all}))
    # one backbone pass per image, copy and view; undeclared lines compute their free views only if a views
    # candidate is still in the running (the latency filter may have dropped them)
    want_free = free if any(c.views for c in cands) else None
    held = want_free or views  # the views fs_all holds: the free ones, else the declared profile's
    fs_all = build_features(images_by_class, extract_all, augment_fn=plausible, copies=copies, seed=seed,
                            progress=progress, views=held, average_views=config.average_views and want_free is None)
    dims = extract_all.features.backbone.stage_channels

    def views_of(c: Candidate) -> Views:
        return held if want_free is None or c.views else IDENTITY  # free views train the views candidates only

    def fs_for(c: Candidate) -> FeatureSet:
        cols = feature_columns(dims, union, c.stages, have_pooling=pool_all, want_pooling=c.pooling)
        keep = c.copies > 0
        x_views = fs_all.x_views if len(views_of(c)) > 1 else None
        return FeatureSet(classes=fs_all.classes, x=fs_all.x[:, cols], y=fs_all.y,
                          x_aug=fs_all.x_aug[:, cols] if keep else np.zeros((0, len(cols)), np.float32),
                          aug_source=fs_all.aug_source if keep else np.zeros(0, np.int64),
                          x_views=None if x_views is None else x_views[:, :, cols],
                          average_views=fs_all.average_views)

    budget = max(0.0, config.select_time_budget_s - (time.perf_counter() - t0))
    evs = evaluate(fs_for, cands, config=config, seed=seed, time_budget_s=budget)
    evs = with_views_twins(evs, fs_for, config=config, seed=seed,
                           time_left_s=max(0.0, config.select_time_budget_s - (time.perf_counter() - t0)))
    if classifier_price is not None and want_free is not None:
        price_twins(evs, classifier_price, want_free, anomaly_p50_ms, prices)
    chosen = pick(evs)
    ev = next(e for e in evs if e.candidate == chosen)
    default = evs[0]
    reason = ("no candidate beat the default's CV accuracy by one image or more" if chosen == default.candidate
              else f"CV accuracy {ev.cv_accuracy:.4f} vs default {default.cv_accuracy:.4f} "
                   f"(>= one image of {ev.n_images} better)")
    extract = FeatureExtractor.from_config(spec, config.model_copy(update={"stages": chosen.stages,
                                                                           "pooling": chosen.pooling}))
    report = dict(ev.report)
    report["selection"] = {
        "chosen": chosen.name, "stages": list(chosen.stages), "copies": chosen.copies, "pooling": chosen.pooling,
        "views": list(views_of(chosen).names), "reason": reason,
        "views_below": ev.report["views_only_when_unsure"]["views_below"] if chosen.views_when_unsure else None,
        "free_views": None if want_free is None else list(want_free.names),
        "candidates": [e.summary() for e in evs]
        + [{"name": c.name, "stages": list(c.stages), "copies": c.copies, "pooling": c.pooling, "views": c.views,
            "skipped": f"estimated flagged part {flagged_ms(c):.0f} ms p50 > budget "
                       f"{config.select_latency_budget_ms:.0f} ms"} for c in over],
        "time_budget_s": config.select_time_budget_s, "search_s": round(time.perf_counter() - t0, 1),
        "latency_budget_ms": config.select_latency_budget_ms,
        "anomaly_p50_ms": None if anomaly_p50_ms is None else round(anomaly_p50_ms, 2),
        "anomaly_p50_source": "measured on this bundle's anomaly engine" if anomaly_p50_ms is not None
        else f"not measured: the default engine's {ANOMALY_P50_MS:g} ms",
        "classifier_p50_ms": {k: round(v, 2) for k, v in (prices or CLASSIFIER_P50_MS).items()},
        "classifier_p50_source": "measured on this CPU: each stage set's classifier graph on one of the line's "
        "images (ONNX Runtime, 2 threads)" if prices is not None else "table CLASSIFIER_P50_MS (an idle 2-core box)",
    }
    return extract, fs_for(chosen), ev.head, ev.thresholds, report  # type: ignore[return-value]
