"""What the service sees of the PLC link (``PlcLink`` and ``NullPlcLink`` both provide it).

Sits between the inspection loop (decisions in) and the decision log (one record per part out):
the link reports, through the record sink, what the PLC got for each part, so the decision log
holds every part exactly once whatever happened on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lineguard.contracts import Decision
from lineguard.plc.book import PlcOutcome

# Called once per part, from the link's writer thread (or the caller's, for NullPlcLink): the
# part's decision (a fail-safe one when no verdict came) and what the PLC got. Must not block.
RecordSink = Callable[[Decision, PlcOutcome], None]


class PlcLinkLike(Protocol):
    """What the service sees; ``PlcLink`` and ``NullPlcLink`` both provide it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def expect(self, part_id: int, t_trigger_ns: int) -> None: ...
    def submit(self, decision: Decision) -> None: ...
    def set_record_sink(self, sink: RecordSink) -> None: ...
    def set_status(
        self,
        *,
        ready: bool | None = None,
        fault: bool | None = None,
        degraded: bool | None = None,
        model_loaded: bool | None = None,
        camera_ok: bool | None = None,
    ) -> None: ...
    def set_active_recipe(self, recipe: int) -> None: ...
    def set_defect_classes(self, classes: list[str]) -> None: ...
    def poll_recipe_request(self) -> int | None: ...
    def poll_trigger(self) -> int | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PlcHealth:
    """A snapshot for status pages, ``service.finished()`` and tests."""

    connected: bool
    t_lost_ns: int | None  # monotonic time the current outage was detected, None when connected
    t_last_loss_ns: int | None  # detection time of the most recent outage, kept after recovery
    reconnects: int
    inbox: int  # expect/submit calls not yet taken by the writer
    queued_results: int
    pending_deadlines: int
    last_seq: int
    waiting_records: int = 0  # deadline fail-safes whose record waits for the late verdict
    t_last_progress_ns: int = 0  # monotonic time a result last reached the PLC (acked / written)
    fault_episodes: int = 0
