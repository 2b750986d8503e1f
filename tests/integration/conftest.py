"""Fixtures shared by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from lineguard.plc.sim import PlcSimulator


@pytest.fixture
def sim() -> Iterator[PlcSimulator]:
    """The PLC simulator listening on a free loopback port."""
    s = PlcSimulator().start()
    yield s
    s.stop()


Waiter = Callable[..., None]


def _poll(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def wait_for() -> Waiter:
    """``wait_for(cond, timeout_s=5.0)``: poll until ``cond()`` holds, fail the test after the timeout."""
    return _poll
