"""Config models of the image sources (the ``source:`` section of the service's YAML).

Where it sits: the composition root validates the YAML into these models, then hands one of them
to :func:`lineguard.sources.build_source`. The ``type`` key picks both the back-end and the schema
(a pydantic discriminated union), so a GenICam-only key under a replay source is refused.

Never: do I/O here (no file checks, no camera probing, no imports of harvesters). Validation is
pure; the back-ends' ``from_config`` do the device and file work.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Pixel formats the GenICam source can turn into a Frame image (see lineguard.sources.pixels).
GenICamPixelFormat = Literal[
    "Mono8",
    "Mono10",
    "Mono12",
    "Mono16",
    "RGB8",
    "BGR8",
    "RGBa8",
    "BGRa8",
    "BayerRG8",
    "BayerGR8",
    "BayerGB8",
    "BayerBG8",
    "BayerRG10",
    "BayerGR10",
    "BayerGB10",
    "BayerBG10",
    "BayerRG12",
    "BayerGR12",
    "BayerGB12",
    "BayerBG12",
    "BayerRG16",
    "BayerGR16",
    "BayerGB16",
    "BayerBG16",
]

# What to do when the consumer is slower than the configured rate of a paced source.
#  - "keep": every frame is delivered, late; the rate is only a ceiling (repeatable tests).
#  - "skip": behave like a free-running camera: frames whose slot passed are skipped and
#    counted as dropped, the next frame delivered is the one due now.
LatePolicy = Literal["keep", "skip"]

_CAMERA_ID = Field(
    default="cam0",
    min_length=1,
    max_length=64,
    pattern=r"^[A-Za-z0-9_.-]+$",
    description="Name of this camera in frames, logs and metric labels.",
)


class GenICamSourceConfig(BaseModel):
    """A GenICam camera reached through a GenTL producer (.cti) with harvesters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["genicam"] = Field(description="Source back-end: a GenICam camera.")
    camera_id: str = _CAMERA_ID
    cti_path: str = Field(
        min_length=1,
        max_length=4096,
        description="Path of the GenTL producer file (.cti) shipped by the camera vendor.",
    )
    serial: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Serial number of the camera to open; None: match by model, or take the first.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Model name of the camera to open (exact match); combined with serial if both.",
    )
    pixel_format: GenICamPixelFormat | None = Field(
        default=None,
        description="PFNC pixel format to set; None keeps the camera's current format.",
    )
    width: int | None = Field(default=None, ge=8, le=65535, description="ROI width in pixels.")
    height: int | None = Field(default=None, ge=8, le=65535, description="ROI height in pixels.")
    offset_x: int | None = Field(default=None, ge=0, le=65535, description="ROI x offset in pixels.")
    offset_y: int | None = Field(default=None, ge=0, le=65535, description="ROI y offset in pixels.")
    exposure_us: float | None = Field(
        default=None, gt=0.0, le=10_000_000.0, description="Exposure time in µs; turns auto exposure off."
    )
    gain_db: float | None = Field(default=None, ge=0.0, le=48.0, description="Analog gain in dB; turns auto gain off.")
    frame_rate_hz: float | None = Field(
        default=None, gt=0.0, le=10_000.0, description="Free-run frame rate limit; None keeps the camera's."
    )
    trigger: Literal["free_run", "software", "hardware"] = Field(
        default="free_run",
        description="free_run: camera streams; software: one frame per trigger(); hardware: line input.",
    )
    trigger_line: str = Field(
        default="Line0",
        pattern=r"^[A-Za-z0-9_]+$",
        max_length=32,
        description="TriggerSource for hardware trigger (SFNC name, e.g. Line0, Line1).",
    )
    trigger_activation: Literal["RisingEdge", "FallingEdge"] = Field(
        default="RisingEdge", description="Edge of the hardware trigger signal that starts exposure."
    )
    fetch_timeout_ms: int = Field(
        default=1000, ge=1, le=60_000, description="Upper bound of a single wait for a buffer, in ms."
    )
    num_buffers: int = Field(
        default=8, ge=2, le=256, description="Buffers announced to the GenTL producer for streaming."
    )
    poll_interval_us: int = Field(
        default=1000, ge=0, le=20_000,
        description="Wait for a buffer by polling at this interval, sleeping in between (the GenTL wait "
        "holds Python's GIL, which delays the PLC link and every other thread by up to 5 ms per hand-over; "
        "docs/sources.md). Adds up to this much to frame latency and ~10 % of a core. 0: block in the "
        "producer's wait instead (least CPU).",
    )
    reconnect_initial_ms: int = Field(
        default=200, ge=10, le=60_000, description="First delay before reopening a lost camera, in ms."
    )
    reconnect_max_ms: int = Field(
        default=10_000, ge=10, le=600_000, description="Cap of the exponential reconnect backoff, in ms."
    )
    stall_reconnect_ms: int | None = Field(
        default=None,
        ge=100,
        le=3_600_000,
        description="Free run only: reopen the camera after this long without a frame; None: never.",
    )
    max_gap_failsafes: int = Field(
        default=64, ge=0, le=100_000,
        description="Frame ids missing from the camera's sequence (dropped buffers) each get a fail-safe "
        "verdict under their own part id, up to this many per gap; the older excess of a larger gap is "
        "only counted (lineguard_camera_gap_excess_total). A frame id going backwards is a counter reset, "
        "never a gap (docs/sources.md).",
    )

    @model_validator(mode="after")
    def _verify(self) -> GenICamSourceConfig:
        verify_backoff(self.reconnect_initial_ms, self.reconnect_max_ms)
        if self.stall_reconnect_ms is not None and self.trigger != "free_run":
            raise ValueError("stall_reconnect_ms only makes sense with trigger: free_run")
        return self


class ReplaySourceConfig(BaseModel):
    """Image files replayed as a camera stream (demos, benchmarks, repeatable tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["replay"] = Field(description="Source back-end: replay of image files.")
    camera_id: str = _CAMERA_ID
    paths: tuple[str, ...] = Field(
        min_length=1,
        max_length=10_000,
        description="Image folders and/or image files, replayed in this order (folders sorted).",
    )
    recursive: bool = Field(default=True, description="Descend into sub-folders of the given folders.")
    extensions: tuple[str, ...] = Field(
        default=(".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".ppm"),
        min_length=1,
        max_length=32,
        description="File name endings taken from folders (case-insensitive).",
    )
    rate_parts_per_s: float | None = Field(
        default=None, gt=0.0, le=100_000.0, description="Replay rate in parts/s; None: as fast as read."
    )
    loop: bool = Field(default=False, description="Start again at the first image after the last.")
    late_policy: LatePolicy = Field(
        default="keep", description="keep: deliver every image late; skip: drop missed slots (counted)."
    )


class SyntheticSourceConfig(BaseModel):
    """Generated textured frames with optional rendered defects, deterministic by seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["synthetic"] = Field(description="Source back-end: generated frames.")
    camera_id: str = _CAMERA_ID
    width: int = Field(default=640, ge=16, le=16384, description="Frame width in pixels.")
    height: int = Field(default=480, ge=16, le=16384, description="Frame height in pixels.")
    channels: Literal[1, 3] = Field(default=1, description="1: mono HxW; 3: RGB HxWx3.")
    bit_depth: Literal[8, 12, 16] = Field(
        default=8, description="8: uint8; 12 and 16: uint16 with max value 4095 / 65535."
    )
    rate_parts_per_s: float | None = Field(
        default=None, gt=0.0, le=100_000.0, description="Frame rate in parts/s; None: as fast as made."
    )
    defect_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of frames with a rendered scratch or blob."
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed; same seed, same frames.")
    num_frames: int | None = Field(
        default=None, ge=1, le=10**9, description="Stop after this many frames; None: endless."
    )
    late_policy: LatePolicy = Field(
        default="keep", description="keep: deliver every frame late; skip: drop missed slots (counted)."
    )


def verify_backoff(initial_ms: int, max_ms: int) -> None:
    """The backoff cap must not be below its start, or the first delay would exceed the cap."""
    if max_ms < initial_ms:
        raise ValueError(f"reconnect_max_ms ({max_ms}) must be >= reconnect_initial_ms ({initial_ms})")


SourceConfig = Annotated[
    GenICamSourceConfig | ReplaySourceConfig | SyntheticSourceConfig,
    Field(discriminator="type"),
]
"""The ``source:`` section: one of the back-end configs, chosen by its ``type`` key."""
