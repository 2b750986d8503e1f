"""Markdown tables of the data-loop benchmark's ``--json`` results (``bench_data_loop.py --summarize``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from data_loop_common import EXTRA_ARMS

from lineguard.decision import band_width


def calib_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = ["| calibration | good images calibrating | fitted | reject threshold (mean ± sd over seeds) | "
           "accept threshold | training time, s | reject precision | false-reject rate | recheck rate | AUROC |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for folds in dict.fromkeys(r["folds"] for r in rows):
        rs = [r for r in rows if r["folds"] == folds]
        name = "held-out" if folds == 0 else f"out-of-fold, K = {folds}"
        out.append(f"| {name} | {_ms([r['calibration_images']['good'] for r in rs], False)} | "
                   f"{_ms([r['fitted_images'] for r in rs], False)} | {_ms([r['upper'] for r in rs], False)} | "
                   f"{_ms([r['lower'] for r in rs], False)} | {_ms([r['train_s'] for r in rs], False)} | "
                   + " | ".join(_ms([r[k] for r in rs]) for k in
                                ("precision", "false_reject_rate", "recheck_rate", "auroc")) + " |")
    return out


# --------------------------------------------------------------------------------------------
# tables


def _ms(xs: Sequence[float], pct: bool = True) -> str:
    k = 100.0 if pct else 1.0
    v = np.array(xs, dtype=np.float64) * k
    return f"{np.nanmean(v):.1f} ± {np.nanstd(v, ddof=1) if v.size > 1 else 0.0:.1f}"


def arm_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str], better_up: Sequence[str], extra: Sequence[str],
             tail: Callable[[str, list[dict[str, Any]]], str] | None = None) -> list[str]:
    """Table rows: mean ± sd of ``keys`` per arm, then each arm minus random with the seeds in which it
    was better (higher for ``better_up`` keys, lower for the others); ``tail``: extra cells per arm."""
    out = []
    for arm in ("initial", "active", "random", *extra):
        b = [r["bundles"][arm] for r in rows]
        out.append(f"| {arm} | " + " | ".join(_ms([x[k] for x in b]) for k in keys) + " |"
                   + (tail(arm, b) if tail else ""))
    for arm in ("active", *extra):
        d = {k: [r["bundles"][arm][k] - r["bundles"]["random"][k] for r in rows] for k in keys}
        wins = {k: sum((x > 0) if k in better_up else (x < 0) for x in d[k]) for k in keys}
        out.append(f"| {arm} − random | " + " | ".join(f"{_ms(d[k])} (better in {wins[k]}/{len(rows)})"
                                                       for k in keys) + (" | |" if tail else " |"))
    return out


def active_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = ("precision", "false_reject_rate", "escape_rate", "recheck_rate", "auroc")
    out = [f"Seeds {[r['seed'] for r in rows]}; mean ± sample sd, percent.", "",
           "| bundle | reject precision | false-reject rate | escape rate | recheck rate | AUROC | gate passed |",
           "|---|---|---|---|---|---|---|"]
    extra = [x for x in EXTRA_ARMS if all(x in r["bundles"] for r in rows)]

    def gates(arm: str, b: list[dict[str, Any]]) -> str:
        return " – |" if arm == "initial" else f" {sum(x['gate_passed'] for x in b)}/{len(b)} |"

    out += arm_rows(rows, keys, ("precision", "auroc"), extra, tail=gates)
    fr = {arm: float(np.mean([r["bundles"][arm]["false_reject_rate"] for r in rows]))
          for arm in ("active", "random", *extra)}
    sink = _ms([r["sink_frames"] for r in rows], False)
    n_def = {arm: _ms([r["labelled"][arm].get("def_front", 0) for r in rows], False)
             for arm in ("active", "random", *extra)}
    out += ["", "False rejects, active vs random (ratio of the means over seeds): "
            + (f"{100 * (1 - fr['active'] / fr['random']):.0f} % fewer (negative = more)." if fr["random"] > 0
             else "random has none.")
            + "".join(f" {x} vs random: {100 * (1 - fr[x] / fr['random']):.0f} % fewer."
                      for x in extra if fr["random"] > 0),
            f"Sink frames per {rows[0]['stream_parts']}-part stream: {sink}; def_front among the labelled frames: "
            + ", ".join(f"{arm} {n}" for arm, n in n_def.items()) + "."]
    if "calibration_images" in rows[0]["bundles"]["active"]:
        cal = {arm: _ms([r["bundles"][arm]["calibration_images"]["good"] for r in rows], False)
               for arm in ("active", "random")}
        fit = {arm: _ms([r["bundles"][arm]["fitted_images"] for r in rows], False) for arm in ("active", "random")}
        out.append(f"Candidates' good images: fitted (memory bank) active {fit['active']}, random {fit['random']}; "
                   f"calibration active {cal['active']}, random {cal['random']}.")
    if "upper" in rows[0]["bundles"]["initial"]:  # threshold jumps between retrains, in score units
        def jump(r: dict[str, Any], arm: str) -> float:
            return float(abs(r["bundles"][arm]["upper"] - r["bundles"]["initial"]["upper"]))
        out.append("Reject threshold change first teach -> candidate (|Δ upper|, score units; scores of good "
                   f"parts are about 35-50): active {_ms([jump(r, 'active') for r in rows], False)}, "
                   f"random {_ms([jump(r, 'random') for r in rows], False)}.")
    if "stream_kinds" in rows[0]:
        kinds = sorted({k for r in rows for k in r["stream_kinds"]})
        out.append("Sink frames by kind per stream: " + ", ".join(
            f"{k} {_ms([r['stream_kinds'].get(k, 0) for r in rows], False)}" for k in kinds) + ".")
    if "line_precision" in rows[0]["bundles"]["initial"]:
        out += ["", *line_table(rows, extra)]
    return out


def line_table(rows: Sequence[dict[str, Any]], extra: Sequence[str]) -> list[str]:
    """The same bundles at the stream's def_front share (``Scores.metrics``): what a line sees."""
    keys = ("line_precision", "line_false_reject_rate", "defect_reject_rate", "escape_rate", "line_recheck_rate")
    better_up = ("line_precision", "defect_reject_rate")
    first = rows[0]["bundles"]["initial"]
    out = [f"At the stream's def_front share ({first.get('defect_share', '?')}); good parts: test/good + "
           f"{first['spare_good']} spare train/good per seed.", "",
           "| bundle | line reject precision | line false-reject rate | def_front rejected | escape rate | "
           "line recheck rate |", "|---|---|---|---|---|---|"]
    out += arm_rows(rows, keys, better_up, extra)
    fr = {arm: float(np.mean([r["bundles"][arm]["line_false_reject_rate"] for r in rows]))
          for arm in ("initial", "active", "random", *extra)}
    tpr = {arm: float(np.mean([r["bundles"][arm]["defect_reject_rate"] for r in rows])) for arm in fr}
    share = float(first.get("defect_share", 0.5))
    pooled = {arm: share * tpr[arm] / (share * tpr[arm] + (1 - share) * fr[arm]) for arm in fr}
    if fr["random"] > 0:
        out += ["", "Line false rejects vs random (ratio of the means): " + "; ".join(
            f"{arm} {100 * (1 - fr[arm] / fr['random']):.0f} % fewer" for arm in ("active", *extra)) + "."]
    out.append("Pooled line reject precision (every seed's bundle on an equal share of the line: less swayed "
               "than the mean by a seed without false rejects, which counts as 100 %): " + ", ".join(
                   f"{arm} {100 * pooled[arm]:.1f} %" for arm in fr) + "; minus random: " + ", ".join(
                   f"{arm} {100 * (pooled[arm] - pooled['random']):+.1f} pp" for arm in ("active", *extra)) + ".")
    return out


def margin_table(rows: Sequence[dict[str, Any]], margins: Sequence[float] = (0.25, 0.5, 1.0, 2.0)) -> list[str]:
    """What a near_reject margin would have sent, from the first-teach bundle's stream verdicts:
    share of the stream's false rejects it reaches (the audit lottery reaches ``audit``) and sink
    frames it adds per 100 parts."""
    out = ["| near_reject margin (band widths) | false rejects of the stream reached | near_reject frames "
           "per 100 parts | of them good |", "|---|---|---|---|"]
    for m in margins:
        reach, load, good_share = [], [], []
        for r in rows:
            b = r["bundles"]["initial"]
            width = band_width(b["lower"], b["upper"])
            rej = [(s, g) for s, v, g in r["stream"] if v == "reject"]
            near = [(s, g) for s, g in rej if s < b["upper"] + m * width]
            fr = sum(g for _, g in rej)
            if fr:
                reach.append(sum(g for _, g in near) / fr)
            load.append(100 * len(near) / len(r["stream"]))
            if near:
                good_share.append(sum(g for _, g in near) / len(near))
        out.append(f"| {m:g} | {_ms(reach)} % ({len(reach)} seeds with false rejects) | {_ms(load, False)} | "
                   f"{_ms(good_share)} % |")
    return out


def drift_table(d: dict[str, Any]) -> list[str]:
    c = d["clean"]
    out = [f"Drift bundle: {d['bundle_fit_good']} good fitted, reference = {d['reference_good']} held-out good.",
           f"Undrifted: {c['parts']} parts, {len(c['alarms'])} alarms "
           f"({1e4 * len(c['alarms']) / c['parts']:.1f} per 10,000 parts); states {c['states']}; "
           f"{c['ms_per_part']:.1f} ms per part (judge + drift).", "",
           "| drift | delay, parts (per repetition) | state | first alarm message |", "|---|---|---|---|"]
    kinds = dict.fromkeys(r["kind"] for r in d["drifts"])
    for kind in kinds:
        rs = [r for r in d["drifts"] if r["kind"] == kind]
        delays = ", ".join("not detected" if r["delay_parts"] is None else str(r["delay_parts"]) for r in rs)
        first = next((r["alarm"] for r in rs if r["alarm"]), None)
        onset = [f"{r['rep']}: {', '.join(r['drifted_at_onset'])}" for r in rs if r["drifted_at_onset"]]
        note = f" (already drifted at onset, rep {'; '.join(onset)})" if onset else ""
        out.append(f"| {kind} | {delays}{note} | {first[0] if first else '–'} | {first[2] if first else '–'} |")
    return out


def forget_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        cls = sorted(r["regression"])
        out += ["", f"Stain strength {r['strength']}, seed {r['seed']}; regression set: "
                f"{r['good_regression']} good, " + ", ".join(f"{c} {r['regression'][c]}" for c in cls), "",
                "| bundle | " + " | ".join(f"recall {c}" for c in cls) + " | false-reject rate | gate |",
                "|---|" + "---|" * (len(cls) + 2)]
        for name in ("active", "with_history", "naive"):
            b = r[name]
            g = "–" if b["gate"] is None else ("passed" if b["gate"]["passed"] else
                                              "REFUSED: " + "; ".join(b["gate"]["reasons"]))
            out.append(f"| {name} | " + " | ".join(f"{100 * b['recall'][c]:.0f} %" for c in cls)
                       + f" | {100 * b['false_reject_rate']:.1f} % | {g} |")
    return out


# run settings that must agree before runs over different seeds are pooled into one table
SAME_RUN = ("budget", "defect_share", "good_use", "audit", "near_reject", "near_reject_floor", "calibration_folds",
            "size", "bank", "init_good", "init_def", "stream", "accept_side_weight", "reject_side_width",
            "spare_good")


def merge_runs(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run from several ``--json`` files of the same settings over different seeds (``--merge``)."""
    first = docs[0]["args"]
    for d in docs[1:]:
        differ = [k for k in SAME_RUN if d["args"].get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--merge: runs differ in {differ}; they cannot share one table")
    rows = [r for d in docs for r in d.get("active", [])]
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: a seed appears twice ({sorted(seeds)})")
    return {"args": {**first, "seeds": seeds}, "active": rows}


def summarize(paths: Sequence[Path], merge: bool = False) -> None:
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if merge:
        docs = [merge_runs(docs)]
    for doc in docs:  # one table per run: runs differ in budget, stream mix and label use
        active = doc.get("active", [])
        if active:
            args = doc["args"]
            budget = int(args["budget"])
            print("\n".join([f"### Active learning vs random: B = {budget}, stream def_front share "
                             f"{args.get('defect_share', 0.5)}, new good labels: {args.get('good_use', 'fit')}", "",
                             *active_table(active), ""]))
            if "stream" in active[0]:
                print("\n".join(["Near-reject margin, from the first-teach bundles' stream verdicts:", "",
                                 *margin_table(active), ""]))
            full = [r for r in active if sum(r["labelled"]["active"].values()) >= budget]
            if 0 < len(full) < len(active):  # the sink held fewer frames than the budget in the others
                print("\n".join([f"Only seeds where the active arm could spend all {budget} labels:", "",
                                 *active_table(full), ""]))
        if "calib" in doc:
            print("\n".join(["### Calibration of the first-teach bundle", "", *calib_table(doc["calib"]), ""]))
        if "drift" in doc:
            print("\n".join(["### Drift", "", *drift_table(doc["drift"]), ""]))
        if "forget" in doc:
            print("\n".join(["### Forgetting", *forget_table(doc["forget"]), ""]))


