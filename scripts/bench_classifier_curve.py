"""Does the classifier's learning curve foretell held-out accuracy? (issue 16, stop 23).

``lineguard train`` reports, from the line's own labelled images, the accuracy its classifier should reach
and how many images per class an accuracy would need (``classifier_curve.learning_curve``: out-of-fold
accuracy with every fold's training images thinned to 40 / 60 / 80 % of each class, a power law of the
error through the points). This checks it on the classifier suite's splits (``bench_quality_classifier``),
seeds 0-2, each split's candidate as the suite's stored run chose it (its base where it chose a views twin:
the curve reads one view; the default where no stored run is found):

- trained on the first n images per class (20; mvtec_bottle: all its split gives, 10-11), the curve's
  ``accuracy_now`` against the held-out accuracy of the head trained on those images, and the plain
  out-of-fold accuracy (what the report gave before) against the same;
- its ``accuracy_at_twice`` against the held-out accuracy of the same candidate trained on 2n per class (the
  sets with 40 per class in the suite).

Usage: ``.venv/bin/python scripts/bench_classifier_curve.py [--sets ...] [--seeds 0 1 2]``; ``--n 40 --sets neu_det
pku_pcb_defects`` checks 40 -> 80 per class (the other sets hold at most 80 per class: none would be left to test);
writes ``/work/data/quality/classifier/curve.json`` (``--out``) and prints a Markdown table (docs/classifier.md,
"Learning curve").
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality_classifier as bqc

from lineguard_models.classifier import ClassifierConfig, fit_from_features
from lineguard_models.classifier_curve import DRAWS, SHARES, accuracy_at, curve_for
from lineguard_models.classifier_select import TWIN_SUFFIX, Candidate, evaluate, pick, probs_as_read, with_views_twins

OUT = bqc.BASE / "classifier" / "curve.json"


def stored_choice(name: str, seed: int, n: int, candidates: dict[str, Candidate]) -> Candidate:
    path = bqc.BASE / "classifier" / f"{name}.json"
    if path.exists():
        for row in json.loads(path.read_text())["rows"]:
            if row["seed"] == seed and (row["n"] == n or name == "mvtec_bottle"):
                return candidates[row["chosen"].removesuffix(TWIN_SUFFIX)]
    return candidates["default"]


def held_out_accuracy(cache: bqc.Cache, cand: Candidate, classes: tuple[str, ...], y: np.ndarray,
                      train: np.ndarray, test: np.ndarray, config: ClassifierConfig, seed: int
                      ) -> tuple[float, Any, Any]:
    fs = cache.feature_set(cand, classes, train, y)
    head, thr, report = fit_from_features(fs, config=config, seed=seed)
    fs_t = cache.feature_set(cand, classes, test, y)
    return bqc.named_scores(fs_t.probs(head, np.arange(len(test))), y[test], classes, thr)["accuracy"], fs, report


def run(name: str, seeds: list[int], n: int, **curve_kw: Any) -> list[dict[str, Any]]:
    config = ClassifierConfig()
    candidates = {c.name: c for c in bqc._candidates()}
    twice = 2 * n if name != "mvtec_bottle" else 0
    cache, y, classes, plans = bqc.prepare_set(name, seeds, max(n, twice), views_of="all")
    rows = []
    for seed, (order, test) in zip(seeds, plans, strict=True):
        cand = stored_choice(name, seed, n, candidates)
        (k_n, train), *more = bqc.trainings(name, order, [n, twice] if twice else [n])
        t0 = time.perf_counter()
        acc_n, fs, report = held_out_accuracy(cache, cand, classes, y, train, test, config, seed)
        curve = curve_for(fs, report, n_folds=config.cv_folds, max_iter=config.max_iter, seed=seed, **curve_kw)
        curve_s = time.perf_counter() - t0
        row = {"set": name, "seed": seed, "n": k_n, "candidate": cand.name, "held_out": acc_n,
               "oof": report["accuracy"], "curve": curve, "curve_s": round(curve_s, 1)}
        if more:
            row["n2"], train2 = more[0]
            row["held_out_2n"] = held_out_accuracy(cache, cand, classes, y, train2, test, config, seed)[0]
        rows.append(row)
        bqc.log(f"{name} seed {seed}: {cand.name} held out {acc_n:.4f} oof {report['accuracy']:.4f} "
                f"curve now {curve['accuracy_now']} | 2n: curve {curve['accuracy_at_twice']} held out "
                f"{row.get('held_out_2n')} | needed {curve['needed_per_class']} ({curve_s:.0f} s)")
    return rows


def bottle_counts(counts: list[int], draws: int) -> list[dict[str, Any]]:
    """mvtec_bottle's classifier at more labelled images per class: per draw, every defect image split at random
    into n per class that train and the rest that test (the suite's own split trains 10-11; the draws are nested:
    the 10 of a draw are among its 13 and 16), the per-line choice as ``lineguard train`` makes it
    (``bench_quality_classifier``'s candidates, twins, pick and reading); at the smallest n also the learning
    curve of the chosen candidate (its base, one view) and its forecast for every n."""
    config = ClassifierConfig()
    cands = bqc._candidates()
    cache, y, classes, _ = bqc.prepare_set("mvtec_bottle", [0], 30, views_of="all")
    rows, fits = [], {}
    for n in counts:
        for draw in range(draws):
            rng = np.random.default_rng([draw, 77])
            perms = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
            train = np.concatenate([p[:n] for p in perms])
            test = np.concatenate([p[n:] for p in perms])
            fs_of = functools.partial(cache.feature_set, classes=classes, idx=train, y=y)
            evs = with_views_twins(evaluate(fs_of, cands, config=config, seed=draw), fs_of, config=config, seed=draw)
            chosen = pick(evs)
            named = {}
            for ev in (next(e for e in evs if e.candidate == chosen), evs[0]):
                fs_t = cache.feature_set(ev.candidate, classes, test, y)
                named[ev.candidate.name] = bqc.named_scores(probs_as_read(ev, fs_t, np.arange(len(test))), y[test],
                                                            classes, ev.thresholds)["named_right"]
            base = next(e for e in evs if e.candidate.name == chosen.name.removesuffix(TWIN_SUFFIX))
            fs_t = cache.feature_set(base.candidate, classes, test, y)
            one_view = bqc.named_scores(fs_t.probs(base.head, np.arange(len(test))), y[test], classes,
                                        base.thresholds)["accuracy"]
            if n == counts[0]:
                fits[draw] = curve_for(fs_of(base.candidate), base.report, n_folds=config.cv_folds,
                                       max_iter=config.max_iter, seed=draw)["fit"]
            fit = fits.get(draw)
            rows.append({"n": n, "draw": draw, "n_test": len(test), "chosen": chosen.name,
                         "named_right": named[chosen.name], "default_named_right": named[cands[0].name],
                         "one_view_accuracy": one_view,
                         "curve_forecast": accuracy_at((fit["a"], fit["b"]), n) if fit else None})
            bqc.log(f"bottle n={n} draw {draw}: {rows[-1]}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    out = ["| set | n / class | held out | out of fold (before) | curve at n | held out at 2n | curve at 2n | "
           "95 % needs (per class) |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name]

        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            vals = [r[key] if key in r else r["curve"].get(key) for r in rs]
            return None if any(v is None for v in vals) else float(np.mean(vals))

        need = [r["curve"]["needed_per_class"]["0.95"] for r in rs]
        out.append(f"| {name} | {rs[0]['n']} | {pct(mean('held_out'))} | {pct(mean('oof'))} | "
                   f"{pct(mean('accuracy_now'))} | {pct(mean('held_out_2n'))} | {pct(mean('accuracy_at_twice'))} | "
                   f"{' / '.join('>1000' if v is None else str(v) for v in need)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="*", default=list(bqc.SETS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--shares", nargs="*", type=float, default=list(SHARES))
    p.add_argument("--draws", type=int, default=DRAWS)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--bottle-counts", nargs="*", type=int, default=[],
                   help="instead: mvtec_bottle at these labelled images per class over --draws random splits")
    p.add_argument("--draws-bottle", type=int, default=6)
    args = p.parse_args(argv)
    if args.bottle_counts:
        rows = bottle_counts(args.bottle_counts, args.draws_bottle)
        (bqc.BASE / "classifier" / "bottle_counts.json").write_text(json.dumps(rows, indent=1))
        print("| images per class | test images per draw | named right, per-line choice | the default candidate | "
              "the choice's base, one view | its curve's forecast from the smallest n (draws with a curve) |")
        print("|---|---|---|---|---|---|")
        for n in args.bottle_counts:
            rs = [r for r in rows if r["n"] == n]
            fc = [r for r in rs if r["curve_forecast"] is not None]
            print(f"| {n} | {rs[0]['n_test']} | {100 * np.mean([r['named_right'] for r in rs]):.1f} | "
                  f"{100 * np.mean([r['default_named_right'] for r in rs]):.1f} | "
                  f"{100 * np.mean([r['one_view_accuracy'] for r in rs]):.1f} | "
                  f"{100 * np.mean([r['curve_forecast'] for r in fc]):.1f} against "
                  f"{100 * np.mean([r['one_view_accuracy'] for r in fc]):.1f} ({len(fc)} of {len(rs)}) |")
        return 0
    rows = []
    for name in args.sets:
        rows += run(name, args.seeds, args.n, shares=args.shares, draws=args.draws)
        args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
