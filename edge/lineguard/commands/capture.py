"""``lineguard capture --config line.yaml --out DATASET --class good --count N``: take a teach set.

Off the frame path, on the line's first day (docs/first-line.md). Opens the ``source:`` of the line
config with its settings (GenICam exposure, gain, ROI, trigger; replay and synthetic too), takes
``--count`` frames (every ``--every-nth`` one) and writes them with :class:`lineguard.capture.TeachSetWriter`.
Progress and the frame rate go to stderr; the summary to stdout.

Never: open a camera the service holds (stop the service first: a camera has one owner), write a
frame whose format differs from the folder's, or start a capture the disk cannot hold.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lineguard import __version__
from lineguard.capture import CaptureError, FrameFormat, TeachSetWriter, format_of, sidecar_image
from lineguard.contracts import Frame
from lineguard.errors import SourceError
from lineguard.sources import GenICamSourceConfig, SourceConfig, build_source
from lineguard.sources.base import BaseSource
from lineguard.yamlcfg import load_file

HELP = "take teach-set frames from the line's camera into a dataset folder (PNG + JSON sidecar)"


class _SourceOnly(BaseModel):
    """The part of line.yaml capture needs: on the first day there is no bundle yet."""

    model_config = ConfigDict(extra="ignore")

    source: SourceConfig = Field(description="image source")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="line YAML config; only its source: section is used")
    p.add_argument("--out", required=True, type=Path, help="dataset folder (the one `lineguard train --data` reads)")
    p.add_argument("--class", dest="class_name", default="good",
                   help="class folder: good (default) or a defect name for parts from the reject bin")
    p.add_argument("--count", required=True, type=int, help="frames to write")
    p.add_argument("--every-nth", type=int, default=1, help="keep every n-th frame the source delivers (default 1)")
    p.add_argument("--trigger", choices=["config", "software"], default="config",
                   help="software: fire the camera's software trigger once per frame (GenICam only); "
                   "config (default): the source's own trigger setting")
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="give up when no frame came for this long (0: wait forever, e.g. hardware trigger)")
    p.add_argument("--min-free-mb", type=float, default=100.0,
                   help="free disk space to leave (refused before start when the frames would not fit)")


def _source_config(args: argparse.Namespace) -> SourceConfig:
    cfg: SourceConfig = load_file(_SourceOnly, args.config).source
    if args.trigger == "software":
        if not isinstance(cfg, GenICamSourceConfig):
            raise CaptureError(f"--trigger software needs a genicam source; {args.config} has source.type {cfg.type}")
        cfg = cfg.model_copy(update={"trigger": "software", "stall_reconnect_ms": None})
    return cfg


def _open(cfg: SourceConfig, config_path: str) -> BaseSource:
    source = build_source(cfg)
    try:
        source.open()
    except SourceError as exc:
        raise CaptureError(f"cannot open the {cfg.type} source of {config_path}: {exc}") from exc
    return source


def _sidecar(source: BaseSource, cfg: SourceConfig, frame: Frame, fmt: FrameFormat, class_name: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "class": class_name,
        "captured_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "lineguard": __version__,
        "image": sidecar_image(fmt),
        "frame": {"seq": frame.seq, "camera_timestamp_ns": frame.camera_timestamp_ns,
                  "frame_id": getattr(frame, "frame_id", None), "source_ref": frame.source_ref},
        "source": {"type": cfg.type, "camera_id": frame.camera_id,
                   "description": source.info.description if source.info else ""},
        "config": cfg.model_dump(mode="json"),
    }
    device = getattr(source, "device", None)
    if device is not None:  # a GenICam camera: who it is and what it was really set to
        doc["camera"] = {"vendor": device.vendor, "model": device.model, "serial": device.serial}
        doc["camera_settings"] = source.camera_settings()  # type: ignore[attr-defined]
    return doc


class _Progress:
    """A bar with the frame rate on stderr: redrawn in place on a terminal, a line per 10 % otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def rate(self, done: int) -> float:
        return done / max(time.monotonic() - self.t0, 1e-9)

    def show(self, done: int) -> None:
        decile = done * 10 // self.total
        if not self.tty and decile == self._last_decile:
            return
        self._last_decile = decile
        filled = done * 30 // self.total
        bar = "#" * filled + "." * (30 - filled)
        text = f"[{bar}] {done}/{self.total} frames  {self.rate(done):.1f} frames/s  {self.label}"
        print("\r" + text if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _max_value(source: BaseSource) -> int | None:
    return source.info.max_value if source.info is not None else None


def _pixel_format(cfg: SourceConfig, source: BaseSource) -> str | None:
    if not isinstance(cfg, GenICamSourceConfig):
        return None
    return str(source.camera_settings().get("PixelFormat") or cfg.pixel_format or "") or None  # type: ignore[attr-defined]


def _next_frame(source: BaseSource, software: bool, timeout_s: float) -> Frame | None:
    """One frame, firing the software trigger first when asked; None when the source finished."""
    if software:
        source.trigger()  # type: ignore[attr-defined]
    waited = 0.0
    while True:
        frame = source.read(0.5)
        if frame is not None or source.finished:
            return frame
        waited += 0.5
        if timeout_s and waited >= timeout_s:
            raise CaptureError(
                f"no frame from the source for {timeout_s:g} s: check the camera's trigger (with a hardware trigger "
                "each part must pass the sensor; --timeout-s 0 waits forever) and its cabling"
            )


def _capture(args: argparse.Namespace, source: BaseSource, cfg: SourceConfig, writer: TeachSetWriter) -> int:
    software = args.trigger == "software"
    progress = _Progress(args.count, f"{args.class_name} -> {writer.folder}")
    pixel_format = _pixel_format(cfg, source)
    fmt: FrameFormat | None = None
    seen = 0
    faults: Counter[str] = Counter()
    details: list[str] = []
    reserve = int(args.min_free_mb * 2**20)
    while len(writer.written) < args.count:
        frame = _next_frame(source, software, args.timeout_s)
        if frame is None:
            print(f"\nthe {cfg.type} source finished after {len(writer.written)} of {args.count} frames",
                  file=sys.stderr)
            break
        if getattr(frame, "fault", ""):  # a part the source could not see (incomplete buffer, bad file)
            faults[str(getattr(frame, "fault", ""))] += 1
            detail = str(getattr(frame, "fault_detail", ""))
            if detail and len(details) < 3:
                details.append(detail)
            continue
        seen += 1
        if (seen - 1) % args.every_nth:
            continue
        if fmt is None:  # the first frame fixes the format: compare with the folder, check the disk
            fmt = format_of(frame.image, max_value=_max_value(source), pixel_format=pixel_format)
            writer.check_format(fmt)
            writer.check_space(frame.image.nbytes, args.count, reserve)
        elif format_of(frame.image).differs(fmt):
            raise CaptureError(f"the source changed its frame format mid-capture to {format_of(frame.image).describe()}"
                               f" (was {fmt.describe()}): the frames written so far are kept")
        if writer.free_bytes() < reserve:
            raise CaptureError(f"free disk space fell under the {args.min_free_mb:g} MiB reserve after "
                               f"{len(writer.written)} frames (kept): free space or write elsewhere")
        writer.write(frame.image, _sidecar(source, cfg, frame, fmt, args.class_name))
        progress.show(len(writer.written))
    progress.done()
    if faults:
        # missing_frame: the camera took frames capture did not keep up with (PNG encoding is slower
        # than a fast line); incomplete_frame / unreadable_frame: pictures that were broken
        print(f"skipped, no usable image: {dict(faults)} (missing_frame = the camera was faster than capture)"
              + "".join(f"\n  {d}" for d in details), file=sys.stderr)
    return len(writer.written)


def run(args: argparse.Namespace) -> int:
    if args.count < 1 or args.every_nth < 1:
        raise CaptureError("--count and --every-nth must be at least 1")
    cfg = _source_config(args)
    writer = TeachSetWriter(args.out, args.class_name)
    source = _open(cfg, args.config)
    t0 = time.monotonic()
    try:
        n = _capture(args, source, cfg, writer)
    except KeyboardInterrupt:
        n = len(writer.written)
        print(f"\ninterrupted: {n} frames kept", file=sys.stderr)
        return 130
    finally:
        source.close()
        writer.close()
    rate = n / max(time.monotonic() - t0, 1e-9)
    names = f"{writer.written[0].name} .. {writer.written[-1].name}" if n else "none"
    desc = source.info.description if source.info else cfg.type
    print(f"captured {n} frames into {writer.folder} ({names}) at {rate:.1f} frames/s from {desc}")
    return 0
