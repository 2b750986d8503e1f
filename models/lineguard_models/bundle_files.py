"""The files a bundle carries besides its engines: golden self-test images, calibration scores,
provenance (versions, git commit) and the bundle id.

Sits below ``pipeline`` (training, recalibration) and ``report_html`` (which reads the scores back);
nothing here trains or scores. Must never: write outside the staging folder it is given.
"""

from __future__ import annotations

import csv
import io
import platform
import re
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lineguard.bundle import Bundle
from lineguard.imageio import encode_png
from lineguard_models.calibration import CalibrationResult
from lineguard_models.data import Dataset
from lineguard_models.ortscore import Scored

SCORES_FILE = "report/scores.csv"


def verdict_of(score: float, lower: float, upper: float) -> str:
    return "reject" if score >= upper else ("accept" if score < lower else "recheck")


def write_golden(staging: Path, ds: Dataset, scored: Sequence[Scored], result: CalibrationResult,
                 n_good: int, n_defect: int, tolerance: float) -> list[dict[str, Any]]:
    """Copy a few calibration images as lossless PNG with their ORT score and verdict.

    Images whose score sits within 10x the score tolerance of a threshold are skipped: a golden
    test must not flip verdict on a runtime's rounding.
    """
    def safe(s: Scored) -> bool:
        return all(abs(s.score - t) > 10 * tolerance * max(abs(t), 1e-6) for t in (result.lower, result.upper))

    goods = sorted((s for s in scored if s.label == "good" and safe(s)), key=lambda s: s.score)
    picks = [goods[round(q * (len(goods) - 1))] for q in np.linspace(0.0, 1.0, n_good)] if goods and n_good else []
    defects = sorted((s for s in scored if s.label != "good" and safe(s)), key=lambda s: -s.score)
    by_class: dict[str, list[Scored]] = {}
    for s in defects:
        by_class.setdefault(s.label, []).append(s)
    rounds = [lst[i] for i in range(max((len(v) for v in by_class.values()), default=0))
              for lst in by_class.values() if i < len(lst)]
    picks += rounds[:n_defect]  # one per class first, strongest first
    (staging / "golden").mkdir(exist_ok=True)
    by_rel = {s.rel: s for s in ds.samples}
    out = []
    for i, s in enumerate(dict.fromkeys(picks)):
        name = f"golden/{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', s.label)}.png"
        (staging / name).write_bytes(encode_png(ds.load(by_rel[s.rel])))
        out.append({"file": name, "expected_score": s.score, "label": s.label,
                    "expected_verdict": verdict_of(s.score, result.lower, result.upper)})
    return out


def write_scores(staging: Path, scored: Sequence[Scored]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    plain = any(s.plain is not None for s in scored)  # a verdict head's bundle: the plain engine's scores too
    w.writerow(["file", "sha256", "label", "score", *(["plain_score"] if plain else [])])
    for s in scored:
        w.writerow([s.rel, s.sha256, s.label, repr(s.score), *([repr(s.plain) if s.plain is not None else ""]
                                                             if plain else [])])
    (staging / SCORES_FILE).parent.mkdir(parents=True, exist_ok=True)
    (staging / SCORES_FILE).write_text(buf.getvalue(), encoding="utf-8")


def read_scores(bundle: Bundle) -> list[Scored]:
    path = bundle.path(SCORES_FILE)
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [Scored(rel=r["file"], sha256=r["sha256"], label=r["label"], score=float(r["score"]),
                       plain=float(r["plain_score"]) if r.get("plain_score") else None) for r in csv.DictReader(f)]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import cv2
    import onnx
    import scipy
    import torch

    import lineguard

    return {"python": platform.python_version(), "lineguard": lineguard.__version__, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "scipy": scipy.__version__}


def new_bundle_id(product: str, fingerprint: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', product)[:48]}-{stamp}-{fingerprint[:8]}"
