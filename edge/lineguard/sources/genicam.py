"""GenICam source: any GenTL producer (.cti) through harvesters.

Where it sits: head of the edge pipeline on a real line. ``read(timeout_s)`` waits for one
buffer (never longer than the timeout), copies its pixels into an owned Frame image and queues
the buffer back to the producer before returning, on every path (``with buffer:``). A device
that fails is closed and reopened with exponential backoff inside ``read`` (counted in
``stats.reconnects``); the process never has to restart for a cable pull.

Identity: ``Frame.frame_id`` is the producer's frame (block) id. An incomplete or unusable buffer
is that part: it becomes an ``incomplete_frame`` fault frame under its frame id. harvesters
discards an incomplete buffer inside ``try_fetch``: it queues it back and only then fires
INCOMPLETE_BUFFER, when GenTL no longer lets anyone read the buffer's info (viky: "buffer ... is
currently owned by the acquisition engine"), so the id is the next expected one; producers deliver
in id order, so it is exact unless ids were also dropped right before it (then the two reasons
may be swapped between those ids; counts and part ids stay right). Ids missing between two buffers
(dropped by the producer or the network) become ``missing_frame`` fault frames, bounded by
``max_gap_failsafes`` per gap. A reopen starts a new id baseline; ids going backwards without a
reopen are a counter reset (logged, counted), never a gap. Parts triggered while the camera was
lost have no id at all: the PLC's deadline answers them (docs/plc.md).

Never: hold a camera buffer after ``read`` returns, raise on a single bad buffer, or touch a
camera feature the config did not ask for (a missing feature that *was* asked for fails loudly).
Call ``read``/``close`` from one thread (harvesters objects are not thread-safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from genicam.genapi import GenericException as GenApiError
from genicam.gentl import GenericException as GenTLError
from harvesters.core import Callback, Harvester, ImageAcquirer

from lineguard.contracts import Frame
from lineguard.errors import ImageError, SourceError
from lineguard.sources import pixels
from lineguard.sources.base import BaseSource, PartIdFn, SourceInfo
from lineguard.sources.config import GenICamSourceConfig
from lineguard.sources.genicam_nodes import configure_device, describe_node_map, read_settings
from lineguard.sources.identity import INCOMPLETE_FRAME
from lineguard.sources.partwarn import PartWarnings

log = logging.getLogger(__name__)
# one look at the producer's event queue when polling (harvesters needs a timeout > 0; 0 = forever)
_POLL_LOOK_S = 0.0001

# Anything harvesters raises while talking to a device: GenTL/GenApi errors, and the plain
# Python errors harvesters 1.4 lets through on a torn-down acquirer (IndexError, AttributeError).
DEVICE_ERRORS: tuple[type[BaseException], ...] = (GenTLError, GenApiError, IndexError, AttributeError)
# harvesters.create() reports "no such device" as ValueError; a reopen may also fail our checks.
_OPEN_ERRORS: tuple[type[BaseException], ...] = (*DEVICE_ERRORS, ValueError)
_REOPEN_ERRORS: tuple[type[BaseException], ...] = (*DEVICE_ERRORS, SourceError)


def viky_cti_path() -> Path | None:
    """The GenTL simulator shipped inside the ``genicam`` wheel (tests, demos), if present."""
    import genicam

    path = Path(genicam.__file__).parent / "viky.cti"
    return path if path.is_file() else None


@dataclass(frozen=True, slots=True)
class DeviceDescription:
    """One device as the producer lists it (``lineguard cameras``)."""

    index: int
    vendor: str
    model: str
    serial: str
    device_id: str
    display_name: str
    access_status: int


def _info_str(info: Any, name: str) -> str:
    try:
        value = getattr(info, name)
    except DEVICE_ERRORS:
        return ""
    return "" if value is None else str(value)


def list_devices(cti_path: str | Path) -> list[DeviceDescription]:
    """Every device the producer sees; loads and releases the producer."""
    with open_harvester(cti_path) as harvester:
        return _describe_devices(harvester)


def _describe_devices(harvester: Any) -> list[DeviceDescription]:
    return [
        DeviceDescription(
            index=i,
            vendor=_info_str(d, "vendor"),
            model=_info_str(d, "model"),
            serial=_info_str(d, "serial_number"),
            device_id=_info_str(d, "id_"),
            display_name=_info_str(d, "display_name"),
            access_status=int(_info_str(d, "access_status") or -1),
        )
        for i, d in enumerate(harvester.device_info_list)
    ]


@contextmanager
def open_harvester(cti_path: str | Path) -> Iterator[Any]:
    """A Harvester with one producer loaded; always reset (producer released) on exit."""
    harvester = _load_producer(cti_path)
    try:
        yield harvester
    finally:
        _reset_quietly(harvester)


def describe_features(cti_path: str | Path, index: int) -> dict[str, str]:
    """Open device ``index`` briefly and report what each config setting can be on it."""
    with open_harvester(cti_path) as harvester:
        try:
            ia = harvester.create(index)
        except _OPEN_ERRORS as exc:
            return {"error": f"cannot open (in use by another program?): {exc}"}
        try:
            return describe_node_map(ia.remote_device.node_map)
        finally:
            _destroy_quietly(ia)


def _load_producer(cti_path: str | Path) -> Any:
    path = Path(cti_path)
    if not path.is_file():
        raise SourceError(f"GenTL producer {str(path)!r} not found; set source.cti_path to the vendor's .cti")
    harvester = Harvester()
    try:
        harvester.add_file(str(path))
        harvester.update()
    except DEVICE_ERRORS as exc:
        _reset_quietly(harvester)
        raise SourceError(f"cannot load GenTL producer {path}: {exc}") from exc
    return harvester


def _reset_quietly(harvester: Any) -> None:
    try:
        harvester.reset()
    except DEVICE_ERRORS as exc:  # releasing a dead producer may fail; nothing left to save
        log.debug("harvester reset failed: %s", exc)


def select_device(devices: list[DeviceDescription], *, serial: str | None, model: str | None) -> int:
    """Index of the device matching serial and/or model (first device when neither is given)."""
    matches = [d for d in devices if (serial is None or d.serial == serial) and (model is None or d.model == model)]
    seen = ", ".join(f"{d.vendor} {d.model} serial {d.serial}" for d in devices) or "none"
    if not matches:
        raise SourceError(f"no camera with serial={serial!r} model={model!r}; the producer sees: {seen}")
    if len(matches) > 1 and (serial is not None or model is not None):
        log.warning("%d cameras match model=%r; taking serial %s", len(matches), model, matches[0].serial)
    return matches[0].index


class _IncompleteCounter(Callback):  # type: ignore[misc]  # harvesters is untyped
    """harvesters' INCOMPLETE_BUFFER callback: it queues the buffer back itself, we count and
    answer the part (``on_incomplete`` runs on the reading thread, inside ``try_fetch``).

    It must subclass harvesters' ``Callback``: harvesters raises TypeError from ``try_fetch`` for
    any other object, which would end the acquisition loop at the first incomplete buffer."""

    def __init__(self, on_incomplete: Callable[[object | None], None]) -> None:
        self._on_incomplete = on_incomplete
        self.count = 0

    def emit(self, context: object | None = None) -> None:  # harvesters passes its ImageAcquirer
        self.count += 1
        self._on_incomplete(context)


class GenICamSource(BaseSource):
    """One GenICam camera: configured at open, streamed, reopened with backoff when lost."""

    def __init__(self, *, cfg: GenICamSourceConfig, part_id_fn: PartIdFn | None = None) -> None:
        super().__init__(camera_id=cfg.camera_id, part_id_fn=part_id_fn, max_gap_failsafes=cfg.max_gap_failsafes)
        self._cfg = cfg
        self._harvester: Any = None
        self._ia: Any = None
        self._incomplete = _IncompleteCounter(self._on_incomplete)
        self._warnings = PartWarnings(log, "incomplete or unusable buffers")  # a dropping camera: no flood
        self._backoff_s = cfg.reconnect_initial_ms / 1000.0
        self._next_attempt_ns = 0
        self._lost = False
        self._closed = True
        self._last_progress_ns = 0
        self.device: DeviceDescription | None = None

    @classmethod
    def from_config(cls, cfg: GenICamSourceConfig, *, part_id_fn: PartIdFn | None = None) -> GenICamSource:
        if not Path(cfg.cti_path).is_file():
            raise SourceError(f"GenTL producer {cfg.cti_path!r} not found; set source.cti_path")
        return cls(cfg=cfg, part_id_fn=part_id_fn)

    # ----- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Load the producer, open and configure the camera, start streaming. Fails loudly."""
        self._open_device()
        self._closed = False
        self._lost = False

    def close(self) -> None:
        """Stop streaming and release camera and producer; never raises."""
        self._closed = True
        self._teardown()
        self._warnings.flush()

    def trigger(self) -> None:
        """Fire one software trigger (``trigger: software``)."""
        if self._cfg.trigger != "software":
            raise SourceError("trigger() needs source.trigger: software")
        if self._ia is None:
            raise SourceError("camera is not open (lost or closed); the frame cannot be triggered")
        try:
            self._ia.remote_device.node_map.TriggerSoftware.execute()
        except DEVICE_ERRORS as exc:
            raise SourceError(f"software trigger failed: {exc}") from exc

    @property
    def last_frame_id(self) -> int | None:
        """The producer's frame id of the last frame read (None before the first, or without ids)."""
        return self._ids.last

    def camera_settings(self) -> dict[str, Any]:
        """The camera's current imaging settings read back from it (``lineguard capture`` sidecars)."""
        if self._ia is None:
            return {}
        try:
            return read_settings(self._ia.remote_device.node_map)
        except DEVICE_ERRORS as exc:  # a camera lost mid-capture: the frame is still good
            log.warning("camera %s: cannot read its settings back: %s", self.camera_id, exc)
            return {}

    def _open_device(self) -> None:
        cfg = self._cfg
        harvester = _load_producer(cfg.cti_path)
        try:
            devices = _describe_devices(harvester)
            index = select_device(devices, serial=cfg.serial, model=cfg.model)
            try:
                ia = harvester.create(index)
            except _OPEN_ERRORS as exc:
                raise SourceError(f"cannot open camera {devices[index].display_name}: {exc}") from exc
            try:
                pixel_format, width, height = configure_device(ia.remote_device.node_map, cfg)
                ia.num_buffers = cfg.num_buffers
                if cfg.poll_interval_us:
                    # each event wait returns at once; read() sleeps between polls, GIL released
                    ia.timeout_period_on_update_event_data_call = 0
                ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, self._incomplete)
                ia.start()
            except BaseException:
                _destroy_quietly(ia)
                raise
        except BaseException:
            _reset_quietly(harvester)
            raise
        self._harvester, self._ia, self.device = harvester, ia, devices[index]
        self._ids.reset()  # a (re)opened stream numbers its frames afresh: the next id is the baseline
        self._last_progress_ns = time.monotonic_ns()
        lay = pixels.layout(pixel_format)
        self._info = SourceInfo(
            camera_id=self.camera_id,
            width=width,
            height=height,
            channels=lay.channels_out,
            dtype=np.dtype(lay.dtype).name,
            max_value=pixels.max_value(pixel_format),
            description=f"{self.device.vendor} {self.device.model} serial {self.device.serial} {pixel_format}",
        )
        self.stats.set_connected(True)
        log.info("camera %s open: %s %dx%d", self.camera_id, self._info.description, width, height)

    def _teardown(self) -> None:
        ia, harvester = self._ia, self._harvester
        self._ia = self._harvester = None
        self.stats.set_connected(False)
        if ia is not None:
            _destroy_quietly(ia)
        if harvester is not None:
            _reset_quietly(harvester)

    # ----- acquisition -----------------------------------------------------------------------

    def _read(self, timeout_s: float) -> Frame | None:
        if self._closed:
            raise SourceError("GenICamSource.read() on a closed source; call open() first")
        deadline_ns = time.monotonic_ns() + int(max(timeout_s, 0.0) * 1e9)
        if self._lost and not self._reconnect(deadline_ns):
            return None
        poll_s = self._cfg.poll_interval_us / 1e6
        while True:
            remaining_s = (deadline_ns - time.monotonic_ns()) / 1e9
            # harvesters treats timeout=0 as "wait forever": never pass less than 1 ms (polling: one
            # look at the event queue, 0.1 ms).
            wait_s = _POLL_LOOK_S if poll_s else min(max(remaining_s, 0.001), self._cfg.fetch_timeout_ms / 1000.0)
            incomplete_before = self._incomplete.count
            try:
                buffer = self._ia.try_fetch(timeout=wait_s)
            except DEVICE_ERRORS as exc:
                self._on_lost(exc)
                return None
            t_capture_ns = time.monotonic_ns()
            if buffer is not None:
                return self._frame_from(buffer, t_capture_ns)
            if self._pending:  # an incomplete buffer (and any gap before it) became fault frames
                return self._pending.popleft()
            if self._incomplete.count == incomplete_before:
                # Not an incomplete buffer: the wait ran out.
                if t_capture_ns >= deadline_ns:
                    self.stats.add(timeouts=1)
                    self._check_stall(t_capture_ns)
                    return None
                if poll_s:
                    time.sleep(poll_s)  # releases the GIL: the PLC link and the inspection thread run now
                continue
            if time.monotonic_ns() >= deadline_ns:
                self.stats.add(timeouts=1)
                return None

    def _frame_from(self, buffer: Any, t_capture_ns: int) -> Frame:
        """Copy the pixels out and queue the buffer back (the ``with`` does, on every path).

        A buffer without a usable image is still its part: an ``incomplete_frame`` fault frame."""
        with buffer:
            self._last_progress_ns = t_capture_ns
            frame_id = _buffer_frame_id(buffer)
            components = buffer.payload.components if buffer.payload is not None else []
            problem = "buffer has no image component" if not components else ""
            image: np.ndarray | None = None
            if components:
                comp = components[0]
                try:
                    image = pixels.to_image(comp.data, comp.data_format, comp.width, comp.height)
                except ImageError as exc:
                    problem = str(exc)
            camera_ts = _buffer_timestamp_ns(buffer)
        if image is None:
            # A short or odd buffer is one bad part, not a broken camera: answer it and go on.
            self.stats.add(incomplete=1)
            self._warnings.warn("camera %s: frame id %s unusable, fail-safe: %s", self.camera_id, frame_id,
                                problem)
            return self._emit_fault(INCOMPLETE_FRAME, t_capture_ns=t_capture_ns, frame_id=frame_id, detail=problem)
        return self._emit(image, t_capture_ns=t_capture_ns, camera_timestamp_ns=camera_ts, frame_id=frame_id)

    def _on_incomplete(self, _acquirer: object | None) -> None:
        """harvesters discarded an incomplete buffer inside try_fetch: answer that part now."""
        self.stats.add(incomplete=1)
        # The buffer is back with the producer, its info unreadable: the next id in order is the one.
        frame_id = self._ids.expected()
        self._warnings.warn("camera %s: incomplete buffer (frame id %s), fail-safe", self.camera_id, frame_id)
        frame = self._emit_fault(INCOMPLETE_FRAME, t_capture_ns=time.monotonic_ns(), frame_id=frame_id,
                                 detail="the producer delivered the buffer incomplete")
        self._pending.appendleft(frame)  # _emit_fault returned the oldest queued frame: put it back first

    def _check_stall(self, now_ns: int) -> None:
        stall_ms = self._cfg.stall_reconnect_ms
        if stall_ms is not None and now_ns - self._last_progress_ns > stall_ms * 1_000_000:
            self._on_lost(SourceError(f"no frame for {stall_ms} ms in free run"))

    # ----- loss and reconnect ----------------------------------------------------------------

    def _on_lost(self, exc: BaseException) -> None:
        log.error("camera %s lost (%s: %s); reopening with backoff", self.camera_id, type(exc).__name__, exc)
        self._teardown()
        self._lost = True
        self._backoff_s = self._cfg.reconnect_initial_ms / 1000.0
        self._next_attempt_ns = time.monotonic_ns() + int(self._backoff_s * 1e9)

    def _reconnect(self, deadline_ns: int) -> bool:
        """Try to reopen when the backoff allows, waiting at most until ``deadline_ns``."""
        now = time.monotonic_ns()
        if now < self._next_attempt_ns:
            time.sleep(max(0, min(self._next_attempt_ns, deadline_ns) - now) / 1e9)
            if time.monotonic_ns() < self._next_attempt_ns:
                self.stats.add(timeouts=1)
                return False
        try:
            self._open_device()
        except _REOPEN_ERRORS as exc:
            self.stats.add(reconnect_failures=1)
            self._backoff_s = min(self._backoff_s * 2.0, self._cfg.reconnect_max_ms / 1000.0)
            self._next_attempt_ns = time.monotonic_ns() + int(self._backoff_s * 1e9)
            log.warning("camera %s reopen failed (%s); next try in %.1f s", self.camera_id, exc, self._backoff_s)
            return False
        self._lost = False
        self.stats.add(reconnects=1)
        log.info("camera %s reconnected", self.camera_id)
        return True


def _destroy_quietly(ia: Any) -> None:
    for step in (ia.stop, ia.destroy):
        try:
            step()
        except DEVICE_ERRORS as exc:  # a lost device cannot be stopped cleanly; release the rest
            log.debug("acquirer %s failed: %s", step.__name__, exc)


def _buffer_timestamp_ns(buffer: Any) -> int | None:
    """The camera's timestamp in ns, or None when the producer has none (viky reports 0)."""
    try:
        return int(buffer.module.timestamp_ns) or None
    except DEVICE_ERRORS:
        pass
    try:
        ticks = int(buffer.module.timestamp)
        freq = int(buffer.module.parent.parent.timestamp_frequency)
    except DEVICE_ERRORS:
        return None
    return ticks * 1_000_000_000 // freq if ticks and freq > 0 else None


def _buffer_frame_id(buffer: Any) -> int | None:
    try:
        return int(buffer.module.frame_id)
    except DEVICE_ERRORS:
        return None
