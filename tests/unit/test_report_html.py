"""The calibration report page (report_html): self-contained, escaped, drawn from the result it is given."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from lineguard_models.calibration import calibrate
from lineguard_models.report_html import curve_from_scores, make_example, render_html

RNG = np.random.default_rng(4)
GOOD = RNG.normal(1.0, 0.2, 30)
DEFECTS = {"scratch": RNG.normal(2.0, 0.3, 10), "<b>pit</b>": RNG.normal(1.5, 0.3, 6)}


def _page(**kw: object) -> str:
    result = calibrate(GOOD, DEFECTS)
    img = RNG.integers(0, 4096, (48, 64), dtype=np.uint16)
    ex = make_example(img, np.ones((6, 8), np.float32), rel="good/000003.png", label="good", score=1.4,
                      lower=result.lower, upper=result.upper, max_value=4095)
    args: dict[str, object] = {"title": "Calibration report: b-1", "context": {"dataset": "/data/x"},
                               "worst_good": [ex], "hidden_defects": []}
    args.update(kw)
    return render_html(result, GOOD, DEFECTS, **args)  # type: ignore[arg-type]


def test_page_is_self_contained_and_escapes_names() -> None:
    page = _page()
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)  # nothing loaded from outside
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert "&lt;b&gt;pit&lt;/b&gt;" in page and "<b>pit</b>" not in page
    assert page.count('<svg class="histogram"') == 2 and page.count('class="thumb map"') == 1
    assert 'id="more-images"' in page and "no defect images" in page  # empty defect list says so


def test_thresholds_and_counts_come_from_the_result() -> None:
    result = calibrate(GOOD, DEFECTS)
    page = _page()
    assert f'data-value="{result.lower!r}"' in page and f'data-value="{result.upper!r}"' in page
    for c in result.classes:
        assert f"<td>{c.n}</td><td>{c.escapes}</td><td>{c.rechecks}</td><td>{c.rejects}</td>" in page
    for w in result.warnings:
        assert w.replace("'", "&#x27;").replace("<", "&lt;").replace(">", "&gt;") in page


def test_fallback_curve_matches_the_rates_at_the_thresholds() -> None:
    result = calibrate(GOOD, DEFECTS)
    if hasattr(result, "curve"):
        result = dataclasses.replace(result, curve=None)
    curve = curve_from_scores(result, GOOD, DEFECTS)
    ts = curve["false_reject"]["threshold"]
    i = ts.index(result.upper)
    assert curve["false_reject"]["rate"][i] == result.good.false_reject_rate
    j = ts.index(result.lower)
    assert curve["escape"]["rate"][j] == max(c.escape_rate for c in result.classes)
    assert all(b >= r for b, r in zip(curve["escape"]["bound"], curve["escape"]["rate"], strict=True))
    page = render_html(result, GOOD, DEFECTS, title="t", context={})
    assert 'class="curve-false_reject"' in page and 'class="curve-escape-bound"' in page


def test_good_only_page_asks_for_reject_bin_parts() -> None:
    result = calibrate(GOOD, {})
    page = render_html(result, GOOD, {}, title="t", context={})
    assert result.mode == "good_only" and page.count('<svg class="histogram"') == 1
    assert "lineguard capture --class NAME" in page and "lineguard calibrate" in page
    assert 'class="curve-false_reject"' in page and 'class="curve-escape"' not in page


def test_automatic_configuration_and_share_are_shown() -> None:
    result = calibrate(GOOD, DEFECTS)
    auto = {"chosen": "side-320", "reason": "largest automated share", "criterion": "automated share",
            "budget_note": "3 of 4 candidates in 240 s", "candidates": [
                {"name": "side-320", "settings": "input_side=320", "automated_share": 0.97, "auroc": 0.99},
                {"name": "<x>", "settings": "tiles=2x2", "automated_share": None, "note": "over the latency budget"}]}
    page = render_html(result, GOOD, DEFECTS, title="t", context={}, auto=auto)
    assert 'id="auto"' in page and "<b>side-320</b>" in page and "<td>0.970</td>" in page
    assert "&lt;x&gt;" in page and "over the latency budget" in page
    if hasattr(result, "automated_share"):
        assert f"{100 * result.automated_share:.1f} %" in page
    assert 'id="auto"' not in render_html(result, GOOD, DEFECTS, title="t", context={})
