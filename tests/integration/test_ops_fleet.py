"""The fleet playbook (deploy/fleet/) passes `ansible-playbook --syntax-check`, and the line config
its template renders for every example host is one `lineguard check-config` accepts.

Ansible is not a project dependency: the test looks for `ansible-playbook` on PATH, then in the
throw-away venv scripts/ci-system-deps.sh makes (/opt/lineguard-ci/ansible), and skips otherwise.
Nothing connects to a host: the render play runs with connection=local.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "deploy" / "fleet"
CI_VENV = Path("/opt/lineguard-ci/ansible/bin/ansible-playbook")
PLAYBOOK = shutil.which("ansible-playbook") or (str(CI_VENV) if CI_VENV.is_file() else None)
pytestmark = [pytest.mark.skipif(PLAYBOOK is None, reason="ansible-playbook not installed "
                                 "(scripts/ci-system-deps.sh puts ansible-core in /opt/lineguard-ci/ansible)"),
              pytest.mark.timeout(120)]

# the role's own render entry point, so role defaults keep their real (lowest) precedence
RENDER = """
- hosts: lineguard_edge
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: lineguard_edge
        tasks_from: render
"""


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
            "ANSIBLE_HOME": str(tmp / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_ROLES_PATH": str(FLEET / "roles")}


def test_playbook_syntax(tmp_path: Path) -> None:
    assert PLAYBOOK is not None
    out = subprocess.run([PLAYBOOK, "--syntax-check", "-i", "inventory.example.yml", "site.yml"], cwd=FLEET,
                         capture_output=True, text=True, env=_env(tmp_path), timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_line_configs_are_valid(tmp_path: Path) -> None:
    assert PLAYBOOK is not None
    play = tmp_path / "render.yml"
    play.write_text(RENDER)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = subprocess.run([PLAYBOOK, "-i", str(FLEET / "inventory.example.yml"), str(play), "-e", f"out_dir={out_dir}"],
                         capture_output=True, text=True, env=_env(tmp_path), timeout=90)
    assert out.returncode == 0, out.stdout[-3000:]
    rendered = sorted(out_dir.glob("*.yaml"))
    assert [p.stem for p in rendered] == ["press-3-station-2", "press-3-station-3"]
    for path in rendered:
        check = subprocess.run([sys.executable, "-m", "lineguard.cli", "check-config", "--schema-only", str(path)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, f"{path.name}: {check.stdout}{check.stderr}\n{path.read_text()}"
    jetson = (out_dir / "press-3-station-3.yaml").read_text()
    assert "backend: tensorrt" in jetson and "cache_dir: /var/lib/lineguard/trt-cache" in jetson
    assert "host: 192.0.2.32" in jetson, "inventory host vars win over role defaults"
    assert "backend: onnxruntime" in (out_dir / "press-3-station-2.yaml").read_text()
