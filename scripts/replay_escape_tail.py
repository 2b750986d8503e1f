"""The escape tail's shape replayed on the quality suite's bundles, without retraining (issue 23, stop 18).

Casting seeds 1-2 miss the automation target (>= 90 % decided at <= 2 % escapes) although their test images
separate well (AUROC 0.991 / 0.999): the accept threshold sits far below the lowest calibration defect, where the
modelled lower tail of 20 defect images puts 2 % of new defects (``calibration.tail_escape_threshold``). Is the
tail too heavy? Each run's calibration scores (``report/scores.csv``) are recalibrated with the tail estimated in
other ways, and the new thresholds applied to the run's test scores (its JSON): ``current`` (the product: the k =
n/4 lowest, 2..10, exponential) must reproduce the bundle's thresholds (checked); ``k3`` / ``k_eighth`` /
``k_half``: k = 3, n/8, n/2; ``normal_lowhalf``: a normal fitted to the lower half of each class's scores.

Usage: ``.venv/bin/python scripts/replay_escape_tail.py [bundles arm] [results arm] [--ceiling]``; defaults: the
fixed recipe's plain engine (``folds3_nohead``, no accept ceiling). ``auto auto --ceiling`` replays the automatic
mode's bundles with their stored accept ceiling (the plain engine's threshold under the current tail: only the
fused calibration is replayed there).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq

import lineguard_models.calibration as cal
from lineguard_models.calibration import CalibrationPolicy, calibrate

Q = Path("/work/data/quality")
AUTOMATION_AUROC = 0.98
Arr = npt.NDArray[np.float64]
TailFn = Callable[[Arr, float], tuple[float, float, float]]


def _tail_k(k_of: Callable[[int], int]) -> TailFn:
    def tail(extreme_first: Arr, span: float) -> tuple[float, float, float]:
        n = extreme_first.size
        k = int(min(max(2, k_of(n)), n - 1))
        u = float(extreme_first[k])
        s = max(float(np.mean(np.abs(extreme_first[:k] - u))), 0.01 * span, 1e-12)
        return k / (n + 1), u, s
    return tail


def _normal_lowhalf(defect: Arr, target: float) -> float:
    from scipy.stats import norm

    d = np.sort(defect)
    med = float(np.median(d))
    low = d[d < med]
    if low.size < 2:
        return float(d[0])
    return float(med + norm.ppf(target) * math.sqrt(float(np.mean((med - low) ** 2))))


VARIANTS: dict[str, dict[str, Any]] = {
    "current": {},
    "k3": {"_tail": _tail_k(lambda n: 3)},
    "k_eighth": {"_tail": _tail_k(lambda n: min(10, n // 8))},
    "k_half": {"_tail": _tail_k(lambda n: min(10, n // 2))},
    "normal_lowhalf": {"tail_escape_threshold": _normal_lowhalf},
}


@contextmanager
def patched(changes: dict[str, Any]) -> Iterator[None]:
    saved = {k: getattr(cal, k) for k in changes}
    try:
        for k, v in changes.items():
            setattr(cal, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(cal, k, v)


def load(bundles: str, results: str) -> list[dict[str, Any]]:
    """Each run's calibration scores and thresholds (its bundle, verified) and its test scores (its JSON)."""
    from lineguard.bundle import load_bundle

    runs = []
    for f in sorted((Q / "results" / results).glob("*.json")):
        bdir = Q / "bundles" / bundles / f.stem
        if not (bdir / "report" / "scores.csv").exists():
            continue
        d = json.loads(f.read_text())
        bundle = load_bundle(bdir)
        good, classes = bq.stored_calibration(bundle)
        th = bundle.manifest.thresholds
        runs.append({"name": f.stem, "set": d["set"], "auroc": d["image_auroc"], "lower": th.lower,
                     "upper": th.upper, "ceiling": th.policy.get("accept_ceiling"), "good": np.array(good),
                     "classes": {k: np.array(v) for k, v in classes.items()},
                     "test": np.array(d["test_scores"]), "labels": np.array(d["test_labels"])})
    return runs


def replay(run: dict[str, Any], ceiling: bool) -> tuple[float, float, float, float, float]:
    """(lower, upper, automated, escapes, false rejects) on the run's test images."""
    res = calibrate(run["good"], run["classes"], CalibrationPolicy(accept_ceiling=run["ceiling"] if ceiling else None),
                    quiet=True)
    s, good = run["test"], run["labels"] == "good"
    return (res.lower, res.upper, float(np.mean((s < res.lower) | (s >= res.upper))),
            float(np.mean(s[~good] < res.lower)), float(np.mean(s[good] >= res.upper)))


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    bundles, results = (args + ["folds3_nohead", "product_folds3_nohead"][len(args):])[:2]
    ceiling = "--ceiling" in sys.argv
    runs = load(bundles, results)
    print(f"{len(runs)} runs ({bundles} / {results}{', stored accept ceiling' if ceiling else ''}); per set: "
          "automated / escapes / false rejects %")
    for name, changes in VARIANTS.items():
        with patched(changes):
            out = [(r, *replay(r, ceiling)) for r in runs]
        if name == "current":
            off = [r["name"] for r, lo, up, *_ in out if abs(lo - r["lower"]) > 1e-6 or abs(up - r["upper"]) > 1e-6]
            if off:
                raise SystemExit(f"the current rule does not reproduce the bundles' thresholds: {off}")
        rates = np.array([o[3:] for o in out])
        at = [o for o in out if o[0]["auroc"] >= AUTOMATION_AUROC]
        hit = sum(1 for o in at if o[3] >= 0.9 and o[4] <= 0.02 and o[5] <= 0.01)
        per: dict[str, list[Any]] = {}
        for o in out:
            per.setdefault(o[0]["set"], []).append(o[3:])
        print(f"{name:15s} automated {100 * rates[:, 0].mean():5.1f} escapes {100 * rates[:, 1].mean():5.2f} "
              f"(worst run {100 * rates[:, 1].max():4.1f}) false rejects {100 * rates[:, 2].mean():4.2f}; runs at the "
              f"automation target {hit} of {len(at)}")
        print("    " + "; ".join(f"{k} " + "/".join(f"{100 * np.mean([v[i] for v in vs]):.1f}" for i in range(3))
                                for k, vs in per.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
