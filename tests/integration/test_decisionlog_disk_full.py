"""Decision log on real failing disks: /dev/full (every write ENOSPC) and a small full tmpfs.

One WARNING when the disk fails, one INFO when it works again, lines kept in a bounded backlog and
written in order when space returns, what overflows counted, close() never raises.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Verdict
from lineguard.decisionlog import DecisionLog
from lineguard.metrics import DecisionLogMetrics

LOGGER = "lineguard.decisionlog"


def decision(seq: int) -> Decision:
    t = time.monotonic_ns()
    return Decision(seq=seq, part_id=seq + 1, verdict=Verdict.ACCEPT, anomaly_score=0.1, bundle_id="b1",
                    camera_id="cam-a", t_capture_ns=t, t_decided_ns=t)


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    assert v is not None, f"{name}{labels} not exposed"
    return v


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


def wait(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_dev_full_reports_once_keeps_lines_and_close_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    reg = CollectorRegistry()
    dlog = DecisionLog(path=Path("/dev/full"), retry_ms=100, metrics=DecisionLogMetrics(reg))
    t0 = time.monotonic()
    for i in range(300):  # a line every 2 ms for 0.6 s
        dlog.write(decision(i))
        time.sleep(0.002)
    wait(lambda: value(reg, "lineguard_decision_log_backlog_lines") == 300
         and value(reg, "lineguard_decision_log_fault") == 1)
    time.sleep(0.2)  # more failed retries: still one warning
    # the disk is tried once per retry_ms, not once per line
    assert 2 <= dlog.failed_attempts <= (time.monotonic() - t0) / 0.1 + 2, dlog.failed_attempts
    assert value(reg, "lineguard_decision_log_fault") == 1
    assert value(reg, "lineguard_decision_log_fault_episodes_total") == 1
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "ENOSPC" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert not any(r.exc_info for r in caplog.records)
    dlog.close()  # must not raise
    dlog.close()  # idempotent
    errors = records(caplog, logging.ERROR)
    assert len(errors) == 1 and "300 lines could not be written" in errors[0].getMessage()
    assert dlog.unwritten_at_close == 300 and dlog.lost == 300 and dlog.written == 0
    assert value(reg, "lineguard_decision_log_lost_lines_total", reason="shutdown") == 300
    dlog.write(decision(300))  # after close: counted, not raised
    assert value(reg, "lineguard_decision_log_lost_lines_total", reason="closed") == 1


def test_full_disk_defers_lines_and_writes_them_in_order_when_space_returns(
        small_disk: Callable[[int], Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    disk = small_disk(256 * 1024)
    reg = CollectorRegistry()
    path = disk.path / "log" / "decisions.jsonl"
    dlog = DecisionLog(path=path, retry_ms=20, metrics=DecisionLogMetrics(reg))
    for i in range(10):
        dlog.write(decision(i))
    wait(lambda: dlog.written == 10)
    ballast = disk.fill()
    for i in range(10, 210):
        dlog.write(decision(i))
    wait(lambda: value(reg, "lineguard_decision_log_backlog_lines") == 200
         and value(reg, "lineguard_decision_log_fault") == 1)
    assert dlog.written == 10
    assert [r["seq"] for r in lines_of(path)] == list(range(10)), "a failed write leaves only whole lines"
    ballast.unlink()  # space returns
    wait(lambda: dlog.written == 210)
    for i in range(210, 220):
        dlog.write(decision(i))
    dlog.close()
    rows = lines_of(path)
    assert [r["seq"] for r in rows] == list(range(220)), "every line once, in order"
    assert rows[50]["t_utc"] < rows[0]["t_utc"] + 30  # a deferred line keeps the time of its verdict
    assert len(records(caplog, logging.WARNING)) == 1
    infos = [r.getMessage() for r in records(caplog, logging.INFO)]
    assert len(infos) == 1 and "200 lines deferred and written, 0 lost" in infos[0], infos
    assert not records(caplog, logging.ERROR)
    assert value(reg, "lineguard_decision_log_fault_episodes_total") == 1
    assert value(reg, "lineguard_decision_log_fault") == 0
    assert value(reg, "lineguard_decision_log_written_lines_total") == 220
    assert dlog.lost == 0


def test_backlog_overflow_keeps_the_oldest_lines_and_counts_the_rest(
        small_disk: Callable[[int], Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    disk = small_disk(128 * 1024)
    reg = CollectorRegistry()
    path = disk.path / "decisions.jsonl"
    dlog = DecisionLog(path=path, retry_ms=20, backlog_lines=20, metrics=DecisionLogMetrics(reg))
    ballast = disk.fill()
    dlog.write(decision(0))
    wait(lambda: value(reg, "lineguard_decision_log_fault") == 1)
    for i in range(1, 50):
        dlog.write(decision(i))
    wait(lambda: value(reg, "lineguard_decision_log_lost_lines_total", reason="backlog_full") == 30)
    ballast.unlink()
    wait(lambda: value(reg, "lineguard_decision_log_fault") == 0)
    dlog.close()
    assert [r["seq"] for r in lines_of(path)] == list(range(20))
    warnings = [r.getMessage() for r in records(caplog, logging.WARNING)]
    assert len(warnings) == 2 and "backlog of 20 lines full" in warnings[1], warnings  # fault, overflow
    infos = [r.getMessage() for r in records(caplog, logging.INFO)]
    assert len(infos) == 1 and "20 lines deferred and written, 30 lost (backlog full for seq 20..49)" in infos[0]


def test_rotation_and_a_torn_last_line_from_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"seq": -1}\n{"seq": -2, "verd')  # a crash cut the last line
    dlog = DecisionLog(path=path, max_bytes=3000, backups=3, retry_ms=20)
    for i in range(40):
        dlog.write(decision(i))
    dlog.close()
    names = [f"{path.name}.3", f"{path.name}.2", f"{path.name}.1", path.name]
    files = [tmp_path / n for n in names if (tmp_path / n).exists()]
    assert len(files) == 4 and all(p.stat().st_size <= 3000 for p in files[1:])
    seqs, torn = [], []
    for ln in "".join(p.read_text() for p in files).splitlines():
        try:
            seqs.append(json.loads(ln)["seq"])
        except json.JSONDecodeError:
            torn.append(ln)
    assert seqs == [-1, *range(40)]
    assert torn == ['{"seq": -2, "verd'], "the torn line stays alone on its line"


def test_a_log_deleted_or_its_folder_removed_under_the_service_is_created_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    folder = tmp_path / "log"
    path = folder / "decisions.jsonl"
    dlog = DecisionLog(path=path, retry_ms=20)
    dlog.write(decision(0))
    wait(lambda: dlog.written == 1)
    path.unlink()  # an operator "frees space": the next lines must not go into the deleted inode
    dlog.write(decision(1))
    wait(lambda: dlog.written == 2)
    assert [r["seq"] for r in lines_of(path)] == [1]
    folder.rename(tmp_path / "moved")  # the folder is gone: a fault (ENOENT) until it is back
    dlog.write(decision(2))
    wait(lambda: dlog.fault_episodes == 1)
    folder.mkdir()
    wait(lambda: dlog.written == 3)
    dlog.close()
    assert [r["seq"] for r in lines_of(path)] == [2]
    assert [r.levelname for r in caplog.records if r.name == LOGGER] == ["WARNING", "INFO"]


def test_a_folder_that_cannot_be_made_at_start_is_a_fault_not_a_crash(
        small_disk: Callable[[int], Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    disk = small_disk(64 * 1024, nr_inodes=64)
    ballast = disk.fill()
    inodes = disk.fill_inodes()  # not even a folder can be created now
    path = disk.path / "audit" / "decisions.jsonl"
    dlog = DecisionLog(path=path, retry_ms=20)  # must not raise
    dlog.write(decision(0))
    wait(lambda: dlog.fault_episodes == 1)
    ballast.unlink()
    shutil.rmtree(inodes)
    path.parent.mkdir()  # the operator frees the disk and makes the folder
    wait(lambda: dlog.written == 1)
    dlog.close()
    assert [r["seq"] for r in lines_of(path)] == [0]
    assert [r.levelname for r in caplog.records if r.name == LOGGER] == ["WARNING", "INFO"]
