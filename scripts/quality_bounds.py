"""Observed test rates against the bounds each bundle's calibration report predicted (issue 23), with test noise.

The report's bounds are one-sided 95 % Clopper-Pearson upper bounds on the *true* rates (false rejects over the
calibrating goods, escapes per defect class). A suite run observes the rates on 100 test goods and about 100 test
defects, themselves a sample: 17 escapes in 100 is consistent with a true rate of 11 %. So beside "observed <=
bound" this prints whether the test contradicts the bound at 95 %: its one-sided lower Clopper-Pearson limit above
the bound. By construction about 1 in 20 bounds is exceeded by the true rate.

Usage: ``.venv/bin/python scripts/quality_bounds.py [results folder, default /work/data/quality/results/auto]``
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from lineguard_models.binomial import clopper_pearson_lower

CONFIDENCE = 0.95


def rows(folder: Path) -> list[tuple[str, str, int, int, float, bool, bool]]:
    """(run, what, count, n, predicted bound, observed <= bound, test not contradicting the bound)."""
    out = []
    for p in sorted(folder.glob("*.json")):
        r = json.loads(p.read_text())
        pred = r.get("predicted") or {}
        if pred.get("false_reject_upper") is None:
            continue
        n_by = Counter(r["test_labels"])
        checks = [("false rejects", round(r["false_reject"] * n_by["good"]), n_by["good"], pred["false_reject_upper"])]
        checks += [(f"escapes {c}", round(rate * n_by[c]), n_by[c], pred["escape_upper"][c])
                   for c, rate in (r.get("escape_by_class") or {}).items() if pred["escape_upper"].get(c) is not None]
        for what, k, n, bound in checks:
            out.append((p.stem, what, k, n, bound, k / n <= bound + 1e-12,
                        clopper_pearson_lower(k, n, CONFIDENCE) <= bound + 1e-12))
    return out


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/data/quality/results/auto")
    rs = rows(folder)
    runs = sorted({r[0] for r in rs})
    inside = [run for run in runs if all(r[5] for r in rs if r[0] == run)]
    consistent = [run for run in runs if all(r[6] for r in rs if r[0] == run)]
    for run, what, k, n, bound, ok, cons in rs:
        if not ok:
            lo = clopper_pearson_lower(k, n, CONFIDENCE)
            print(f"{run}: {what} {k}/{n} = {100 * k / n:.1f} % above the predicted bound {100 * bound:.1f} %; the "
                  f"test's {100 * CONFIDENCE:.0f} % lower limit {100 * lo:.1f} % "
                  f"{'does not contradict it' if cons else 'contradicts it'}")
    print(f"{len(runs)} runs, {len(rs)} bounds: observed inside every bound in {len(inside)} runs; "
          f"the test contradicts no bound in {len(consistent)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
