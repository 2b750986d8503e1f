"""``NullPlcLink``: the PLC link stand-in for runs without a PLC (replay, bench, demo without sim).

Same API as ``PlcLink`` (``PlcLinkLike``); accepts everything, writes nothing, never blocks. Each
submitted decision goes straight to the record sink with ``plc: none``.
"""

from __future__ import annotations

from lineguard.contracts import Decision
from lineguard.plc.api import RecordSink
from lineguard.plc.book import PlcOutcome


class NullPlcLink:
    """Stand-in for runs without a PLC: same API, accepts everything, writes nothing."""

    def __init__(self) -> None:
        self.submitted = 0
        self._sink: RecordSink | None = None
        self.outcomes: dict[str, int] = {}
        self.left_at_stop: dict[str, int] = {}

    def set_record_sink(self, sink: RecordSink) -> None:
        self._sink = sink

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def expect(self, part_id: int, t_trigger_ns: int) -> None:
        return None

    def submit(self, decision: Decision) -> None:
        self.submitted += 1
        if self._sink is not None:
            self._sink(decision, PlcOutcome.NONE)

    def set_status(
        self,
        *,
        ready: bool | None = None,
        fault: bool | None = None,
        degraded: bool | None = None,
        model_loaded: bool | None = None,
        camera_ok: bool | None = None,
    ) -> None:
        return None

    def set_active_recipe(self, recipe: int) -> None:
        return None

    def set_defect_classes(self, classes: list[str]) -> None:
        return None

    def poll_recipe_request(self) -> int | None:
        return None

    def poll_trigger(self) -> int | None:
        return None

    def last_trigger(self) -> tuple[int, int] | None:
        return None
