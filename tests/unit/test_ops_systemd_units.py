"""The systemd units carry the hardening and restart policy docs/operations.md promises, pass
`systemd-analyze verify`, and their `systemd-analyze security` exposure is the one docs record.

systemd-analyze runs offline against a throw-away root (no running systemd needed); the checks
that need it skip with the reason when it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
DROPINS = sorted((UNITS / "lineguard.service.d").glob("*.conf"))
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")


def directives(path: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file (keys repeat in systemd, so values are lists)."""
    out: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", ["lineguard.service", "lineguard-sink.service", "lineguard-sink-upload.service"])
def test_hardening_and_restart_budget(unit: str) -> None:
    d = directives(UNITS / unit)
    oneshot = directives(UNITS / unit).get("Type") == ["oneshot"]  # a timer job: no restart loop
    expect = {
        **({} if oneshot else {"Restart": "on-failure"}),
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "PrivateDevices": "yes", "DevicePolicy": "closed", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "User": "lineguard", "ProtectHome": "yes", "RestrictSUIDSGID": "yes",
    }
    for key, value in expect.items():
        assert d.get(key) == [value], f"{unit}: {key}={d.get(key)}, want {value!r}"
    if not oneshot:
        assert int(d["StartLimitBurst"][0]) >= 1 and int(d["StartLimitIntervalSec"][0]) >= 60
    families = set(d["RestrictAddressFamilies"][0].split())
    assert families <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}, families
    # writable: only the service's own state (bundles, data); nothing under /etc, /opt, /usr
    assert all(p.startswith("/var/lib/lineguard") for p in d["ReadWritePaths"][0].split())


def test_edge_unit_is_notify_with_a_watchdog_above_the_stall_budget() -> None:
    from lineguard.config import ServiceSection

    d = directives(UNITS / "lineguard.service")
    assert d["Type"] == ["notify"]
    watchdog_s = float(d["WatchdogSec"][0])
    default_stall_s = ServiceSection().stall_budget_ms / 1000
    # the service stops pinging after stall_budget; systemd must not kill it before that
    assert watchdog_s > default_stall_s, (watchdog_s, default_stall_s)
    assert "lineguard run --config" in d["ExecStart"][0]


def test_dropins_only_add_devices_not_privileges() -> None:
    assert {p.name for p in DROPINS} == {"usb3-camera.conf", "nvidia-gpu.conf", "jetson-gpu.conf"}
    for path in DROPINS:
        d = directives(path)
        allowed = {"BindPaths", "DeviceAllow", "MemoryDenyWriteExecute", "MemoryMax"}
        assert set(d) <= allowed, f"{path.name} changes {set(d) - allowed}"
        assert all(v.endswith(" rw") for v in d["DeviceAllow"]), d["DeviceAllow"]


def _fake_root(tmp_path: Path, dropin: Path | None) -> Path:
    """A root with the units, a stub ExecStart binary and the distribution's targets."""
    root = tmp_path / "root"
    (root / "opt/lineguard/venv/bin").mkdir(parents=True)
    stub = root / "opt/lineguard/venv/bin/lineguard"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]:
        shutil.copy(unit, system / unit.name)
    if dropin is not None:
        (system / "lineguard.service.d").mkdir()
        shutil.copy(dropin, system / "lineguard.service.d" / dropin.name)
    for lib in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if lib.is_dir():  # targets and slices are all verify needs to resolve dependencies
            dest = root / "usr/lib/systemd/system"
            dest.mkdir(parents=True)
            for src in [*lib.glob("*.target"), *lib.glob("*.slice")]:
                shutil.copy(src, dest / src.name, follow_symlinks=False)
            break
    return root


def _exposure(root: Path, unit: str) -> float:
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "security", "--offline=yes", f"--root={root}", unit],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout[-2000:] + out.stderr
    return float(m.group(1))


@needs_analyze
@pytest.mark.parametrize("dropin", [None, *DROPINS], ids=lambda p: p.name if p else "base")
def test_systemd_analyze_verify(tmp_path: Path, dropin: Path | None) -> None:
    assert ANALYZE is not None
    root = _fake_root(tmp_path, dropin)
    units = [str(root / "etc/systemd/system" / u.name) for u in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]]
    out = subprocess.run([ANALYZE, "verify", "--man=no", f"--root={root}", *units],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@needs_analyze
def test_exposure_scores_match_the_docs(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, None)
    scores = {u.name: _exposure(root, u.name) for u in UNITS.glob("*.service")}
    doc = (ROOT / "docs/security.md").read_text()
    for unit, score in scores.items():
        assert score <= 2.0, f"{unit} exposure {score} (was <= 2.0: a hardening line went missing?)"
        assert re.search(rf"`{re.escape(unit)}`[^\n]*\*\*{score:.1f}\*\*", doc), (
            f"docs/security.md must record the measured exposure of {unit}: {score:.1f}")
