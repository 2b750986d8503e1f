"""Applying a GenICamSourceConfig to a camera's node map (SFNC feature names).

Where it sits: called by :class:`lineguard.sources.genicam.GenICamSource` after the device is
opened and before streaming starts (and again after each reconnect, so a power-cycled camera
comes back with the same settings).

Never: silently ignore a setting the config asked for. A camera without the feature, or with a
value out of its range, fails with a SourceError that names the feature and what the camera
offers. Settings left at None are not touched at all.
"""

from __future__ import annotations

import logging
from typing import Any

from genicam.genapi import GenericException as GenApiError
from genicam.genapi import is_writable

from lineguard.errors import SourceError
from lineguard.sources import pixels
from lineguard.sources.config import GenICamSourceConfig

log = logging.getLogger(__name__)


def _node(node_map: Any, *names: str, why: str) -> Any:
    """The first of ``names`` the camera implements; SourceError naming ``why`` when none is."""
    for name in names:
        if node_map.has_node(name):
            return node_map.get_node(name)
    raise SourceError(f"the camera has no {' / '.join(names)} feature, needed for {why}; remove it from the config")


def _set(node_map: Any, value: object, *names: str, why: str) -> None:
    node = _node(node_map, *names, why=why)
    try:
        if not is_writable(node):
            raise SourceError(f"camera feature {names[0]} is not writable now (needed for {why})")
        node.value = value
    except GenApiError as exc:
        raise SourceError(f"cannot set {names[0]}={value!r} for {why}: {_range_hint(node)}{exc}") from exc


def _set_if_present(node_map: Any, name: str, value: object) -> None:
    """Companion switches (ExposureAuto=Off, ...) that exist on some cameras only."""
    if node_map.has_node(name):
        node = node_map.get_node(name)
        try:
            if is_writable(node):
                node.value = value
        except GenApiError as exc:
            log.warning("camera: could not set %s=%r: %s", name, value, exc)


def _range_hint(node: Any) -> str:
    try:
        return f"camera range [{node.min}, {node.max}] step {node.inc}; "
    except (GenApiError, AttributeError):
        pass
    try:
        return f"camera offers {list(node.symbolics)}; "
    except (GenApiError, AttributeError):
        return ""


def configure_device(node_map: Any, cfg: GenICamSourceConfig) -> tuple[str, int, int]:
    """Apply the config; returns the pixel format, width and height the camera will stream."""
    if cfg.pixel_format is not None:
        _set(node_map, cfg.pixel_format, "PixelFormat", why="pixel_format")
    _configure_roi(node_map, cfg)
    if cfg.exposure_us is not None:
        _set_if_present(node_map, "ExposureAuto", "Off")
        _set(node_map, float(cfg.exposure_us), "ExposureTime", "ExposureTimeAbs", why="exposure_us")
    if cfg.gain_db is not None:
        _set_if_present(node_map, "GainAuto", "Off")
        _set_if_present(node_map, "GainSelector", "All")
        _set(node_map, float(cfg.gain_db), "Gain", why="gain_db")
    if cfg.frame_rate_hz is not None:
        _set_if_present(node_map, "AcquisitionFrameRateEnable", True)
        _set(node_map, float(cfg.frame_rate_hz), "AcquisitionFrameRate", "AcquisitionFrameRateAbs", why="frame_rate_hz")
    _configure_trigger(node_map, cfg)
    pixel_format = str(_node(node_map, "PixelFormat", why="reading the pixel format").value)
    pixels.layout(pixel_format)  # fails loudly here, not at the first frame
    width = int(_node(node_map, "Width", why="reading the width").value)
    height = int(_node(node_map, "Height", why="reading the height").value)
    return pixel_format, width, height


def _configure_roi(node_map: Any, cfg: GenICamSourceConfig) -> None:
    # Offsets go to 0 first: a new width may not fit beside the old offset (cameras check
    # Width + OffsetX <= WidthMax on every write).
    if cfg.offset_x is not None:
        _set(node_map, 0, "OffsetX", why="offset_x")
    if cfg.offset_y is not None:
        _set(node_map, 0, "OffsetY", why="offset_y")
    if cfg.width is not None:
        _set(node_map, cfg.width, "Width", why="width")
    if cfg.height is not None:
        _set(node_map, cfg.height, "Height", why="height")
    if cfg.offset_x:
        _set(node_map, cfg.offset_x, "OffsetX", why="offset_x")
    if cfg.offset_y:
        _set(node_map, cfg.offset_y, "OffsetY", why="offset_y")


def _configure_trigger(node_map: Any, cfg: GenICamSourceConfig) -> None:
    if cfg.trigger == "free_run":
        # A camera without TriggerMode can only free-run: nothing to switch off.
        if node_map.has_node("TriggerMode"):
            _set_if_present(node_map, "TriggerSelector", "FrameStart")
            _set(node_map, "Off", "TriggerMode", why="trigger: free_run")
        return
    why = f"trigger: {cfg.trigger}"
    _node(node_map, "TriggerMode", why=why)  # fail before touching anything else
    _set_if_present(node_map, "TriggerSelector", "FrameStart")
    _set(node_map, "On", "TriggerMode", why=why)
    if cfg.trigger == "software":
        _set(node_map, "Software", "TriggerSource", why=why)
        _node(node_map, "TriggerSoftware", why=why)
    else:
        _set(node_map, cfg.trigger_line, "TriggerSource", why=why)
        _set(node_map, cfg.trigger_activation, "TriggerActivation", why=why)


# Features ``lineguard cameras --features`` reports: config field -> SFNC node names tried.
_DESCRIBED: dict[str, tuple[str, ...]] = {
    "pixel_format": ("PixelFormat",),
    "width": ("Width",),
    "height": ("Height",),
    "offset_x": ("OffsetX",),
    "offset_y": ("OffsetY",),
    "exposure_us": ("ExposureTime", "ExposureTimeAbs"),
    "gain_db": ("Gain",),
    "frame_rate_hz": ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"),
    "trigger (TriggerMode)": ("TriggerMode",),
    "trigger_line (TriggerSource)": ("TriggerSource",),
}


def describe_node_map(node_map: Any) -> dict[str, str]:
    """What each config setting can be on this camera ("not available" where it has no node)."""
    out: dict[str, str] = {}
    for key, names in _DESCRIBED.items():
        name = next((n for n in names if node_map.has_node(n)), None)
        if name is None:
            out[key] = "not available"
            continue
        node = node_map.get_node(name)
        try:
            current = node.value
        except (GenApiError, AttributeError):
            current = "?"
        hint = _range_hint(node).rstrip("; ")
        if key == "pixel_format":
            usable = [s for s in node.symbolics if s in pixels.PIXEL_FORMATS]
            hint = f"camera offers {list(node.symbolics)}, LineGuard converts {usable}"
        out[key] = f"{current} ({hint})" if hint else str(current)
    return out


# Read back into a capture's sidecar (``lineguard capture``): what the camera was really set to.
_READ_BACK: tuple[str, ...] = (
    "PixelFormat", "Width", "Height", "OffsetX", "OffsetY", "ExposureTime", "ExposureTimeAbs", "ExposureAuto",
    "Gain", "GainAuto", "AcquisitionFrameRate", "AcquisitionFrameRateAbs", "TriggerMode", "TriggerSource",
    "TriggerActivation", "DeviceFirmwareVersion",
)


def read_settings(node_map: Any) -> dict[str, Any]:
    """The camera's current value of each imaging feature it has (absent features are left out)."""
    out: dict[str, Any] = {}
    for name in _READ_BACK:
        if not node_map.has_node(name):
            continue
        try:
            value = node_map.get_node(name).value
        except (GenApiError, AttributeError):  # not readable now (e.g. locked while streaming)
            continue
        out[name] = value if isinstance(value, (int, float, bool)) else str(value)
    return out
