"""The Source protocol, its counters, pacing, and the registry of source back-ends.

Where it sits: first stage of the edge data flow. A source turns a camera (or files, or a
generator) into :class:`lineguard.contracts.Frame` objects on the acquisition thread; the
composition root builds one with :func:`build_source` from the ``source:`` config and reads it
with ``read(timeout_s)`` or ``frames()``.

Part identity: every part the source knows of becomes exactly one Frame, in order, so part ids
never shift. A part whose image cannot be used (unreadable file, incomplete buffer) is delivered
as a *fault frame* (``Frame.fault`` set, empty image) under its own id; ids missing from the
camera's frame-id sequence (dropped buffers) are delivered as ``missing_frame`` fault frames before
the frame that revealed the gap (:class:`FrameIdTracker`). The service answers fault frames with
the fail-safe verdict at once.

Never: block longer than the timeout it is given, raise on a single bad frame (count it, deliver
it as a fault frame and go on), or import a back-end's third-party package before that back-end
is chosen.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from lineguard.contracts import Frame
from lineguard.errors import SourceError
from lineguard.sources.identity import DEFAULT_MAX_GAP_FAILSAFES, MISSING_FRAME, FrameIdTracker

if TYPE_CHECKING:
    from lineguard.sources.config import SourceConfig

log = logging.getLogger(__name__)

_EMPTY_IMAGE: np.ndarray = np.zeros((0, 0), np.uint8)
_EMPTY_IMAGE.flags.writeable = False

PartIdFn = Callable[[int], int]
"""Maps a frame's ``seq`` to its ``part_id``. The default counts parts from 1; the PLC link can
replace it with the part id latched at the trigger."""


def default_part_id(seq: int) -> int:
    """Part ids count from 1 with the frames (0 is left free to mean "no part")."""
    return seq + 1


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the frames of a source look like, known after ``open()``."""

    camera_id: str
    width: int
    height: int
    channels: int  # 1 (mono, HxW) or 3 (RGB, HxWx3)
    dtype: str  # "uint8" or "uint16"
    max_value: int  # 255, 1023 (Mono10), 4095 (Mono12), 65535; the preprocessing scales by this
    description: str = ""  # e.g. "Machine Vision Games Ltd. Viky serial 0", "replay of 120 files"


@dataclass(frozen=True, slots=True)
class SourceStatsSnapshot:
    """A consistent copy of the counters, safe to hand to another thread."""

    frames: int
    incomplete: int
    dropped: int
    timeouts: int
    unreadable: int
    reconnects: int
    reconnect_failures: int
    connected: bool
    last_frame_ns: int | None
    gap_excess: int = 0
    id_resets: int = 0

    def counts_since(self, earlier: SourceStatsSnapshot) -> dict[str, int]:
        """Counter increments since ``earlier``: what to ``inc()`` on Prometheus counters when
        the metrics are fed from the acquisition loop (counters only, no gauges)."""
        names = ("frames", "incomplete", "dropped", "timeouts", "unreadable", "reconnects", "reconnect_failures",
                 "gap_excess", "id_resets")
        return {name: getattr(self, name) - getattr(earlier, name) for name in names}


@dataclass(slots=True)
class SourceStats:
    """Counters of one source. Written only by the acquisition thread; read from any thread via
    :meth:`snapshot` (the lock makes a snapshot consistent, it is not needed for the writes' sake
    of the GIL but for the reader's)."""

    frames: int = 0  # frames delivered, fault frames included (one per part the source knows of)
    incomplete: int = 0  # buffers the camera delivered incomplete or unusable (fault frames)
    dropped: int = 0  # ids the camera/pacer produced that never reached read() (missing_frame)
    timeouts: int = 0  # read() calls that ended without a frame
    unreadable: int = 0  # replay files that failed to decode (fault frames)
    reconnects: int = 0  # successful reopenings of a lost device
    reconnect_failures: int = 0  # failed reopen attempts
    connected: bool = False
    last_frame_ns: int | None = None  # monotonic time of the last frame, for liveness
    gap_excess: int = 0  # missing ids beyond the per-gap bound: counted, not answered
    id_resets: int = 0  # frame-id counter went backwards (camera restarted): new baseline
    # The last unreadable paths with the reason, for the operator (bounded on purpose).
    unreadable_paths: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=32))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add to named counters in one locked step, e.g. ``add(frames=1, dropped=3)``."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def set_connected(self, connected: bool) -> None:
        with self._lock:
            self.connected = connected

    def snapshot(self) -> SourceStatsSnapshot:
        with self._lock:
            return SourceStatsSnapshot(
                frames=self.frames,
                incomplete=self.incomplete,
                dropped=self.dropped,
                timeouts=self.timeouts,
                unreadable=self.unreadable,
                reconnects=self.reconnects,
                reconnect_failures=self.reconnect_failures,
                connected=self.connected,
                last_frame_ns=self.last_frame_ns,
                gap_excess=self.gap_excess,
                id_resets=self.id_resets,
            )


@runtime_checkable
class Source(Protocol):
    """What the acquisition loop needs from any image source."""

    camera_id: str
    stats: SourceStats

    @property
    def info(self) -> SourceInfo | None:
        """Frame geometry, known after open() (None before, or for a source of mixed sizes)."""

    @property
    def finished(self) -> bool:
        """True once a finite source has delivered its last frame; read() then returns None."""

    def open(self) -> None: ...

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None when none came within ``timeout_s`` (or the source finished)."""

    def frames(self, *, timeout_s: float = 1.0, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Frames until ``stop`` is set or the source finishes; timeouts are skipped."""

    def take_pending(self) -> list[Frame]:
        """Frames already known (a gap, a fault) but not yet read: at shutdown they still need a verdict."""

    def close(self) -> None: ...


class BaseSource:
    """Shared plumbing: frame numbering, part ids, gaps, counters, iteration, context manager.

    Subclasses implement ``open``, ``_read`` and ``close`` and build frames with :meth:`_emit`
    (an image) or :meth:`_emit_fault` (a part without a usable image). Frames that a gap or a
    fault produced ahead of the current one wait in ``_pending`` and are returned first.
    """

    def __init__(
        self,
        *,
        camera_id: str,
        part_id_fn: PartIdFn | None = None,
        max_gap_failsafes: int = DEFAULT_MAX_GAP_FAILSAFES,
    ) -> None:
        self.camera_id = camera_id
        self.stats = SourceStats()
        self._part_id_fn: PartIdFn = part_id_fn or default_part_id
        self._seq = 0
        self._info: SourceInfo | None = None
        self._finished = False
        self._ids = FrameIdTracker(max_gap_failsafes=max_gap_failsafes)
        self._pending: deque[Frame] = deque()

    @classmethod
    def from_config(cls, cfg: Any, *, part_id_fn: PartIdFn | None = None) -> BaseSource:
        """Build the source from its config model; checks files, does not open devices."""
        raise NotImplementedError

    @property
    def info(self) -> SourceInfo | None:
        return self._info

    @property
    def finished(self) -> bool:
        return self._finished and not self._pending

    def open(self) -> None:
        raise NotImplementedError

    def read(self, timeout_s: float) -> Frame | None:
        """Frames a gap or a fault queued come first, in id order; then the back-end's next one."""
        frame = self._pending.popleft() if self._pending else self._read(timeout_s)
        if frame is not None:  # counted when delivered: frames a gap queued are counted as they go out
            with self.stats._lock:
                self.stats.frames += 1
                self.stats.last_frame_ns = frame.t_capture_ns
        return frame

    def _read(self, timeout_s: float) -> Frame | None:
        raise NotImplementedError

    def take_pending(self) -> list[Frame]:
        frames = list(self._pending)
        self._pending.clear()
        with self.stats._lock:
            self.stats.frames += len(frames)
        return frames

    def close(self) -> None:
        raise NotImplementedError

    def _emit(
        self,
        image: np.ndarray,
        *,
        t_capture_ns: int,
        camera_timestamp_ns: int | None = None,
        source_ref: str = "",
        frame_id: int | None = None,
    ) -> Frame:
        """The next frame to deliver for an image with ``frame_id``: a missing id before it (the
        image then waits in ``_pending``) or the image itself."""
        self._account_gap(frame_id, t_capture_ns)
        return self._queue_or_return(
            self._new_frame(image, t_capture_ns, camera_timestamp_ns=camera_timestamp_ns,
                            source_ref=source_ref, frame_id=frame_id)
        )

    def _emit_fault(
        self,
        reason: str,
        *,
        t_capture_ns: int,
        frame_id: int | None,
        source_ref: str = "",
        detail: str = "",
    ) -> Frame:
        """Like :meth:`_emit` for a part that arrived without a usable image (``reason`` is one of
        :data:`FRAME_FAULTS`): it keeps its id and gets the fail-safe verdict downstream."""
        self._account_gap(frame_id, t_capture_ns)
        return self._queue_or_return(
            self._new_frame(_EMPTY_IMAGE, t_capture_ns, source_ref=source_ref, frame_id=frame_id,
                            fault=reason, fault_detail=detail)
        )

    def _end_of_stream(self, next_id: int) -> Frame | None:
        """A finite stream ended before ``next_id``: ids after the last delivered one that were
        skipped (missed slots) still get their ``missing_frame``; returns the first of them."""
        self._account_gap(next_id, time.monotonic_ns())
        return self._pending.popleft() if self._pending else None

    def _queue_or_return(self, frame: Frame) -> Frame:
        if not self._pending:
            return frame
        self._pending.append(frame)
        return self._pending.popleft()

    def _account_gap(self, frame_id: int | None, t_capture_ns: int) -> None:
        """Queue a ``missing_frame`` for every id the tracker says never arrived before ``frame_id``."""
        if frame_id is None:
            return
        gap = self._ids.advance(frame_id)
        if gap.reset:
            self.stats.add(id_resets=1)
            log.warning("camera %s: frame id went back to %d: counter reset (camera restarted?); "
                        "new baseline, no fail-safes synthesized", self.camera_id, frame_id)
            return
        if not gap.missing:
            return
        self.stats.add(dropped=gap.missing, gap_excess=gap.excess)
        if gap.excess:
            # Those parts exist but get no verdict: their part ids are skipped, never reused.
            self._seq += gap.excess
            log.warning("camera %s: %d frame ids missing before %d; the oldest %d get no fail-safe "
                        "(max_gap_failsafes %d)", self.camera_id, gap.missing, frame_id, gap.excess,
                        len(gap.answered))
        for missing_id in gap.answered:
            self._pending.append(self._new_frame(
                _EMPTY_IMAGE, t_capture_ns, frame_id=missing_id, fault=MISSING_FRAME,
                fault_detail=f"frame id {missing_id} never arrived (next id {frame_id})"))

    def _new_frame(
        self,
        image: np.ndarray,
        t_capture_ns: int,
        *,
        camera_timestamp_ns: int | None = None,
        source_ref: str = "",
        frame_id: int | None = None,
        fault: str = "",
        fault_detail: str = "",
    ) -> Frame:
        """Number the frame and ask for its part id (``read`` counts it when it goes out)."""
        seq = self._seq
        self._seq += 1
        frame = Frame(
            seq=seq,
            part_id=self._part_id_fn(seq),
            t_capture_ns=t_capture_ns,
            image=image,
            camera_id=self.camera_id,
            camera_timestamp_ns=camera_timestamp_ns,
            source_ref=source_ref,
            frame_id=frame_id,
            fault=fault,
            fault_detail=fault_detail,
        )
        return frame

    def frames(self, *, timeout_s: float = 1.0, stop: threading.Event | None = None) -> Iterator[Frame]:
        while not (stop is not None and stop.is_set()):
            frame = self.read(timeout_s)
            if frame is not None:
                yield frame
            elif self.finished:
                return

    def __enter__(self) -> BaseSource:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Pacer:
    """Releases frame slots at a fixed rate, with a named policy for a late consumer.

    ``rate_per_s=None`` releases every slot at once (as fast as the consumer reads).
    """

    def __init__(self, *, rate_per_s: float | None, late_policy: str = "keep") -> None:
        self._period_ns = None if rate_per_s is None else round(1e9 / rate_per_s)
        self._late_policy = late_policy
        self._next_due_ns: int | None = None

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the next slot. Returns how many slots were skipped (0 under "keep"), or None
        when the slot is not due within ``timeout_s`` (the caller then returns no frame)."""
        if self._period_ns is None:
            return 0
        now = time.monotonic_ns()
        if self._next_due_ns is None:
            self._next_due_ns = now  # the first frame is due at once
        wait_ns = self._next_due_ns - now
        if wait_ns > timeout_s * 1e9:
            time.sleep(max(timeout_s, 0.0))
            return None
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
            now = time.monotonic_ns()
        skipped = 0
        if self._late_policy == "skip":
            # Like a free-running camera: the slots that passed while nobody read are lost.
            skipped = max(0, (now - self._next_due_ns) // self._period_ns)
            self._next_due_ns += (skipped + 1) * self._period_ns
        else:
            # A ceiling only: never burst to catch up after a slow consumer.
            self._next_due_ns = max(self._next_due_ns + self._period_ns, now)
        return int(skipped)


# type key -> "module:Class". Imported only when chosen, so harvesters loads only for genicam.
REGISTRY: dict[str, str] = {
    "genicam": "lineguard.sources.genicam:GenICamSource",
    "replay": "lineguard.sources.replay:ReplaySource",
    "synthetic": "lineguard.sources.synthetic:SyntheticSource",
}

_INSTALL_HINT: dict[str, str] = {
    "genicam": "the genicam source needs the 'harvesters' and 'genicam' packages "
    "(pip install 'harvesters>=1.4' 'genicam>=1.4') and the camera vendor's GenTL producer (.cti)",
}


def source_class(type_key: str) -> type[BaseSource]:
    """The back-end class for a config ``type``; fails loudly when its packages are missing."""
    try:
        target = REGISTRY[type_key]
    except KeyError:
        raise SourceError(f"unknown source type {type_key!r}; known: {sorted(REGISTRY)}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("lineguard"):
            raise
        hint = _INSTALL_HINT.get(type_key, f"install the package {exc.name!r}")
        raise SourceError(f"source type {type_key!r} is unavailable: {hint}") from exc
    cls: type[BaseSource] = getattr(module, class_name)
    return cls


def build_source(cfg: SourceConfig, *, part_id_fn: PartIdFn | None = None) -> BaseSource:
    """Build (not open) the source described by ``cfg``; call ``open()`` or use ``with``."""
    cls = source_class(cfg.type)
    return cls.from_config(cfg, part_id_fn=part_id_fn)
