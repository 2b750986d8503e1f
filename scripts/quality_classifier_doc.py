"""Render docs/benchmarks/quality-classifier.md from the JSON of scripts/bench_quality_classifier.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SETS = ("neu_det", "xsdd_steel", "deeppcb_defects", "mvtec_bottle", "pku_pcb_defects")
FETCHED = {"pku_pcb_defects"}  # not in ../shared: fetched by scripts/build_pku_pcb_defects.py


def _ms(values: list[float]) -> str:
    a = np.array(values) * 100
    return f"{a.mean():.2f} ± {a.std():.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def _set_rows(res: dict[str, Any]) -> list[str]:
    out = []
    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by_n.setdefault(r["n"], []).append(r)
    for n, rows in sorted(by_n.items()):
        d = [r["candidates"][r.get("base", "default")] for r in rows]
        ch = [r["candidates"][r["chosen"]] for r in rows]
        picks = Counter(r["chosen"] for r in rows)
        base = rows[0].get("base", "default")
        label = res["set"] if base == "default" else f"{res['set']} ({base} as the base)"
        out.append(
            f"| {label} | {len(res['classes'])} | {n} | {rows[0]['n_test']} | "
            f"{_ms([x['accuracy'] for x in d])} | **{_ms([x['named_right'] for x in d])}** | "
            f"{_ms([x['unknown_rate'] for x in d])} | {_ms([x['accuracy'] for x in ch])} | "
            f"{_ms([x['named_right'] for x in ch])} | "
            f"{', '.join(f'{k} x{v}' for k, v in picks.most_common())} | "
            f"{np.mean([x['train_s_est'] for x in d]):.0f} |")
    return out


def _recall_rows(res: dict[str, Any]) -> list[str]:
    out = []
    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by_n.setdefault(r["n"], []).append(r)
    for n, rows in sorted(by_n.items()):
        rec = {c: np.mean([r["candidates"][r.get("base", "default")]["recall"][c] for r in rows])
               for c in res["classes"]}
        out.append(f"| {res['set']} | {n} | " + ", ".join(f"{c} {v * 100:.0f}" for c, v in rec.items()) + " |")
    return out


def _cand_rows(res: dict[str, Any], names: list[str]) -> list[str]:
    out = []
    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by_n.setdefault(r["n"], []).append(r)
    for n, rows in sorted(by_n.items()):
        cells = []
        for nm in names:
            got = [r["candidates"][nm] for r in rows if "accuracy" in r["candidates"].get(nm, {})]
            if not got:  # never offered, or a twin refused at every seed (most parts through the views)
                cells.append("not run" if nm not in rows[0]["candidates"] else "refused")
                continue
            cv = np.mean([c["cv_accuracy"] for c in got]) * 100
            te = np.mean([c["accuracy"] for c in got]) * 100
            cells.append(f"{cv:.1f} / {te:.1f}" + (f" ({len(got)} of {len(rows)})" if len(got) < len(rows) else ""))
        out.append(f"| {res['set']} | {n} | " + " | ".join(cells) + " |")
    return out


def _status(results: dict[str, Any], e2e: dict[str, Any]) -> list[str]:
    """Issue 16's targets against what was measured (computed, not typed in)."""
    share = {}
    for s, res in results.items():
        rows = [r for r in res["rows"] if r["n"] == (20 if s != "mvtec_bottle" else r["n"])]
        if rows:  # what lineguard train ships: the per-line choice (ClassifierConfig.select is on by default)
            share[s] = float(np.mean([r["candidates"][r["chosen"]]["named_right"] for r in rows]))
    if e2e["rows"]:
        share["mvtec_bottle"] = float(np.mean([r["named_right"] for r in e2e["rows"]]))  # the real end to end
    out = ["", "## Status against issue 16 (as shipped: the per-line choice; named right at 20 per class; "
           "mvtec_bottle: 10-11, end to end)", ""]
    if share:
        mean, low = float(np.mean(list(share.values()))), min(share, key=share.get)  # type: ignore[arg-type]
        out.append(f"- mean end-to-end named-right share {mean * 100:.1f} % over {len(share)} sets (target >= 95 %): "
                   f"**{'met' if mean >= 0.95 else 'not met'}**; lowest {low} {share[low] * 100:.1f} % (target: none "
                   f"below 85 %): **{'met' if share[low] >= 0.85 else 'not met'}**. Per set: "
                   + ", ".join(f"{k} {v * 100:.1f} %" for k, v in share.items()) + ".")
    neu = [r for r in results.get("neu_det", {}).get("rows", []) if r["n"] == 40]
    if neu:
        acc = [r["candidates"][r["chosen"]]["accuracy"] for r in neu]
        fixed = [r["candidates"][r.get("base", "default")]["accuracy"] for r in neu]
        verdict = "met" if np.mean(acc) >= 0.99 else "not met"
        out.append(f"- NEU-DET at 40 per class: {_ms(acc)} % over {len(acc)} seed(s) with the default settings "
                   f"(frozen backbone, per-line choice; the fixed stage5+6 recipe {_ms(fixed)} %; target >= 99.0 %): "
                   f"**{verdict}**.")
    missing = [s for s in SETS if s not in results]
    if missing:
        out.append(f"- not measured in this run: {', '.join(missing)}.")
    return out


def render(out_dir: Path) -> str:
    results = {s: json.loads((out_dir / f"{s}.json").read_text()) for s in SETS if (out_dir / f"{s}.json").exists()}
    e2e_path = out_dir / "e2e_mvtec_bottle.json"
    e2e = json.loads(e2e_path.read_text()) if e2e_path.exists() else {"rows": []}
    lines = [
        "# Quality suite: defect classifier (issue 16)",
        "",
        "Generated by `scripts/bench_quality_classifier.py --doc` from the JSON it writes under",
        "`/work/data/quality/classifier` (`nice -n 10 .venv/bin/python scripts/bench_quality_classifier.py`).",
        "Every shared set with at least 3 defect classes, and the public sets this project fetched (below);",
        "224x224 input, frozen ImageNet EfficientNet-Lite0;",
        "*default* = the fixed recipe of `ClassifierConfig()` with the conservative camera profile of `lineguard",
        "train` (stage5+6 pooled by average and GeM, 2 photometric copies, no orientation views, CV-chosen L2,",
        "per-class `min_confidence`); *per-line choice* = what `lineguard train` ships",
        "(`lineguard_models.classifier_select`, on by default: the candidate with the best cross-validated",
        "accuracy on that split's training images only, if it beats the default by at least one image; no camera",
        "profile declared, so the views candidates are tried). The status below is the per-line choice.",
        "Mean ± std over seeds 0-2, in %. Held-out images never train or choose anything.",
        "",
        "**End to end.** Only `mvtec_bottle` has good images, so only there the anomaly stage can be trained:",
        "its *named right* is the share of held-out defect images whose verdict is reject or recheck AND whose",
        "`defect_class` is the true class (an escape, a wrong class and `unknown` all count as wrong),",
        "measured with bundles trained as `lineguard train` ships (automatic configuration,",
        "`autoconfig.train_auto`, today's code; the suite's fixed default until stop 11), edge `BundleRunner`",
        "+ `decide`) in the table *End to end, mvtec_bottle*. For NEU-DET, X-SDD and the PCB crops (no good",
        "images) *named right* is the classifier alone on every held-out defect as if the anomaly stage had",
        "flagged it: arg-max correct AND not routed to `unknown` (the `min_confidence` routing of the edge).",
        "With issue 16 part 3 a part routed to `unknown` still carries the arg-max as `class_guess`, so",
        "*accuracy* is the share whose best guess is right.",
        "",
        "Splits: NEU-DET a fixed 600-image test set (100 per class, as docs/benchmarks/classifier.md) and",
        "per-seed training draws from the rest; X-SDD and DeepPCB crops per seed the first 40 of each class's",
        "permutation may train (the first 20 at 20/class), the rest tests; mvtec_bottle the quality suite's",
        "split (`quality_sets.make_split`: 10-11 per class train, the other 10-11 test): 20 and 40 per class",
        "are not possible with 20-22 images per class; pku_pcb_defects per seed and class the source photos are",
        "permuted, one crop of each of the first 40 photos may train (the first 20 at 20/class), and 100 crops",
        "drawn from the other photos test (crops of one photo never on both sides).",
        "",
        "**Fetched set** (not in ../shared; `scripts/build_pku_pcb_defects.py` builds it under `../data/datasets`",
        "from a public repository's commit, byte for byte): `pku_pcb_defects`, the PKU Open Lab PCB defect set",
        "(Huang & Wei 2019: colour photos of 10 bare boards, 6 defect types; the defects look drawn onto the",
        "photos, as that set is known for), every annotated box cut out and resized to 128x128 by the",
        "repository it came from: 2953 crops of 693 photos, 482-503 per type. No set in the suite was tuned",
        "on it: it was added at stop 21, after every default had been chosen.",
        "",
        "## Classifier per dataset",
        "",
        "| set | classes | train/class | test images | default accuracy | **default named right** | default unknown | "
        "per-line choice accuracy | per-line named right | picked (seeds) | default train s (est.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SETS:
        if s in results:
            lines += _set_rows(results[s])
    lines += _status(results, e2e)
    lines += [
        "",
        "*train s (est.)*: backbone passes of that split's images and copies x the seconds per pass measured",
        "while caching (this 2-core box, load average at the end of each set's run: "
        + ", ".join(f"{s} {results[s].get('loadavg', float('nan')):.1f}" for s in results) + "; per pass: "
        + ", ".join(f"{s} {results[s]['s_per_pass'] * 1e3:.0f} ms" for s in results if results[s].get("s_per_pass"))
        + ") + the head fitting and cross-validation.",
        "",
        "## Per-class recall (default, mean over seeds, %)",
        "",
        "| set | train/class | recall per class |",
        "|---|---|---|",
    ]
    for s in SETS:
        if s in results:
            lines += _recall_rows(results[s])
    if results:
        names = list(dict.fromkeys(n for r in results.values() for n in r["rows"][0]["candidates"]))
        lines += ["", "## Every candidate: CV accuracy on the training images / held-out accuracy (mean, %)", "",
                  "| set | train/class | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for s in SETS:
            if s in results:
                lines += _cand_rows(results[s], names)
    lines += ["", "Candidates: `default` = stage5+6, average and GeM pooling (`mean_gem`), 2 photometric copies; "
              "`s56_nocopies` the same without copies; `s567` = stage5+6+7 `mean_gem` with copies; `s4567` = "
              "stage4+5+6+7 `mean_gem` with copies (since stop 11; it replaced `s56_mean`, stage5+6 pooled by the "
              "average alone, which never beat the default on held-out images); `views` and `s4567_views` (since "
              "stop 14, tried only where the line declared no camera profile, as here) = `default` and `s4567` "
              "trained on the 8 flips and 90-degree turns of every image as well (copies in feature space; the "
              "exported graph is the same); `views_tta` and `s4567_views_tta` (since stop 22) = those two heads read "
              "through one view and through the 8 views averaged where its top probability is below a threshold "
              "chosen out of fold (a second engine for those parts; the identity view's `min_confidence`)."
              " The per-line "
              "choice takes another only if its CV accuracy beats the default's by one image or more.", ""]
    lines += ["", "## End to end, mvtec_bottle (anomaly stage + classifier, the product's bundles)", ""]
    if e2e["rows"]:
        lines += ["| seed | held-out defects | **named right** | best guess right | escape | recheck | "
                  "flagged part p50 ms | bundle CV accuracy | classifier chosen | anomaly recipe (auto) | "
                  "classifier graphs priced at training, ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in e2e["rows"]:
            prices = r.get("classifier_p50_ms")
            priced = ", ".join(f"{k.replace('stage', 's').replace('+', '')} {v:.1f}" for k, v in prices.items()) \
                if prices else "not recorded"
            lines.append(f"| {r['seed']} | {r['n_defects']} | **{r['named_right'] * 100:.1f}** | "
                         f"{r['guess_right'] * 100:.1f} | {r['escape'] * 100:.1f} | {r['recheck'] * 100:.1f} | "
                         f"{r['flagged_total_ms_p50'] or float('nan'):.1f} | {r['cv']} | "
                         f"{r.get('chosen') or 'not recorded'} | {r.get('anomaly_chosen') or 'not recorded'} | "
                         f"{priced} |")
    else:
        lines.append("Not measured: the quality suite's mvtec_bottle bundles did not exist when this ran.")
    lat_path = out_dir / "latency.json"
    if lat_path.exists():
        lat = json.loads(lat_path.read_text())
        lines += ["", f"## Latency of the classifier per stage set (ONNX Runtime CPU, 2 threads, 224x224, image path, "
                  f"load average {lat['loadavg']:.1f} at the end)", "", "| stages | p50 ms | p95 ms |", "|---|---|---|"]
        for k, v in lat["per_stages"].items():
            lines.append(f"| {k} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} |")
        lines += ["", "A loaded box inflates the absolute numbers; the",
                  "ratios between stage sets are what the per-line choice uses (classifier_select.CLASSIFIER_P50_MS:",
                  "stage5+6 7.8 ms measured idle at 224 px, docs/classifier.md, the others scaled by 1.08).",
                  "A row with views averaged is the second engine of a views twin (`views_tta`,",
                  "`s4567_views_tta`): a flagged part whose single view is unsure pays it on top of the",
                  "single-view graph; training prices it on the line's own CPU",
                  "(`views_only_when_unsure.views_p50_ms` in the twin's report entry)."]
    return "\n".join(lines) + "\n"
