"""The goods-only criterion of automatic configuration: synthetic defects on the line's own goods.

Data flow (``autoconfig._fold_scores`` when the dataset has no defect images): each out-of-fold good
image -> :func:`pseudo_defect` (``synth.py``'s scratch, pit, crack or stain in turn, in the image's own
pixel format) -> the fold's ONNX scorer -> :class:`ortscore.Scored` rows labelled :data:`PSEUDO`, which
stand in for defects when candidates are compared and never calibrate a bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard.preprocess import InputSpec
from lineguard_models.data import Dataset, Sample
from lineguard_models.ortscore import OrtScorer, Scored

PSEUDO = "synthetic"  # label of the synthetic defects in the goods-only criterion


def pseudo_defect(image: npt.NDArray[Any], max_value: int, kind_index: int, seed: int) -> npt.NDArray[Any]:
    """A synthetic defect (``synth.py``'s scratch, pit, crack or stain in turn) drawn on a good image,
    in the image's own pixel format: the goods-only criterion's stand-in for a defect."""
    from lineguard_models.synth import DEFECT_KINDS, draw_defect

    kind = DEFECT_KINDS[kind_index % len(DEFECT_KINDS)]
    rng = np.random.default_rng([seed, kind_index, 7])
    f = image.astype(np.float32) / float(max_value)
    if f.ndim == 3 and f.shape[2] == 1:
        f = f[:, :, 0]
    out = draw_defect(rng, np.ascontiguousarray(f), kind, 0.6)
    return np.round(np.clip(out, 0.0, 1.0) * max_value).reshape(image.shape).astype(image.dtype)


def pseudo_scored(scorer: OrtScorer, ds: Dataset, held: Sequence[Sample], spec: InputSpec,
                  seed: int) -> list[Scored]:
    """Scores of a synthetic defect drawn on each of ``held`` (label :data:`PSEUDO`)."""
    return [Scored(rel=f"{s.rel}#{PSEUDO}", sha256="", label=PSEUDO,
                   score=scorer.score(pseudo_defect(ds.load(s), spec.max_value, i, seed)))
            for i, s in enumerate(held)]
