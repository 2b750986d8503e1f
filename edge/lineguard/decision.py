"""Decision stage: EngineOutput + the bundle's thresholds -> Decision (accept / reject / recheck).

Data flow: engines -> ``EngineOutput`` -> :func:`decide` -> ``Decision`` -> PLC writer, publisher,
metrics, decision log. Pure: no I/O, no config files, and no clock except when a fail-safe is
issued without a time (callers normally pass ``t_decided_ns`` from ``time.monotonic_ns()``).
Everything the audit needs travels in the ``Decision``: bundle id, score, class, confidence and
reasons.

Rules (thresholds come from the bundle's calibration, never from here):

* score < lower -> ACCEPT; score >= upper -> REJECT; in between -> RECHECK (the uncertainty band).
* With a classifier and a REJECT / RECHECK: the arg-max class is reported; when its probability is
  below that class's ``min_confidence`` the defect is ``"unknown"`` (the verdict stays as it is,
  reason ``unknown_defect``) so a person labels it and the next model learns it. Either way the
  arg-max class travels as ``class_guess`` with its probability as ``class_confidence`` (and, for an
  unknown defect, as the detail ``class_guess=<name>`` in the reasons, which the sink header carries):
  a part the anomaly stage only sends to recheck still shows the person rechecking it the
  classifier's best guess. ACCEPT never runs the classifier (the accept path's latency is unchanged).
* A frame that cannot be judged (unreadable, wrong size, engine error, NaN score, missed
  deadline, no bundle) gets :func:`failsafe_decision`: ``Verdict.FAILSAFE``, ``failsafe=True``
  and the reason. The PLC link maps that code to what the line wants (``PlcConfig.failsafe_verdict``,
  default reject), so an unjudged part is never silently accepted.

``reasons[0]`` is always a short token (usable as a metric label: ``below_lower``,
``in_uncertainty_band``, ``at_or_above_upper``, ``unknown_defect`` or a fail-safe reason); later
entries are human-readable details. Must never: accept a part whose score is not a finite number.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lineguard.bundle import Manifest
from lineguard.contracts import Decision, EngineOutput, Frame, Verdict
from lineguard.errors import ImageError

UNKNOWN_CLASS = "unknown"

# reasons[0] tokens of a judged frame
BELOW_LOWER = "below_lower"
IN_BAND = "in_uncertainty_band"
AT_OR_ABOVE_UPPER = "at_or_above_upper"
UNKNOWN_DEFECT = "unknown_defect"
# reasons detail naming the arg-max class of an unknown defect (wire format v1 carries it in `reasons`)
CLASS_GUESS_PREFIX = "class_guess="
# reasons[0] tokens of a fail-safe frame (the same names as lineguard.metrics.FAILSAFE_REASONS)
FAILSAFE_REASONS = (
    "deadline", "corrupt_frame", "wrong_size", "engine_error", "no_bundle",
    "unreadable_frame", "incomplete_frame", "missing_frame", "queue_full", "shutdown",
)
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionPolicy:
    """What the decision needs from the active bundle; build with :meth:`from_manifest`."""

    bundle_id: str
    lower: float
    upper: float
    classes: tuple[str, ...] = ()
    min_confidence: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)) or self.lower > self.upper:
            raise ValueError(f"thresholds must be finite with lower <= upper, got {self.lower}, {self.upper}")
        missing = [c for c in self.classes if c not in self.min_confidence]
        if missing:
            raise ValueError(f"classes without min_confidence: {missing}")

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> DecisionPolicy:
        clf = manifest.classifier
        return cls(
            bundle_id=manifest.bundle_id,
            lower=manifest.thresholds.lower,
            upper=manifest.thresholds.upper,
            classes=tuple(clf.classes) if clf else (),
            min_confidence=dict(clf.min_confidence) if clf else {},
        )


def band_width(lower: float, upper: float) -> float:
    """The unit of "near a threshold" for the data loop (publisher, label book, shift selection): the
    uncertainty band's width, or 10 % of the reject threshold's magnitude when the bundle has no band
    (``lower == upper``)."""
    return upper - lower if upper > lower else max(abs(upper) * 0.1, 1e-9)


def verdict_for_score(score: float, lower: float, upper: float) -> Verdict:
    """ACCEPT below ``lower``, REJECT at or above ``upper``, RECHECK in between.

    Raises ``ValueError`` for a non-finite score: NaN compares false with everything and would
    otherwise fall through to a verdict nobody chose.
    """
    if not math.isfinite(score):
        raise ValueError(f"anomaly score {score} is not a finite number")
    if score < lower:
        return Verdict.ACCEPT
    if score >= upper:
        return Verdict.REJECT
    return Verdict.RECHECK


def _score_reason(verdict: Verdict, score: float, policy: DecisionPolicy) -> tuple[str, str]:
    if verdict is Verdict.ACCEPT:
        return BELOW_LOWER, f"score {score:.6g} < lower {policy.lower:.6g}"
    if verdict is Verdict.REJECT:
        return AT_OR_ABOVE_UPPER, f"score {score:.6g} >= upper {policy.upper:.6g}"
    return IN_BAND, f"score {score:.6g} in [{policy.lower:.6g}, {policy.upper:.6g})"


def classify(
    probs: npt.NDArray[np.float32] | None, policy: DecisionPolicy
) -> tuple[str, float, tuple[str, ...]]:
    """(defect class, its probability, reasons) from the classifier output; pure.

    No classifier in the bundle -> ("", nan, ()). Probabilities that do not match the class list
    or are not finite -> "unknown" with a reason, never a guessed class.
    """
    if not policy.classes:
        return "", float("nan"), ()
    if probs is None:
        return UNKNOWN_CLASS, float("nan"), (UNKNOWN_DEFECT, "classifier produced no probabilities")
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size != len(policy.classes) or not np.all(np.isfinite(p)):
        return UNKNOWN_CLASS, float("nan"), (UNKNOWN_DEFECT, f"invalid class probabilities {p.tolist()}")
    best = int(np.argmax(p))
    name, conf = policy.classes[best], float(p[best])
    floor = policy.min_confidence[name]
    if conf < floor:
        return UNKNOWN_CLASS, conf, (UNKNOWN_DEFECT, f"best class {name} p={conf:.3f} < min_confidence {floor:.3f}",
                                     f"{CLASS_GUESS_PREFIX}{name}")
    return name, conf, (f"class {name} p={conf:.3f}",)


def class_guess_of(reasons: tuple[str, ...] | list[str], defect_class: str) -> str:
    """The classifier's best guess from a decision's (or a sink header's) class and reasons; pure.

    A recognised class is its own guess; for ``"unknown"`` the ``class_guess=<name>`` detail that
    :func:`classify` adds names the arg-max class ("" when there is none, e.g. invalid probabilities).
    """
    if defect_class and defect_class != UNKNOWN_CLASS:
        return defect_class
    for r in reasons:
        if r.startswith(CLASS_GUESS_PREFIX):
            return r[len(CLASS_GUESS_PREFIX):]
    return ""


def decide(
    output: EngineOutput, frame: Frame, policy: DecisionPolicy | Manifest, *, t_decided_ns: int
) -> Decision:
    """Judge one frame. A non-finite score yields the fail-safe decision, never a verdict.

    ``policy`` may be the active bundle's manifest (converted per call, a few microseconds) or a
    :class:`DecisionPolicy` built once at bundle load.
    """
    if isinstance(policy, Manifest):
        policy = DecisionPolicy.from_manifest(policy)
    score = float(output.anomaly_score)
    try:
        verdict = verdict_for_score(score, policy.lower, policy.upper)
    except ValueError as exc:
        return failsafe_decision(frame, policy.bundle_id, "engine_error", str(exc),
                                 t_decided_ns=t_decided_ns, timings_ms=output.timings_ms)
    reasons: tuple[str, ...] = _score_reason(verdict, score, policy)
    defect_class, confidence, guess = "", float("nan"), ""
    if verdict is not Verdict.ACCEPT:
        defect_class, confidence, class_reasons = classify(output.class_probs, policy)
        guess = class_guess_of(class_reasons, defect_class)
        # unknown_defect goes first: it is the actionable token (label this image)
        unknown = defect_class == UNKNOWN_CLASS
        reasons = (*class_reasons, *reasons) if unknown else (*reasons, *class_reasons)
    return Decision(
        seq=frame.seq, part_id=frame.part_id, verdict=verdict, anomaly_score=score,
        bundle_id=policy.bundle_id, camera_id=frame.camera_id, t_capture_ns=frame.t_capture_ns,
        t_decided_ns=t_decided_ns, defect_class=defect_class, class_confidence=confidence,
        class_guess=guess, reasons=reasons, failsafe=False, timings_ms=dict(output.timings_ms),
    )


def failsafe_decision(
    frame: Frame,
    bundle_id: str,
    reason: str,
    detail: str = "",
    *,
    t_decided_ns: int | None = None,
    timings_ms: Mapping[str, float] | None = None,
) -> Decision:
    """The decision for a frame that could not be judged: ``Verdict.FAILSAFE``, ``failsafe=True``.

    ``reason`` is a short token (``reasons[0]``, used as a metric label), preferably one of
    :data:`FAILSAFE_REASONS`; the service may add its own (``queue_full``, ``shutdown``).
    ``t_decided_ns`` defaults to ``time.monotonic_ns()`` now: a fail-safe is decided the moment
    it is issued. The PLC link turns the FAILSAFE code into the line's configured verdict
    (``PlcConfig.failsafe_verdict``, default reject).
    """
    if not _TOKEN.fullmatch(reason):
        raise ValueError(f"fail-safe reason must be a short lowercase token, got {reason!r}")
    return Decision(
        seq=frame.seq, part_id=frame.part_id, verdict=Verdict.FAILSAFE, anomaly_score=float("nan"),
        bundle_id=bundle_id, camera_id=frame.camera_id, t_capture_ns=frame.t_capture_ns,
        t_decided_ns=time.monotonic_ns() if t_decided_ns is None else t_decided_ns,
        reasons=(reason, detail) if detail else (reason,), failsafe=True, timings_ms=dict(timings_ms or {}),
    )


def failsafe_reason(exc: BaseException) -> str:
    """The fail-safe reason token for an exception raised while judging a frame.

    An :class:`ImageError` (undecodable, wrong pixel format or size) is ``corrupt_frame``; anything
    else, :class:`EngineError` included, is ``engine_error``. Callers that know more (a missed
    deadline, no active bundle) pass their own reason to :func:`failsafe_decision`.
    """
    return "corrupt_frame" if isinstance(exc, ImageError) else "engine_error"


def is_uncertain(decision: Decision) -> bool:
    """True when a person should see this frame: RECHECK, an unknown defect, or a fail-safe.

    These frames go to the collection sink for labelling; confident accepts and rejects do not.
    """
    return (
        decision.verdict in (Verdict.RECHECK, Verdict.FAILSAFE)
        or decision.failsafe
        or decision.defect_class == UNKNOWN_CLASS
    )
