"""Wire format v1: lossless round trips and strict, reasoned refusals (pure, no sockets)."""

from __future__ import annotations

import json
import time
import uuid

import cv2
import numpy as np
import pytest

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.errors import PublisherError
from lineguard.wire import (
    MAGIC,
    MessageKind,
    WireFormatError,
    WireLimits,
    build_header,
    decode_message,
    encode_message,
)

RNG = np.random.default_rng(7)


def make_pair(image: np.ndarray, *, score: float = 0.7, verdict: Verdict = Verdict.RECHECK,
              confidence: float = float("nan")) -> tuple[Decision, Frame]:
    t0 = time.monotonic_ns()
    frame = Frame(seq=12, part_id=3400, t_capture_ns=t0, image=image, camera_id="cam-a")
    decision = Decision(seq=12, part_id=3400, verdict=verdict, anomaly_score=score, bundle_id="b-42",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0 + 4_000_000,
                        defect_class="scratch", class_confidence=confidence, reasons=("in band",))
    return decision, frame


def encode(image: np.ndarray, amap: np.ndarray | None = None, **kw: object) -> list[bytes]:
    decision, frame = make_pair(image, **kw)  # type: ignore[arg-type]
    header = build_header(decision=decision, frame=frame, kind=MessageKind.UNCERTAIN, anomaly_map=amap,
                          thresholds={"lower": 0.4, "upper": 0.9})
    return encode_message(header, image, amap)


def reason_of(parts: list[bytes], limits: WireLimits | None = None) -> str:
    with pytest.raises(WireFormatError) as info:
        decode_message(parts, limits=limits or WireLimits())
    return info.value.reason


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((31, 47), np.uint8), ((31, 47), np.uint16), ((20, 33, 3), np.uint8), ((20, 33, 3), np.uint16)],
)
def test_round_trip_is_bit_exact_for_mono_rgb_8_and_16_bit(shape: tuple[int, ...], dtype: type) -> None:
    image = RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    amap = RNG.random((8, 9)).astype(np.float32) * 3
    msg = decode_message(encode(image, amap))
    assert msg.image is not None and msg.image.dtype == dtype
    np.testing.assert_array_equal(msg.image, image)
    assert msg.anomaly_map is not None and msg.anomaly_map.shape == (8, 9)
    np.testing.assert_allclose(msg.anomaly_map.astype(np.float32), amap, rtol=1e-3)
    h = msg.header
    assert (h.seq, h.part_id, h.camera_id, h.bundle_id, h.verdict) == (12, 3400, "cam-a", "b-42", "recheck")
    assert h.thresholds == {"lower": 0.4, "upper": 0.9}
    assert h.image.channels == (3 if len(shape) == 3 else 1)
    assert h.t_decided_ns - h.t_capture_ns == 4_000_000
    uuid.UUID(h.message_id)


def test_rgb_is_stored_as_standard_png_rgb() -> None:
    # A generic PNG reader must see red as red: OpenCV's decoder returns BGR, so red is at index 2.
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255
    png = encode(image)[2]
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)[0, 0].tolist() == [0, 0, 255]


def test_nan_scores_travel_as_null_and_huge_map_values_are_clipped() -> None:
    image = np.zeros((5, 5), np.uint8)
    parts = encode(image, np.full((2, 2), 1e9, np.float32), score=float("nan"))
    header = json.loads(parts[1])
    assert header["anomaly_score"] is None and header["class_confidence"] is None
    msg = decode_message(parts)
    assert msg.anomaly_map is not None and np.isfinite(msg.anomaly_map).all()


def test_message_without_map_has_three_frames() -> None:
    parts = encode(np.ones((6, 6), np.uint8))
    assert len(parts) == 3 and parts[0] == MAGIC
    msg = decode_message(parts)
    assert msg.map_bytes is None and not msg.header.has_map


def test_decode_without_images_checks_envelope_only() -> None:
    msg = decode_message(encode(np.ones((6, 6), np.uint8)), decode_images=False)
    assert msg.image is None and msg.image_png.startswith(b"\x89PNG")


def _with_header(parts: list[bytes], **changes: object) -> list[bytes]:
    header = json.loads(parts[1])
    for key, value in changes.items():
        if value is ...:
            del header[key]
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


def test_refusals_name_their_reason() -> None:
    good = encode(np.ones((10, 12), np.uint8), np.zeros((3, 3), np.float32))
    assert reason_of([b"XXXX", *good[1:]]) == "bad_magic"
    assert reason_of([b"LGv2", *good[1:]]) == "unsupported_version"
    assert reason_of(good[:2]) == "bad_frame_count"
    assert reason_of([*good, b"extra"]) == "bad_frame_count"
    assert reason_of(good[:3]) == "bad_frame_count"  # has_map but no map frame
    assert reason_of([good[0], b"{not json", *good[2:]]) == "bad_json"
    assert reason_of([good[0], b"[1, 2]", *good[2:]]) == "bad_json"
    assert reason_of([good[0], b"\xff\xfe", *good[2:]]) == "bad_json"
    assert reason_of([good[0], good[1], good[2][:40], good[3]]) == "image_decode"
    assert reason_of([good[0], good[1], b"GIF89a" + bytes(40), good[3]]) == "image_decode"
    assert reason_of([*good[:3], good[3][:-2]]) == "size_mismatch"
    assert reason_of(good, WireLimits(max_message_bytes=len(good[2]))) == "oversize"
    assert reason_of(good, WireLimits(max_header_bytes=100)) == "oversize"
    assert reason_of(good, WireLimits(max_pixels=100)) == "oversize"


def test_header_is_validated_field_by_field() -> None:
    good = encode(np.ones((10, 12), np.uint8))
    with pytest.raises(WireFormatError) as info:
        decode_message(_with_header(good, bundle_id=..., seq=-1))
    assert info.value.reason == "bad_header"
    assert "bundle_id" in str(info.value) and "seq" in str(info.value)
    assert isinstance(info.value, PublisherError)
    assert reason_of(_with_header(good, surprise=1)) == "bad_header"  # unknown keys refused
    assert reason_of(_with_header(good, kind="other")) == "bad_header"
    assert reason_of(_with_header(good, message_id=str(uuid.uuid4()).upper())) == "bad_header"
    assert reason_of(_with_header(good, seq="12")) == "bad_header"  # strict: no string-to-int coercion
    assert reason_of(_with_header(good, captured_utc="yesterday")) == "bad_header"
    nan_header = good[1].replace(b'"anomaly_score":0.7', b'"anomaly_score":NaN')
    assert nan_header != good[1]
    assert reason_of([good[0], nan_header, good[2]]) == "bad_header"


def test_header_that_lies_about_the_image_is_refused() -> None:
    good = encode(np.ones((10, 12), np.uint8))
    header = json.loads(good[1])
    header["image"]["width"] = 13
    assert reason_of([good[0], json.dumps(header).encode(), good[2]]) == "size_mismatch"
    header = json.loads(good[1])
    header["image"]["dtype"] = "uint16"
    assert reason_of([good[0], json.dumps(header).encode(), good[2]]) == "size_mismatch"
    header = json.loads(good[1])
    header["image"]["channels"] = 3
    assert reason_of([good[0], json.dumps(header).encode(), good[2]]) == "size_mismatch"


def test_encoder_refuses_unsupported_images() -> None:
    with pytest.raises(WireFormatError, match="pixel type"):
        encode(np.zeros((4, 4), np.float32))
    with pytest.raises(WireFormatError, match="HxW"):
        encode(np.zeros((4, 4, 4), np.uint8))
