"""The install scripts lay out a box correctly (run for real into a staging root with --root and
--skip-venv: no users, no units started, no pip), keep the plant's config on reinstall, switch
releases atomically, and are shellcheck-clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "deploy/install-ipc.sh", ROOT / "deploy/install-jetson.sh", ROOT / "deploy/lib/common.sh",
           ROOT / "deploy/switch-release.sh", ROOT / "scripts/ci-system-deps.sh"]


def install(script: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "deploy" / script), "--root", str(root), "--skip-venv", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax_and_strict_mode(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if script.name != "common.sh":  # sourced by the others, which set the mode
        assert "set -euo pipefail" in script.read_text() or "set -uo pipefail" in script.read_text()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (scripts/ci-system-deps.sh)")
def test_shellcheck_clean() -> None:
    out = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT / "deploy")
    assert out.returncode == 0, out.stdout


def test_ipc_gpu_usb3_with_sink_layout(tmp_path: Path) -> None:
    out = install("install-ipc.sh", tmp_path, "--gpu", "--camera", "usb3", "--with-sink", "--version", "1.0.0")
    assert out.returncode == 0, out.stderr
    system = tmp_path / "etc/systemd/system"
    assert {p.name for p in system.glob("*")} >= {"lineguard.service", "lineguard-sink.service",
                                                  "lineguard-sink-upload.service", "lineguard-sink-upload.timer"}
    assert {p.name for p in (system / "lineguard.service.d").iterdir()} == {"nvidia-gpu.conf", "usb3-camera.conf"}
    assert (tmp_path / "etc/udev/rules.d/99-lineguard-usb3vision.rules").is_file()
    assert os.readlink(tmp_path / "opt/lineguard/venv") == "releases/1.0.0/venv"
    cfg = tmp_path / "etc/lineguard/line.yaml"
    assert cfg.read_text() == (ROOT / "deploy/line.example.yaml").read_text()
    assert oct(cfg.stat().st_mode & 0o777) == "0o640", "the config may hold addresses: not world-readable"
    for f in ("sink.env", "sink-upload.env"):
        assert (tmp_path / "etc/lineguard" / f).is_file()
    assert "not creating users or starting units" in out.stderr


def test_reinstall_keeps_the_config_and_the_active_release(tmp_path: Path) -> None:
    assert install("install-ipc.sh", tmp_path, "--version", "1.0.0").returncode == 0
    cfg = tmp_path / "etc/lineguard/line.yaml"
    cfg.write_text("# the plant's own config\n")
    out = install("install-ipc.sh", tmp_path, "--version", "1.1.0")
    assert out.returncode == 0, out.stderr
    assert cfg.read_text() == "# the plant's own config\n"
    # a second release is installed beside the first; switch-release.sh switches (with health check)
    assert os.readlink(tmp_path / "opt/lineguard/venv") == "releases/1.0.0/venv"
    assert (tmp_path / "opt/lineguard/releases/1.1.0").is_dir()
    assert "switch with: deploy/switch-release.sh 1.1.0" in out.stderr
    assert not (tmp_path / "etc/systemd/system/lineguard.service.d/nvidia-gpu.conf").exists()


def test_jetson_layout_and_bad_options(tmp_path: Path) -> None:
    out = install("install-jetson.sh", tmp_path, "--version", "2.0.0")
    assert out.returncode == 0, out.stderr
    dropins = {p.name for p in (tmp_path / "etc/systemd/system/lineguard.service.d").iterdir()}
    assert dropins == {"jetson-gpu.conf"}
    bad = install("install-jetson.sh", tmp_path / "x", "--camera", "firewire")
    assert bad.returncode != 0 and "--camera must be gige or usb3" in bad.stderr
    unknown = install("install-ipc.sh", tmp_path / "y", "--frobnicate")
    assert unknown.returncode != 0 and "unknown option --frobnicate" in unknown.stderr
