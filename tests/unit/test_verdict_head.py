"""The verdict head's pieces on small generated data: the fused graph, its export, the honest out-of-fold
logits and the per-line weight (docs/anomaly-model.md, "Verdict head")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lineguard.errors import CalibrationError
from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.calibration import CalibrationPolicy, auroc, calibrate
from lineguard_models.export import export_onnx
from lineguard_models.ortscore import Scored
from lineguard_models.verdict_head import (
    FusedScorer,
    VerdictHeadConfig,
    choose_weight,
    fit_logit,
    fused_scores,
    harms,
    out_of_fold_logits,
    plain_score_model,
    pooled,
)

SPEC = ScorerSpec(input_height_px=64, input_width_px=64, channels=1, max_value=255.0, stages=("stage3", "stage4"),
                  neighbourhood_cells=1, projection_dim=None, projection_seed=0, blur_sigma_px=1.0,
                  image_score="topk_mean", score_top_k=3)


@pytest.fixture(scope="module")
def scorer() -> AnomalyScorer:
    bb = EfficientNetLite0.from_state_dict_file(out_stages=("stage3", "stage4"))
    bank = torch.randn(50, 120, generator=torch.Generator().manual_seed(0))
    return AnomalyScorer(bb, bank, SPEC).eval()


def _fused(scorer: AnomalyScorer, bias: float, clip: tuple[float, float] = (-8.0, 8.0)) -> FusedScorer:
    d = 2 * 120  # average and generalised mean of stage3 (40) and stage4 (80)
    direction = np.random.default_rng(1).normal(size=d).astype(np.float32) * 0.1
    return FusedScorer(scorer, mu=np.zeros(d, np.float32), sd=np.ones(d, np.float32), direction=direction,
                       bias=bias, scale=0.05, clip=clip).eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(2).uniform(0, 255, (n, 1, 64, 64)).astype(np.float32))


def test_the_fused_score_is_the_bank_score_scaled_by_the_clipped_logit_and_the_map_is_the_banks(
        scorer: AnomalyScorer) -> None:
    x = _images()
    fused = _fused(scorer, bias=0.3)
    with torch.inference_mode():
        plain_score, plain_map = scorer(x)
        got_score, got_map = fused(x)
        logit = fused.logit(pooled(scorer.features.backbone(scorer.normalise(x)), ("stage3", "stage4")))
    assert torch.equal(got_map, plain_map)
    assert torch.allclose(got_score, plain_score * torch.exp(0.05 * logit.clamp(-8, 8)), rtol=1e-5)
    # the training side's numpy form (calibration scores) is the graph's arithmetic
    assert np.allclose(fused_scores(plain_score.numpy(), logit.numpy(), 0.05, (-8.0, 8.0)), got_score.numpy(),
                       rtol=1e-5)
    assert not torch.allclose(got_score, plain_score)  # the head did move the scores
    with torch.inference_mode():  # a head sure of itself moves a score by at most exp(scale * clip)
        capped, _ = _fused(scorer, bias=1e4, clip=(0.0, 2.0))(x)
        sure_good, _ = _fused(scorer, bias=-1e4, clip=(0.0, 2.0))(x)  # the default range: it never lowers a score
    assert torch.allclose(capped, plain_score * float(np.exp(0.05 * 2.0)), rtol=1e-5)
    assert torch.allclose(sure_good, plain_score, rtol=1e-6)
    assert VerdictHeadConfig().clip_range() == (0.0, 8.0)
    assert VerdictHeadConfig(lower_scores=True).clip_range() == (-8.0, 8.0)


def test_the_exported_fused_graph_matches_torch(scorer: AnomalyScorer, tmp_path: Path) -> None:
    fused = _fused(scorer, bias=-0.2)
    path = export_onnx(fused, tmp_path / "fused.onnx")
    x = _images(2)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    with torch.inference_mode():
        want = fused(x)
    assert np.allclose(got[0], want[0].numpy(), rtol=1e-4) and np.allclose(got[1], want[1].numpy(), atol=1e-4)
    with pytest.raises(Exception, match="plain anomaly scorer only"):  # no shared classifier map off a head
        export_onnx(fused, tmp_path / "shared.onnx", shared_stage="stage4")


def test_out_of_fold_logits_do_not_remember_their_image() -> None:
    """Labels that are noise: a head fitted on every image separates them, the out-of-fold one must not."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 200)).astype(np.float32)
    y = rng.permutation(np.r_[np.zeros(40, np.int64), np.ones(20, np.int64)])
    cfg = VerdictHeadConfig(l2=1e-4)
    oof = out_of_fold_logits(x, y, cfg, seed=0)
    mu, sd, direction, bias = fit_logit(x, y, cfg.l2)  # the head fitted on every image has seen each one
    in_sample = ((x - mu) / sd) @ direction + bias
    assert auroc(in_sample[y == 0], in_sample[y == 1]) > 0.95
    assert 0.25 < auroc(oof[y == 0], oof[y == 1]) < 0.75


def _scored(bank_good: list[float], bank_bad: list[float]) -> list[Scored]:
    return ([Scored(rel=f"g{i}", sha256="", label="good", score=v) for i, v in enumerate(bank_good)]
            + [Scored(rel=f"d{i}", sha256="", label="pit", score=v) for i, v in enumerate(bank_bad)])


def test_the_largest_weight_the_calibration_shows_no_harm_in_is_chosen_and_a_harmful_head_is_dropped() -> None:
    goods = list(np.linspace(10.0, 14.0, 30))
    pits = [11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 13.8, 20, 25, 30]
    scored = _scored(goods, pits)  # seven defects inside the goods' range
    cfg, policy = VerdictHeadConfig(), CalibrationPolicy()
    informative = {**{f"g{i}": -3.0 for i in range(30)}, **{f"d{i}": 3.0 for i in range(len(pits))}}
    weight, sigma, table, capped = choose_weight(scored, informative, cfg, policy)
    assert [r["weight"] for r in table] == [0.0, 1.0, 2.0] and weight == 2.0
    by = {r["weight"]: r for r in table}
    assert by[0.0]["oof_auroc"] < by[1.0]["oof_auroc"] < by[2.0]["oof_auroc"]
    assert by[2.0]["oof_automated"] > by[0.0]["oof_automated"]  # the head takes parts out of recheck
    assert sigma == pytest.approx(float(np.log(goods).std()))
    # the plain engine's accept threshold caps every weight's: the fused bundle accepts no part it would not
    plain = calibrate(np.array(goods), {"pit": np.array(pits)}, policy)
    assert capped.accept_ceiling == pytest.approx(plain.lower)
    # each weight's row records the thresholds its calibration set: weight 0's are the plain engine's, and no
    # weight's accept threshold is above that ceiling
    assert (by[0.0]["lower"], by[0.0]["upper"]) == (pytest.approx(plain.lower), pytest.approx(plain.upper))
    assert all(r["lower"] <= plain.lower + 1e-6 for r in table)  # recorded to 6 decimals
    # where the calibration images are already all decided the shares tie: that is no evidence against the head,
    # so the largest weight is kept (stop 16's rule, "beat the plain engine", kept the plain engine here)
    apart = _scored(goods, [20.0, 21, 22, 23, 24, 25, 26, 27, 28, 30])
    weight, _, table, _ = choose_weight(apart, informative, cfg, policy)
    assert {r["oof_automated"] for r in table} == {1.0} and weight == 2.0
    # a head that takes the goods for defects pushes them into recheck and rejects: the calibration shows the harm
    backwards = {k: -v for k, v in informative.items()}
    weight, _, table, _ = choose_weight(scored, backwards, cfg, policy)
    by = {r["weight"]: r for r in table}
    assert weight == 0.0 and harms(by[1.0]["oof_automated"], by[0.0]["oof_automated"], 40)
    # without the plain engine among the weights there is nothing to guard against: the largest is taken
    assert choose_weight(scored, backwards, VerdictHeadConfig(weights=(4.0, 1.0)), policy)[0] == 4.0


@pytest.mark.parametrize(("share", "plain", "n", "harmful"), [
    (0.44, 0.70, 36, True), (0.44, 0.47, 36, False), (0.44, 0.52, 36, False), (0.40, 0.52, 36, True),  # SE 0.083
    (1.0, 1.0, 36, False), (0.60, 0.61, 36, False), (0.70, 0.44, 36, False),
    (0.99, 1.0, 100, False), (0.98, 1.0, 100, True),  # one image fewer is within the noise, even where SE is less
])
def test_a_head_is_dropped_only_where_it_decides_fewer_calibration_images_by_more_than_the_noise(
        share: float, plain: float, n: int, harmful: bool) -> None:
    assert harms(share, plain, n) is harmful


def test_an_accept_ceiling_caps_the_accept_threshold_and_the_figures_follow_it() -> None:
    goods, pits = np.linspace(10.0, 14.0, 30), np.array([15.0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29])
    free = calibrate(goods, {"pit": pits}, CalibrationPolicy())
    ceiling = free.lower - 1.0
    capped = calibrate(goods, {"pit": pits}, CalibrationPolicy(accept_ceiling=ceiling))
    assert capped.lower == ceiling and capped.upper >= ceiling and capped.upper == free.upper
    accepted_goods = int((goods < ceiling).sum())
    assert capped.good.rechecks == free.good.rechecks + (int((goods < free.lower).sum()) - accepted_goods)
    assert capped.automated_share < free.automated_share
    # the report says what holds the accept threshold, where the fused scores alone would put it, and what moves it
    held = [w for w in capped.warnings if "accept threshold is held at" in w]
    assert len(held) == 1 and f"{ceiling:.6g}" in held[0] and f"{free.lower:.6g}" in held[0]
    assert "More defect images raise that cap: lineguard calibrate recalibrates it" in held[0]
    # a ceiling that does not bind says nothing
    loose = calibrate(goods, {"pit": pits}, CalibrationPolicy(accept_ceiling=free.lower + 1.0))
    assert loose.lower == free.lower and not any("accept threshold is held" in w for w in loose.warnings)


def _graph(path: Path, fused: bool) -> Path:
    """A tiny graph shaped like the exported ones: anomaly_score = mean(image), times exp(sum(image)) if fused."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["image"], ["bank" if fused else "anomaly_score"], axes=[1], keepdims=0)]
    if fused:
        nodes += [helper.make_node("ReduceSum", ["image", "axis"], ["logit"], keepdims=0),
                  helper.make_node("Exp", ["logit"], ["factor"]),
                  helper.make_node("Mul", ["bank", "factor"], ["anomaly_score"])]
    axis = [helper.make_tensor("axis", TensorProto.INT64, [1], [1])] if fused else []
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [1])], axis)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_the_plain_graph_is_the_banks_factor_of_the_fused_score_and_other_shapes_are_refused(tmp_path: Path) -> None:
    x = np.array([[0.2, 0.4, 0.9]], np.float32)
    fused = _graph(tmp_path / "fused.onnx", fused=True)
    (score,) = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"]).run(["anomaly_score"], {"image": x})
    assert float(score[0]) == pytest.approx(float(x.mean() * np.exp(x.sum())), rel=1e-5)
    derived = plain_score_model(fused, tmp_path / "plain.onnx")
    (bank,) = ort.InferenceSession(str(derived), providers=["CPUExecutionProvider"]).run(["bank_score"], {"image": x})
    assert float(bank[0]) == pytest.approx(float(x.mean()), rel=1e-5)  # the bank's factor, not the fused score
    with pytest.raises(CalibrationError, match="not the bank's score times the verdict head's factor"):
        plain_score_model(_graph(tmp_path / "plain_engine.onnx", fused=False), tmp_path / "no.onnx")
