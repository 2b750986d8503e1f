"""Operating-point rules replayed on the quality suite's auto arm (issue 23), without retraining.

Data flow per auto run (``/work/data/quality/results/auto/<set>_s<seed>.json``): the bundle's stored
calibration scores (``report/scores.csv``: out-of-fold goods and the calibrating defects, exactly what
training calibrated on) -> ``calibration.calibrate`` under each policy variant -> thresholds -> the
run's test images' scores (kept in the result by ``bench_quality.score_bundle``; scored again by the
bundle's engine when an older result lacks them) -> automated share, escape and false-reject rates,
and whether they stay inside the Clopper-Pearson upper bounds the calibration predicted. The
``balanced`` row must reproduce the bundle's own thresholds (checked), so the replay is the product's.

Usage: ``.venv/bin/python scripts/bench_operating_point.py [--variants balanced,escape_first]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq

VARIANTS: dict[str, dict[str, Any]] = {"balanced": {"gap": "balanced"}, "escape_first": {"gap": "escape_first"},
                                       "recheck_gap": {"band": "recheck"},
                                       "reject_tail_model": {"reject_tail": "model"},
                                       "reject_tail_observed": {"reject_tail": "observed"}}


def _test_scores(r: dict[str, Any], bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    if "test_scores" in r:  # kept in the result since stop 10
        return np.array(r["test_scores"]), np.array(r["test_labels"])
    return bq.test_scores(r["set"], r["seed"], bundle)


def replay(path: Path, variants: list[str], arm: str) -> list[dict[str, Any]]:
    from lineguard.bundle import load_bundle
    from lineguard_models.calibration import CalibrationPolicy, calibrate

    r = json.loads(path.read_text())
    bundle = load_bundle(bq.BASE / "bundles" / arm / f"{r['set']}_s{r['seed']}")
    good, defects = bq.stored_calibration(bundle)
    # the current auto arm replays its own policy (and must reproduce its thresholds); older bundles
    # are replayed under today's default policy, as bench_quality.rethreshold does
    current = arm == "auto"
    base = ({k: v for k, v in dict(bundle.manifest.thresholds.policy).items() if k != "mode"} if current else {})
    if current:  # a bundle made before the option was chosen on the goods' scores alone
        base.setdefault("reject_tail", "observed")
    s, cls = _test_scores(r, bundle)
    y = cls != "good"
    out = []
    for name in variants:
        res = calibrate(good, defects, CalibrationPolicy.model_validate({**base, **VARIANTS[name]}))
        if name == "balanced" and current:
            assert abs(res.lower - bundle.manifest.thresholds.lower) < 1e-6 * max(1.0, abs(res.lower)), (
                f"{path.name}: the replay does not reproduce the bundle's thresholds")
        acc, rej = s < res.lower, s >= res.upper
        esc = {c: float(acc[cls == c].mean()) for c in sorted(set(cls[y]))}
        up = {c.name: c.escape_upper for c in res.classes}
        out.append({"set": r["set"], "seed": r["seed"], "variant": name, "auroc": r["image_auroc"],
                    "automated": float((acc | rej).mean()), "escape": float(acc[y].mean()),
                    "false_reject": float(rej[~y].mean()),
                    "inside": all(esc[c] <= up.get(c, 1.0) for c in esc)
                    and float(rej[~y].mean()) <= res.good.false_reject_upper})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--arm", default="auto", help="results and bundles folder: auto (current) or auto_stop8")
    a = ap.parse_args()
    variants = a.variants.split(",")
    rows = [x for p in sorted((bq.BASE / "results" / a.arm).glob("*.json")) for x in replay(p, variants, a.arm)]
    print("| set | seed | AUROC | " + " | ".join(f"{v}: automated / escape / false reject % (inside)"
                                                  for v in variants) + " |")
    print("|---" * (3 + len(variants)) + "|")
    for i in range(0, len(rows), len(variants)):
        g = rows[i:i + len(variants)]
        print(f"| {g[0]['set']} | {g[0]['seed']} | {g[0]['auroc']:.3f} | " + " | ".join(
            f"{100 * x['automated']:.1f} / {100 * x['escape']:.1f} / {100 * x['false_reject']:.1f} "
            f"({'yes' if x['inside'] else 'no'})" for x in g) + " |")
    for v in variants:
        vs = [x for x in rows if x["variant"] == v]
        easy = [x for x in vs if x["auroc"] >= 0.98]
        met = sum(x["automated"] >= 0.9 and x["escape"] <= 0.02 and x["false_reject"] <= 0.01 for x in easy)
        print(f"{v}: mean automated {100 * np.mean([x['automated'] for x in vs]):.1f} %, escape "
              f"{100 * np.mean([x['escape'] for x in vs]):.1f} %, false reject "
              f"{100 * np.mean([x['false_reject'] for x in vs]):.1f} %, inside bounds {sum(x['inside'] for x in vs)}"
              f" of {len(vs)}; AUROC >= 0.98 runs meeting >= 90 % automated at <= 2 % escapes and <= 1 % false "
              f"rejects: {met} of {len(easy)}")


if __name__ == "__main__":
    main()
