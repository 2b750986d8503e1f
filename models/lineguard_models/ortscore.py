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

    def __init__(self, onnx_path: Path, spec: InputSpec, output: str = "anomaly_score") -> None:
        self.session = cpu_session(onnx_path)
        self.spec = spec
        self.output = output

    def score(self, image: npt.NDArray[Any]) -> float:
        return float(np.max(self.tile_scores(image)))  # image score = the worst tile

    def tile_scores(self, image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The anomaly score of every tile [T] (one on an untiled spec); the edge classifies the arg-max tile."""
        batch, _ = prepare(image, self.spec)
        (scores,) = self.session.run([self.output], {"image": batch})
        return np.asarray(scores, np.float32).reshape(-1)


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


def score_samples(scorer: OrtScorer, ds: Dataset, samples: Sequence[Sample], progress: Progress) -> list[Scored]:
    out = []
    t0 = time.monotonic()
    for i, s in enumerate(samples, 1):
        out.append(Scored(rel=s.rel, sha256=file_sha256(s.path), label=s.label, score=scorer.score(ds.load(s))))
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
