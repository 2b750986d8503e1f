"""Soak test on the real rig: the service runs for hours at line rate; pass/fail on latency,
memory growth, drops, fail-safe verdicts and reconnects (criteria in hil/rig.yaml ``soak:``).

    LINEGUARD_HIL_RIG=hil/rig.yaml .venv/bin/python -m pytest -m hil hil/test_soak.py -v -s

Starts ``lineguard run --config <rig line_config>`` as a child process (as systemd would), samples
its /metrics and RSS every ``sample_period_s``, prints and writes the summary
(``<report_dir>/soak-<name>-<utc>.txt`` + the samples as CSV). ``LINEGUARD_SOAK_S`` overrides the
duration (a 2-minute dry run before the real one). The environment is read here only because this
is a test entry point.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import time
from pathlib import Path

import pytest

from lineguard.config import load_config
from lineguard.ops.rig import RIG_ENV, e2e_p99_ms, metrics_url, rig_from_env, scrape, soak_sample
from lineguard.ops.soak import SoakSample, evaluate_soak
from lineguard.ops.testing import LineProcess

pytestmark = [pytest.mark.hil, pytest.mark.timeout(8 * 86400)]


def test_soak() -> None:
    rig = rig_from_env()
    if rig is None:
        pytest.skip(f"set {RIG_ENV} to the rig description (hil/rig.example.yaml)")
    limits = rig.soak
    duration_s = float(os.environ.get("LINEGUARD_SOAK_S", limits.duration_s))
    line = load_config(rig.line_config)
    assert line.metrics.enabled and line.metrics.port, "the soak needs metrics.port in the line config"
    url = metrics_url(line)
    rig.report_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    proc = LineProcess.start(["run", "--config", str(rig.line_config)],
                             log_path=rig.report_dir / f"soak-{rig.name}-{stamp}.log")
    samples: list[SoakSample] = []
    try:
        proc.wait_http(url, timeout_s=900)  # a first TensorRT build on the target can take minutes
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s:
            assert proc.proc.poll() is None, f"service died during the soak:\n{proc.log()[-3000:]}"
            metrics = scrape(url)
            samples.append(soak_sample(time.monotonic() - t0, proc.proc.pid, metrics))
            time.sleep(limits.sample_period_s)
        metrics = scrape(url)
        samples.append(soak_sample(time.monotonic() - t0, proc.proc.pid, metrics))
    finally:
        rc = proc.terminate(timeout_s=60)
    report = evaluate_soak(samples, latency_p99_ms=e2e_p99_ms(metrics), limits=limits)
    text = f"rig {rig.name}, {duration_s / 3600:.2f} h, exit code {rc}\n{report.summary()}\n"
    print(text)
    (rig.report_dir / f"soak-{rig.name}-{stamp}.txt").write_text(text)
    with open(rig.report_dir / f"soak-{rig.name}-{stamp}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_bytes", "frames", "drops", "failsafe", "reconnects"])
        w.writerows((s.t_s, s.rss_bytes, s.frames, s.drops, s.failsafe, s.reconnects) for s in samples)
    assert rc == 0, "the service must stop cleanly on SIGTERM after the soak"
    assert report.passed, text
    assert Path(rig.report_dir).is_dir()
