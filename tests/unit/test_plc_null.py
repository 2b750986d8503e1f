"""NullPlcLink must stay a drop-in for PlcLink: same public service-facing methods."""

from __future__ import annotations

import inspect

from lineguard.plc import NullPlcLink, PlcLink
from lineguard.plc.testing import decision

SERVICE_API = {
    "start",
    "stop",
    "expect",
    "submit",
    "set_status",
    "set_active_recipe",
    "set_defect_classes",
    "poll_recipe_request",
    "poll_trigger",
    "last_trigger",
}


def test_null_link_has_the_service_api() -> None:
    for name in SERVICE_API:
        real = inspect.signature(getattr(PlcLink, name)).parameters
        null = inspect.signature(getattr(NullPlcLink, name)).parameters
        assert [p for p in null if p != "timeout_s"] == [p for p in real if p != "timeout_s"], name


def test_null_link_accepts_everything() -> None:
    link = NullPlcLink()
    link.start()
    link.expect(1, 0)
    link.submit(decision(1))
    link.set_status(ready=True)
    assert link.poll_trigger() is None and link.poll_recipe_request() is None and link.last_trigger() is None
    assert link.submitted == 1
    link.stop()
