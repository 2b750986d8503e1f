#!/usr/bin/env python
"""Benchmark the image sources alone (no engines): GenICam through viky.cti, replay, synthetic.

Prints frames per second and the cost of copying a camera buffer into a Frame image (the only
per-frame work the GenICam source adds on top of harvesters). viky streams at most 800x800
(Mono8/RGBa8, up to 200 Hz), so the 5 MP mono copy cost (2448x2048) is measured on the same
conversion function with a buffer of that size. Results go into docs/benchmarks/sources.md.

    .venv/bin/python scripts/bench_sources.py [--seconds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.sources import GenICamSourceConfig, ReplaySourceConfig, SyntheticSourceConfig, build_source, pixels

FIVE_MP = (2048, 2448)  # height, width of a typical 5 MP sensor (Sony IMX264)


def _timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p99_ms": samples[min(len(samples) - 1, int(0.99 * len(samples)))]}


def bench_copy_5mp() -> dict[str, Any]:
    """pixels.to_image on 5 MP buffers: what one frame costs between fetch and queue-back."""
    h, w = FIVE_MP
    rng = np.random.default_rng(0)
    mono8 = rng.integers(0, 256, h * w, dtype=np.uint8)
    mono12 = rng.integers(0, 4096, h * w, dtype=np.uint16)
    out = {
        "Mono8 5MP": _timed(lambda: pixels.to_image(mono8, "Mono8", w, h), 60),
        "Mono12 5MP": _timed(lambda: pixels.to_image(mono12, "Mono12", w, h), 40),
        "BayerRG8 5MP (demosaic)": _timed(lambda: pixels.to_image(mono8, "BayerRG8", w, h), 40),
    }
    return out


def bench_genicam(seconds: float, pixel_format: str) -> dict[str, Any] | None:
    from lineguard.sources.genicam import viky_cti_path

    cti = viky_cti_path()
    if cti is None:
        return None
    copy_ms: list[float] = []
    original = pixels.to_image

    def timed_to_image(*args: Any) -> np.ndarray:
        t0 = time.perf_counter_ns()
        result = original(*args)
        copy_ms.append((time.perf_counter_ns() - t0) / 1e6)
        return result

    cfg = GenICamSourceConfig(
        type="genicam",
        cti_path=str(cti),
        pixel_format=pixel_format,  # type: ignore[arg-type]
        width=800,
        height=800,
        frame_rate_hz=200,
        num_buffers=16,
    )
    src = build_source(cfg)
    pixels.to_image = timed_to_image  # type: ignore[assignment]
    try:
        with src:
            src.read(2.0)  # first frame pays for stream start-up
            copy_ms.clear()
            n, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                frame = src.read(1.0)
                if frame is not None and not frame.fault:  # pictures only: missing ids are fault frames
                    n += 1
            elapsed = time.monotonic() - t0
            stats = src.stats.snapshot()
    finally:
        pixels.to_image = original  # type: ignore[assignment]
    return {
        "size": "800x800 (viky maximum)",
        "camera_rate_hz": 200,
        "fps": n / elapsed,
        "copy_p50_ms": statistics.median(copy_ms),
        "copy_max_ms": max(copy_ms),
        "dropped": stats.dropped,
        "incomplete": stats.incomplete,
    }


def bench_replay(folder: Path, label: str, seconds: float) -> dict[str, Any]:
    src = build_source(ReplaySourceConfig(type="replay", paths=(str(folder),), loop=True))
    with src:
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            if src.read(1.0) is not None:
                n += 1
        elapsed = time.monotonic() - t0
    return {"files": label, "fps": n / elapsed}


def bench_synthetic(seconds: float) -> dict[str, Any]:
    src = build_source(SyntheticSourceConfig(type="synthetic", width=640, height=480, defect_rate=0.1))
    with src:
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            src.read(1.0)
            n += 1
    return {"size": "640x480 mono", "fps": n / (time.monotonic() - t0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per case")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # the acquisition thread is single; the numbers should say so
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}, "
        f"opencv {cv2.__version__}, single OpenCV thread",
        "copy_5mp": bench_copy_5mp(),
        "genicam_viky_mono8": bench_genicam(args.seconds, "Mono8"),
        "genicam_viky_rgba8": bench_genicam(args.seconds, "RGBa8"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        for name, (h, w), count, ext in [
            ("png_vga", (480, 640), 50, ".png"),
            ("png_5mp", FIVE_MP, 8, ".png"),
            ("bmp_5mp", FIVE_MP, 8, ".bmp"),
        ]:
            folder = Path(tmp) / name
            folder.mkdir()
            base = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (0, 0), 3)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i:03d}{ext}"), np.roll(base, i, axis=1))
            results[f"replay_{name}"] = bench_replay(folder, f"{count} x {w}x{h} mono {ext}", args.seconds)
    results["synthetic"] = bench_synthetic(args.seconds)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
