"""`lineguard run` speaks systemd's notify protocol the way lineguard.service (Type=notify,
WatchdogSec) expects: READY=1 once inspecting, WATCHDOG=1 while the loops progress, STOPPING=1
and a clean exit on SIGTERM.

The real console command runs as a child process with a real NOTIFY_SOCKET (a unix datagram
socket this test binds, as systemd does) and WATCHDOG_USEC, on a replay source and a synthetic
bundle.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineguard.ops.testing import LineProcess, write_test_line
from lineguard.plc.sim import free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture()
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer
    folder = tempfile.mkdtemp(prefix="lg-notify-", dir="/tmp")
    path = f"{folder}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()
    Path(path).unlink(missing_ok=True)
    Path(folder).rmdir()


def _collect(sock: socket.socket, until: str, timeout_s: float, into: list[str]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            continue
        into.append(msg)
        if until in msg.split("\n"):
            return True
    return False


def test_ready_watchdog_and_clean_sigterm(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    port = free_port()
    cfg = write_test_line(tmp_path, metrics_port=port)
    # WATCHDOG_USEC = 1 s -> the service pings every 0.5 s (half the period, as sd_notify advises)
    proc = LineProcess.start(["run", "--config", str(cfg)], log_path=tmp_path / "run.log",
                             env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []
    try:
        assert _collect(sock, "READY=1", 60, messages), f"no READY=1: {messages}\n{proc.log()}"
        t_ready = time.monotonic()
        watchdogs_before = sum("WATCHDOG=1" in m for m in messages)
        deadline = t_ready + 3.0
        while time.monotonic() < deadline:
            _collect(sock, "never", 0.2, messages)
        pings = sum("WATCHDOG=1" in m for m in messages) - watchdogs_before
        # 3 s at one ping per 0.5 s: expect ~6; fewer than 3 would starve a 1 s systemd watchdog
        assert pings >= 3, f"only {pings} WATCHDOG=1 in 3 s: {messages}"
        # READY carries a human-readable status for `systemctl status`
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=inspecting with bundle synthetic-1" in ready
    finally:
        rc = proc.terminate(timeout_s=30)
    _collect(sock, "STOPPING=1", 2, messages)
    assert any("STOPPING=1" in m for m in messages), messages
    assert rc == 0, proc.log()
    summary = proc.log()
    assert "service stopped" in summary and "frames " in summary and "decisions " in summary

