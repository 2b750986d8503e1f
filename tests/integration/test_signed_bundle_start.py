"""Only signed bundles judge parts: ``lineguard run``, ``check-config`` and ``check-bundle --config``.

Real bundles (ONNX graphs made by the project's synthetic builder), real Ed25519 keys and
signatures, ``lineguard run`` through the CLI dispatcher against the PLC simulator on loopback.
A refused bundle must leave no trace at the PLC: no result block, not even a heartbeat.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineguard.bundle import SIGNATURE, load_bundle
from lineguard.changeover.signing import key_id, public_key_text, public_raw, sign_bundle
from lineguard.changeover.testing import edit_thresholds_after_signing, flip_byte, make_bundle, rewrite_manifest
from lineguard.cli import main
from lineguard.engines.synthetic import synthetic_image
from lineguard.plc.sim import PlcSimulator, free_port

N_FRAMES = 6


def _edit_after_signing(root: Path, key: Ed25519PrivateKey) -> None:
    edit_thresholds_after_signing(root)  # hashes and golden self-test still pass, the signature not


def _unsign(root: Path, key: Ed25519PrivateKey) -> None:
    (root / SIGNATURE).unlink()


def _sign_with_unknown_key(root: Path, key: Ed25519PrivateKey) -> None:
    sign_bundle(root, Ed25519PrivateKey.generate())


class Line:
    """A signed bundle, replay frames for it, a key, and line configs written as YAML files."""

    def __init__(self, tmp: Path, sim: PlcSimulator) -> None:
        self.tmp, self.sim = tmp, sim
        self.key = Ed25519PrivateKey.generate()
        self.bundle = make_bundle(tmp / "bundle", bundle_id="signed-1", recipe=1, key=self.key)
        spec = load_bundle(self.bundle).manifest.input
        self.frames = tmp / "frames"
        self.frames.mkdir()
        rng = np.random.default_rng(3)
        for i in range(N_FRAMES):
            cv2.imwrite(str(self.frames / f"{i:02d}.png"), synthetic_image("good", spec, rng))

    def config(self, *, policy: str = "bundle", allow_unsigned: bool = False) -> str:
        keys = [public_key_text(self.key)]
        bundle: dict[str, Any] = {"path": str(self.bundle)}
        doc: dict[str, Any] = {
            "bundle": bundle,
            "source": {"type": "replay", "paths": [str(self.frames)], "rate_parts_per_s": 50.0},
            "plc": {"transport": {"type": "tcp", "host": self.sim.host, "port": self.sim.port}, "deadline_ms": 1000},
            "publisher": {"enabled": False}, "metrics": {"enabled": False},
            "service": {"decision_log_path": str(self.tmp / "log" / "decisions.jsonl")},
        }
        if policy == "bundle":
            bundle.update(trusted_keys=keys, allow_unsigned=allow_unsigned)
        else:  # the changeover section's policy applies to run as well
            doc["changeover"] = {"store_dir": str(self.tmp / "store"), "trusted_keys": keys,
                                 "allow_unsigned": allow_unsigned}
        path = self.tmp / "line.yaml"
        path.write_text(json.dumps(doc, indent=2))  # JSON is YAML, and keeps line numbers simple
        return str(path)

    def decision_lines(self) -> list[str]:
        log = self.tmp / "log" / "decisions.jsonl"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture()
def line(tmp_path: Path, sim: PlcSimulator) -> Line:
    return Line(tmp_path, sim)


def _run_cli(config: str) -> subprocess.CompletedProcess[str]:
    """``lineguard run`` as its own process (the real entry point, its own metrics registry)."""
    return subprocess.run([sys.executable, "-m", "lineguard.cli", "run", "--config", config, "--until-finished"],
                          capture_output=True, text=True, timeout=120)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


TAMPER: dict[str, tuple[Callable[[Path, Ed25519PrivateKey], None], str]] = {
    "unsigned": (_unsign, "is not signed (manifest.sig missing)"),
    "edited_after_signing": (_edit_after_signing, "manifest.json was changed after it was signed by key"),
    "unknown_key": (_sign_with_unknown_key, "which is not in trusted_keys"),
}


@pytest.mark.parametrize("policy", ["bundle", "changeover"])
@pytest.mark.parametrize("case", sorted(TAMPER))
def test_run_refuses_the_bundle_before_any_part_is_judged(
    line: Line, capsys: pytest.CaptureFixture[str], case: str, policy: str
) -> None:
    tamper, message = TAMPER[case]
    tamper(line.bundle, line.key)
    code, _, err = _cli(capsys, "run", "--config", line.config(policy=policy), "--until-finished")
    assert code == 1
    assert message in err and f"{policy}.trusted_keys" in err, err
    assert line.sim.results() == [] and line.sim.heartbeats() == [], "the PLC never heard from a refused line"
    assert line.decision_lines() == []


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " WARNING " in ln]


def test_run_with_a_trusted_signature_judges_every_part(line: Line) -> None:
    res = _run_cli(line.config())
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(line.sim.verdicts_by_part()) == list(range(1, N_FRAMES + 1))
    kid = key_id(public_raw(line.key.public_key()))
    assert f"bundle signed-1: signed by key {kid} (bundle.trusted_keys[0], sha256 fingerprint" in res.stderr
    assert "allow_unsigned" not in res.stderr


def test_allow_unsigned_runs_but_warns_loudly_at_start(line: Line) -> None:
    _edit_after_signing(line.bundle, line.key)
    res = _run_cli(line.config(policy="changeover", allow_unsigned=True))
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(line.sim.verdicts_by_part()) == N_FRAMES and len(line.decision_lines()) == N_FRAMES
    warnings = _warnings(res.stderr)
    assert any("changed after it was signed" in w and "ACCEPTED only because allow_unsigned" in w
               for w in warnings), warnings
    assert any("starting with bundle signed-1: allow_unsigned is set" in w for w in warnings), warnings


def test_older_config_without_a_policy_still_runs_with_a_warning(line: Line) -> None:
    _unsign(line.bundle, line.key)
    path = Path(line.config())
    doc = json.loads(path.read_text())
    del doc["bundle"]["trusted_keys"], doc["bundle"]["allow_unsigned"]
    path.write_text(json.dumps(doc))
    res = _run_cli(str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(line.sim.verdicts_by_part()) == N_FRAMES
    warnings = "\n".join(_warnings(res.stderr))
    assert "is not signed" in warnings and "list keys in bundle.trusted_keys" in warnings, warnings


# ------------------------------------------------------------------------------ check-config / check-bundle
def test_check_config_says_who_signed(line: Line, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "check-config", line.config(policy="changeover"))
    assert code == 0, err
    kid = key_id(public_raw(line.key.public_key()))
    assert f"bundle signed-1: {len(load_bundle(line.bundle).manifest.files)} files verified, signed by key {kid} " \
           "(changeover.trusted_keys[0], sha256 fingerprint" in out
    assert out.rstrip().endswith("OK (source replay, plc tcp)")


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_check_config_refuses_the_bundle_with_its_line(
    line: Line, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    tamper, message = TAMPER[case]
    tamper(line.bundle, line.key)
    config = line.config()
    code, _, err = _cli(capsys, "check-config", config)
    assert code == 1
    assert f"{config}:3: bundle.path: " in err and message in err, err  # "path" is line 3 of the JSON
    assert "Fix: point bundle.path at an installed, signed bundle" in err


def test_check_config_bundle_runs_the_golden_self_test(line: Line, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "check-config", line.config(), "--bundle")
    assert code == 0, err
    assert "bundle signed-1: golden self-test passed on CPUExecutionProvider" in out


def test_check_bundle_with_config_names_the_signer_and_refuses_an_edit(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    config = line.config()
    code, out, _ = _cli(capsys, "check-bundle", str(line.bundle), "--config", config)
    assert code == 0 and f"signed by key {key_id(public_raw(line.key.public_key()))}" in out, out
    code, out, _ = _cli(capsys, "check-bundle", str(line.bundle))
    assert code == 0 and "NOT checked against trusted keys (give --config line.yaml)" in out, out
    _edit_after_signing(line.bundle, line.key)
    code, out, _ = _cli(capsys, "check-bundle", str(line.bundle), "--config", config)
    assert code == 1 and out.startswith(f"FAIL {line.bundle}: ") and "changed after it was signed" in out, out


def test_check_bundle_with_config_refuses_a_bundle_for_another_camera(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    config = line.config()
    path = Path(config)
    doc = json.loads(path.read_text())
    doc["source"] = {"type": "synthetic", "width": 320, "height": 240}
    path.write_text(json.dumps(doc))
    code, out, _ = _cli(capsys, "check-bundle", str(line.bundle), "--config", config)
    assert code == 1 and "the synthetic source delivers 320x240 px but the bundle expects 64x64 px" in out, out


def test_check_config_port_collision_and_bad_endpoint(line: Line, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    path = Path(line.config(policy="changeover"))
    doc = json.loads(path.read_text())
    (line.tmp / "token").write_text("t0ken-0123456789abcdef\n")
    doc["metrics"] = {"enabled": True, "port": port}
    doc["changeover"]["control"] = {"port": port, "token_file": str(line.tmp / "token")}
    doc["publisher"] = {"enabled": True, "endpoint": "tcp://127.0.0.1:99999"}
    path.write_text(json.dumps(doc, indent=2))
    code, _, err = _cli(capsys, "check-config", str(path))
    assert code == 1
    assert f"changeover.control.port: port {port} is also metrics.port" in err, err
    assert "publisher.endpoint: port '99999' of 'tcp://127.0.0.1:99999' is not a TCP port (1-65535)" in err


def test_check_config_refuses_a_640x480_bundle_for_a_320x240_camera(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    def trained_on_640x480(doc: dict[str, Any]) -> None:
        doc["input"]["image_width"], doc["input"]["image_height"] = 640, 480

    rewrite_manifest(line.bundle, trained_on_640x480)
    sign_bundle(line.bundle, line.key)  # a genuine, signed 640x480 bundle
    path = Path(line.config())
    doc = json.loads(path.read_text())
    doc["source"] = {"type": "genicam", "cti_path": "/opt/viky.cti", "pixel_format": "Mono8",
                     "width": 320, "height": 240}
    path.write_text(json.dumps(doc, indent=2))
    code, out, err = _cli(capsys, "check-config", str(path))
    assert code == 1 and "signed by key" in out
    width_line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if '"width"' in ln)
    assert (f"{path}:{width_line}: source.width: camera ROI 320x240 delivers 320x240 px but the bundle expects "
            "640x480 px") in err, err
    assert "Fix: set source.width/height to 640/480" in err


def test_check_config_refuses_missing_replay_path_and_unwritable_log_with_lines(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(line.config())
    doc = json.loads(path.read_text())
    doc["source"]["paths"] = [str(line.frames), str(line.tmp / "no-such-folder")]
    doc["service"]["decision_log_path"] = "/sys/decisions.jsonl"  # sysfs refuses new files, even to root
    path.write_text(json.dumps(doc, indent=2))
    code, _, err = _cli(capsys, "check-config", str(path))
    assert code == 1
    lines = path.read_text().splitlines()
    missing = next(i for i, ln in enumerate(lines, 1) if "no-such-folder" in ln)
    log_line = next(i for i, ln in enumerate(lines, 1) if "decision_log_path" in ln)
    assert f"{path}:{missing}: source.paths.1: replay path {line.tmp / 'no-such-folder'} does not exist" in err
    assert f"{path}:{log_line}: service.decision_log_path: cannot write in /sys (" in err
    assert "2 problem(s)" in err, err
    assert _cli(capsys, "check-config", "--schema-only", str(path))[0] == 0, "the schema itself is fine"


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "does not exist or is not a directory"),
    ("changed_file", "anomaly.onnx: sha256 mismatch (file changed after the bundle was made)"),
])
def test_check_config_refuses_a_missing_or_changed_bundle(
    line: Line, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    if case == "missing":
        shutil.rmtree(line.bundle)
    else:
        flip_byte(line.bundle / "anomaly.onnx")
    config = line.config()
    code, _, err = _cli(capsys, "check-config", config)
    assert code == 1 and f"{config}:3: bundle.path: bundle {line.bundle}" in err and message in err, err
