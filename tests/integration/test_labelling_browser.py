"""Labelling page in a real headless Chromium (selenium + chromedriver) and its HTTP API on loopback.

The store is a real sink store with frames written in the wire format (with anomaly maps); the
page is driven with the keyboard exactly as a person would: g (good), 1 (first class), n + name +
Enter (new class), o (overlay). Skipped when Chromium, chromedriver or selenium is missing
(scripts/ci-system-deps-labelling.sh installs them).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.labelling.server import LabelServer, LabelServerConfig
from lineguard.sink.labels import LabelBook
from lineguard.sink.store import FrameStore
from lineguard.wire import MessageKind
from lineguard_models.active import SelectionConfig, plan_shift
from lineguard_models.backtest import store_decision
from lineguard_models.synth import SynthConfig, render_pixels

SYN = SynthConfig(width_px=96, height_px=72, seed=8)


def _fill(root: Path) -> dict[str, float]:
    store = FrameStore.open(root, quota_bytes=2**30, fsync=False)
    scores: dict[str, float] = {}
    for i, (label, score, kind, dclass) in enumerate([
        ("scratch", 1.5, MessageKind.UNCERTAIN, "scratch"),  # middle of the band: moves no threshold
        ("good", 1.9, MessageKind.UNCERTAIN, ""),  # near the reject threshold: its label matters most
        ("pit", 2.5, MessageKind.UNKNOWN_DEFECT, "unknown"),  # unknown defect: first of all
        ("good", 0.3, MessageKind.AUDIT, ""),
    ]):
        img = render_pixels(SYN, label, i)
        verdict = Verdict.REJECT if score >= 2 else (Verdict.RECHECK if score >= 1 else Verdict.ACCEPT)
        frame = Frame(seq=i, part_id=i, t_capture_ns=1, image=img, camera_id="cam0")
        d = Decision(seq=i, part_id=i, verdict=verdict, anomaly_score=score, bundle_id="bundle-a", camera_id="cam0",
                     t_capture_ns=1, t_decided_ns=2, defect_class=dclass, class_confidence=0.4 if dclass else np.nan)
        amap = np.zeros((9, 12), np.float32)
        amap[3:6, 4:8] = score
        scores[store_decision(store, d, frame, amap, kind, {"lower": 1.0, "upper": 2.0})] = score
    store.close()
    return scores


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[LabelServer, dict[str, float]]]:
    scores = _fill(tmp_path / "sink")
    sel = SelectionConfig(budget_per_shift=3, audit_share=0.0)

    def factory(book: LabelBook):  # type: ignore[no-untyped-def]
        return lambda: plan_shift(book, sel, now=dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc))[0]

    srv = LabelServer.from_store(tmp_path / "sink", LabelServerConfig(port=0, labeller="tester"), factory)
    srv.start()
    yield srv, scores
    srv.stop()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_queue_order_overlay_and_hostile_input(server: tuple[LabelServer, dict[str, float]]) -> None:
    srv, scores = server
    status, body = _get(srv.url + "api/queue")
    doc = json.loads(body)
    ids = [f["message_id"] for f in doc["frames"]]
    assert status == 200 and doc["shift"] == "2024-05-01/s1" and len(ids) == 4
    assert [scores[i] for i in ids[:3]] == [2.5, 1.9, 1.5]  # unknown defect, near reject, band middle
    assert doc["frames"][3]["kind"] == "audit" and doc["frames"][3]["rank"] is None  # beyond the budget
    status, plain = _get(srv.url + f"api/image/{ids[0]}?overlay=0")
    status2, hot = _get(srv.url + f"api/image/{ids[0]}?overlay=1")
    assert status == status2 == 200 and plain[:4] == hot[:4] == b"\x89PNG" and plain != hot
    assert _get(srv.url + "api/image/../../index.sqlite3")[0] == 404
    assert _get(srv.url + "api/image/00000000-0000-4000-8000-000000000000")[0] == 404
    assert _post(srv.url + "api/label", json.dumps({"message_id": ids[0], "label": "Bad Name!"}).encode())[0] == 400
    assert _post(srv.url + "api/label", b"{not json")[0] == 400
    assert _post(srv.url + "api/label", b"{}", ctype="text/plain")[0] == 400
    assert _post(srv.url + "api/label", json.dumps({"message_id": "00000000-0000-4000-8000-000000000000",
                                                    "label": "good"}).encode())[0] == 404
    assert srv.book.events() == []


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium/chromedriver not installed (scripts/ci-system-deps-labelling.sh)")
    return browser, driver


def test_keyboard_labelling_in_headless_chromium(server: tuple[LabelServer, dict[str, float]], tmp_path: Path) -> None:
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    srv, scores = server
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(srv.url)
        wait = WebDriverWait(drv, 15)
        body = drv.find_element(By.TAG_NAME, "body")
        wait.until(lambda d: body.get_attribute("data-current"))
        first = body.get_attribute("data-current")
        assert scores[first] == 2.5  # the unknown defect is shown first
        assert drv.find_element(By.ID, "verdict").text == "reject"
        assert "unknown" in drv.find_element(By.ID, "dclass").text
        wait.until(lambda d: d.execute_script("return document.getElementById('frame').naturalWidth") == 96)
        assert "overlay=1" in drv.find_element(By.ID, "frame").get_attribute("src")

        def press(keys: str) -> None:
            before = body.get_attribute("data-current")
            body.send_keys(keys)
            wait.until(lambda d: body.get_attribute("data-current") != before)

        body.send_keys("n")  # new class, typed
        field = drv.find_element(By.ID, "newname")
        wait.until(lambda d: field.is_displayed())
        field.send_keys("porosity")
        before = body.get_attribute("data-current")
        field.send_keys(Keys.ENTER)
        wait.until(lambda d: body.get_attribute("data-current") != before)
        second = body.get_attribute("data-current")
        assert scores[second] == 1.9  # then the frame nearest a threshold
        body.send_keys("o")  # overlay off
        wait.until(lambda d: "overlay=0" in d.find_element(By.ID, "frame").get_attribute("src"))
        press("1")  # the first listed class
        press("g")
        events = srv.book.events()
        assert [(e.message_id, e.labeller) for e in events] == [(first, "tester"), (second, "tester"),
                                                                (events[2].message_id, "tester")]
        # key 1 = first listed class: 'scratch' (reported by the bundle); 'porosity' was added after it
        assert [e.label for e in events] == ["porosity", "scratch", "good"]
        assert srv.book.frame(first).label == "porosity"  # type: ignore[union-attr]
    finally:
        drv.quit()
