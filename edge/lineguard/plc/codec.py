"""Pure conversions between Python values and 16-bit Modbus register words.

Used by the register map (LineGuard side) and by the PLC simulator (PLC side) so both ends
agree by construction; tests cross-check it against an independent server (umodbus).
Never does I/O.
"""

from __future__ import annotations

import math
import struct

from lineguard.plc.config import DataType

_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.U16: (0, 0xFFFF),
    DataType.I16: (-0x8000, 0x7FFF),
    DataType.U32: (0, 0xFFFFFFFF),
    DataType.I32: (-0x80000000, 0x7FFFFFFF),
}
_PACK = {DataType.U16: ">H", DataType.I16: ">h", DataType.U32: ">I", DataType.I32: ">i", DataType.F32: ">f"}


def int_range(dtype: DataType) -> tuple[int, int]:
    """Inclusive integer range of an integer data type (floats have none)."""
    return _RANGES[dtype]


def clamp_int(value: int, dtype: DataType) -> int:
    """Clamp instead of raising: a verdict must still go out when a value is out of range."""
    lo, hi = _RANGES[dtype]
    return max(lo, min(hi, value))


def encode(value: float, dtype: DataType, word_order: str = "big") -> list[int]:
    """Encode one value into 1 or 2 register words (big-endian bytes inside each word)."""
    if dtype is DataType.F32:
        raw = struct.pack(">f", float(value))
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot encode {value} as {dtype.value}")
        raw = struct.pack(_PACK[dtype], clamp_int(int(value), dtype))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    return words


def decode(words: list[int], dtype: DataType, word_order: str = "big") -> float | int:
    """Decode 1 or 2 register words; the inverse of :func:`encode`."""
    if len(words) != dtype.words:
        raise ValueError(f"{dtype.value} needs {dtype.words} words, got {len(words)}")
    ordered = list(reversed(words)) if word_order == "little" else list(words)
    raw = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in ordered)
    value: float | int = struct.unpack(_PACK[dtype], raw)[0]
    return value


def scale_score(score: float, dtype: DataType, scale: float) -> float | int:
    """Anomaly score as the PLC sees it: raw for f32, round(score*scale) clamped for integers.

    NaN (no score, e.g. engine failure) becomes the top of the range so it can never look "good".
    """
    if dtype is DataType.F32:
        return score
    lo, hi = _RANGES[dtype]
    if not math.isfinite(score):
        return hi
    return max(lo, min(hi, round(score * scale)))
