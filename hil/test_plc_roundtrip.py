"""Verdict round trip through the real PLC, with the real camera, at line rate (excluded by default).

    LINEGUARD_HIL_RIG=hil/rig.yaml .venv/bin/python -m pytest -m hil hil/test_plc_roundtrip.py -v -s

The rig's PLC (or its test program / a pulse generator wired to the camera's trigger input and
the PLC) triggers ``roundtrip.parts`` parts at ``line_rate_parts_per_s``. LineGuard runs from the
rig's line config as a child process. Pass when: every trigger got exactly one result block
written and acknowledged (``lineguard_plc_results_written_total`` == triggers, no fail-safe, no
missed trigger), the camera delivered a frame for every trigger (trigger-to-frame: no drops), and
the p99 of image-to-verdict and of the Modbus result write stay within ``roundtrip`` limits.
Link-level checks without the camera: hil/test_plc_hil.py; camera-only checks: hil/test_camera_hil.py.
"""

from __future__ import annotations

import time

import pytest

from lineguard.config import load_config
from lineguard.ops.rig import RIG_ENV, e2e_p99_ms, metrics_url, rig_from_env, scrape, total
from lineguard.ops.testing import LineProcess

pytestmark = [pytest.mark.hil, pytest.mark.timeout(3600)]


def test_every_trigger_gets_one_acknowledged_verdict_in_time() -> None:
    rig = rig_from_env()
    if rig is None:
        pytest.skip(f"set {RIG_ENV} to the rig description (hil/rig.example.yaml)")
    limits = rig.roundtrip
    line = load_config(rig.line_config)
    assert line.plc is not None, "the round trip needs the real PLC in the line config"
    assert line.source.type == "genicam", "the round trip needs the real camera"
    url = metrics_url(line)
    rig.report_dir.mkdir(parents=True, exist_ok=True)
    proc = LineProcess.start(["run", "--config", str(rig.line_config)], log_path=rig.report_dir / "roundtrip.log")
    try:
        proc.wait_http(url, timeout_s=900)
        base = scrape(url)
        t0 = time.monotonic()
        print(f"waiting for {limits.parts} triggers at {rig.line_rate_parts_per_s} parts/s ...")
        while True:
            now = scrape(url)
            triggers = total(now, "lineguard_plc_triggers_total") - total(base, "lineguard_plc_triggers_total")
            if triggers >= limits.parts:
                break
            assert time.monotonic() - t0 < limits.timeout_s, f"only {triggers:.0f} triggers in {limits.timeout_s} s"
            time.sleep(0.5)
        time.sleep(max(2.0, 3 / rig.line_rate_parts_per_s))  # let the last verdicts reach the PLC
        end = scrape(url)
    finally:
        rc = proc.terminate(timeout_s=60)

    def delta(name: str) -> float:
        return total(end, name) - total(base, name)

    written = delta("lineguard_plc_results_written_total")
    triggers = delta("lineguard_plc_triggers_total")
    frames = delta("lineguard_frames_total")
    e2e = e2e_p99_ms(end)
    plc_write = e2e_p99_ms(end, "lineguard_plc_transaction_seconds_bucket", op="result")
    acquire = e2e_p99_ms(end, "lineguard_stage_latency_seconds_bucket", stage="acquire")
    summary = (f"round trip on {rig.name}: triggers {triggers:.0f}, frames {frames:.0f}, results written "
               f"{written:.0f}, fail-safe {delta('lineguard_plc_failsafe_verdicts_total'):.0f}, missed triggers "
               f"{delta('lineguard_plc_missed_triggers_total'):.0f}, e2e p99 {e2e:.1f} ms, PLC write p99 "
               f"{plc_write:.2f} ms, trigger-to-frame (acquire) p99 {acquire:.1f} ms")
    print(summary)
    (rig.report_dir / "roundtrip.txt").write_text(summary + "\n")
    assert rc == 0
    assert delta("lineguard_plc_missed_triggers_total") == 0, summary
    assert delta("lineguard_plc_failsafe_verdicts_total") == 0 and delta("lineguard_failsafe_verdicts_total") == 0
    assert frames >= triggers, f"the camera lost {triggers - frames:.0f} triggered parts: {summary}"
    # parts still in flight at the last scrape may lack their result: allow one line-rate period
    assert written >= triggers - 1, summary
    assert e2e <= limits.e2e_p99_max_ms, summary
    assert plc_write <= limits.plc_write_p99_max_ms, summary
