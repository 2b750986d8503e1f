"""Hot swap in the running service with real peers on loopback.

replay source at line speed -> ONNX Runtime (real graphs) -> PLC link over Modbus TCP to the PLC
simulator; swap requests from the simulator's recipe-request register, the control endpoint
(HTTP on 127.0.0.1 with a token) and the drop folder. Every test checks the decision log (one line
per part, each with its bundle id), the simulator's result blocks and its active-recipe register.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from lineguard.changeover import control
from lineguard.changeover.config import ChangeoverConfig, ControlConfig, RollbackConfig
from lineguard.changeover.signing import SignatureVerifier, public_key_text, sign_bundle
from lineguard.changeover.store import BundleStore
from lineguard.changeover.testing import (
    break_engine,
    break_golden,
    edit_thresholds_after_signing,
    flip_byte,
    make_bundle,
)
from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.engines.synthetic import synthetic_image
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import ReplaySourceConfig

A, B = "prod-a-1", "prod-b-1"
RATE = 100.0  # parts/s: a 10 ms cycle, a fast line
KINDS = ["good", "good", "bright", "faint", "dark", "good"]


@dataclass
class Rig:
    tmp: Path
    key: Ed25519PrivateKey
    store: BundleStore
    sim: PlcSimulator
    frames: Path
    n_frames: int
    token: bytes


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    key = Ed25519PrivateKey.generate()
    verifier = SignatureVerifier.from_texts([public_key_text(key)], allow_unsigned=False)
    store = BundleStore.open(tmp_path / "store")
    for bid, recipe in ((A, 1), (B, 2)):
        store.install(make_bundle(tmp_path / "src" / bid, bundle_id=bid, recipe=recipe, key=key), verifier=verifier)
    spec = store.get(A).path
    from lineguard.bundle import load_bundle

    input_spec = load_bundle(spec).manifest.input
    rng = np.random.default_rng(5)
    n = 240
    for i in range(n):
        p = tmp_path / "frames" / f"{i:04d}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), synthetic_image(KINDS[i % len(KINDS)], input_spec, rng))  # type: ignore[arg-type]
    token = b"s3cret-token-for-tests-0123456789"
    (tmp_path / "token").write_bytes(token)
    os.chmod(tmp_path / "token", 0o600)
    sim = PlcSimulator().start()
    yield Rig(tmp=tmp_path, key=key, store=store, sim=sim, frames=tmp_path / "frames", n_frames=n, token=token)
    sim.stop()


def _service(rig: Rig, **changeover: object) -> InspectionService:
    co: dict[str, object] = {
        "store_dir": rig.tmp / "store", "trusted_keys": [public_key_text(rig.key)], "preload_bundles": 0,
        "control": ControlConfig(port=0, token_file=rig.tmp / "token"), "drop_poll_ms": 100,
        "retire_after_s": 0.5,
    }
    co.update(changeover)
    cfg = LineConfig(
        bundle=BundleSection(path=rig.store.get(A).path),
        source=ReplaySourceConfig(type="replay", paths=(str(rig.frames),), rate_parts_per_s=RATE),
        plc=PlcConfig(transport=TcpTransportConfig(host=rig.sim.host, port=rig.sim.port), deadline_ms=1000.0,
                      result_buffer_size=64),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(enabled=False),
        # 16 frames = 160 ms of buffer at 100 parts/s (and 64 unacked PLC results): this 2-core box is
        # shared with other test runs; the swap's own cost is measured in scripts/bench_changeover.py
        service=ServiceSection(decision_log_path=rig.tmp / "decisions.jsonl", queue_size_frames=16),
        changeover=ChangeoverConfig(**co),  # type: ignore[arg-type]
    )
    return InspectionService.from_config(cfg, registry=CollectorRegistry())


class Running:
    """The service with its supervision loop (run_forever) on a thread, as ``lineguard run`` has it."""

    def __init__(self, service: InspectionService, token: bytes = b"") -> None:
        self.service = service
        self.token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=service.run_forever, args=(self._stop,), daemon=True)

    def __enter__(self) -> Running:
        self.service.start()
        self._thread.start()
        return self

    def wait_decided(self, n: int, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while self.service.stats.decided < n:
            assert time.monotonic() < end, f"only {self.service.stats.decided} parts decided"
            time.sleep(0.005)

    def wait_finished(self, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while not self.service.finished():
            assert time.monotonic() < end, "replay did not finish"
            time.sleep(0.02)

    def call(self, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
        ctl = self.service.changeover.control if self.service.changeover else None
        assert ctl is not None
        return control.call(ctl.cfg, self.token, method, path, body, port=ctl.port)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.service.stop()


def _log(rig: Rig) -> list[dict[str, object]]:
    return [json.loads(line) for line in (rig.tmp / "decisions.jsonl").read_text().splitlines()]


def _bundle_runs(rig: Rig) -> list[tuple[str, int]]:
    """Bundle ids in part order, run-length encoded: [(A, 120), (B, 240)] is one clean switch."""
    lines = sorted(_log(rig), key=lambda d: int(d["part_id"]))  # type: ignore[call-overload]
    runs: list[tuple[str, int]] = []
    for d in lines:
        bid = str(d["bundle_id"])
        runs = [*runs[:-1], (bid, runs[-1][1] + 1)] if runs and runs[-1][0] == bid else [*runs, (bid, 1)]
    return runs


def _assert_one_verdict_per_part(rig: Rig, service: InspectionService) -> None:
    lines = _log(rig)
    parts = [int(d["part_id"]) for d in lines]  # type: ignore[call-overload]
    assert sorted(parts) == list(range(1, rig.n_frames + 1)), "one decision-log line per part, none missing"
    by_part = rig.sim.verdicts_by_part()
    outcomes = getattr(service.plc, "outcomes", None)  # what the link did with each part, on a miss
    assert sorted(by_part) == list(range(1, rig.n_frames + 1)), ("every part has a result block at the PLC",
                                                                 sorted(by_part), outcomes)
    assert all(len(v) == 1 for v in by_part.values()), "exactly one verdict per part"
    assert service.stats.failsafe == 0, ("no part lost its judgement to the swap", service.stats)


def _active_recipe(rig: Rig) -> int:
    return rig.sim.register(rig.sim.cfg.active_recipe.address)


def _swaps(service: InspectionService, source: str, result: str) -> float:
    return service.registry.get_sample_value(
        "lineguard_changeover_swaps_total", {"source": source, "result": result}
    ) or 0.0


@pytest.mark.parametrize("preload", [0, 2], ids=["cold", "preloaded"])
def test_plc_recipe_request_swaps_between_two_parts(rig: Rig, preload: int) -> None:
    service = _service(rig, preload_bundles=preload)
    with Running(service) as line:
        assert rig.sim.wait_until(lambda: _active_recipe(rig) == 1, 5)
        # start() prepared recipe 2's bundle before the first part: the swap is one reference
        assert (B in service.changeover.status()["preloaded"]) == bool(preload)  # type: ignore[union-attr]
        line.wait_decided(100)
        rig.sim.set_recipe_request(2)
        assert rig.sim.wait_until(lambda: _active_recipe(rig) == 2, 10), "the PLC sees the new active recipe"
        line.wait_finished()
        status = service.changeover.status()  # type: ignore[union-attr]
    _assert_one_verdict_per_part(rig, service)
    runs = _bundle_runs(rig)
    assert [bid for bid, _ in runs] == [A, B], f"one clean switch from A to B in part order, got {runs}"
    assert runs[0][1] >= 100 and runs[1][1] > 0
    assert _swaps(service, "plc", "ok") == 1
    last = status["last_swaps"][-1]
    assert last["bundle_id"] == B and last["prepared"] == ("preloaded" if preload else "cold")
    assert status["first_part_ms"] is not None and status["first_part_ms"] > 0
    assert rig.store.active() == B
    info = service.registry.get_sample_value("lineguard_bundle_info", {"bundle_id": B, "product": "synthetic",
                                                                       "recipe": "2"})
    assert info == 1.0, "the metrics show the switch"


def _tamper_signature(rig: Rig) -> str:
    sign_bundle(rig.store.get(B).path, Ed25519PrivateKey.generate())  # a key nobody trusts
    return "signature"


def _tamper_thresholds(rig: Rig) -> str:
    edit_thresholds_after_signing(rig.store.get(B).path)  # hashes and golden would pass
    return "signature"


def _tamper_byte(rig: Rig) -> str:
    flip_byte(rig.store.get(B).path / "golden" / "02_bright.png", 40)
    return "verification"


def _tamper_golden(rig: Rig) -> str:
    break_golden(rig.store.get(B).path, rig.key)
    return "golden"


def _tamper_engine(rig: Rig) -> str:
    break_engine(rig.store.get(B).path, rig.key)
    return "engine"


@pytest.mark.parametrize("tamper", [_tamper_signature, _tamper_thresholds, _tamper_byte, _tamper_golden,
                                    _tamper_engine],
                         ids=["bad_signature", "edited_after_signing", "changed_byte", "failing_golden",
                              "engine_build_error"])
def test_failed_swap_keeps_the_old_bundle_and_says_why(rig: Rig, tamper: object) -> None:
    assert callable(tamper)
    expected = tamper(rig)
    service = _service(rig)
    with Running(service, rig.token) as line:
        line.wait_decided(60)
        code, doc = line.call("POST", "/swap", {"recipe": 2, "wait_s": 30})
        assert code == 409, doc
        assert doc["result"] == expected and doc["bundle_id"] == B, doc
        code, status = line.call("GET", "/status")
        assert code == 200 and status["active"]["bundle_id"] == A  # type: ignore[index]
        assert status["last_swaps"][-1]["result"] == expected  # type: ignore[index]
        line.wait_finished()
    _assert_one_verdict_per_part(rig, service)
    assert _bundle_runs(rig) == [(A, rig.n_frames)], "every part judged by the old bundle"
    assert _active_recipe(rig) == 1
    assert _swaps(service, "control", expected) == 1 and _swaps(service, "control", "ok") == 0
    assert rig.store.active() == A


def test_drop_folder_installs_and_swaps_then_maps_the_recipe(rig: Rig) -> None:
    drop = rig.tmp / "drop"
    drop.mkdir()
    service = _service(rig, drop_dir=drop)
    with Running(service) as line:
        line.wait_decided(60)
        make_bundle(drop / "prod-c-1", bundle_id="prod-c-1", recipe=3, key=rig.key)
        (drop / "prod-c-1.ready").touch()  # the marker says the copy is complete
        assert rig.sim.wait_until(lambda: _active_recipe(rig) == 3, 15)
        line.wait_finished()
    _assert_one_verdict_per_part(rig, service)
    assert [bid for bid, _ in _bundle_runs(rig)] == [A, "prod-c-1"]
    assert (drop / "prod-c-1.done").is_file() and not (drop / "prod-c-1.ready").exists()
    assert rig.store.recipes()[3] == "prod-c-1" and _swaps(service, "drop", "ok") == 1


def test_unsigned_drop_is_refused_and_not_installed(rig: Rig) -> None:
    drop = rig.tmp / "drop"
    drop.mkdir()
    service = _service(rig, drop_dir=drop)
    with Running(service) as line:
        make_bundle(drop / "prod-d-1", bundle_id="prod-d-1", recipe=4, key=None)
        (drop / "prod-d-1.ready").touch()
        assert rig.sim.wait_until(lambda: (drop / "prod-d-1.failed").exists(), 15)
        line.wait_finished()
    assert "signature" in (drop / "prod-d-1.failed").read_text()
    assert "prod-d-1" not in [b.bundle_id for b in rig.store.list()]
    assert _bundle_runs(rig) == [(A, rig.n_frames)] and _active_recipe(rig) == 1


def test_rollback_when_the_new_bundle_rejects_too_much(rig: Rig) -> None:
    # same graphs, thresholds so low that every part is a reject: golden test passes, the line would not
    make_bundle(rig.tmp / "src" / "prod-b-2", bundle_id="prod-b-2", recipe=2, key=rig.key, lower=0.001, upper=0.002)
    rig.store.install(rig.tmp / "src" / "prod-b-2", verifier=SignatureVerifier.from_texts(
        [public_key_text(rig.key)], allow_unsigned=False))
    window = RollbackConfig(watch_parts=200, min_parts=20, reject_rate_max_fraction=0.6)
    service = _service(rig, rollback=window, preload_bundles=2)
    with Running(service) as line:
        line.wait_decided(40)
        rig.sim.set_recipe_request(2)
        assert rig.sim.wait_until(lambda: _active_recipe(rig) == 2, 10)
        assert rig.sim.wait_until(lambda: _active_recipe(rig) == 1, 10), "rolled back: recipe 1 again"
        line.wait_finished()
        status = service.changeover.status()  # type: ignore[union-attr]
    _assert_one_verdict_per_part(rig, service)
    runs = _bundle_runs(rig)
    assert [bid for bid, _ in runs] == [A, "prod-b-2", A], runs
    assert runs[1][1] >= 20, "the window is judged only after min_parts"
    reason = {"reason": "reject_rate_high"}
    assert service.registry.get_sample_value("lineguard_changeover_rollbacks_total", reason) == 1.0
    assert status["last_swaps"][-1]["source"] == "rollback" and status["active"]["bundle_id"] == A


def test_preloaded_bundle_edited_on_disk_is_refused_at_the_swap(rig: Rig) -> None:
    service = _service(rig, preload_bundles=2)
    with Running(service, rig.token) as line:
        assert B in service.changeover.status()["preloaded"]  # type: ignore[union-attr]
        line.wait_decided(40)
        edit_thresholds_after_signing(rig.store.get(B).path)  # after it was verified and prepared
        code, doc = line.call("POST", "/swap", {"recipe": 2, "wait_s": 30})
        assert code == 409 and doc["result"] == "signature", doc
        assert "manifest.json was changed after it was signed" in str(doc["message"])
        assert B not in service.changeover.status()["preloaded"]  # type: ignore[union-attr]
        line.wait_finished()
    _assert_one_verdict_per_part(rig, service)
    assert _bundle_runs(rig) == [(A, rig.n_frames)] and _active_recipe(rig) == 1
    assert _swaps(service, "control", "signature") == 1


def test_rollback_refuses_a_previous_bundle_edited_on_disk(rig: Rig) -> None:
    make_bundle(rig.tmp / "src" / "prod-b-2", bundle_id="prod-b-2", recipe=2, key=rig.key, lower=0.001, upper=0.002)
    rig.store.install(rig.tmp / "src" / "prod-b-2", verifier=SignatureVerifier.from_texts(
        [public_key_text(rig.key)], allow_unsigned=False))
    window = RollbackConfig(watch_parts=200, min_parts=20, reject_rate_max_fraction=0.6)
    service = _service(rig, rollback=window, preload_bundles=2)
    assert service.changeover is not None
    with Running(service) as line:
        line.wait_decided(40)
        edit_thresholds_after_signing(rig.store.get(A).path)  # the rollback target, while it judges parts
        rig.sim.set_recipe_request(2)
        assert rig.sim.wait_until(lambda: _active_recipe(rig) == 2, 10)
        assert rig.sim.wait_until(lambda: _swaps(service, "rollback", "signature") == 1, 10)
        line.wait_finished()
        status = service.changeover.status()
    _assert_one_verdict_per_part(rig, service)
    assert [bid for bid, _ in _bundle_runs(rig)] == [A, "prod-b-2"], "the edited bundle never judged again"
    assert service.registry.get_sample_value("lineguard_changeover_rollbacks_total",
                                             {"reason": "reject_rate_high"}) == 1.0
    last = status["last_swaps"][-1]
    assert last["source"] == "rollback" and last["ok"] is False and last["result"] == "signature", last
    assert status["active"]["bundle_id"] == "prod-b-2" and _active_recipe(rig) == 2
    assert _swaps(service, "rollback", "ok") == 0


def test_shadow_candidate_judges_live_frames_without_touching_the_plc(rig: Rig) -> None:
    make_bundle(rig.tmp / "src" / "strict", bundle_id="strict", recipe=9, key=rig.key, lower=0.001, upper=0.002)
    rig.store.install(rig.tmp / "src" / "strict", verifier=SignatureVerifier.from_texts(
        [public_key_text(rig.key)], allow_unsigned=False), map_recipe=False)
    service = _service(rig)
    with Running(service, rig.token) as line:
        code, doc = line.call("POST", "/shadow", {"bundle": "strict"})
        assert code == 200, doc
        line.wait_finished()
        code, status = line.call("GET", "/status")
        code_stop, stopped = line.call("POST", "/shadow", {"stop": True})
    assert code == 200 and code_stop == 200
    assert stopped["stopped"]["state"] == "stopped"  # type: ignore[index]
    report = status["shadow"]
    assert isinstance(report, dict) and report["candidate_id"] == "strict" and report["state"] == "running"
    assert report["judged"] > 0 and report["judged"] + report["dropped"] <= rig.n_frames
    # the strict candidate rejects good parts the active bundle accepts: disagreement is visible
    assert report["confusion"].get("accept->reject", 0) > 0 and report["agreement"] < 1.0
    _assert_one_verdict_per_part(rig, service)
    assert _bundle_runs(rig) == [(A, rig.n_frames)], "the candidate's verdicts never reach the PLC or the log"


def test_control_endpoint_refuses_a_wrong_token(rig: Rig) -> None:
    service = _service(rig)
    with Running(service, b"wrong-token-wrong-token") as line:
        code, _ = line.call("GET", "/status")
        line.token = rig.token
        code_ok, status = line.call("GET", "/status")
        code_bad, _ = line.call("POST", "/swap", {"recipe": 2, "bundle": B})
        line.wait_finished()
    assert code == 401 and code_ok == 200 and code_bad == 400
    assert status["active"]["bundle_id"] == A  # type: ignore[index]
