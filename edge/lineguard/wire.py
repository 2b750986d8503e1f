"""Uncertain-frame wire format, version 1 (docs/wire-format.md).

Data flow: decision -> publisher (encodes here, on its own thread) -> ZeroMQ PUSH -> sink (decodes
and validates here) -> store. This module is pure: no sockets, no files, no clocks except the
wall-clock stamp taken by :func:`build_header`. It must never accept a message it cannot fully
validate: the sink stores what this module returns, so every size, shape and type is checked
before anything is written.

A message is a ZeroMQ multipart message::

    frame 0  b"LGv1"                       magic + format version
    frame 1  UTF-8 JSON header             WireHeader below (unknown keys refused)
    frame 2  PNG bytes                     lossless image, 8/16 bit, mono or RGB
    frame 3  float16 little-endian bytes   anomaly map, only when header.has_map
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lineguard.contracts import Decision, Frame
from lineguard.errors import PublisherError

MAGIC = b"LGv1"
MAGIC_PREFIX = b"LGv"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# float16 overflows to inf above this; the map is clipped so the sink never stores inf for a big score.
_F16_MAX = float(np.finfo(np.float16).max)

Image = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


class WireFormatError(PublisherError):
    """A message that does not follow the wire format; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MessageKind(str, enum.Enum):
    """Why a frame was sent to the sink."""

    UNCERTAIN = "uncertain"  # verdict RECHECK: inside the uncertainty band
    AUDIT = "audit"  # a random share of confident verdicts, to measure what the band misses
    UNKNOWN_DEFECT = "unknown_defect"  # rejected, but the classifier did not recognise the class
    NEAR_REJECT = "near_reject"  # rejected with a score just above the reject threshold: a possible false reject


class ImageSpec(BaseModel):
    """Layout of frame 2. Checked against the PNG's own IHDR before and after decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    encoding: Literal["png"] = Field(description="only lossless PNG in version 1")
    width: int = Field(ge=1, le=65535, description="pixels")
    height: int = Field(ge=1, le=65535, description="pixels")
    channels: Literal[1, 3] = Field(description="1 = mono, 3 = RGB")
    dtype: Literal["uint8", "uint16"] = Field(description="pixel type")


class MapSpec(BaseModel):
    """Layout of frame 3: raw float16 little-endian, row-major, height x width."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    encoding: Literal["f16le-raw"] = Field(description="raw IEEE half floats, little-endian, C order")
    width: int = Field(ge=1, le=65535, description="map columns")
    height: int = Field(ge=1, le=65535, description="map rows")


class WireHeader(BaseModel):
    """Frame 1. ``None`` stands for "not available" (JSON has no NaN)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    message_id: str = Field(min_length=36, max_length=36, description="UUID4, de-duplication key")
    kind: Literal["uncertain", "audit", "unknown_defect", "near_reject"] = Field(
        description="MessageKind value (near_reject: added within version 1, docs/wire-format.md)")
    seq: int = Field(ge=0, description="frame sequence number from the source")
    part_id: int = Field(ge=0, description="part id (from the PLC when it sends one)")
    camera_id: str = Field(min_length=1, max_length=128, description="source camera")
    bundle_id: str = Field(max_length=256, description="bundle that judged the frame")
    verdict: Literal["accept", "reject", "recheck", "failsafe"] = Field(description="Verdict label")
    failsafe: bool = Field(description="the verdict is the configured fail-safe one")
    anomaly_score: float | None = Field(description="raw anomaly score; null when not computed")
    defect_class: str = Field(max_length=128, description="'' none, 'unknown' unrecognised")
    class_confidence: float | None = Field(description="classifier confidence; null when none")
    thresholds: dict[str, float] = Field(description="thresholds in force, e.g. lower/upper")
    reasons: list[str] = Field(max_length=64, description="why the decision came out this way")
    t_capture_ns: int = Field(ge=0, description="edge monotonic clock when the frame arrived")
    t_decided_ns: int = Field(ge=0, description="edge monotonic clock when the verdict was made")
    captured_utc: str = Field(max_length=40, description="ISO 8601 UTC wall-clock capture time (estimate)")
    image: ImageSpec
    has_map: bool = Field(description="frame 3 (anomaly map) is present")
    anomaly_map: MapSpec | None = Field(description="layout of frame 3; null when has_map is false")

    @model_validator(mode="after")
    def verify_ids_and_map(self) -> WireHeader:
        # Canonical lower-case form only: the sink uses the id as a file name.
        try:
            canonical = str(uuid.UUID(self.message_id))
        except ValueError as exc:
            raise ValueError(f"message_id {self.message_id!r} is not a UUID") from exc
        if canonical != self.message_id:
            raise ValueError(f"message_id {self.message_id!r} is not in canonical form {canonical!r}")
        if self.has_map != (self.anomaly_map is not None):
            raise ValueError("has_map and anomaly_map disagree")
        try:
            dt.datetime.fromisoformat(self.captured_utc)
        except ValueError as exc:
            raise ValueError(f"captured_utc {self.captured_utc!r} is not ISO 8601") from exc
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class WireLimits:
    """Receiver-side bounds; anything larger is refused before it is decoded."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_pixels: int = 50_000_000


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class WireMessage:
    """A validated message. ``image_png`` / ``map_bytes`` are the exact bytes on the wire."""

    header: WireHeader
    image_png: bytes
    map_bytes: bytes | None
    image: Image | None  # decoded (RGB order for colour); None when decoding was not asked for
    anomaly_map: npt.NDArray[np.float16] | None


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def wall_clock_of(t_monotonic_ns: int) -> str:
    """Estimate the UTC wall-clock time of a monotonic stamp (the edge keeps monotonic stamps)."""
    wall_ns = time.time_ns() - (time.monotonic_ns() - t_monotonic_ns)
    stamp = dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.timezone.utc)
    return stamp.isoformat(timespec="microseconds")


def image_spec(image: npt.NDArray[np.generic]) -> ImageSpec:
    """Describe a LineGuard image (HxW or HxWx3, uint8/uint16); refuse anything else."""
    if image.dtype not in (np.uint8, np.uint16):
        raise WireFormatError("bad_image", f"pixel type {image.dtype} unsupported (uint8/uint16 only)")
    if image.ndim == 2:
        channels: Literal[1, 3] = 1
    elif image.ndim == 3 and image.shape[2] == 3:
        channels = 3
    else:
        raise WireFormatError("bad_image", f"image shape {image.shape} is neither HxW nor HxWx3")
    dtype: Literal["uint8", "uint16"] = "uint8" if image.dtype == np.uint8 else "uint16"
    return ImageSpec(encoding="png", width=int(image.shape[1]), height=int(image.shape[0]),
                     channels=channels, dtype=dtype)


def build_header(
    *,
    decision: Decision,
    frame: Frame,
    kind: MessageKind,
    anomaly_map: npt.NDArray[np.floating] | None,
    thresholds: Mapping[str, float] | None = None,
    message_id: str | None = None,
) -> WireHeader:
    """The JSON header for one decision; a fresh UUID4 unless ``message_id`` is given."""
    map_spec = None
    if anomaly_map is not None:
        if anomaly_map.ndim != 2 or anomaly_map.size == 0:
            raise WireFormatError("bad_map", f"anomaly map shape {anomaly_map.shape} is not HxW")
        map_spec = MapSpec(encoding="f16le-raw", width=int(anomaly_map.shape[1]),
                           height=int(anomaly_map.shape[0]))
    return WireHeader(
        message_id=message_id or str(uuid.uuid4()),
        kind=kind.value,
        seq=decision.seq,
        part_id=decision.part_id,
        camera_id=decision.camera_id or frame.camera_id,
        bundle_id=decision.bundle_id,
        verdict=decision.verdict.label,  # type: ignore[arg-type]  # Verdict labels match the Literal
        failsafe=decision.failsafe,
        anomaly_score=_finite_or_none(decision.anomaly_score),
        defect_class=decision.defect_class,
        class_confidence=_finite_or_none(decision.class_confidence),
        thresholds={k: float(v) for k, v in (thresholds or {}).items() if math.isfinite(v)},
        reasons=list(decision.reasons),
        t_capture_ns=decision.t_capture_ns,
        t_decided_ns=decision.t_decided_ns,
        captured_utc=wall_clock_of(decision.t_capture_ns),
        image=image_spec(frame.image),
        has_map=map_spec is not None,
        anomaly_map=map_spec,
    )


def encode_message(
    header: WireHeader,
    image: Image,
    anomaly_map: npt.NDArray[np.floating] | None,
    *,
    png_compression: int = 1,
) -> list[bytes]:
    """Multipart frames for one message. CPU heavy (PNG): never call it on the inspection thread."""
    spec = image_spec(image)
    if spec != header.image:
        raise WireFormatError("size_mismatch", f"header says {header.image}, image is {spec}")
    # OpenCV writes its BGR order as PNG's RGB, so RGB input is swapped once here.
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if spec.channels == 3 else image
    try:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, png_compression])
    except cv2.error as exc:
        raise WireFormatError("encode_error", f"PNG encoding failed: {exc}") from exc
    if not ok:
        raise WireFormatError("encode_error", "PNG encoding failed")
    parts = [MAGIC, header.model_dump_json().encode("utf-8"), buf.tobytes()]
    if header.anomaly_map is not None:
        if anomaly_map is None or anomaly_map.shape != (header.anomaly_map.height, header.anomaly_map.width):
            raise WireFormatError("size_mismatch", "anomaly map missing or not the shape in the header")
        clipped = np.clip(anomaly_map, -_F16_MAX, _F16_MAX)
        parts.append(np.ascontiguousarray(clipped, dtype="<f2").tobytes())
    return parts


def png_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, read before decoding to refuse decompression bombs."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise WireFormatError("image_decode", "frame 2 is not a PNG (signature or IHDR missing)")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _check_envelope(parts: Sequence[bytes], limits: WireLimits) -> WireHeader:
    if len(parts) not in (3, 4):
        raise WireFormatError("bad_frame_count", f"expected 3 or 4 frames, got {len(parts)}")
    total = sum(len(p) for p in parts)
    if total > limits.max_message_bytes:
        raise WireFormatError("oversize", f"{total} bytes > limit {limits.max_message_bytes}")
    magic = bytes(parts[0])
    if magic != MAGIC:
        if magic.startswith(MAGIC_PREFIX) and len(magic) == len(MAGIC):
            raise WireFormatError("unsupported_version", f"version {magic!r}, this receiver reads {MAGIC!r}")
        raise WireFormatError("bad_magic", f"frame 0 is {magic[:16]!r}, expected {MAGIC!r}")
    if len(parts[1]) > limits.max_header_bytes:
        raise WireFormatError("oversize", f"header {len(parts[1])} bytes > {limits.max_header_bytes}")
    try:
        raw = json.loads(bytes(parts[1]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError("bad_json", f"header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise WireFormatError("bad_json", "header JSON is not an object")
    try:
        header = WireHeader.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'header'}: {e['msg']}" for e in exc.errors()
        )
        raise WireFormatError("bad_header", problems) from exc
    if header.has_map != (len(parts) == 4):
        raise WireFormatError("bad_frame_count", f"has_map={header.has_map} but {len(parts)} frames")
    return header


def _decode_image(data: bytes, spec: ImageSpec) -> Image:
    flag = cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise WireFormatError("image_decode", "PNG payload does not decode (truncated or corrupt)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        got = image_spec(image)
    except WireFormatError as exc:
        raise WireFormatError("size_mismatch", exc.detail) from exc
    if got != spec:
        raise WireFormatError("size_mismatch", f"header says {spec}, PNG holds {got}")
    return image  # type: ignore[return-value]  # dtype checked by image_spec above


def decode_message(
    parts: Sequence[bytes], *, limits: WireLimits = DEFAULT_LIMITS, decode_images: bool = True
) -> WireMessage:
    """Validate a received multipart message; raise :class:`WireFormatError` (a PublisherError).

    With ``decode_images`` the PNG is fully decoded and compared with the header, so a stored
    frame is known to open; without it only the envelope, header and PNG IHDR are checked.
    """
    header = _check_envelope(parts, limits)
    spec = header.image
    if spec.width * spec.height > limits.max_pixels:
        raise WireFormatError("oversize", f"{spec.width}x{spec.height} > {limits.max_pixels} pixels")
    image_png = bytes(parts[2])
    if png_dimensions(image_png) != (spec.width, spec.height):
        raise WireFormatError("size_mismatch", f"PNG IHDR is {png_dimensions(image_png)}, header "
                                               f"says {(spec.width, spec.height)}")
    image = _decode_image(image_png, spec) if decode_images else None
    map_bytes: bytes | None = None
    anomaly_map: npt.NDArray[np.float16] | None = None
    if header.anomaly_map is not None:
        m = header.anomaly_map
        map_bytes = bytes(parts[3])
        if len(map_bytes) != m.width * m.height * 2:
            raise WireFormatError("size_mismatch", f"map frame has {len(map_bytes)} bytes, header "
                                                   f"needs {m.width * m.height * 2}")
        anomaly_map = np.frombuffer(map_bytes, dtype="<f2").reshape(m.height, m.width)
    return WireMessage(header=header, image_png=image_png, map_bytes=map_bytes, image=image,
                       anomaly_map=anomaly_map)
