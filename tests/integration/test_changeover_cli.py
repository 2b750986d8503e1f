"""The changeover commands as an operator runs them: sign, install, list/activate/remove, swap.

``lineguard swap`` talks over HTTP (127.0.0.1, token) to a service running in this process, built
from the same YAML file the other commands read.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from lineguard.bundle import load_bundle
from lineguard.changeover.signing import load_private_key
from lineguard.changeover.store import BundleStore
from lineguard.changeover.testing import break_golden, make_bundle
from lineguard.cli import main
from lineguard.config import load_config
from lineguard.engines.synthetic import synthetic_image
from lineguard.plc.sim import free_port
from lineguard.service import InspectionService


def _lineguard(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.fixture()
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path | str]:
    code, out = _lineguard(capsys, "sign-bundle", "--generate-key", str(tmp_path / "release.pem"))
    assert code == 0
    public = out.strip().splitlines()[-1].strip().removeprefix("- ")
    (tmp_path / "token").write_text("operator-token-0123456789\n")
    os.chmod(tmp_path / "token", 0o600)
    frames = tmp_path / "frames"
    frames.mkdir()
    a = make_bundle(tmp_path / "src" / "a-1", bundle_id="a-1", recipe=1, key=None)
    rng = np.random.default_rng(1)
    for i in range(12):
        cv2.imwrite(str(frames / f"{i:02d}.png"), synthetic_image("good", load_bundle(a).manifest.input, rng))
    cfg = {
        "bundle": {"path": str(tmp_path / "store" / "bundles" / "a-1")},
        "source": {"type": "replay", "paths": [str(frames)], "rate_parts_per_s": 50.0, "loop": True},
        "publisher": {"enabled": False}, "metrics": {"enabled": False},
        "changeover": {"store_dir": str(tmp_path / "store"), "trusted_keys": [public],
                       "control": {"port": free_port(), "token_file": str(tmp_path / "token")}},
    }
    (tmp_path / "line.yaml").write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return {"tmp": tmp_path, "config": str(tmp_path / "line.yaml"), "key": str(tmp_path / "release.pem")}


def test_sign_install_list_activate_remove(site: dict[str, Path | str], capsys: pytest.CaptureFixture[str]) -> None:
    tmp, config, key = Path(site["tmp"]), str(site["config"]), str(site["key"])
    src = tmp / "src"
    make_bundle(src / "a-2", bundle_id="a-2", recipe=1, key=None)
    code, out = _lineguard(capsys, "install-bundle", str(src / "a-2"), "--config", config)
    assert code == 1, "unsigned bundles are refused by default"
    for bid in ("a-1", "a-2"):
        assert _lineguard(capsys, "sign-bundle", str(src / bid), "--key", key)[0] == 0
        code, out = _lineguard(capsys, "install-bundle", str(src / bid), "--config", config)
        assert code == 0 and "'golden': 'passed'" in out and "CPUExecutionProvider" in out, out
    bad = make_bundle(src / "a-3", bundle_id="a-3", recipe=1, key=None)
    break_golden(bad, load_private_key(Path(key)))
    code, out = _lineguard(capsys, "install-bundle", str(bad), "--config", config)
    assert code == 1, "the golden self-test runs at install: a bundle failing it never enters the store"
    store = BundleStore.open(tmp / "store")
    assert [e.bundle_id for e in store.list()] == ["a-1", "a-2"] and store.recipes() == {1: "a-2"}
    code, out = _lineguard(capsys, "bundles", "list", "--config", config)
    assert code == 0 and "a-1" in out and "a-2" in out
    assert _lineguard(capsys, "bundles", "activate", "a-1", "--config", config)[0] == 0
    assert store.recipes() == {1: "a-1"}
    assert _lineguard(capsys, "bundles", "remove", "a-1", "--config", config)[0] == 1  # still mapped
    assert _lineguard(capsys, "bundles", "remove", "a-2", "--config", config)[0] == 0
    assert [e.bundle_id for e in store.list()] == ["a-1"]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_swap_command_switches_the_running_service(
    site: dict[str, Path | str], capsys: pytest.CaptureFixture[str], transport: str
) -> None:
    tmp, config, key = Path(site["tmp"]), str(site["config"]), str(site["key"])
    if transport == "unix":
        doc = json.loads(Path(config).read_text())
        doc["changeover"]["control"]["unix_socket"] = str(tmp / "control.sock")
        Path(config).write_text(json.dumps(doc))
    for bid, recipe in (("a-1", 1), ("b-1", 2)):
        if not (tmp / "src" / bid).exists():
            make_bundle(tmp / "src" / bid, bundle_id=bid, recipe=recipe, key=None)
        assert _lineguard(capsys, "sign-bundle", str(tmp / "src" / bid), "--key", key)[0] == 0
        assert _lineguard(capsys, "install-bundle", str(tmp / "src" / bid), "--config", config, "--no-prepare")[0] == 0
    service = InspectionService.from_config(load_config(config), registry=CollectorRegistry())
    stop = threading.Event()
    service.start()
    supervisor = threading.Thread(target=service.run_forever, args=(stop,), daemon=True)
    supervisor.start()
    try:
        code, out = _lineguard(capsys, "swap", "--config", config, "--recipe", "2")
        assert code == 0 and json.loads(out)["bundle_id"] == "b-1", out
        code, out = _lineguard(capsys, "swap", "--config", config, "--bundle", "nope")
        assert code == 1 and json.loads(out)["result"] == "not_found"
        code, out = _lineguard(capsys, "swap", "--config", config, "--status")
        assert code == 0 and json.loads(out)["active"]["bundle_id"] == "b-1"
        if transport == "unix":
            assert (tmp / "control.sock").stat().st_mode & 0o777 == 0o600
    finally:
        stop.set()
        supervisor.join(5)
        service.stop()
    assert service.bundle.bundle_id == "b-1"
