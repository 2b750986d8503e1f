"""Swap requests and their results, and what the control endpoint needs from the controller.

Where it sits: below both the changeover controller (``swap.py``, which runs the requests on its
worker) and the control endpoint (``control.py``, which submits them and waits for the result), so
neither imports the other: the controller hands the endpoint itself as a :class:`SwapControl`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from lineguard.errors import LineGuardError


class SwapFailed(LineGuardError):
    """A swap step failed; ``result`` is the metric label (signature, verification, golden, engine...)."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, slots=True, kw_only=True)
class SwapResult:
    ok: bool
    result: str  # a SWAP_RESULTS value
    source: str
    requested: str  # "recipe 7" / "bundle x"
    bundle_id: str = ""
    previous_id: str = ""
    prepared: str = ""  # "preloaded" or "cold"
    message: str = ""
    swap_ms: float = float("nan")  # request received -> activated

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["swap_ms"] = None if math.isnan(self.swap_ms) else round(self.swap_ms, 3)
        return d


@dataclass(slots=True, kw_only=True)
class SwapRequest:
    source: str  # a SWAP_SOURCES value
    bundle_id: str | None = None
    recipe: int | None = None
    t_ns: int = field(default_factory=time.monotonic_ns)
    done: threading.Event = field(default_factory=threading.Event)
    result: SwapResult | None = None

    @property
    def what(self) -> str:
        return f"bundle {self.bundle_id}" if self.bundle_id is not None else f"recipe {self.recipe}"


class SwapControl(Protocol):
    """What the control endpoint asks of the changeover controller (all thread-safe, none blocks long)."""

    def submit(self, req: SwapRequest) -> SwapRequest: ...
    def start_shadow(self, bundle_id: str) -> dict[str, Any]: ...
    def stop_shadow(self) -> dict[str, Any] | None: ...
    def status(self) -> dict[str, Any]: ...
