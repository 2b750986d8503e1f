"""``lineguard score --bundle B --out scores.csv PATH...``: score image files into a CSV.

Off the line: an engineer's tool to see what a bundle says about a folder of images (before a
changeover, after retraining). Verifies the bundle, runs it with ONNX Runtime on the CPU only (so
the numbers compare across machines), and writes one row per image:
``path, anomaly_score, verdict, defect_class, class_confidence, latency_ms, error``.

Never drops an image silently: an unreadable or mismatched file gets a row with verdict ``error``
and the message, and the exit code is 3 when any row is an error (0 = all scored; 1 = the bundle
itself is unusable). The CSV is written to a temporary file and renamed at the end.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from lineguard.bundle import load_bundle
from lineguard.contracts import Frame
from lineguard.decision import DecisionPolicy, decide
from lineguard.engines.config import CpuProvider, OrtEngineConfig
from lineguard.engines.runner import BundleRunner
from lineguard.errors import LineGuardError
from lineguard.imageio import list_images, read_image

HELP = "score images or folders with a bundle (ONNX Runtime only) into a CSV"
COLUMNS = ("path", "anomaly_score", "verdict", "defect_class", "class_confidence", "latency_ms", "error")
EXIT_SOME_ERRORS = 3
_NO_PIXELS = np.zeros((0, 0), dtype=np.uint8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle directory (verified before use)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")


def _expand(paths: list[str]) -> list[tuple[str, str]]:
    """(path, error) for every image; a path that does not exist becomes an error row."""
    rows: list[tuple[str, str]] = []
    for raw in paths:
        try:
            found = list_images(raw)
        except LineGuardError as exc:
            rows.append((raw, str(exc)))
            continue
        if not found:
            rows.append((raw, "folder holds no image files"))
        rows.extend((str(f), "") for f in found)
    return rows


def _fmt(value: float, digits: int = 6) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}g}"


def _score_one(runner: BundleRunner, policy: DecisionPolicy, seq: int, path: str) -> list[str]:
    t0 = time.monotonic_ns()
    result = runner.infer(read_image(path))
    # decide() takes a Frame for its ids; the pixels were already scored, so an empty array stands in
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=_NO_PIXELS, camera_id="score", source_ref=path)
    d = decide(result, frame, policy, t_decided_ns=time.monotonic_ns())
    return [path, _fmt(d.anomaly_score), d.verdict.label, d.defect_class, _fmt(d.class_confidence, 4),
            f"{result.timings_ms['total']:.3f}", ""]


def run(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    cfg = OrtEngineConfig(providers=[CpuProvider(type="cpu")], intra_op_threads=max(0, args.threads))
    policy = DecisionPolicy.from_manifest(bundle.manifest)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    errors = scored = 0
    try:
        with BundleRunner.from_bundle(bundle, cfg) as runner, tmp.open("w", newline="", encoding="utf-8") as f:
            runner.warmup()
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for seq, (path, error) in enumerate(_expand(list(args.paths))):
                if not error:
                    try:
                        writer.writerow(_score_one(runner, policy, seq, path))
                        scored += 1
                        continue
                    except LineGuardError as exc:  # ImageError / EngineError: a row, never a silent skip
                        error = str(exc)
                errors += 1
                writer.writerow([path, "", "error", "", "", "", error])
            provider = runner.provider
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{scored} image(s) scored, {errors} error(s) -> {out} (bundle {bundle.bundle_id}, {provider})")
    if errors:
        print(f"lineguard score: {errors} image(s) could not be scored; see the 'error' column", file=sys.stderr)
        return EXIT_SOME_ERRORS
    return 0
