"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lineguard.plc.sim import PlcSimulator


@pytest.fixture
def sim() -> Iterator[PlcSimulator]:
    """The PLC simulator listening on a free loopback port."""
    s = PlcSimulator().start()
    yield s
    s.stop()
