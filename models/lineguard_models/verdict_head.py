"""Verdict head: a supervised good-vs-defect opinion fused into the anomaly score, inside the same graph.

Where it sits: called by ``pipeline.train`` after the anomaly engine is exported and its calibration
scores (held-out goods, out-of-fold goods, calibrating defects) are in hand; before the classifier and
the calibration. It needs the line's labelled defect images (at least ``min_defects``), so a line taught
with good parts only gets the plain anomaly engine.

Why: the patch bank only knows what good parts look like, so a defect that resembles some good patch
(a shallow pit on a casting, a stain on a metal plate) scores inside the goods' range and the part goes
to recheck. The defect images a line calibrates with carry the other half of the information. A
logistic head on the anomaly engine's *own* stage maps, pooled over the frame (average and generalised
mean of each stage, as the defect classifier pools), separates them; the engine computes those maps
anyway, so the head costs a pooling and one dot product (no extra backbone pass, edge unchanged).

The graph's ``anomaly_score`` becomes ``score_bank * exp(c * clip(logit, 0, L))``: the bank's score
scaled up by the head's suspicion, ``c = sigma * weight / 4`` with ``sigma`` the spread of the goods'
log scores. In log units that is the goods-normalised anomaly score plus ``weight / 4`` times the
clipped logit, so the head raises a part by at most ``weight * L / 4`` standard deviations of the goods'
scores. It never lowers one (unless ``lower_scores``): whether a part is *accepted* stays the
good-parts-only bank's call, which is what catches a defect type nobody labelled; the head only adds
suspicion where a part looks like the labelled defects. ``anomaly_map`` is the bank's map, unchanged.

Honest calibration: the head that scores a calibration image never saw it. Every image is scored out
of fold (stratified K folds over goods and defects); the weight is chosen per line among
``weights`` as the largest whose share of calibration images decided by the line's own calibration, on the
out-of-fold fused scores, is not below the plain engine's by more than one standard error (or one image);
0 = no head: the graph stays the plain engine. The calibration can show that a head harms; with 80 images it
cannot rank weights that help (their shares tie), so the head's own evidence is trusted up to a moderate
weight. The thresholds are calibrated on the out-of-fold fused scores. The exported head is
then fitted on every image, so the golden images carry the final graph's scores.

Must never: calibrate on a score from a head that was fitted on that image, change ``anomaly_map``,
or apply a head to a tiled input (its labels are per frame, its features would be per tile).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lineguard.errors import CalibrationError
from lineguard.preprocess import InputSpec, prepare
from lineguard_models.anomaly import AnomalyScorer
from lineguard_models.calibration import CalibrationPolicy, auroc, calibrate
from lineguard_models.classifier_graph import gem
from lineguard_models.classifier_head import cv_folds, fit_head
from lineguard_models.data import Dataset, Sample
from lineguard_models.ortscore import OrtScorer, Scored, by_label

Progress = Callable[[str], None]


class VerdictHeadConfig(BaseModel):
    """Settings of the verdict head (docs/anomaly-model.md, "Verdict head")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="fuse a supervised good-vs-defect head into the anomaly score when the "
                          "line has at least min_defects labelled defect images (per-line weight; 0 = plain engine)")
    weights: tuple[float, ...] = Field(
        (0.0, 1.0, 2.0), min_length=1, description="head weights tried: the largest whose share of calibration "
        "images decided on the out-of-fold fused scores is not below the plain engine's (weight 0) by more than one "
        "standard error; 0 = plain engine")
    clip_logit: float = Field(8.0, gt=0.0, le=50.0, description="the head's logit is clipped to at most this")
    lower_scores: bool = Field(
        False, description="let the head also lower a score (clip the logit at -clip_logit instead of 0): a part the "
        "head takes for good moves towards accept. Off (the default): the head only adds suspicion, and whether a "
        "part is accepted stays the good-parts-only bank's call, which is what catches a defect type never labelled")

    def clip_range(self) -> tuple[float, float]:
        return (-self.clip_logit if self.lower_scores else 0.0, self.clip_logit)
    min_defects: int = Field(10, ge=2, le=100_000, description="fewest labelled defect images for a head")
    min_goods: int = Field(30, ge=2, le=100_000, description="fewest good images with an honest calibration score "
                           "(held out, or out of fold with calibration_folds >= 2) for a head: its weight is chosen "
                           "on them, and on ten a chance separation would collapse the recheck band")
    folds: int = Field(5, ge=2, le=20, description="stratified folds of the out-of-fold head scores")
    l2: float = Field(1e-2, gt=0.0, le=10.0, description="L2 strength of the logistic head")


class FusedScorer(nn.Module):
    """Raw image batch -> (fused anomaly_score [N], the bank's anomaly_map [N, 1, H, W]); what is exported."""

    mu: Tensor
    sd: Tensor
    direction: Tensor

    def __init__(self, scorer: AnomalyScorer, *, mu: npt.NDArray[np.float32], sd: npt.NDArray[np.float32],
                 direction: npt.NDArray[np.float32], bias: float, scale: float, clip: tuple[float, float]) -> None:
        super().__init__()
        self.scorer = scorer
        self.spec = scorer.spec
        self.register_buffer("mu", torch.from_numpy(np.asarray(mu, np.float32)))
        self.register_buffer("sd", torch.from_numpy(np.asarray(sd, np.float32)))
        self.register_buffer("direction", torch.from_numpy(np.asarray(direction, np.float32)))
        self.bias, self.scale = float(bias), float(scale)
        self.low, self.high = float(clip[0]), float(clip[1])

    def logit(self, pooled: Tensor) -> Tensor:
        out: Tensor = ((pooled - self.mu) / self.sd) @ self.direction + self.bias
        return out

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        s = self.scorer
        feats = s.features.backbone(s.normalise(image))
        score, amap = s.score_patches(s.distances(s.features.combine(feats)))
        logit = self.logit(pooled(feats, s.features.stages)).clamp(self.low, self.high)
        return score * torch.exp(self.scale * logit), amap


def pooled(feats: dict[str, Tensor], stages: Sequence[str]) -> Tensor:
    """Average and generalised mean of each stage map, [N, 2 * sum(C)] (the classifier's ``mean_gem``)."""
    return torch.cat([t for s in stages for t in (feats[s].mean(dim=(2, 3)), gem(feats[s]))], dim=1)


def head_context(rec: dict[str, Any] | None) -> dict[str, str]:
    """One report line on the verdict head (absent for bundles from before it existed)."""
    if rec is None:
        return {}
    if not rec["applied"]:
        return {"verdict head": f"none ({rec['why']})"}
    table = {r["weight"]: r for r in rec["oof_auroc_by_weight"]}
    plain, best = table.get(0.0, {}), table[rec["weight"]]
    return {"verdict head": f"weight {rec['weight']:g} on {'+'.join(rec['stages'])} pooled features "
            f"({rec['images']['defect']} defect, {rec['images']['good']} good images); calibration images "
            f"decided out of fold {plain.get('oof_automated', float('nan')):.1%} -> {best['oof_automated']:.1%}, "
            f"AUROC {plain.get('oof_auroc', float('nan')):.4f} -> {best['oof_auroc']:.4f}; the anomaly score "
            "is the bank's score scaled by the head (docs/anomaly-model.md)"}


def head_features(scorer: AnomalyScorer, ds: Dataset, samples: Sequence[Sample], spec: InputSpec
                  ) -> npt.NDArray[np.float32]:
    """Pooled stage features [N, D] of ``samples`` through the engine's own preprocessing and backbone."""
    rows = []
    with torch.inference_mode():
        for s in samples:
            x = scorer.normalise(torch.from_numpy(prepare(ds.load(s), spec)[0]))
            rows.append(pooled(scorer.features.backbone(x), scorer.features.stages).numpy())
    return np.concatenate(rows).astype(np.float32)


def fit_logit(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], l2: float
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
    """Two-class logistic head -> (mu, sd, direction, bias) of its defect-vs-good logit."""
    h = fit_head(x, y, 2, l2=l2)
    direction = (h.weight[:, 1] - h.weight[:, 0]).astype(np.float32)
    return h.mu, h.sd, direction, float(h.bias[1] - h.bias[0])


def out_of_fold_logits(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], cfg: VerdictHeadConfig, seed: int
                       ) -> npt.NDArray[np.float64]:
    """Each image's head logit from a head fitted on the other folds (stratified)."""
    fold = cv_folds(y, cfg.folds, seed)
    out = np.empty(len(y))
    for f in np.unique(fold):
        mu, sd, d, b = fit_logit(x[fold != f], y[fold != f], cfg.l2)
        out[fold == f] = ((x[fold == f] - mu) / sd) @ d + b
    return out


def choose_weight(scored: Sequence[Scored], logits: dict[str, float], cfg: VerdictHeadConfig,
                  policy: CalibrationPolicy) -> tuple[float, float, list[dict[str, float]], CalibrationPolicy]:
    """(weight, sigma, every weight's figures, the capped policy). For each weight the line's own calibration (its
    policy) runs on the fused out-of-fold scores and the share of calibration images it decides (accepted or
    rejected, not rechecked) is counted. The largest weight whose share is not below the plain engine's (weight
    0) by more than :func:`noise` is chosen; sigma = spread of the goods' log scores. The share is the product's
    own objective (issue 23), and it is used as a guard, not as a ranking: on 80 calibration images the shares
    of the weights that help tie (casting seed 0: 91.2 % at weights 0, 1 and 2; on test 88.0, 93.5 and 94.5 %),
    and AUROC saturates at 1.0, so ranking by them keeps the plain engine where the head helps. What the
    calibration does show is harm (elpv_poly seed 1: 47.5 % plain, 32.5 % at weight 2), and there the plain
    engine stays. Every weight is calibrated with the plain engine's accept threshold as its ceiling
    (``CalibrationPolicy.accept_ceiling``): the head only raises scores, so a fused bundle then never accepts a
    part that the plain engine would not have accepted. The returned policy carries that ceiling for the
    bundle's calibration. Without weight 0 among ``weights`` the largest weight is taken."""
    good = np.array([s.label == "good" for s in scored])
    raw = np.array([s.score for s in scored])
    sigma = float(np.log(np.maximum(raw[good], 1e-12)).std()) or 1.0
    lg = np.array([logits[s.rel] for s in scored])
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(scored):
        if s.label != "good":
            by_class.setdefault(s.label, []).append(i)
    plain = calibrate(raw[good], {c: raw[ix] for c, ix in by_class.items()}, policy, quiet=True)
    capped = policy.model_copy(update={"accept_ceiling": plain.lower})
    table = []
    for w in sorted(cfg.weights):
        f = fused_scores(raw, lg, sigma * w / 4.0, cfg.clip_range())
        res = calibrate(f[good], {c: f[ix] for c, ix in by_class.items()}, capped, quiet=True)
        decided = float(np.mean((f < res.lower) | (f >= res.upper)))
        table.append({"weight": w, "oof_automated": round(decided, 4), "oof_auroc": round(auroc(f[good], f[~good]), 5),
                      "lower": round(res.lower, 6), "upper": round(res.upper, 6)})
    zero = next((r for r in table if r["weight"] == 0), None)
    kept = [r["weight"] for r in table
            if zero is None or not harms(r["oof_automated"], zero["oof_automated"], len(scored))]
    return max(kept), sigma, table, capped


def fused_scores(raw: npt.ArrayLike, logits: npt.ArrayLike, scale: float, clip: tuple[float, float]
                 ) -> npt.NDArray[np.float64]:
    """What :class:`FusedScorer` computes from the bank's scores and the head's logits, in numpy."""
    return np.asarray(raw, np.float64) * np.exp(scale * np.clip(np.asarray(logits, np.float64), *clip))


def noise(share: float, n: int) -> float:
    """What a share of ``n`` images may move by chance: one standard error, and never less than one image."""
    return max(math.sqrt(share * (1.0 - share) / n), 1.0 / n)


def harms(share: float, plain_share: float, n: int) -> bool:
    """A head's share of decided calibration images is below the plain engine's by more than :func:`noise`."""
    return plain_share - share > noise(plain_share, n) + 1e-9  # shares are counts / n: no float ties


def fuse_verdict_head(scorer: AnomalyScorer, ds: Dataset, fitted: Sequence[Sample], calib_good: Sequence[Sample],
                      defects: Sequence[Sample],
                      spec: InputSpec, scored: list[Scored], onnx_path: Path, cfg: VerdictHeadConfig, *, seed: int,
                      progress: Progress, export: Callable[[FusedScorer, Path], Any], policy: CalibrationPolicy
                      ) -> tuple[list[Scored], list[Scored] | None, dict[str, Any]]:
    """Fit, choose and export the head on the ``fitted`` and ``calib_good`` goods and the ``defects``. Returns
    (calibration scores: the out-of-fold fused ones, the final graph's scores of the calibration images that are
    not fitted, for the golden tests, or None when unchanged, the provenance record, whose
    ``accept_ceiling`` the bundle's calibration policy must carry: the plain engine's accept threshold)."""
    rec: dict[str, Any] = {"applied": False, "stages": list(scorer.features.stages), "pooling": "mean_gem"}
    if not cfg.enabled:
        return scored, None, {**rec, "why": "disabled (TrainConfig.verdict_head.enabled)"}
    if spec.tiles.count != 1:
        return scored, None, {**rec, "why": "tiled input: the head's labels are per frame, its features per tile"}
    n_good = sum(s.label == "good" for s in scored)
    if n_good < cfg.min_goods:
        return scored, None, {**rec, "why": f"{n_good} calibrating good images, fewer than {cfg.min_goods} "
                              "(out-of-fold good scores, calibration_folds >= 2 as automatic configuration uses, "
                              "give every one)"}
    if len(defects) < cfg.min_defects:
        return scored, None, {**rec, "why": f"{len(defects)} labelled defect images, fewer than {cfg.min_defects}"}
    by_rel = {s.rel: s for s in ds.samples}
    samples = list(dict.fromkeys([*fitted, *calib_good, *defects, *(by_rel[s.rel] for s in scored)]))
    y = np.array([s.label != "good" for s in samples], np.int64)
    x = head_features(scorer, ds, samples, spec)
    oof = out_of_fold_logits(x, y, cfg, seed)
    logits = {s.rel: float(v) for s, v in zip(samples, oof, strict=True)}
    weight, sigma, table, capped = choose_weight(scored, logits, cfg, policy)
    rec.update({"images": {"good": int((y == 0).sum()), "defect": int(y.sum())}, "folds": cfg.folds,
                "oof_auroc_by_weight": table, "weight": weight, "clip_logit": list(cfg.clip_range()),
                "goods_log_score_sd": round(sigma, 5)})
    plain = next((r for r in table if r["weight"] == 0), None)
    if weight == 0:
        progress(f"verdict head: not used, every weight decides fewer calibration images out of fold than the bank "
                 f"alone ({table})")
        return scored, None, {**rec, "why": "no head weight kept: every weight above 0 tried decided fewer calibration "
                              "images out of fold than the bank alone, by more than the noise"}
    scale = sigma * weight / 4.0
    mu, sd, direction, bias = fit_logit(x, y, cfg.l2)  # the exported head: every image
    head = FusedScorer(scorer, mu=mu, sd=sd, direction=direction, bias=bias, scale=scale, clip=cfg.clip_range())
    export(head.eval(), onnx_path)
    raised = fused_scores([s.score for s in scored], [logits[s.rel] for s in scored], scale, cfg.clip_range())
    lifted = [replace(s, score=float(v), plain=s.score) for s, v in zip(scored, raised, strict=True)]
    ort = OrtScorer(onnx_path, spec)  # the final graph on the images that may become golden tests (never a fitted one)
    never_golden = {s.rel for s in fitted}
    final = [replace(s, score=float(ort.score(ds.load(by_rel[s.rel])))) for s in scored if s.rel not in never_golden]
    best = next(r for r in table if r["weight"] == weight)
    progress(f"verdict head: weight {weight:g}, out of fold {plain} -> {best} "
             f"({int(y.sum())} defect and {int((y == 0).sum())} good images)")
    return lifted, final, {**rec, "applied": True, "scale": round(scale, 6), "accept_ceiling": capped.accept_ceiling,
                           "why": "the largest weight that decides as many calibration images out of fold as the "
                           "bank alone, within the noise"}


def plain_score_model(fused_onnx: Path, out: Path) -> Path:
    """A copy of a verdict head's fused graph with a second output, ``bank_score``: the bank's own score, the factor
    of the graph's last product that the head's ``exp(c * logit)`` scales. For re-calibrating the accept ceiling
    (:func:`recalibration_scorer`); the bundle's graph is not changed. Raises CalibrationError on a graph of another
    shape."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(fused_onnx))
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer.get("anomaly_score")
    bank = [i for i in (last.input if last is not None and last.op_type == "Mul" else [])
            if i not in producer or producer[i].op_type != "Exp"]
    if len(bank) != 1:
        raise CalibrationError(f"{fused_onnx}: anomaly_score is not the bank's score times the verdict head's factor; "
                               "retrain the bundle to recalibrate its accept ceiling")
    model.graph.node.append(helper.make_node("Identity", [bank[0]], ["bank_score"]))
    model.graph.output.append(helper.make_tensor_value_info("bank_score", TensorProto.FLOAT, None))
    onnx.save(model, str(out))
    return out


def recalibration_scorer(fused_onnx: Path, spec: InputSpec, previous: Sequence[Scored]
                         ) -> tuple[OrtScorer, str | None]:
    """``lineguard calibrate`` on a verdict head's bundle: the scorer of the new images, which gives each one's fused
    and plain score in one run (:func:`plain_score_model`), and None; or, where the previous scores have no plain
    ones (a bundle trained before stop 24), the fused graph alone and why the accept ceiling must stay."""
    if any(s.plain is None for s in previous):
        return OrtScorer(fused_onnx, spec), ("the bundle's report/scores.csv has no plain_score column (trained "
                                             "before stop 24): ceiling kept")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the session holds the graph once created
        return OrtScorer(plain_score_model(fused_onnx, Path(tmp) / "plain.onnx"), spec, plain_output="bank_score"), None


def recalibrated_ceiling(scored: Sequence[Scored], policy: CalibrationPolicy, kept: str | None,
                         progress: Callable[[str], None]) -> tuple[CalibrationPolicy, dict[str, Any]]:
    """The accept ceiling recalibrated from the plain engine's scores of every calibration image, previous and new,
    with the line's targets, as training set it: (the policy with the new ceiling, the record for the provenance).
    ``kept``: why the ceiling stays (:func:`recalibration_scorer`). Raises CalibrationError where an image's fused
    score is below its plain one (the derived graph is not the bank's score)."""
    old = policy.accept_ceiling
    if kept is not None:
        progress(f"verdict head: {kept}; retrain to let new defect images raise it")
        return policy, {"from": old, "to": old, "why": kept}
    bad = [s.rel for s in scored if s.plain is None or s.score < s.plain * (1.0 - 1e-4)]
    if bad:
        raise CalibrationError(f"fused scores below the bank's own for {bad[:3]}: the plain graph derived from the "
                               "fused one does not match it; retrain the bundle to recalibrate its accept ceiling")
    good, classes = by_label(scored, plain=True)
    new = calibrate(good, classes, policy.model_copy(update={"accept_ceiling": None}), quiet=True).lower
    progress(f"verdict head: the accept ceiling (the plain engine's accept threshold) {old:.6g} -> {new:.6g} from "
             f"{len(good)} good and {sum(map(len, classes.values()))} defect plain scores")
    return policy.model_copy(update={"accept_ceiling": new}), {
        "from": old, "to": new, "why": "recalibrated from the plain engine's scores of every calibration image"}
