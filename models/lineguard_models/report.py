"""Calibration report: Markdown plus PNG plots a person can read at a glance.

Data flow: :class:`~lineguard_models.calibration.CalibrationResult` and the scores it came from ->
``report/report.md``, ``report/hist_<class>.png``, ``report/roc.png``, ``report/operating_curve.png``
(and ``.svg``) and ``report/report.json`` (the same figures as data: thresholds, rates, the operating
curve and, from automatic configuration, every candidate) inside the bundle staging folder (so the
report is hashed with the bundle). Plots use matplotlib's Agg back-end (no display).

Must never: compute thresholds or rates itself (everything shown comes from the result), or open
a window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from lineguard_models.calibration import CalibrationResult, roc_curve
from lineguard_models.classifier_curve import curve_sentence

_PNG_META = {"Software": None}  # keep the PNG bytes free of the matplotlib version string


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _draw_thresholds(ax: Any, result: CalibrationResult) -> None:
    if result.upper > result.lower:
        ax.axvspan(result.lower, result.upper, color="orange", alpha=0.15, label="recheck band")
    ax.axvline(result.lower, color="green", ls="--", lw=1.2, label=f"accept < {result.lower:.4g}")
    ax.axvline(result.upper, color="red", ls="--", lw=1.2, label=f"reject >= {result.upper:.4g}")


def plot_histogram(path: Path, result: CalibrationResult, good: npt.ArrayLike, label: str,
                   defect: npt.ArrayLike | None) -> Path:
    """Good scores (and one defect class) with the thresholds drawn."""
    g = np.asarray(good, np.float64)
    d = np.asarray(defect, np.float64) if defect is not None else np.empty(0)
    both = np.concatenate([g, d, [result.lower, result.upper]])
    bins: list[float] | int = (
        np.linspace(both.min(), both.max(), 40).tolist() if both.max() > both.min() else 10
    )
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=90)
    ax.hist(g, bins=bins, color="tab:blue", alpha=0.6, label=f"good (n={g.size})")
    if d.size:
        ax.hist(d, bins=bins, color="tab:red", alpha=0.6, label=f"{label} (n={d.size})")
    _draw_thresholds(ax, result)
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.set_title(f"good vs {label}" if d.size else "good (no defect images)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_META)
    plt.close(fig)
    return path


def plot_roc(path: Path, result: CalibrationResult, good: npt.ArrayLike,
             defects: Mapping[str, npt.ArrayLike]) -> Path:
    """ROC curve of each defect class against the good images."""
    fig, ax = plt.subplots(figsize=(4.4, 4.4), dpi=90)
    aurocs = {c.name: c.auroc for c in result.classes}
    for name, scores in sorted(defects.items()):
        if name in aurocs:
            fpr, tpr = roc_curve(good, scores)
            ax.plot(fpr, tpr, lw=1.5, drawstyle="steps-post", label=f"{name} (AUROC {aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false-positive rate (good scored above t)")
    ax.set_ylabel("true-positive rate (defect scored above t)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_META)
    plt.close(fig)
    return path


def plot_operating_curve(path: Path, result: CalibrationResult) -> list[Path]:
    """Automated share against the escape bound (accept threshold swept) and against false rejects
    (reject threshold swept), targets dashed, the calibrated point marked. Writes PNG and SVG."""
    curve = result.curve or {}
    panels = [k for k in ("escape", "false_reject") if k in curve]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), dpi=90, squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        c = curve[key]
        target = result.policy.escape_target if key == "escape" else result.policy.false_reject_budget
        what = "escape (worst class)" if key == "escape" else "false reject"
        ax.plot(np.asarray(c["bound"]) * 100, c["share"], lw=1.5, label=f"{what}: upper bound")
        ax.plot(np.asarray(c["rate"]) * 100, c["share"], lw=1.0, ls=":", label=f"{what}: observed")
        ax.axvline(target * 100, color="red", ls="--", lw=1.0, label=f"target {100 * target:.1f} %")
        i = int(np.argmin(np.abs(np.asarray(c["threshold"]) - (result.lower if key == "escape" else result.upper))))
        ax.plot([c["bound"][i] * 100], [c["share"][i]], "o", color="black", label="calibrated")
        ax.set_xlabel(f"{what} rate, %")
        ax.set_ylabel("automated share (accept + reject) / all")
        ax.set_xlim(0, max(5.0 * target * 100, c["bound"][i] * 100 * 1.3, 1.0))
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    svg = path.with_suffix(".svg")
    fig.savefig(path, metadata=_PNG_META)
    with plt.rc_context({"svg.hashsalt": "lineguard"}):  # SVG element ids stable between runs
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return [path, svg]


def report_data(result: CalibrationResult, *, context: Mapping[str, Any],
                auto: Mapping[str, Any] | None = None, classifier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as data (``report.json``): what a renderer needs besides the plots."""
    return {"thresholds": result.thresholds(), "calibration": result.summary(), "curve": result.curve,
            "auto": dict(auto) if auto else None, "classifier": dict(classifier) if classifier else None,
            "context": {k: str(v) for k, v in context.items()}}


def _auto_section(auto: Mapping[str, Any] | None) -> list[str]:
    """Automatic configuration: every candidate tried, its out-of-fold figures and the choice."""
    if not auto:
        return []
    lines = ["## Automatic configuration", "", f"- chosen: **{auto.get('chosen')}** ({auto.get('reason', '')})",
             f"- criterion: {auto.get('criterion', '')}", f"- {auto.get('budget_note', '')}", *_auto_time(auto), "",
             "| candidate | settings | automated share | AUROC | good-score tail | engine p50 ms | fit s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for c in auto.get("candidates", []):
        lines.append(f"| {c['name']} | {c.get('settings', '')} | {_num(c.get('automated_share'))} | "
                     f"{_num(c.get('auroc'))} | {_num(c.get('tail'))} | {_num(c.get('engine_p50_ms'), 1)} | "
                     f"{_num(c.get('seconds'), 0)} | {candidate_note(c)} |")
    return [*lines, ""]


def classifier_rows(clf: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The defect classifier's report (``manifest.calibration.classifier``) as (facts, per-class rows, per-line
    candidate rows): shared by the Markdown and the HTML report."""
    sel = clf.get("selection") or {}
    facts = [f"method: {clf.get('method', '')}",
             f"cross-validated accuracy {_num(clf.get('accuracy'))} ({clf.get('folds')} folds), unknown rate "
             f"{_num(clf.get('unknown_rate'))}; a part whose best class scores below that class's min_confidence is "
             "reported as unknown (its best guess still travels to the PLC and the sink)"]
    if sel:
        facts.append(f"recipe chosen for this line: {sel.get('chosen')} ({sel.get('reason', '')}); trained on the "
                     f"views {', '.join(sel.get('views', []))}")
        if sel.get("views_below") is not None:  # a views twin (classifier_select.views_twin)
            cascade = clf.get("views_only_when_unsure") or {}
            facts.append(f"read through one view, and through the {cascade.get('views', 'orientation')} views averaged "
                         f"(engine classifier_views) where its top probability is below {_num(sel['views_below'])}: "
                         f"{_pct(cascade['through_views_oof']) if 'through_views_oof' in cascade else '-'} of the "
                         "images out of fold; such a part costs one backbone pass per view more"
                         + (f" (the views graph {_num(cascade['views_p50_ms'], 1)} ms p50 on the training machine, "
                            f"a flagged part through it {_num(cascade['flagged_through_views_p50_ms'], 1)} ms)"
                            if "views_p50_ms" in cascade else ""))
        prices = ", ".join(f"{k} {v:.1f} ms" for k, v in (sel.get("classifier_p50_ms") or {}).items())
        facts.append(f"latency filter: a flagged part within {_num(sel.get('latency_budget_ms'), 0)} ms p50 = anomaly "
                     f"engine {_num(sel.get('anomaly_p50_ms'), 1)} ms ({sel.get('anomaly_p50_source', '')}) + the "
                     f"classifier ({prices}; {sel.get('classifier_p50_source', '')})")
    if curve := clf.get("learning_curve"):  # classifier_curve: what labelling more would buy
        facts.append(curve_sentence(curve))
    if tiles := clf.get("tiles"):
        facts.append(f"tiled line ({tiles['rows']}x{tiles['cols']}): trained on {tiles['trained_on']}; images per "
                     f"tile {tiles['chosen_per_tile']}")
    shared = clf.get("shared_backbone") or {}
    facts.append("backbone pass shared with the anomaly engine" if shared.get("shared")
                 else f"own backbone pass ({shared.get('reason', 'not recorded')})")
    per_class = [[c, str(v.get("n_images")), _num(v.get("recall")), _num(v.get("min_confidence")),
                  _num(v.get("unknown_rate"))] for c, v in (clf.get("per_class") or {}).items()]
    cands = [[c["name"], "+".join(s.removeprefix("stage") for s in c.get("stages", [])),
              str(c.get("copies")), "yes" if c.get("views") else "no",
              _num(c.get("cv_accuracy")), _num(c.get("cv_unknown_rate")), c.get("skipped") or ""]
             for c in sel.get("candidates", [])]
    return facts, per_class, cands


CLASS_HEAD = ["class", "images", "CV recall", "min_confidence", "CV unknown rate"]
CANDIDATE_HEAD = ["candidate", "stages", "copies", "views", "CV accuracy", "CV unknown rate", "skipped"]


def _classifier_section(clf: Mapping[str, Any] | None) -> list[str]:
    """The defect classifier: what it was trained on, its cross-validated figures, the per-line choice."""
    if not clf:
        return []
    facts, per_class, cands = classifier_rows(clf)

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]

    return ["## Defect classifier", "", *[f"- {f}" for f in facts], "", *table(CLASS_HEAD, per_class), "",
            *([*table(CANDIDATE_HEAD, cands), ""] if cands else [])]


def candidate_note(c: Mapping[str, Any]) -> str:
    """A candidate's note, led by its status when it did not run every fold (skipped or stopped, and why)."""
    status = c.get("status", "tried")
    rows = f" ({c['bank_rows']} bank rows)" if c.get("bank_rows") else ""
    parts = [] if status == "tried" else [str(status) + rows]
    return "; ".join([*parts, *([c["note"]] if c.get("note") else [])])


def _auto_time(auto: Mapping[str, Any]) -> list[str]:
    """Where the time budget went (absent for bundles from before it was recorded)."""
    if auto.get("final_training_s") is None or auto.get("budget_s") is None:
        return []
    est = auto.get("final_estimate", {})
    return [f"- time: scan and search {_num(auto.get('search_seconds'), 0)} s + final training "
            f"{_num(auto['final_training_s'], 0)} s before this report, of the {_num(auto['budget_s'], 0)} s budget "
            f"(final training estimated {_num(est.get('total_s'), 0)} s, {_num(auto.get('final_reserve_s'), 0)} s "
            f"reserved)"]


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f} %"


def _need(m: int | None) -> str:
    return "n/a" if m is None else ("met" if m == 0 else f"+{m}")


def _tables(result: CalibrationResult) -> list[str]:
    conf = _pct(result.policy.confidence)
    g = result.good
    lines = [
        f"| set | n | accepted | recheck | rejected | observed rate | upper bound ({conf}) | target "
        "| more images needed |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| good (false rejects) | {g.n} | {g.n - g.rechecks - g.false_rejects} | {g.rechecks} | {g.false_rejects} | "
        f"{_pct(g.false_reject_rate)} | {_pct(g.false_reject_upper)} | {_pct(result.policy.false_reject_budget)} | "
        f"{_need(g.extra_needed)} |",
    ]
    for c in result.classes:
        lines.append(
            f"| {c.name} (escapes) | {c.n} | {c.escapes} | {c.rechecks} | {c.rejects} | {_pct(c.escape_rate)} | "
            f"{_pct(c.escape_upper)} | {_pct(result.policy.escape_target)} | {_need(c.extra_needed)} |"
        )
    lines += ["", "| class | AUROC vs good | lowest score | median score |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.auroc:.4f} | {c.score_min:.4g} | {c.score_median:.4g} |" for c in result.classes]
    return lines


def render_markdown(result: CalibrationResult, *, title: str, plots: Sequence[str],
                    context: Mapping[str, Any], auto: Mapping[str, Any] | None = None,
                    classifier: Mapping[str, Any] | None = None) -> str:
    """The report text. ``plots`` are file names relative to the report; ``context`` is shown as a list."""
    out = [f"# {title}", ""]
    if result.warnings:
        out += ["## WARNINGS", ""] + [f"- **{w}**" for w in result.warnings] + [""]
    out += [
        "## Thresholds",
        "",
        f"- mode: `{result.mode}`" + (" (no defect images: escape rate unknown)" if result.mode == "good_only" else ""),
        f"- accept when score < **{result.lower:.6g}**; reject when score >= **{result.upper:.6g}**; recheck between",
        f"- policy: false-reject budget {_pct(result.policy.false_reject_budget)}, escape target "
        f"{_pct(result.policy.escape_target)}, band `{result.policy.band}`, unseen tails: escapes "
        f"`{result.policy.escape_tail}`, false rejects `{result.policy.reject_tail}`; bounds are one-sided exact "
        f"(Clopper-Pearson) at {_pct(result.policy.confidence)}",
        "- 'more images needed': further images of that set, all scored correctly, that would bring the "
        "upper bound under the target",
        f"- automated share on the calibration images: **{_pct(result.automated_share)}** (accepted + rejected "
        "without a person)",
        "",
        *_auto_section(auto),
        *_classifier_section(classifier),
        "## Rates on the calibration images",
        "",
        *_tables(result),
        "",
        "## Plots",
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
        "## Context",
        "",
        *[f"- {k}: {v}" for k, v in context.items()],
        "",
    ]
    return "\n".join(out)


def write_report(out_dir: Path, result: CalibrationResult, good: npt.ArrayLike,
                 defects: Mapping[str, npt.ArrayLike], *, title: str = "Calibration report",
                 context: Mapping[str, Any] | None = None, auto: Mapping[str, Any] | None = None,
                 classifier: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.md`` and its plots into ``out_dir`` (created); returns the Markdown path. ``classifier``:
    the defect classifier's report (``manifest.calibration.classifier``), when one was trained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    calibrated = {c.name for c in result.classes}
    for name in sorted(calibrated):
        plots.append(plot_histogram(out_dir / f"hist_{_safe(name)}.png", result, good, name, defects[name]).name)
    if not calibrated:
        plots.append(plot_histogram(out_dir / "hist_good.png", result, good, "good", None).name)
    else:
        plots.append(plot_roc(out_dir / "roc.png", result, good, defects).name)
    if result.curve:
        plots.append(plot_operating_curve(out_dir / "operating_curve.png", result)[0].name)
    md = out_dir / "report.md"
    md.write_text(render_markdown(result, title=title, plots=plots, context=context or {}, auto=auto,
                                  classifier=classifier), encoding="utf-8")
    data = report_data(result, context=context or {}, auto=auto, classifier=classifier)
    (out_dir / "report.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return md
