"""Verdict-head weights and weight-choice rules replayed on the quality suite, without retraining (issue 23).

Data flow per run: two bundles of the same split and bank, ``folds3_nohead`` (the plain engine) and
``folds3_w4`` (the head forced at weight 4: ``bench_quality.CONFIGS``) -> the head's clipped logit per image,
``log(fused / plain) / scale`` (the calibration images' out-of-fold logits from ``report/scores.csv``, the
test images' from the final graph's scores in the run's JSON) -> for each weight the fused scores
(``verdict_head.fused_scores``), calibrated under the bundle's policy capped at the plain engine's accept
threshold (as training does) -> the calibration images decided and their AUROC, and the test images'
automated share, escapes and false rejects -> each choice rule picks a weight from the calibration figures
alone; its test figures are summed over the runs. Weight 0 must reproduce the plain bundle's thresholds and
weight 4 the forced bundle's (checked), so the replay is the product's own arithmetic.

Usage: ``.venv/bin/python scripts/replay_verdict_head.py [--weights 0,1,2,4] [--per-run]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq

AUTOMATION_AUROC = 0.98  # issue 23: the automation target applies where the test AUROC reaches this
Row = dict[str, float]


def _noise(share: float, n: int) -> float:
    from lineguard_models.verdict_head import noise

    return float(noise(share, n))


def rule_stop16(table: list[Row], n: int) -> float:
    """Stop 16's rule: the smallest weight within the noise of the best share, kept only if it beats the plain
    engine's share by more than the noise."""
    top = max(r["share"] for r in table)
    best = min((r for r in table if r["share"] >= top - _noise(top, n) - 1e-9), key=lambda r: r["w"])
    zero = next(r for r in table if r["w"] == 0)
    return best["w"] if best["share"] - zero["share"] > _noise(zero["share"], n) + 1e-9 else 0.0


def rule_auroc_tiebreak(table: list[Row], n: int) -> float:
    """Within the noise of the best share, the best out-of-fold AUROC; equal AUROC -> the larger weight."""
    top = max(r["share"] for r in table)
    near = [r for r in table if r["share"] >= top - _noise(top, n) - 1e-9]
    return max(near, key=lambda r: (round(r["auroc"], 6), r["w"]))["w"]


def rule_largest_no_loss(table: list[Row], n: int) -> float:
    """The largest weight whose share is at least the plain engine's."""
    zero = next(r for r in table if r["w"] == 0)
    return max(r["w"] for r in table if r["share"] >= zero["share"] - 1e-9)


def rule_largest_within_noise(table: list[Row], n: int) -> float:
    """The largest weight whose share is within the noise of the best."""
    top = max(r["share"] for r in table)
    return max(r["w"] for r in table if r["share"] >= top - _noise(top, n) - 1e-9)


def guarded(w: float) -> Callable[[list[Row], int], float]:
    """Weight ``w`` unless its share falls below the plain engine's by more than the noise (then plain)."""
    from lineguard_models.verdict_head import harms

    def rule(table: list[Row], n: int) -> float:
        zero, r = (next(t for t in table if t["w"] == v) for v in (0.0, w))
        return 0.0 if harms(r["share"], zero["share"], n) else w
    return rule


def largest_guarded(w_max: float) -> Callable[[list[Row], int], float]:
    """The largest weight up to ``w_max`` whose share is not below the plain engine's by more than the noise
    (``verdict_head.choose_weight`` since stop 17, with weights 0, 1 and 2)."""
    from lineguard_models.verdict_head import harms

    def rule(table: list[Row], n: int) -> float:
        zero = next(t for t in table if t["w"] == 0.0)
        return max(t["w"] for t in table if t["w"] <= w_max and not harms(t["share"], zero["share"], n))
    return rule


RULES: dict[str, Callable[[list[Row], int], float]] = {
    "plain": lambda t, n: 0.0, "stop16": rule_stop16, "auroc_tiebreak": rule_auroc_tiebreak,
    "largest_no_loss": rule_largest_no_loss, "largest_within_noise": rule_largest_within_noise,
    "fixed_w1": lambda t, n: 1.0, "fixed_w2": lambda t, n: 2.0, "fixed_w4": lambda t, n: 4.0,
    "guarded_w1": guarded(1.0), "guarded_w2": guarded(2.0), "guarded_w4": guarded(4.0),
    "stop17 (largest_guarded_2)": largest_guarded(2.0), "largest_guarded_4": largest_guarded(4.0),
}


def _by_file(bundle: Path) -> dict[str, tuple[str, float]]:
    import csv

    with (bundle / "report" / "scores.csv").open() as f:
        return {r["file"]: (r["label"], float(r["score"])) for r in csv.DictReader(f)}


def replay_run(name: str, weights: list[float]) -> dict[str, Any] | None:
    from lineguard_models.calibration import CalibrationPolicy, auroc, calibrate
    from lineguard_models.verdict_head import fused_scores

    paths = {arm: bq.BASE / "results" / f"product_{arm}" / f"{name}.json" for arm in ("folds3_nohead", "folds3_w4")}
    if not all(p.exists() for p in paths.values()):
        return None
    plain_r, head_r = (json.loads(p.read_text()) for p in paths.values())
    pb, hb = (bq.BASE / "bundles" / arm / name for arm in ("folds3_nohead", "folds3_w4"))
    pman, hman = (json.loads((b / "manifest.json").read_text()) for b in (pb, hb))
    rec = hman["provenance"]["verdict_head"]
    if not rec["applied"]:
        return {"name": name, "set": plain_r["set"], "skipped": rec["why"]}
    scale4, clip = rec["scale"], tuple(rec["clip_logit"])
    pc, hc = _by_file(pb), _by_file(hb)
    files = sorted(pc)
    label = np.array([pc[f][0] for f in files])
    good = label == "good"
    raw = np.array([pc[f][1] for f in files])
    lg = np.log(np.array([hc[f][1] for f in files]) / raw) / scale4
    tp, th = np.array(plain_r["test_scores"]), np.array(head_r["test_scores"])
    y = np.array([c != "good" for c in plain_r["test_labels"]])
    lg_t = np.log(th / tp) / scale4
    base = {k: v for k, v in pman["thresholds"]["policy"].items() if k not in ("mode", "accept_ceiling")}
    policy = CalibrationPolicy.model_validate(base)
    classes = sorted(set(label[~good]))

    def cal(scores: np.ndarray, pol: Any) -> Any:
        return calibrate(scores[good], {c: scores[label == c] for c in classes}, pol, quiet=True)

    plain = cal(raw, policy)
    assert math.isclose(plain.lower, pman["thresholds"]["lower"], rel_tol=1e-5), f"{name}: plain not reproduced"
    capped = policy.model_copy(update={"accept_ceiling": plain.lower})
    table = []
    for w in weights:
        f = fused_scores(raw, lg, scale4 * w / 4.0, clip)
        res = cal(f, capped)
        if w == 4.0:
            assert math.isclose(res.lower, hman["thresholds"]["lower"], rel_tol=1e-4), f"{name}: w4 not reproduced"
        t = fused_scores(tp, lg_t, scale4 * w / 4.0, clip)
        acc, rej = t < res.lower, t >= res.upper
        table.append({"w": w, "share": float(np.mean((f < res.lower) | (f >= res.upper))),
                      "auroc": float(auroc(f[good], f[~good])), "test_auroc": float(auroc(t[~y], t[y])),
                      "automated": float(np.mean(acc | rej)), "escape": float(np.mean(acc[y])),
                      "false_reject": float(np.mean(rej[~y])), "n_defect_test": int(y.sum())})
    return {"name": name, "set": plain_r["set"], "n": len(files), "table": table}


def summarise(runs: list[dict[str, Any]], per_run: bool) -> None:
    done = [r for r in runs if "table" in r]
    for r in runs:
        if "skipped" in r:
            print(f"{r['name']}: no head ({r['skipped']})")
    if per_run:
        for r in done:
            cells = "  ".join(f"w{t['w']:g} cal {100 * t['share']:.1f}/{t['auroc']:.3f} test {100 * t['automated']:.1f}"
                              f"/{100 * t['escape']:.1f}/{100 * t['false_reject']:.1f} {t['test_auroc']:.4f}"
                              for t in r["table"])
            print(f"{r['name']:<22} {cells}")
    print("\n| rule | runs | automated % | escapes % | false rejects % | mean test AUROC | runs at the automation "
          "target | weights picked |\n|---|---|---|---|---|---|---|---|")
    for rule, pick in RULES.items():
        rows, at, eligible, picks = [], 0, 0, []
        for r in done:
            w = pick([{"w": t["w"], "share": t["share"], "auroc": t["auroc"]} for t in r["table"]], r["n"])
            t = next(t for t in r["table"] if t["w"] == w)
            rows.append(t)
            picks.append(f"{w:g}")
            plain_auroc = next(t for t in r["table"] if t["w"] == 0)["test_auroc"]
            if plain_auroc >= AUTOMATION_AUROC:
                eligible += 1
                at += t["automated"] >= 0.90 and t["escape"] <= 0.02 and t["false_reject"] <= 0.01
        m = {k: 100 * float(np.mean([t[k] for t in rows])) for k in ("automated", "escape", "false_reject")}
        print(f"| {rule} | {len(rows)} | {m['automated']:.1f} | {m['escape']:.2f} | {m['false_reject']:.2f} | "
              f"{np.mean([t['test_auroc'] for t in rows]):.4f} | {at} of {eligible} | {' '.join(picks)} |")


def by_set(runs: list[dict[str, Any]], rule: str) -> None:
    """Per set, the plain engine against ``rule``: test AUROC, automated, escapes, false rejects (mean over seeds)."""
    print(f"\n| set | seeds | weights picked | image AUROC plain / {rule} | automated % | escape % | false reject % |"
          "\n|---|---|---|---|---|---|---|")
    sets: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
    for r in (r for r in runs if "table" in r):
        w = RULES[rule]([{"w": t["w"], "share": t["share"], "auroc": t["auroc"]} for t in r["table"]], r["n"])
        pair = next(t for t in r["table"] if t["w"] == 0), next(t for t in r["table"] if t["w"] == w)
        sets.setdefault(r["set"], []).append(pair)
    for name, pairs in sets.items():
        def m(k: str, i: int, pairs: list[tuple[dict[str, float], dict[str, float]]] = pairs) -> float:
            return float(np.mean([p[i][k] for p in pairs]))
        picked = " ".join(f"{p[1]['w']:g}" for p in pairs)
        print(f"| {name} | {len(pairs)} | {picked} | {m('test_auroc', 0):.4f} / "
              f"{m('test_auroc', 1):.4f} | " + " | ".join(f"{100 * m(k, 0):.1f} / {100 * m(k, 1):.1f}"
                                                         for k in ("automated", "escape", "false_reject")) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="0,1,2,4")
    ap.add_argument("--per-run", action="store_true")
    ap.add_argument("--by-set", default="stop17 (largest_guarded_2)", help="the rule whose per-set table is printed")
    a = ap.parse_args()
    weights = [float(w) for w in a.weights.split(",")]
    names = sorted(p.stem for p in (bq.BASE / "results" / "product_folds3_w4").glob("*.json"))
    runs = [r for n in names if (r := replay_run(n, weights)) is not None]
    summarise(runs, a.per_run)
    by_set(runs, a.by_set)


if __name__ == "__main__":
    main()
