"""One error hierarchy for LineGuard.

Every adapter turns third-party failures (OpenCV, ONNX Runtime, harvesters, pymodbus, pyzmq)
into one of these with ``raise ... from exc`` so callers handle one family and the message
says what to do.
"""

from __future__ import annotations


class LineGuardError(Exception):
    """Base of every error LineGuard raises on purpose."""


class ConfigError(LineGuardError):
    """The configuration file is missing, malformed or inconsistent."""


class DatasetError(LineGuardError):
    """A dataset folder does not follow the contract or holds unusable files."""


class ImageError(LineGuardError):
    """An image cannot be read or does not match the expected size / pixel format."""


class BundleError(LineGuardError):
    """A model bundle is incomplete, tampered with, or fails its self-test."""


class SelfTestError(BundleError):
    """A verified bundle's engines do not reproduce its golden scores on this runtime."""


class EngineError(LineGuardError):
    """An inference engine cannot be built or failed on a frame."""


class SourceError(LineGuardError):
    """The image source (camera, replay) failed."""


class CalibrationError(LineGuardError):
    """Calibration cannot produce a trustworthy threshold from the data given."""


class PlcError(LineGuardError):
    """A Modbus transaction failed (transport error, timeout or exception response)."""


class PublisherError(LineGuardError):
    """The uncertain-frame publisher or the sink failed."""
