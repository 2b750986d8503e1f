"""Calibration report as one self-contained HTML page (``report/report.html``), for the shop floor.

Data flow: the same inputs as the Markdown report (:class:`~lineguard_models.calibration.CalibrationResult`,
the calibration scores per class, the context lines) plus a few :class:`Example` thumbnails (the
worst-scoring good parts and the best-hidden defects with their anomaly maps, made by
:func:`collect_examples` with the bundle's own ONNX graph through the edge's preprocessing) ->
one HTML file: charts are inline SVG, thumbnails are base64 PNG, no script, no external file, so it
opens from a USB stick or an e-mail attachment in any browser. Written by ``lineguard train`` and
``lineguard calibrate`` beside ``report.md`` (``pipeline._finish``), so it is hashed with the bundle.

The operating curve comes from ``result.curve`` when calibration provides one (threshold sweeps with
the observed rates and their upper bounds); otherwise it is computed here from the scores.

Must never: compute thresholds or verdict rates of its own (it draws what the result says), load
anything from outside the page, or fail a training because a thumbnail could not be made (the page
says so instead).
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from scipy import stats

from lineguard_models.bundle_files import verdict_of
from lineguard_models.calibration import CalibrationResult
from lineguard_models.report import CANDIDATE_HEAD, CLASS_HEAD, candidate_note, classifier_rows

log = logging.getLogger(__name__)
GOOD_COLOUR, DEFECT_COLOUR = "#1f77b4", "#d62728"
ACCEPT_COLOUR, REJECT_COLOUR, BAND_COLOUR = "#2ca02c", "#d62728", "#ff7f0e"
THUMB_PX = 176


@dataclass(frozen=True, slots=True)
class Example:
    """One calibration image shown as a thumbnail, with its anomaly map blended in when there is one."""

    rel: str
    label: str
    score: float
    verdict: str
    image_png: bytes
    overlay_png: bytes | None = None


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f} %"


# ----- thumbnails ---------------------------------------------------------------------------------


def _display_bgr(image: npt.NDArray[Any], max_value: int) -> npt.NDArray[np.uint8]:
    """8-bit BGR for display only (16-bit scaled by the camera's full scale, not by the image's max)."""
    img = image.astype(np.float32) * (255.0 / max(max_value, 1)) if image.dtype != np.uint8 else image
    img8 = np.clip(img, 0, 255).astype(np.uint8)
    code = cv2.COLOR_GRAY2BGR if img8.ndim == 2 else cv2.COLOR_RGB2BGR
    return np.asarray(cv2.cvtColor(img8, code), np.uint8)


def _thumb(bgr: npt.NDArray[np.uint8]) -> bytes:
    h, w = bgr.shape[:2]
    scale = THUMB_PX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", small)
    if not ok:
        raise ValueError("PNG encoding of a thumbnail failed")
    return bytes(buf.tobytes())


def make_example(image: npt.NDArray[Any], amap: npt.NDArray[Any] | None, *, rel: str, label: str, score: float,
                 lower: float, upper: float, max_value: int) -> Example:
    """Thumbnail of ``image`` and, with a map (image-sized or model grid), the map blended in jet
    colours scaled by the thresholds: red means "near a reject" on every thumbnail alike."""
    bgr = _display_bgr(image, max_value)
    overlay = None
    if amap is not None:
        lo, hi = 0.5 * lower, max(upper, lower + 1e-9)
        norm = np.clip((np.nan_to_num(amap.astype(np.float32)) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
        norm = cv2.resize(norm, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
        alpha = (0.55 * norm + 0.15)[:, :, None]
        overlay = _thumb(np.asarray(bgr * (1 - alpha) + heat * alpha, np.uint8))
    return Example(rel=rel, label=label, score=score, verdict=verdict_of(score, lower, upper),
                   image_png=_thumb(bgr), overlay_png=overlay)


# ----- charts (inline SVG) ------------------------------------------------------------------------

_W, _H, _ML, _MR, _MT, _MB = 560, 224, 46, 12, 26, 34


class _Axes:
    """Maps data coordinates to SVG pixels for one chart."""

    def __init__(self, x0: float, x1: float, y1: float) -> None:
        pad = 0.02 * (x1 - x0) if x1 > x0 else 1.0
        self.x0, self.x1, self.y1 = x0 - pad, x1 + pad, max(y1, 1e-9)

    def x(self, v: float) -> float:
        return _ML + (v - self.x0) / (self.x1 - self.x0) * (_W - _ML - _MR)

    def y(self, v: float) -> float:
        return _H - _MB - v / self.y1 * (_H - _MT - _MB)

    def frame(self, xlabel: str, ylabel: str, y_fmt: str = "{:g}") -> list[str]:
        out = [f'<rect x="{_ML}" y="{_MT}" width="{_W - _ML - _MR}" height="{_H - _MT - _MB}" fill="#fff" '
               'stroke="#999"/>']
        for v in np.linspace(self.x0, self.x1, 5):
            out.append(f'<text x="{self.x(v):.1f}" y="{_H - _MB + 14}" font-size="10" text-anchor="middle">'
                       f"{v:.3g}</text>")
        for v in np.linspace(0.0, self.y1, 3):
            out.append(f'<text x="{_ML - 4}" y="{self.y(v) + 3:.1f}" font-size="10" text-anchor="end">'
                       f"{_esc(y_fmt.format(v))}</text>")
        out.append(f'<text x="{(_ML + _W - _MR) / 2}" y="{_H - 4}" font-size="11" text-anchor="middle">'
                   f"{_esc(xlabel)}</text>")
        out.append(f'<text x="11" y="{(_MT + _H - _MB) / 2}" font-size="11" text-anchor="middle" '
                   f'transform="rotate(-90 11 {(_MT + _H - _MB) / 2})">{_esc(ylabel)}</text>')
        return out

    def thresholds(self, result: CalibrationResult) -> list[str]:
        top, bottom = _MT, _H - _MB
        out = []
        if result.upper > result.lower:
            out.append(f'<rect class="band" x="{self.x(result.lower):.1f}" y="{top}" '
                       f'width="{self.x(result.upper) - self.x(result.lower):.1f}" height="{bottom - top}" '
                       f'fill="{BAND_COLOUR}" fill-opacity="0.15"/>')
        for value, colour, name in ((result.lower, ACCEPT_COLOUR, "accept"), (result.upper, REJECT_COLOUR, "reject")):
            out.append(f'<line class="threshold-{name}" x1="{self.x(value):.1f}" x2="{self.x(value):.1f}" y1="{top}" '
                       f'y2="{bottom}" stroke="{colour}" stroke-width="2" stroke-dasharray="5 3"/>')
        return out


def _svg(kind: str, body: list[str], label: str, title: str) -> str:
    body = [f'<text class="chart-title" x="{_W / 2}" y="16" font-size="13" font-weight="600" '
            f'text-anchor="middle">{_esc(title)}</text>', *body]
    return (f'<svg class="{kind}" data-class="{_esc(label)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(label)}">'
            + "".join(body) + "</svg>")


def histogram_svg(result: CalibrationResult, good: npt.ArrayLike, label: str, defect: npt.ArrayLike | None) -> str:
    """Good scores (blue) against one defect class (red) with the thresholds and the recheck band."""
    g = np.asarray(good, np.float64)
    d = np.asarray(defect, np.float64) if defect is not None else np.empty(0)
    both = np.concatenate([g, d, [result.lower, result.upper]])
    lo, hi = float(both.min()), float(both.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    gh, dh = np.histogram(g, edges)[0], np.histogram(d, edges)[0]
    ax = _Axes(float(edges[0]), float(edges[-1]), float(max(gh.max(initial=0), dh.max(initial=0), 1)))
    body = ax.frame("anomaly score", "images", "{:.3g}")
    body += ax.thresholds(result)
    for counts, colour, cls in ((gh, GOOD_COLOUR, "bar-good"), (dh, DEFECT_COLOUR, "bar-defect")):
        for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
            if c:
                body.append(f'<rect class="{cls}" x="{ax.x(a):.1f}" y="{ax.y(c):.1f}" width="{ax.x(b) - ax.x(a):.1f}" '
                            f'height="{ax.y(0) - ax.y(c):.1f}" fill="{colour}" fill-opacity="0.6"/>')
    return _svg("histogram", body, label, f"good vs {label}" if d.size else "good (no defect images)")


def _bounds(k: npt.NDArray[np.int64], n: int, confidence: float) -> npt.NDArray[np.float64]:
    out = np.ones(k.shape, np.float64)
    below = k < n
    out[below] = stats.beta.ppf(confidence, k[below] + 1, n - k[below])
    return out


def curve_from_scores(result: CalibrationResult, good: npt.ArrayLike,
                      defects: Mapping[str, npt.ArrayLike]) -> dict[str, Any]:
    """The fallback operating curve: false-reject rate of 'reject at t' and the worst class's escape
    rate of 'accept below t', each with its one-sided upper bound, over the observed scores."""
    g = np.sort(np.asarray(good, np.float64))
    calibrated = [np.sort(np.asarray(defects[c.name], np.float64)) for c in result.classes]
    ts = np.unique(np.concatenate([g, *calibrated, [result.lower, result.upper]]))
    conf = result.policy.confidence
    fr = g.size - np.searchsorted(g, ts, "left")
    out: dict[str, Any] = {"chosen": {"lower": result.lower, "upper": result.upper},
                           "false_reject": {"threshold": ts.tolist(), "rate": (fr / g.size).tolist(),
                                            "bound": _bounds(fr, g.size, conf).tolist()}}
    if calibrated:
        esc = [np.searchsorted(d, ts, "left") for d in calibrated]
        out["escape"] = {"threshold": ts.tolist(),
                         "rate": np.max([e / d.size for e, d in zip(esc, calibrated, strict=True)], axis=0).tolist(),
                         "bound": np.max([_bounds(e, d.size, conf) for e, d in zip(esc, calibrated, strict=True)],
                                         axis=0).tolist()}
    return out


def _polyline(ax: _Axes, xs: Sequence[float], ys: Sequence[float], colour: str, cls: str, dash: str = "") -> str:
    pts = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in zip(xs, ys, strict=True))
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline class="{cls}" points="{pts}" fill="none" stroke="{colour}" stroke-width="1.8"{dashed}/>'


def curve_svg(result: CalibrationResult, curve: Mapping[str, Any]) -> str:
    """Rates against the threshold: false rejects of 'reject at t' (blue), escapes of 'accept below t'
    (red), solid observed, dashed the upper bound; grey the automated share where the data has it."""
    series = [(curve[k], colour, k) for k, colour in (("false_reject", GOOD_COLOUR), ("escape", DEFECT_COLOUR))
              if k in curve]
    xs_all = [x for s, _, _ in series for x in s["threshold"]]
    ax = _Axes(min(xs_all), max(xs_all), 1.0)
    body = ax.frame("threshold (anomaly score)", "rate", "{:.0%}") + ax.thresholds(result)
    for s, colour, name in series:
        body.append(_polyline(ax, s["threshold"], s["rate"], colour, f"curve-{name}"))
        if "bound" in s:
            body.append(_polyline(ax, s["threshold"], s["bound"], colour, f"curve-{name}-bound", "4 3"))
        if "share" in s:
            body.append(_polyline(ax, s["threshold"], s["share"], "#777", f"curve-{name}-share", "1 2"))
    return _svg("operating-curve", body, "operating curve", "rates against the threshold")


# ----- the page -----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5em auto;max-width:1180px;
 color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,#auto td:nth-child(2),#auto td:last-child{text-align:left}
.warnings{background:#fff3cd;border:2px solid #e0a800;padding:.6em 1em .6em 2em;font-weight:600}
.thresholds{display:flex;gap:1em;flex-wrap:wrap}
.thr{border-radius:6px;padding:.6em 1.2em;color:#fff;font-size:1.25em;font-weight:700}
.thr.accept{background:#2ca02c}.thr.recheck{background:#e67e00}.thr.reject{background:#d62728}
.need{background:#e8f0fe;border:2px solid #1f77b4;padding:.5em 1em}
.charts{display:flex;flex-wrap:wrap;gap:1em}
.thumbs{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;border:1px solid #ccc;padding:.4em;background:#fafafa;font-size:.85em}
figure img{display:inline-block;margin-right:2px;image-rendering:pixelated;max-width:176px}
.legend span{display:inline-block;margin-right:1.2em}.sw{display:inline-block;width:1em;height:.7em;margin-right:.3em}
.v-accept{color:#2ca02c}.v-reject{color:#d62728}.v-recheck{color:#e67e00}
"""


def _share(result: CalibrationResult) -> str:
    share = getattr(result, "automated_share", None)  # from the operating-point calibration, when present
    if share is None:
        return ""
    return (f'<p id="automated-share">automated share on the calibration images: <b>{_pct(share)}</b> '
            "(accepted + rejected without a person)</p>")


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _need(m: int | None) -> str:
    return "n/a" if m is None else ("met" if m == 0 else f"+{m}")


def _rates_table(result: CalibrationResult) -> str:
    g, conf = result.good, _pct(result.policy.confidence)
    rows = [f"<tr><td>good (false rejects)</td><td>{g.n}</td><td>{g.n - g.rechecks - g.false_rejects}</td>"
            f"<td>{g.rechecks}</td><td>{g.false_rejects}</td><td>{_pct(g.false_reject_rate)}</td>"
            f"<td>{_pct(g.false_reject_upper)}</td><td>{_pct(result.policy.false_reject_budget)}</td>"
            f"<td>{_need(g.extra_needed)}</td></tr>"]
    rows += [f"<tr><td>{_esc(c.name)} (escapes)</td><td>{c.n}</td><td>{c.escapes}</td><td>{c.rechecks}</td>"
             f"<td>{c.rejects}</td><td>{_pct(c.escape_rate)}</td><td>{_pct(c.escape_upper)}</td>"
             f"<td>{_pct(result.policy.escape_target)}</td><td>{_need(c.extra_needed)}</td></tr>"
             for c in result.classes]
    return ('<table id="rates"><tr><th>set</th><th>n</th><th>accepted</th><th>recheck</th><th>rejected</th>'
            f"<th>observed rate</th><th>upper bound ({conf})</th><th>target</th><th>more images needed</th></tr>"
            + "".join(rows) + "</table>")


def _more_images(result: CalibrationResult) -> str:
    items = []
    g = result.good
    if g.extra_needed:
        items.append(f"<li><b>good</b>: {g.extra_needed} more good images, all accepted, would bound the "
                     f"false-reject rate under {_pct(result.policy.false_reject_budget)}</li>")
    for c in result.classes:
        if c.extra_needed:
            items.append(f"<li><b>{_esc(c.name)}</b>: {c.extra_needed} more images of this class, none accepted, "
                         f"would bound its escape rate under {_pct(result.policy.escape_target)}</li>")
        elif c.extra_needed is None and result.policy.escape_target > 0:
            items.append(f"<li><b>{_esc(c.name)}</b>: no number of further images brings the bound under the "
                         "target with the escapes seen so far: improve the imaging or the model</li>")
    if result.mode == "good_only":
        items.append("<li><b>defect images</b>: none yet; collect parts from the reject bin "
                     "(<code>lineguard capture --class NAME</code>) and run <code>lineguard calibrate</code></li>")
    body = "".join(items) or "<li>none: every bound is under its target</li>"
    return f'<div class="need" id="more-images"><ul>{body}</ul></div>'


def _figures(examples: Sequence[Example], empty: str, note: str) -> str:
    if not examples:
        return f'<p class="none">{_esc(note or empty)}</p>'
    out = []
    for e in examples:
        imgs = f'<img class="thumb" alt="{_esc(e.rel)}" src="{_b64(e.image_png)}">'
        if e.overlay_png is not None:
            imgs += f'<img class="thumb map" alt="anomaly map of {_esc(e.rel)}" src="{_b64(e.overlay_png)}">'
        out.append(f'<figure class="example" data-label="{_esc(e.label)}">{imgs}<figcaption>{_esc(e.rel)}<br>'
                   f'score {e.score:.4g} &rarr; <b class="v-{e.verdict}">{e.verdict}</b></figcaption></figure>')
    shown = '<div class="thumbs">' + "".join(out) + "</div>"
    return shown + (f'<p class="note">{_esc(note)}</p>' if note else "")


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"


def _auto_section(auto: Mapping[str, Any] | None) -> str:
    """Automatic configuration (when training chose the recipe): every candidate and the choice."""
    if not auto:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(c.get('name', ''))}</td><td>{_esc(c.get('settings', ''))}</td>"
        f"<td>{_num(c.get('automated_share'))}</td><td>{_num(c.get('auroc'))}</td><td>{_num(c.get('tail'))}</td>"
        f"<td>{_num(c.get('engine_p50_ms'), 1)}</td><td>{_num(c.get('seconds'), 0)}</td>"
        f"<td>{_esc(candidate_note(c))}</td></tr>" for c in auto.get("candidates", []))
    return ('<section id="auto"><h2>Automatic configuration</h2>'
            f"<p>chosen: <b>{_esc(auto.get('chosen'))}</b> ({_esc(auto.get('reason', ''))}); criterion: "
            f"{_esc(auto.get('criterion', ''))}; {_esc(auto.get('budget_note', ''))}</p>"
            "<table><tr><th>candidate</th><th>settings</th><th>automated share</th><th>AUROC</th>"
            "<th>good-score tail</th><th>engine p50 ms</th><th>fit s</th><th>note</th></tr>"
            f"{rows}</table></section>")


def _classifier_section(clf: Mapping[str, Any] | None) -> str:
    """The defect classifier (when one was trained): its cross-validated figures and the per-line choice."""
    if not clf:
        return ""
    facts, per_class, cands = classifier_rows(clf)

    def table(head: list[str], rows: list[list[str]]) -> str:
        return ("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>")

    return ('<section id="classifier"><h2>Defect classifier</h2><ul>' + "".join(f"<li>{_esc(f)}</li>" for f in facts)
            + "</ul>" + table(CLASS_HEAD, per_class) + (table(CANDIDATE_HEAD, cands) if cands else "") + "</section>")


def render_html(result: CalibrationResult, good: npt.ArrayLike, defects: Mapping[str, npt.ArrayLike], *,
                title: str, context: Mapping[str, Any], worst_good: Sequence[Example] = (),
                hidden_defects: Sequence[Example] = (), examples_note: str = "",
                auto: Mapping[str, Any] | None = None, classifier: Mapping[str, Any] | None = None) -> str:
    """The whole page as one string (see the module docstring for what it holds)."""
    p = result.policy
    curve = result.curve if getattr(result, "curve", None) else curve_from_scores(result, good, defects)
    hists = [histogram_svg(result, good, c.name, defects[c.name]) for c in result.classes]
    if not hists:
        hists = [histogram_svg(result, good, "good", None)]
    warnings = "".join(f"<li>{_esc(w)}</li>" for w in result.warnings)
    band = (f'<div class="thr recheck">recheck {result.lower:.6g} &le; score &lt; {result.upper:.6g}</div>'
            if result.upper > result.lower else "")
    legend = (f'<p class="legend"><span><i class="sw" style="background:{GOOD_COLOUR}"></i>good</span>'
              f'<span><i class="sw" style="background:{DEFECT_COLOUR}"></i>defect class</span>'
              f'<span class="v-accept">- - accept threshold</span><span class="v-reject">- - reject threshold</span>'
              f'<span><i class="sw" style="background:{BAND_COLOUR};opacity:.35"></i>recheck band</span></p>')
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<section id="warnings-section"><h2>Warnings</h2><ul class="warnings" id="warnings">{warnings}</ul></section>'
        if warnings else '<section id="warnings-section"><h2>Warnings</h2><p id="no-warnings">none</p></section>',
        '<section><h2>Thresholds</h2><div class="thresholds" id="thresholds">'
        f'<div class="thr accept" data-value="{result.lower!r}">accept score &lt; {result.lower:.6g}</div>{band}'
        f'<div class="thr reject" data-value="{result.upper!r}">reject score &ge; {result.upper:.6g}</div></div>'
        f"<p>mode <code>{_esc(result.mode)}</code>; false-reject budget {_pct(p.false_reject_budget)}, escape target "
        f"{_pct(p.escape_target)}, band <code>{_esc(p.band)}</code>, unseen tails: escapes "
        f"<code>{_esc(p.escape_tail)}</code>, false rejects <code>{_esc(p.reject_tail)}</code>; bounds one-sided "
        "exact (Clopper-Pearson) at "
        f"{_pct(p.confidence)}</p>{_share(result)}</section>",
        f"<section><h2>More images needed</h2>{_more_images(result)}</section>",
        _auto_section(auto),
        _classifier_section(classifier),
        f"<section><h2>Rates on the calibration images</h2>{_rates_table(result)}</section>",
        "<section><h2>Operating curve</h2><p>Solid: observed rate on the calibration images; dashed: its upper "
        "bound; dotted grey: share of parts decided without recheck. Blue: good parts rejected when the reject "
        "threshold is at the score; red: defects accepted when the accept threshold is there.</p>"
        f"{curve_svg(result, curve)}</section>",
        f'<section><h2>Score histograms per class</h2>{legend}<div class="charts">{"".join(hists)}</div></section>',
        '<section id="worst-good"><h2>Worst-scoring good parts</h2><p>The good calibration images the model liked '
        f"least, with the anomaly map (red = near a reject).</p>{_figures(worst_good, 'none', examples_note)}"
        "</section>",
        '<section id="hidden-defects"><h2>Best-hidden defects</h2><p>The defect images that scored lowest: what '
        f"could escape.</p>{_figures(hidden_defects, 'no defect images', examples_note)}</section>",
        '<section><h2>Context</h2><ul id="context">'
        + "".join(f"<li>{_esc(k)}: {_esc(v)}</li>" for k, v in context.items()) + "</ul></section>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_html(out_dir: Path, result: CalibrationResult, good: npt.ArrayLike, defects: Mapping[str, npt.ArrayLike],
               *, title: str, context: Mapping[str, Any], worst_good: Sequence[Example] = (),
               hidden_defects: Sequence[Example] = (), examples_note: str = "",
               auto: Mapping[str, Any] | None = None, classifier: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.html`` into ``out_dir``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "report.html"
    page.write_text(render_html(result, good, defects, title=title, context=context, worst_good=worst_good,
                                hidden_defects=hidden_defects, examples_note=examples_note, auto=auto,
                                classifier=classifier), encoding="utf-8")
    return page


# ----- thumbnails from the bundle's own graph -----------------------------------------------------


def collect_examples(onnx_path: Path, spec: Any, ds: Any, scored: Sequence[Any], result: CalibrationResult,
                     n: int = 4) -> tuple[list[Example], list[Example], str]:
    """(worst-scoring good, best-hidden defects, note): ``n`` of each among the calibration images still
    in the dataset folder, re-run through the exported graph (ONNX Runtime, the edge's preprocessing) for
    their anomaly maps. ``scored`` items have ``rel``, ``label``, ``score``; ``ds`` is a scanned
    :class:`~lineguard_models.data.Dataset`; an item with ``sha256`` is matched by content too. Scores from
    an earlier calibration whose images are not in this folder have no thumbnail; the note says so."""
    import onnxruntime as ort

    from lineguard.preprocess import prepare, stitch_map

    by_rel = {s.rel: s for s in ds.samples}

    def in_folder(s: Any) -> bool:  # same name is not enough: an earlier folder may have used it too
        sample = by_rel.get(s.rel)
        return sample is not None and sample.label == s.label and (
            not getattr(s, "sha256", "") or hashlib.sha256(sample.path.read_bytes()).hexdigest() == s.sha256)

    here = [s for s in scored if in_folder(s)]
    goods = sorted((s for s in here if s.label == "good"), key=lambda s: -s.score)[:n]
    defects = sorted((s for s in here if s.label != "good"), key=lambda s: s.score)[:n]
    missing = len(scored) - len(here)
    note = (f"{missing} calibration scores come from images not in this dataset folder (an earlier calibration): "
            "they have no thumbnail, so the parts shown are the worst among the others") if missing else ""
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        with_map = "anomaly_map" in {o.name for o in session.get_outputs()}

        def example(s: Any) -> Example:
            image = ds.load(by_rel[s.rel])
            amap = None
            if with_map:
                batch, placements = prepare(image, spec)
                (maps,) = session.run(["anomaly_map"], {"image": batch})
                amap = stitch_map(maps, placements, image.shape[1], image.shape[0])
            return make_example(image, amap, rel=s.rel, label=s.label, score=s.score, lower=result.lower,
                                upper=result.upper, max_value=spec.max_value)

        return [example(s) for s in goods], [example(s) for s in defects], note
    except Exception as exc:  # any failure here: a thumbnail never fails a training, the page says why
        log.warning("report.html: thumbnails not made: %s", exc)
        return [], [], f"thumbnails could not be made: {exc}"


def write_for_bundle(report_dir: Path, onnx_path: Path, spec: Any, ds: Any, scored: Sequence[Any],
                     result: CalibrationResult, good: npt.ArrayLike, defects: Mapping[str, npt.ArrayLike], *,
                     title: str, context: Mapping[str, Any], auto: Mapping[str, Any] | None = None,
                     classifier: Mapping[str, Any] | None = None) -> Path:
    """``report.html`` of a bundle being written (``pipeline._finish``): page plus thumbnails."""
    worst, hidden, note = collect_examples(onnx_path, spec, ds, scored, result)
    return write_html(report_dir, result, good, defects, title=title, context=context, worst_good=worst,
                      hidden_defects=hidden, examples_note=note, auto=auto, classifier=classifier)
