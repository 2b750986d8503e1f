"""Golden self-test: the bundle's engines must reproduce the scores and verdicts training recorded.

Sits between loading a bundle and using it: ``load_bundle`` -> ``BundleRunner.from_bundle`` ->
``warmup`` -> :func:`run_golden` -> (empty list) -> the bundle may judge parts. Used by
``lineguard check-bundle`` and by hot swap. A different runtime (TensorRT FP16 vs the ONNX
Runtime CPU that training used) may move scores a little; ``manifest.score_tolerance`` bounds
that, and the verdict must match exactly.

Must never: report success for a bundle without golden images (there would be nothing proven).
"""

from __future__ import annotations

import math

from lineguard.bundle import Bundle
from lineguard.decision import DecisionPolicy, classify, verdict_for_score
from lineguard.engines.runner import BundleRunner
from lineguard.errors import LineGuardError
from lineguard.imageio import read_image


def score_matches(score: float, expected: float, *, rel_tol: float, scale: float) -> bool:
    """``|score - expected| <= rel_tol * max(|expected|, scale)``.

    ``scale`` (the upper threshold's magnitude) keeps the tolerance meaningful for scores near 0,
    where a purely relative bound would demand bit-identical results across runtimes.
    """
    if not math.isfinite(score):
        return False
    return abs(score - expected) <= rel_tol * max(abs(expected), abs(scale), 1e-12)


def run_golden(runner: BundleRunner, bundle: Bundle) -> list[str]:
    """Score every golden image; return one human-readable line per failure (empty = passed)."""
    m = bundle.manifest
    if not m.golden:
        return [f"bundle {m.bundle_id} has no golden images: nothing proves the engines on this box"]
    policy = DecisionPolicy.from_manifest(m)
    failures: list[str] = []
    for g in m.golden:
        try:
            out = runner.infer(read_image(bundle.path(g.file)))
        except LineGuardError as exc:
            failures.append(f"{g.file}: cannot be scored: {exc}")
            continue
        score = out.anomaly_score
        if not score_matches(score, g.expected_score, rel_tol=m.score_tolerance, scale=m.thresholds.upper):
            failures.append(
                f"{g.file}: score {score:.6g} differs from expected {g.expected_score:.6g} "
                f"(tolerance {m.score_tolerance:g} relative) on {runner.provider}"
            )
        verdict = verdict_for_score(score, policy.lower, policy.upper).label
        if verdict != g.expected_verdict:
            failures.append(f"{g.file}: verdict {verdict}, expected {g.expected_verdict} (score {score:.6g})")
        if g.expected_class and verdict != "accept":
            got, conf, _ = classify(out.class_probs, policy)
            if got != g.expected_class:
                failures.append(f"{g.file}: defect class {got or '-'} (p={conf:.3f}), expected {g.expected_class}")
    return failures
