"""A line's first day, as docs/first-line.md tells it, with the real commands end to end.

capture goods from the camera -> capture reject-bin parts -> train -> the HTML report -> sign and
install-bundle -> run with the PLC (``lineguard plc-sim``) and the sink (``lineguard sink``) -> verdicts
at the PLC. The camera is viky.cti through harvesters: camera serial 0 shows a red ball on white (the
good part). viky cannot put a defective part in front of the lens, so the reject-bin parts are taken
from its second camera, whose ball is green: the same 100x100 RGB format, a visibly different part.
Kept small for speed (tiny input, small bank, few images: the fast settings of the other training
tests). The long-running peers (PLC simulator, sink, service) run as separate processes, as on a line.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("harvesters.core", reason="harvesters is not installed")

from lineguard.bundle import load_bundle
from lineguard.cli import main
from lineguard.plc.sim import free_port
from lineguard.sources.genicam import viky_cti_path

VIKY = viky_cti_path()
pytestmark = [pytest.mark.skipif(VIKY is None, reason="viky.cti is not inside this genicam wheel"),
              pytest.mark.slow]
LG = [sys.executable, "-m", "lineguard.cli"]


def _lg(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, f"lineguard {' '.join(argv)} failed:\n{out.out}\n{out.err}"
    return out.out


def _start(argv: list[str], ready: str, log: Path) -> subprocess.Popen[str]:
    """A long-running lineguard command in its own process, once it printed ``ready``."""
    proc = subprocess.Popen([*LG, *argv], stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert ready in line, f"{argv[0]} did not start: {line!r}\n{log.read_text()}"
    return proc


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), out
    return out


def _line_yaml(tmp: Path, **extra: object) -> dict[str, object]:
    return {
        "line": {"name": "press-3-station-2"},
        "source": {"type": "genicam", "cti_path": str(VIKY), "serial": "0", "pixel_format": "RGBa8",
                   "width": 100, "height": 100, "frame_rate_hz": 20.0},
        **extra,
    }


def test_first_day_capture_train_report_install_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = tmp_path / "line.yaml"
    line.write_text(json.dumps(_line_yaml(tmp_path)))  # JSON is YAML; no bundle yet on day one
    teach = tmp_path / "teach"

    # 1-2. the teach set: good parts from the running line, defects from the reject bin
    out = _lg(capsys, "capture", "--config", str(line), "--out", str(teach), "--class", "good", "--count", "16",
              "--every-nth", "2")
    assert "captured 16 frames" in out
    reject_bin = tmp_path / "reject-bin.yaml"  # viky's green-ball camera stands in for the reject bin
    bin_cfg = _line_yaml(tmp_path)
    bin_cfg["source"] = {**bin_cfg["source"], "serial": "1"}  # type: ignore[dict-item]
    reject_bin.write_text(json.dumps(bin_cfg))
    assert "captured 6 frames" in _lg(capsys, "capture", "--config", str(reject_bin), "--out", str(teach),
                                      "--class", "green_ball", "--count", "6")

    # 3. train (the fast settings of the other training tests)
    bundle_dir = tmp_path / "bundles" / "partA"
    out = _lg(capsys, "train", "--data", str(teach), "--out", str(bundle_dir), "--product", "partA", "--recipe", "3",
              "--input-size", "64", "--bank-size", "32", "--seed", "1")
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert m.calibration["images"] == {"good": 5, "green_ball": 6} and m.input.channels == 3
    green = m.calibration["classes"]["green_ball"]
    assert green["auroc"] == 1.0 and green["rejects"] == 6  # the reject-bin parts are told apart

    # 4. the report: one self-contained page, listed (and hashed) in the bundle
    page = (bundle_dir / "report" / "report.html").read_text()
    assert "report/report.html" in m.files and "report.html" in out
    assert f"{m.thresholds.lower:.6g}" in page and '<svg class="histogram" data-class="green_ball"' in page
    assert page.count('class="thumb map"') >= 8  # worst goods and best-hidden defects, each with its map
    assert all(r.startswith("data:") for r in re.findall(r'src="([^"]*)"', page))
    assert "more images" in page.lower() and "+143" in page  # what the report asks for: more green balls

    # more reject-bin parts later: added without retraining, into a new bundle version
    more = tmp_path / "teach-more"
    _lg(capsys, "capture", "--config", str(reject_bin), "--out", str(more), "--class", "green_ball", "--count", "4",
        "--every-nth", "7")
    known = {_sha(p) for p in (teach / "green_ball").glob("*.png")}
    new = {_sha(p) for p in (more / "green_ball").glob("*.png")} - known  # viky replays its ball path on open
    assert new
    out = _lg(capsys, "calibrate", "--bundle", str(bundle_dir), "--data", str(more), "--out",
              str(tmp_path / "bundles" / "partA-v2"))
    bundle_dir = tmp_path / "bundles" / "partA-v2"
    m = load_bundle(bundle_dir).manifest
    assert m.calibration["images"] == {"good": 5, "green_ball": 6 + len(new)} and "report.html" in out
    page = (bundle_dir / "report" / "report.html").read_text()
    # thumbnails only for scored images that are in this folder (same name and content)
    same = [q for q in (more / "green_ball").glob("*.png") if _sha(q) == _sha_or_none(teach / "green_ball" / q.name)]
    assert f"{11 - len(same)} calibration scores come from images not in this dataset folder" in page
    assert page.count('class="thumb map"') == min(4, len(new) + len(same))

    # 5. sign and install
    out = _lg(capsys, "sign-bundle", "--generate-key", str(tmp_path / "release.pem"))
    public = out.strip().splitlines()[-1].strip().removeprefix("- ")
    _lg(capsys, "sign-bundle", str(bundle_dir), "--key", str(tmp_path / "release.pem"))
    plc_port = free_port()
    sink_endpoint = f"tcp://127.0.0.1:{free_port()}"
    store = tmp_path / "store"
    # the line config now names the bundle where install-bundle puts it: <store_dir>/bundles/<bundle id>
    cfg = _line_yaml(tmp_path, bundle={"path": str(store / "bundles" / m.bundle_id)},
                     changeover={"store_dir": str(store), "trusted_keys": [public]})
    line.write_text(json.dumps(cfg))
    out = _lg(capsys, "install-bundle", str(bundle_dir), "--config", str(line))
    assert f"installed {m.bundle_id}" in out and "'golden': 'passed'" in out

    # 6. run with the PLC and the sink
    cfg |= {"plc": {"transport": {"type": "tcp", "host": "127.0.0.1", "port": plc_port}, "deadline_ms": 1000},
            "publisher": {"endpoint": sink_endpoint, "audit_fraction": 1.0},
            "metrics": {"enabled": False},
            "service": {"decision_log_path": str(tmp_path / "decisions.jsonl")}}
    line.write_text(json.dumps(cfg))
    plc = subprocess.Popen([*LG, "plc-sim", "--port", str(plc_port)], stdout=subprocess.PIPE,
                           stderr=(tmp_path / "plc.log").open("w"), text=True)
    sink = _start(["sink", "--bind", sink_endpoint, "--store", str(tmp_path / "sink"), "--no-fsync"],
                  "sink listening", tmp_path / "sink.log")
    try:
        _wait_for(lambda: "PLC simulator on" in (tmp_path / "plc.log").read_text(), 30)
        service = subprocess.Popen([*LG, "run", "--config", str(line)], stdout=subprocess.PIPE,
                                   stderr=(tmp_path / "run.log").open("w"), text=True)
        _wait_for(lambda: _decisions(tmp_path) >= 30 or service.poll() is not None, 60)
        run_out = _stop(service, signal.SIGTERM)
    finally:
        sink_out = _stop(sink, signal.SIGTERM)
        plc_out = _stop(plc)
    assert service.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    frames = int(re.search(r"frames (\d+)", run_out).group(1))  # type: ignore[union-attr]
    verdicts_run = ast.literal_eval(re.search(r"verdicts (\{.*\})", run_out).group(1))  # type: ignore[union-attr]
    summary = re.search(r"plc-sim stopped: parts (\d+) results (\d+) doubly-answered (\d+) verdicts (\{.*\})",
                        plc_out)
    assert summary, plc_out
    parts, doubles, verdicts_plc = int(summary.group(1)), int(summary.group(3)), ast.literal_eval(summary.group(4))
    assert frames >= 30 and parts == frames and doubles == 0, (run_out, plc_out)  # one verdict per part
    assert sum(verdicts_run.values()) + verdicts_plc.get("failsafe", 0) >= parts - 2
    assert verdicts_plc.get("failsafe", 0) <= 2  # at most the parts in flight when the service stopped
    assert set(verdicts_plc) <= {"accept", "reject", "recheck", "failsafe"}
    stored = int(re.search(r"stored (\d+)", (tmp_path / "sink.log").read_text()).group(1))  # type: ignore[union-attr]
    assert stored >= 1, sink_out
    print(f"service: {run_out.strip()}\nPLC: {summary.group(0)}\nsink: stored {stored}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha_or_none(path: Path) -> str | None:
    return _sha(path) if path.is_file() else None


def _decisions(tmp: Path) -> int:
    log = tmp / "decisions.jsonl"
    return log.read_text().count("\n") if log.is_file() else 0


def _wait_for(cond: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
