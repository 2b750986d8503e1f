"""The verdict head's accept ceiling replayed on the automatic mode's bundles, without retraining (issue 23).

A bundle with a verdict head calibrates its fused scores with the plain engine's accept threshold as the
ceiling of its own (``CalibrationPolicy.accept_ceiling``): it never accepts a part that the bank alone would not
have accepted. On casting seeds 1-2 that ceiling is what keeps a fifth of the parts in recheck although the
fused scores separate (stop 18). Each run's fused calibration scores (``report/scores.csv``) are recalibrated
under other ceilings and the thresholds applied to the run's test scores (its JSON):

* ``plain_accept``: the bank's own accept threshold (the product; must reproduce the bundle's thresholds);
* ``plain_reject``: the bank's own *reject* threshold: the head may accept a part that the bank alone would have
  sent to recheck, never one it would have rejected;
* ``none``: no ceiling (the fused scores' own calibration).

The bank's thresholds are the weight-0 row of ``provenance.verdict_head.oof_auroc_by_weight`` (recorded since
stop 24). Runs without a head are replayed unchanged.

Usage: ``.venv/bin/python scripts/replay_accept_ceiling.py [bundles arm] [results arm]`` (default ``auto auto``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay_escape_tail as ret

from lineguard.bundle import load_bundle

RULES = ("plain_accept", "plain_reject", "none")


def plain_thresholds(bundles: str, name: str) -> tuple[float, float] | None:
    """The bank's own (accept, reject) thresholds out of fold, or None where no head was applied."""
    vh = load_bundle(ret.Q / "bundles" / bundles / name).manifest.provenance.get("verdict_head") or {}
    if not vh.get("applied"):
        return None
    zero = next(r for r in vh["oof_auroc_by_weight"] if r["weight"] == 0)
    if "lower" not in zero:
        raise SystemExit(f"{name}: its bundle predates the recorded plain thresholds (stop 24); retrain it")
    return float(zero["lower"]), float(zero["upper"])


def replay(run: dict[str, Any], plain: tuple[float, float] | None, rule: str) -> tuple[float, ...]:
    """(lower, upper, automated, escapes, false rejects) on the run's test images under ``rule``
    (``replay_escape_tail.replay`` with that ceiling)."""
    ceiling = None if plain is None or rule == "none" else plain[0] if rule == "plain_accept" else plain[1]
    return ret.replay({**run, "ceiling": ceiling}, ceiling is not None)


def main() -> int:
    args = sys.argv[1:]
    bundles, results = (args + ["auto", "auto"][len(args):])[:2]
    runs = ret.load(bundles, results)
    plains = {r["name"]: plain_thresholds(bundles, r["name"]) for r in runs}
    print(f"{len(runs)} runs ({bundles} / {results}); per run: automated / escapes / false rejects %")
    table: dict[str, dict[str, tuple[float, ...]]] = {}
    for rule in RULES:
        out = {r["name"]: replay(r, plains[r["name"]], rule) for r in runs}
        if rule == "plain_accept":
            off = [r["name"] for r in runs if abs(out[r["name"]][0] - r["lower"]) > 1e-4
                   or abs(out[r["name"]][1] - r["upper"]) > 1e-4]
            if off:
                raise SystemExit(f"the product's rule does not reproduce the bundles' thresholds: {off}")
        table[rule] = out
        rates = np.array([o[2:] for o in out.values()])
        at = [r for r in runs if r["auroc"] >= ret.AUTOMATION_AUROC]
        hit = sum(1 for r in at if out[r["name"]][2] >= 0.9 and out[r["name"]][3] <= 0.02 and out[r["name"]][4] <= 0.01)
        print(f"{rule:13s} automated {100 * rates[:, 0].mean():5.1f} escapes {100 * rates[:, 1].mean():5.2f} "
              f"(worst run {100 * rates[:, 1].max():4.1f}) false rejects {100 * rates[:, 2].mean():4.2f}; "
              f"runs at the automation target {hit} of {len(at)}")
    for r in runs:
        cells = " | ".join(f"{100 * table[k][r['name']][2]:.1f} / {100 * table[k][r['name']][3]:.1f} / "
                           f"{100 * table[k][r['name']][4]:.1f}" for k in RULES)
        print(f"| {r['name']} | {r['auroc']:.4f} | {'head' if plains[r['name']] else 'no head'} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
