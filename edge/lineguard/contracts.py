"""Frozen dataclasses at the stage boundaries of the edge pipeline.

source -> Frame -> preprocess/engines -> EngineOutput -> decision -> Decision -> outputs.
Nothing here does I/O; these are the only shapes that cross thread boundaries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


class Verdict(enum.IntEnum):
    """Verdict codes; the integer values are the PLC's verdict register codes (docs/plc.md)."""

    ACCEPT = 1
    REJECT = 2
    RECHECK = 3
    FAILSAFE = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Frame:
    """One triggered part as the source saw it. ``image`` is HxW (mono) or HxWx3 (RGB order),
    uint8 or uint16.

    Identity: ``seq`` counts every part the source knows of (images, unreadable files, incomplete
    buffers and ids missing from the camera's sequence alike), so ``part_id`` never shifts when one
    of them cannot be judged. ``frame_id`` is the identity the line gives the frame: the GenICam
    frame/block id, the replay file's position in the replayed stream, the synthetic index.

    A frame with ``fault`` set arrived (or is known to be missing) but has no usable image: ``image``
    is empty and ``fault`` is the fail-safe reason token (``unreadable_frame``, ``incomplete_frame``,
    ``missing_frame``); the service answers it with the fail-safe verdict at once.
    """

    seq: int
    part_id: int
    t_capture_ns: int  # time.monotonic_ns() when the frame became available to LineGuard
    image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
    camera_id: str
    camera_timestamp_ns: int | None = None  # the camera's own clock, when it has one
    source_ref: str = ""  # e.g. the file path for replayed images
    frame_id: int | None = None  # camera frame/block id, replay stream position; None when unknown
    fault: str = ""  # "" for a usable image, else the fail-safe reason token
    fault_detail: str = ""  # human-readable: which file, what the decoder said


@dataclass(frozen=True, slots=True)
class EngineOutput:
    """What the engines of a bundle produced for one frame, bound by output name."""

    anomaly_score: float
    anomaly_map: npt.NDArray[np.float32] | None = None
    class_probs: npt.NDArray[np.float32] | None = None  # aligned with the bundle's class list
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one frame, with everything an audit needs."""

    seq: int
    part_id: int
    verdict: Verdict
    anomaly_score: float
    bundle_id: str
    camera_id: str
    t_capture_ns: int
    t_decided_ns: int
    defect_class: str = ""  # "" when none / no classifier, "unknown" for an unrecognised defect
    class_confidence: float = float("nan")
    # the classifier's arg-max class whenever it ran on a flagged part (reject or recheck), also when
    # defect_class is "unknown": the person rechecking the part sees the best guess (issue 16)
    class_guess: str = ""
    reasons: tuple[str, ...] = ()
    failsafe: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return (self.t_decided_ns - self.t_capture_ns) / 1e6
