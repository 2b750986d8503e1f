"""``check-config``'s on-box checks that need no bundle: each refusal, its field and its fix.

(Bundle signature, hashes and the CLI's YAML lines: tests/integration/test_signed_bundle_start.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from lineguard.changeover.signing import public_key_text
from lineguard.config import LineConfig
from lineguard.preflight import (
    Preflight,
    check_directories,
    check_files,
    check_replay_paths,
    endpoint_problems,
    source_format_problems,
    writable_problem,
    zmq_endpoint_problem,
)
from lineguard.preprocess import InputSpec

SPEC_640 = InputSpec(channels=1, dtype="uint8", max_value=255, image_width=640, image_height=480,
                     input_width=64, input_height=64)
KEY = public_key_text(Ed25519PrivateKey.generate())


def _cfg(source: dict[str, Any] | None = None, **sections: Any) -> LineConfig:
    doc: dict[str, Any] = {"bundle": {"path": "/nonexistent/bundle"},
                           "source": source or {"type": "replay", "paths": ["/nonexistent/frames"]}}
    doc.update(sections)
    return LineConfig.model_validate(doc)


def _genicam(**kw: Any) -> dict[str, Any]:
    return {"type": "genicam", "cti_path": "/opt/viky.cti", **kw}


# ------------------------------------------------------------------------------ source vs bundle
def test_camera_roi_smaller_than_the_bundle_is_refused() -> None:
    [(loc, msg)] = source_format_problems(_cfg(_genicam(width=320, height=240)), SPEC_640)
    assert loc == ("source", "width")
    assert msg.startswith("camera ROI 320x240 delivers 320x240 px but the bundle expects 640x480 px")
    assert "Fix: set source.width/height to 640/480, or use a bundle trained on 320x240 frames" in msg


def test_camera_pixel_format_is_checked_against_channels_and_bit_depth() -> None:
    [(loc, msg)] = source_format_problems(_cfg(_genicam(pixel_format="RGB8")), SPEC_640)
    assert loc == ("source", "pixel_format")
    assert "pixel format RGB8 delivers RGB uint8 (max 255) but the bundle was trained on mono uint8 (max 255)" in msg
    [(_, msg)] = source_format_problems(_cfg(_genicam(pixel_format="Mono12")), SPEC_640)
    assert "delivers mono uint16 (max 4095)" in msg
    assert source_format_problems(_cfg(_genicam(width=640, height=480, pixel_format="Mono8")), SPEC_640) == []
    assert source_format_problems(_cfg(_genicam()), SPEC_640) == [], "unset ROI/format: only the camera knows"


def test_synthetic_source_size_and_depth() -> None:
    problems = source_format_problems(_cfg({"type": "synthetic", "width": 320, "height": 240, "bit_depth": 12}),
                                      SPEC_640)
    assert [loc for loc, _ in problems] == [("source", "width"), ("source", "bit_depth")]
    assert "delivers mono uint16 (max 4095) but the bundle was trained on mono uint8 (max 255)" in problems[1][1]


def test_first_replay_image_is_checked(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((240, 320), np.uint8))
    [(loc, msg)] = source_format_problems(_cfg({"type": "replay", "paths": [str(tmp_path)]}), SPEC_640)
    assert loc == ("source", "paths")
    assert "frame is 320x240 px but the bundle expects 640x480: check camera ROI / binning" in msg


# ------------------------------------------------------------------------------ paths and files
def test_missing_replay_path_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = Preflight()
    check_replay_paths(_cfg({"type": "replay", "paths": [str(tmp_path / "nope"), str(tmp_path / "empty")]}), out)
    assert [(p.dotted, p.message.split(".")[0]) for p in out.problems] == [
        ("source.paths.0", f"replay path {tmp_path / 'nope'} does not exist"),
        ("source.paths.1", f"replay folder {tmp_path / 'empty'} holds no image with an extension in source"),
    ]


def test_missing_tls_files_and_token_are_named(tmp_path: Path) -> None:
    tls = {"type": "tls", "host": "10.0.0.2", "ca_file": str(tmp_path / "ca.pem"),
           "cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
    (tmp_path / "ca.pem").write_text("x")
    cfg = _cfg(plc={"transport": tls}, changeover={
        "store_dir": str(tmp_path / "store"), "trusted_keys": [KEY],
        "control": {"token_file": str(tmp_path / "token")}})
    out = Preflight()
    check_files(cfg, out)
    assert [p.dotted for p in out.problems] == ["plc.transport.cert_file", "plc.transport.key_file",
                                                 "changeover.control.token_file"]
    assert out.problems[2].message == (f"control token file {tmp_path / 'token'} does not exist. Fix: create it "
                                       "or correct the path")


# ------------------------------------------------------------------------------ directories
def test_unwritable_decision_log_directory() -> None:
    # /sys refuses new files even to root, so this holds on a developer box and in CI alike
    why = writable_problem(Path("/sys"), need_bytes=0)
    assert why is not None and why.startswith("cannot write in /sys (")
    assert why.endswith("Fix: make it writable for the service user, or choose another path")


def test_directory_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    out = Preflight()
    check_directories(_cfg(service={"decision_log_path": str(tmp_path / "f" / "log" / "d.jsonl")}), out,
                      bundle=None, min_free_bytes=0)
    [p] = out.problems
    assert p.dotted == "service.decision_log_path"
    assert f"{tmp_path / 'f'} is not a directory, so {tmp_path / 'f' / 'log'} cannot be created" in p.message


def test_not_enough_free_space_is_refused(tmp_path: Path) -> None:
    out = Preflight()
    cfg = _cfg(service={"decision_log_path": str(tmp_path / "new" / "d.jsonl")},
               changeover={"store_dir": str(tmp_path / "store"), "trusted_keys": [KEY]})
    check_directories(cfg, out, bundle=None, min_free_bytes=1 << 60)  # an exabyte: no disk has it
    assert [p.dotted for p in out.problems] == ["service.decision_log_path", "changeover.store_dir"]
    assert "MiB free on the filesystem of" in out.problems[0].message
    assert out.problems[0].message.endswith("Fix: free space or choose another filesystem")
    out = Preflight()
    check_directories(cfg, out, bundle=None, min_free_bytes=1)
    assert out.problems == [] and sorted(p.name for p in tmp_path.iterdir()) == [], "no probe left behind"


# ------------------------------------------------------------------------------ endpoints
@pytest.mark.parametrize(("endpoint", "why"), [
    ("tcp://127.0.0.1:99999", "port '99999' of 'tcp://127.0.0.1:99999' is not a TCP port (1-65535)"),
    ("tcp://127.0.0.1:0", "port '0' of 'tcp://127.0.0.1:0' is not a TCP port (1-65535)"),
    ("tcp://sink:http", "port 'http' of 'tcp://sink:http' is not a TCP port (1-65535)"),
    ("tcp://127.0.0.1", "'tcp://127.0.0.1' is not tcp://HOST:PORT or ipc://PATH (e.g. tcp://10.0.0.5:5560)"),
    ("udp://1.2.3.4:5", "'udp://1.2.3.4:5' is not tcp://HOST:PORT or ipc://PATH (e.g. tcp://10.0.0.5:5560)"),
    ("tcp://*:5560", "'tcp://*:5560': '*' is for binding; the publisher connects to the sink's address"),
])
def test_bad_publisher_endpoints(endpoint: str, why: str) -> None:
    assert zmq_endpoint_problem(endpoint) == why
    [(loc, msg)] = endpoint_problems(_cfg(publisher={"endpoint": endpoint}))
    assert loc == ("publisher", "endpoint") and msg.startswith(why) and "Fix: set publisher.endpoint" in msg


@pytest.mark.parametrize("endpoint", ["tcp://10.0.0.5:5560", "tcp://[::1]:5560", "tcp://sink.plant:1",
                                      "ipc:///run/lineguard/sink"])
def test_good_publisher_endpoints(endpoint: str) -> None:
    assert zmq_endpoint_problem(endpoint) is None


def test_metrics_and_control_on_one_port_collide(tmp_path: Path) -> None:
    co = {"store_dir": str(tmp_path), "trusted_keys": [KEY],
          "control": {"port": 9200, "token_file": str(tmp_path / "t")}}
    [(loc, msg)] = endpoint_problems(_cfg(metrics={"host": "0.0.0.0", "port": 9200}, changeover=co))
    assert loc == ("changeover", "control", "port")
    assert msg == ("port 9200 is also metrics.port: the second bind would fail at start. Fix: give each listener "
                   "its own port")
    assert endpoint_problems(_cfg(metrics={"port": 9201}, changeover=co)) == []


# ------------------------------------------------------------------------------ signature policy
def test_signature_policy_follows_the_section_that_sets_it(tmp_path: Path) -> None:
    assert _cfg().signature_policy() == ([], True, "bundle.trusted_keys"), "older configs: permissive, warned"
    keyed = LineConfig.model_validate({"bundle": {"path": "/b", "trusted_keys": [KEY]},
                                       "source": {"type": "synthetic"}})
    assert keyed.signature_policy() == ([KEY], False, "bundle.trusted_keys"), "listing keys enforces them"
    co = _cfg(changeover={"store_dir": str(tmp_path), "trusted_keys": [KEY]})
    assert co.signature_policy() == ([KEY], False, "changeover.trusted_keys")


def test_contradictory_or_empty_signature_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="keep them under changeover only"):
        LineConfig.model_validate({"bundle": {"path": "/b", "allow_unsigned": False}, "source": {"type": "synthetic"},
                                   "changeover": {"store_dir": str(tmp_path), "trusted_keys": [KEY]}})
    with pytest.raises(ValidationError, match=r"bundle\.trusted_keys is empty: every bundle would be refused"):
        LineConfig.model_validate({"bundle": {"path": "/b", "allow_unsigned": False}, "source": {"type": "synthetic"}})
    with pytest.raises(ValidationError, match="is not base64"):
        LineConfig.model_validate({"bundle": {"path": "/b", "trusted_keys": ["not a key!"]},
                                   "source": {"type": "synthetic"}})
