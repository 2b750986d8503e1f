"""The calibration report page in a real headless Chromium (selenium + chromedriver): the key elements
are found in the rendered DOM and the screenshot shows them (size, not blank, the verdict colours).

The page is rendered from a real calibration of synthetic scores with thumbnails of synthetic parts
and their anomaly maps, loaded from a file:// URL with the network off, so anything it tried to
fetch from outside would be missing. Skipped when Chromium, chromedriver or selenium is missing
(scripts/ci-system-deps-labelling.sh installs them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard_models.calibration import calibrate
from lineguard_models.report_html import make_example, write_html
from lineguard_models.synth import SynthConfig, render_pixels

SYN = SynthConfig(width_px=128, height_px=96, seed=11)


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium/chromedriver not installed (scripts/ci-system-deps-labelling.sh)")
    return browser, driver


def _page(tmp_path: Path) -> tuple[Path, float, float, int]:
    rng = np.random.default_rng(2)
    good = rng.normal(1.0, 0.15, 40)
    defects = {"scratch": rng.normal(2.2, 0.4, 16), "pit": rng.normal(1.5, 0.3, 5)}
    result = calibrate(good, defects)

    def example(label: str, i: int, score: float) -> object:
        img = render_pixels(SYN, label, i)
        amap = np.zeros((12, 16), np.float32)
        amap[3:7, 5:10] = score
        return make_example(img, amap, rel=f"{label}/{i:06d}.png", label=label, score=score, lower=result.lower,
                            upper=result.upper, max_value=255)

    worst = [example("good", i, float(s)) for i, s in enumerate(sorted(good)[-3:])]
    hidden = [example("scratch", i, float(s)) for i, s in enumerate(sorted(defects["scratch"])[:2])]
    page = write_html(tmp_path / "report", result, good, defects, title="Calibration report: partA-test",
                      context={"dataset": str(tmp_path / "teach")}, worst_good=worst,  # type: ignore[arg-type]
                      hidden_defects=hidden)  # type: ignore[arg-type]
    return page, result.lower, result.upper, len(result.warnings)


def _colour_share(bgr: np.ndarray, hex_rgb: str, tol: int = 40) -> float:
    r, g, b = (int(hex_rgb[i : i + 2], 16) for i in (1, 3, 5))
    near = np.all(np.abs(bgr.astype(np.int16) - np.array([b, g, r], np.int16)) <= tol, axis=2)
    return float(near.mean())


def test_report_renders_its_key_elements_in_headless_chromium(tmp_path: Path) -> None:
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    page, lower, upper, n_warnings = _page(tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,3200",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no way out
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(page.as_uri())
        assert drv.title == "Calibration report: partA-test"
        thr = drv.find_element(By.ID, "thresholds")
        assert f"{lower:.6g}" in thr.text and f"{upper:.6g}" in thr.text and "accept" in thr.text
        assert float(drv.find_element(By.CSS_SELECTOR, ".thr.reject").get_attribute("data-value") or "nan") == upper
        hists = drv.find_elements(By.CSS_SELECTOR, "svg.histogram")
        assert sorted(h.get_attribute("data-class") for h in hists) == ["pit", "scratch"]
        assert all(h.size["width"] > 400 and h.find_elements(By.CSS_SELECTOR, "rect.bar-good") for h in hists)
        assert drv.find_elements(By.CSS_SELECTOR, "svg.operating-curve polyline.curve-escape")
        assert len(drv.find_elements(By.CSS_SELECTOR, "#warnings li")) == n_warnings >= 1
        assert "pit" in drv.find_element(By.ID, "more-images").text
        thumbs = drv.find_elements(By.CSS_SELECTOR, "#worst-good img.thumb") + drv.find_elements(
            By.CSS_SELECTOR, "#hidden-defects img.thumb")
        assert len(thumbs) == 2 * (3 + 2)  # image + anomaly map of each example
        # every thumbnail decoded (a broken data: URL has naturalWidth 0)
        assert all(drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth", t) > 100
                   for t in thumbs)
        plain, heat = (_decode(t.screenshot_as_png) for t in thumbs[:2])
        shot = _decode(drv.get_screenshot_as_png())
    finally:
        drv.quit()
    assert shot is not None and shot.shape[1] >= 1000 and shot.shape[0] >= 2000
    assert float(shot.std()) > 20, "blank screenshot"
    # the accept / recheck / reject boxes, the good and defect bars are all on screen
    for colour in ("#2ca02c", "#e67e00", "#d62728", "#1f77b4"):
        assert _colour_share(shot, colour) > 0.001, colour
    # the part is mono (no saturated pixel); its anomaly map is blended in jet colours (hot where it scored)
    assert _saturated(plain) < 0.001 < 0.05 < _saturated(heat)


def _decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _saturated(bgr: np.ndarray) -> float:
    return float(np.mean(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[:, :, 1] > 150))
