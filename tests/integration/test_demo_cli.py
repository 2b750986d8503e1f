"""The README's first command, end to end: `lineguard demo` trains a real bundle with our training
code, runs the service against the PLC simulator and the sink, and proves one verdict per part."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "lineguard.cli", "demo", "--workdir", str(tmp_path / "demo"), "--parts", "24",
           "--rate", "20", "--metrics-port", "0", "--input-size", "96", "--deadline-ms", "2000"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "PLC check: 24 parts with a verdict, 0 without, 0 with more than one -> OK" in out
    assert "verdicts at the PLC by true label:" in out
    assert "decided without a person:" in out and "automated share on its calibration images" in out
    # a second run reuses the verified bundle instead of training again
    res2 = subprocess.run([*cmd[:6], "--parts", "6", "--metrics-port", "0", "--input-size", "96"],
                          capture_output=True, text=True, timeout=300)
    assert res2.returncode == 0, (res2.stdout + res2.stderr)[-3000:]
    assert "reusing bundle" in res2.stdout
    assert (tmp_path / "demo" / "decisions.jsonl").read_text().count("\n") == 24 + 6
