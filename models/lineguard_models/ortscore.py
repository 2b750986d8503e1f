"""ONNX Runtime scoring of dataset images, and the engine inputs the banks are fitted on.

Where it sits: the bottom of the training side's scoring path, below everything that scores or
fits -- ``pipeline`` (calibration scores of a new bundle, ``lineguard calibrate``), ``crossfit``
(out-of-fold scores), ``autoconfig`` (candidate recipes), ``shared`` (export checks) -- so their
imports run one way. Images go through ``lineguard.preprocess.prepare``, the exact path the edge
runs, so a score here is the score the line will compute.

Must never: import a module above it (pipeline, classifier, shared, crossfit, autoconfig).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from lineguard.preprocess import InputSpec, prepare
from lineguard_models.augment import CameraProfile
from lineguard_models.bank_augment import BankAugmentConfig, bank_variants
from lineguard_models.data import Dataset, Sample

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scored:
    """One calibration image and its ONNX Runtime score."""

    rel: str
    sha256: str
    label: str
    score: float
    plain: float | None = None  # the plain anomaly engine's score where a verdict head fused its opinion into score


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the identity of a calibration or training image)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cpu_session(onnx_path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for training-side checks (scoring, calibration, export checks)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OrtScorer:
    """The exported graph in ONNX Runtime on the CPU, fed exactly like the edge feeds it."""

    def __init__(self, onnx_path: Path, spec: InputSpec, plain_output: str | None = None) -> None:
        self.session = cpu_session(onnx_path)
        self.spec = spec
        self.plain_output = plain_output  # a verdict head's graph with the bank's own score as a second output

    def score(self, image: npt.NDArray[Any]) -> float:
        return float(np.max(self.tile_scores(image)))  # image score = the worst tile

    def tile_scores(self, image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The anomaly score of every tile [T] (one on an untiled spec); the edge classifies the arg-max tile."""
        return self.scores(image)[0]

    def scores(self, image: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], float | None]:
        """(every tile's anomaly score, the plain engine's score where ``plain_output`` names it), one run."""
        batch, _ = prepare(image, self.spec)
        names = ["anomaly_score", *([self.plain_output] if self.plain_output else [])]
        out = self.session.run(names, {"image": batch})
        return np.asarray(out[0], np.float32).reshape(-1), float(np.max(out[1])) if self.plain_output else None


def engine_p50_ms(onnx_path: Path, batch: npt.NDArray[np.float32], runs: int, *,
                  output: str = "anomaly_score") -> float:
    """Median wall time of one engine run (input ``image``, up to ``output``) on one prepared frame (ONNX
    Runtime, 2 CPU threads, as :func:`cpu_session`), after 3 warm-up runs: what ``autoprice`` prices candidates
    with, and what the classifier's per-line choice takes as the line's anomaly engine and its candidates'
    classifier graphs."""
    session = cpu_session(onnx_path)
    for _ in range(3):
        session.run([output], {"image": batch})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run([output], {"image": batch})
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def by_label(scored: Sequence[Scored], *, plain: bool = False
             ) -> tuple[npt.NDArray[np.float64], dict[str, list[float]]]:
    """(good scores, defect scores per class) of calibration images, the plain engine's where ``plain``."""
    value = (lambda s: s.plain) if plain else (lambda s: s.score)
    defects: dict[str, list[float]] = {}
    for s in scored:
        if s.label != "good":
            defects.setdefault(s.label, []).append(value(s))
    return np.array([value(s) for s in scored if s.label == "good"], np.float64), defects


def score_samples(scorer: OrtScorer, ds: Dataset, samples: Sequence[Sample], progress: Progress) -> list[Scored]:
    out = []
    t0 = time.monotonic()
    for i, s in enumerate(samples, 1):
        tiles, plain = scorer.scores(ds.load(s))
        out.append(Scored(rel=s.rel, sha256=file_sha256(s.path), label=s.label, score=float(np.max(tiles)),
                          plain=plain))
        if i % 20 == 0 or i == len(samples):
            progress(f"scored {i}/{len(samples)} calibration images with ONNX Runtime ({time.monotonic() - t0:.1f} s)")
    return out


def iter_batches(ds: Dataset, samples: Sequence[Sample], spec: InputSpec, *, profile: CameraProfile | None = None,
                 bank: BankAugmentConfig | None = None, seed: int = 0) -> Iterator[npt.NDArray[np.float32]]:
    """Engine inputs of the good training images; with a profile and ``bank``, each image is followed
    by its camera-profile variants (``bank_augment``), made in raw units before preprocessing."""
    for index, s in enumerate(samples):
        image = ds.load(s)
        if profile is None or bank is None:
            yield prepare(image, spec)[0]  # tiles of one image are independent training samples
            continue
        for variant in bank_variants(image, profile, bank, seed=seed, index=index):
            yield prepare(variant, spec)[0]
