"""``NullPlcLink``: the PLC link stand-in for runs without a PLC (replay, bench, demo without sim).

Same API as ``PlcLink`` (``PlcLinkLike``); accepts everything, writes nothing, never blocks.
"""

from __future__ import annotations

from lineguard.contracts import Decision


class NullPlcLink:
    """Stand-in for runs without a PLC: same API, accepts everything, writes nothing."""

    def __init__(self) -> None:
        self.submitted = 0

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def expect(self, part_id: int, t_trigger_ns: int) -> None:
        return None

    def submit(self, decision: Decision) -> None:
        self.submitted += 1

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
