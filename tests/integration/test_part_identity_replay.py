"""Part identity end to end (issue 21, first row of the fault table): a replay stream of 30 files,
6 of them unreadable (truncated PNG, zero bytes, text named .png, a bare JPEG header), through the
real service -> ONNX Runtime -> PLC link over Modbus TCP to the PLC simulator on loopback.

Every file is one part: exactly 30 results at the PLC, the unreadable ones as the fail-safe verdict
(result_flags bit1) under their own part ids, every readable part judged on its own image (a
shifted id would put a neighbour's verdict on it), the decision log holding each part once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from lineguard.cli import main as cli_main
from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.contracts import Verdict
from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import ReplaySourceConfig

N_FILES = 30
KINDS = ["good", "good", "bright", "faint", "dark", "good"]
EXPECTED = {"good": Verdict.ACCEPT, "bright": Verdict.REJECT, "dark": Verdict.REJECT, "faint": Verdict.RECHECK}
BARE_JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
# 0-based position in the stream -> how the file is broken; part id = position + 1
UNREADABLE = {2: "truncated", 7: "zero", 11: "text", 18: "jpeg_header", 23: "truncated", 29: "zero"}


@pytest.fixture()
def stream(tmp_path: Path) -> Iterator[dict[str, object]]:
    bundle = build_synthetic_bundle(tmp_path / "bundle", input_size=64)
    rng = np.random.default_rng(21)
    folder = tmp_path / "frames"
    folder.mkdir()
    truth: dict[int, str] = {}
    for pos in range(N_FILES):
        kind = KINDS[pos % len(KINDS)]
        broken = UNREADABLE.get(pos)
        ok, png = cv2.imencode(".png", synthetic_image(kind, bundle.manifest.input, rng))  # type: ignore[arg-type]
        assert ok
        name = f"{pos:03d}_{broken or kind}" + (".jpg" if broken == "jpeg_header" else ".png")
        data = {
            None: png.tobytes(),
            "truncated": png.tobytes()[: png.size // 2],
            "zero": b"",
            "text": b"this is a text file that only pretends to be a PNG\n",
            "jpeg_header": BARE_JPEG_HEADER,
        }[broken]
        (folder / name).write_bytes(data)
        truth[pos + 1] = "unreadable" if broken else kind
    sim = PlcSimulator().start()
    yield {"folder": folder, "bundle": tmp_path / "bundle", "truth": truth, "sim": sim, "tmp": tmp_path}
    sim.stop()


def _check_plc_and_log(sim: PlcSimulator, truth: dict[int, str], log_path: Path) -> None:
    by_part = sim.verdicts_by_part()
    assert sorted(by_part) == list(range(1, N_FILES + 1)), "exactly the 30 part ids at the PLC"
    assert all(len(v) == 1 for v in by_part.values()), "one result per part"
    assert len(sim.results()) == N_FILES
    flags = {r.part_id: r.flags for r in sim.results()}
    failsafe_ids = sorted(p for p, f in flags.items() if f & 0b10)
    assert failsafe_ids == [pos + 1 for pos in sorted(UNREADABLE)], "fail-safes at the unreadable files' ids"
    for part, kind in truth.items():
        ((_, verdict),) = by_part[part]
        if kind == "unreadable":
            assert verdict == int(Verdict.REJECT), part  # PlcConfig.failsafe_verdict default: reject
        else:
            assert verdict == int(EXPECTED[kind]) and flags[part] == 0, (part, kind, verdict, flags[part])
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(r["part_id"] for r in records) == list(range(1, N_FILES + 1)), "each part once in the log"
    unreadable = sorted((r["part_id"], r["reasons"][0]) for r in records if r["failsafe"])
    assert unreadable == [(pos + 1, "unreadable_frame") for pos in sorted(UNREADABLE)]
    for r in records:
        if r["failsafe"]:  # the log names the file position and the decoder's complaint
            assert r["reasons"][1].startswith(f"frame id {r['part_id'] - 1}: cannot decode"), r


def test_every_file_is_one_part_unreadable_ones_fail_safe_under_their_own_ids(stream: dict[str, object]) -> None:
    sim, truth, tmp = stream["sim"], stream["truth"], stream["tmp"]
    assert isinstance(sim, PlcSimulator) and isinstance(truth, dict) and isinstance(tmp, Path)
    registry = CollectorRegistry()
    cfg = LineConfig(
        bundle=BundleSection(path=stream["bundle"]),  # type: ignore[arg-type]
        source=ReplaySourceConfig(type="replay", paths=(str(stream["folder"]),), rate_parts_per_s=60.0),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=1000.0),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(enabled=False),
        service=ServiceSection(decision_log_path=tmp / "decisions.jsonl"),
    )
    service = InspectionService.from_config(cfg, registry=registry)
    try:
        service.start()
        t0 = time.monotonic()
        while not service.finished():
            assert time.monotonic() - t0 < 30, "replay did not finish"
            time.sleep(0.05)
        service.supervise_once()  # source counters -> metrics
    finally:
        service.stop()
    s = service.stats
    assert (s.frames, s.decided, s.failsafe) == (N_FILES, N_FILES, len(UNREADABLE))
    assert s.source_faults == {"unreadable_frame": len(UNREADABLE)}
    assert registry.get_sample_value("lineguard_failsafe_verdicts_total", {"reason": "unreadable_frame"}) == 6
    assert registry.get_sample_value("lineguard_frames_total") == N_FILES
    assert service.source.stats.snapshot().unreadable == len(UNREADABLE)
    _check_plc_and_log(sim, truth, tmp / "decisions.jsonl")


def test_replay_command_summary_counts_every_triggered_part(
    stream: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    sim, truth, tmp = stream["sim"], stream["truth"], stream["tmp"]
    assert isinstance(sim, PlcSimulator) and isinstance(truth, dict) and isinstance(tmp, Path)
    rc = cli_main([
        "replay", str(stream["folder"]), "--bundle", str(stream["bundle"]), "--rate", "100",
        "--plc", f"{sim.host}:{sim.port}", "--decision-log", str(tmp / "cli.jsonl"),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"{N_FILES} frames, {N_FILES} verdicts, fail-safe 6 (queue full 0, unreadable_frame 6)" in out, out
    sim.wait_until(lambda: len(sim.results()) >= N_FILES, timeout_s=5)
    _check_plc_and_log(sim, truth, tmp / "cli.jsonl")


def test_part_ids_from_plc_triggers_follow_the_files_including_the_unreadable(stream: dict[str, object]) -> None:
    """service.part_ids: plc_trigger: the PLC triggers parts 5000.. and writes their ids (registers
    20-22); the n-th file is the n-th trigger and its result carries the trigger's part id."""
    sim, tmp = stream["sim"], stream["tmp"]
    assert isinstance(sim, PlcSimulator) and isinstance(tmp, Path)
    cfg = LineConfig(
        bundle=BundleSection(path=stream["bundle"]),  # type: ignore[arg-type]
        source=ReplaySourceConfig(type="replay", paths=(str(stream["folder"]),), rate_parts_per_s=20.0),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=2000.0),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(enabled=False),
        service=ServiceSection(decision_log_path=tmp / "trig.jsonl", part_ids="plc_trigger", trigger_wait_ms=1000),
    )
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    try:
        service.start()
        sim.wait_until(lambda: service.plc.health().connected, timeout_s=5)  # type: ignore[union-attr]
        time.sleep(0.1)  # the link's first poll is its baseline: triggers start after it
        sim.start_triggers(20.0, first_part_id=5000, count=N_FILES)
        t0 = time.monotonic()
        while not service.finished():
            assert time.monotonic() - t0 < 30, "replay did not finish"
            time.sleep(0.05)
    finally:
        service.stop()
    sim.wait_until(lambda: len(sim.results()) >= N_FILES, timeout_s=5)
    by_part = sim.verdicts_by_part()
    assert sorted(by_part) == list(range(5000, 5000 + N_FILES)) and all(len(v) == 1 for v in by_part.values())
    flags = {r.part_id: r.flags for r in sim.results()}
    assert sorted(p for p, f in flags.items() if f & 0b10) == [5000 + pos for pos in sorted(UNREADABLE)]
    assert not any(f & 0b01 for f in flags.values()), "no part waited for its deadline"
    truth = stream["truth"]
    assert isinstance(truth, dict)
    for part, kind in truth.items():  # the judged ones carry their own file's verdict
        if kind != "unreadable":
            assert next(iter(by_part[4999 + part]))[1] == int(EXPECTED[kind]), (part, kind)
