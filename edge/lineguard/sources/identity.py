"""Part identity of a source: fault-frame reason tokens and the frame-id gap tracker.

Where it sits: inside every source (lineguard.sources.base), between the camera's frame ids and
the Frames handed to the service. Pure: no I/O, no clock. The rule it serves: every part the
camera took gets exactly one verdict under its own part id, and part ids never shift.
"""

from __future__ import annotations

from dataclasses import dataclass

# Fail-safe reason tokens of fault frames (Frame.fault; also metric label values, lineguard.metrics).
UNREADABLE_FRAME = "unreadable_frame"  # a file / payload arrived but does not decode
INCOMPLETE_FRAME = "incomplete_frame"  # the camera delivered the buffer incomplete or unusable
MISSING_FRAME = "missing_frame"  # the id never arrived (dropped buffer, a gap in the frame ids)
FRAME_FAULTS = (UNREADABLE_FRAME, INCOMPLETE_FRAME, MISSING_FRAME)
# A gap larger than this is not answered id by id: the excess is counted (stats.gap_excess), so a
# counter glitch cannot flood the PLC with thousands of fail-safes for parts long gone.
DEFAULT_MAX_GAP_FAILSAFES = 64
# GigE Vision 1.x block ids are 16 bit and wrap 65535 -> 1 (0 is never used).
_BLOCK_ID_WRAP = 0xFFFF


@dataclass(frozen=True, slots=True)
class IdGap:
    """What one new frame id says about the ids before it (see :meth:`FrameIdTracker.advance`)."""

    answered: tuple[int, ...] = ()  # missing ids to answer with a fail-safe, in order
    excess: int = 0  # missing ids before ``answered`` beyond the bound: counted only
    reset: bool = False  # the counter went backwards or repeated: new baseline, nothing missing

    @property
    def missing(self) -> int:
        return len(self.answered) + self.excess


class FrameIdTracker:
    """Finds the frame ids that never arrived; pure, one per source, reset at every (re)open.

    Ids normally increase by one. A jump forward means the ids in between were taken by the
    camera and lost (dropped or discarded buffers); the last ``max_gap_failsafes`` of them are
    answered, the older excess is counted. A 16-bit block-id wrap (65535 -> 1) within that bound is
    a gap like any other. Any other step backwards (or the same id again) is a counter reset (the
    camera restarted or was reconfigured): the new id is the baseline and nothing is synthesized,
    because ids from two counter epochs say nothing about the parts in between.
    """

    def __init__(self, *, max_gap_failsafes: int = DEFAULT_MAX_GAP_FAILSAFES) -> None:
        if max_gap_failsafes < 0:
            raise ValueError("max_gap_failsafes must be >= 0")
        self._max = max_gap_failsafes
        self.last: int | None = None

    def reset(self) -> None:
        """Forget the last id: the next one is a baseline (call after the device was (re)opened)."""
        self.last = None

    def start_at(self, first_id: int) -> None:
        """The first id is known (a replay starts at position 0): a gap before it counts too."""
        self.last = first_id - 1

    def expected(self) -> int | None:
        """The id the next frame should carry, or None before the first."""
        if self.last is None:
            return None
        return 1 if self.last == _BLOCK_ID_WRAP else self.last + 1

    def advance(self, frame_id: int) -> IdGap:
        """Take the id of the frame that just arrived; say which ids before it never came."""
        last, self.last = self.last, frame_id
        if last is None or frame_id == last + 1:
            return IdGap()
        if frame_id > last:
            ids: list[int] | range = range(last + 1, frame_id)
        elif last <= _BLOCK_ID_WRAP and frame_id >= 1 and (_BLOCK_ID_WRAP - last) + (frame_id - 1) <= self._max:
            ids = [*range(last + 1, _BLOCK_ID_WRAP + 1), *range(1, frame_id)]  # 16-bit wrap, small gap
        else:
            return IdGap(reset=True)
        excess = max(0, len(ids) - self._max)
        return IdGap(answered=tuple(ids[excess:]), excess=excess)
