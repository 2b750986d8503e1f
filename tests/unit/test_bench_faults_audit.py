"""The fault bench's audit (scripts/faults_lib.py): doubled and shifted parts, parts without a verdict
outside the fault window, the decision log's exactly-once check, log records in a service's stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from faults_lib import Block, Expect, audit, doubled_parts, log_contradicts_plc, log_records, shifted_parts

EXPECT = {1: Expect("accept", 0.05), 2: Expect("reject", 0.9), 3: Expect("unreadable"), 4: Expect("recheck", 0.2)}


def block(part: int, seq: int, verdict: int, score: int, flags: int = 0) -> Block:
    return Block(0.0, part, seq, verdict, score, flags)


def own_blocks() -> list[Block]:
    return [block(1, 1, 1, 50), block(2, 2, 2, 900), block(3, 3, 2, 0, flags=0b10), block(4, 4, 3, 200)]


def line(part: int, verdict: str, score: float | None, *, t: float, reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"part_id": part, "verdict": verdict, "failsafe": bool(reasons), "anomaly_score": score,
            "reasons": list(reasons), "plc": "written", "t_utc": t}


def own_log(t: float = 100.0) -> list[dict[str, Any]]:
    return [line(1, "accept", 0.05, t=t), line(2, "reject", 0.9, t=t),
            line(3, "reject", None, t=t, reasons=("unreadable_frame", "frame id 2: cannot decode")),
            line(4, "recheck", 0.2, t=t)]


def test_every_part_its_own_result_is_clean() -> None:
    a = audit(triggered=[1, 2, 3, 4], blocks=own_blocks(), log=own_log(), expect=EXPECT, fault_windows_utc=[])
    assert (a.answered, a.failsafe, a.doubled, a.shifted, a.unanswered_connected) == (4, 1, 0, 0, 0)
    assert a.log_exactly_once and a.outcomes == {"written": 4}


def test_a_result_written_twice_is_doubled_a_reread_of_the_same_seq_is_not() -> None:
    blocks = [*own_blocks(), block(2, 2, 2, 900), block(4, 9, 3, 200)]
    assert doubled_parts(blocks, [1, 2, 3, 4]) == {4}
    assert doubled_parts(own_blocks(), [1, 2, 2, 3, 4]) == {2}
    a = audit(triggered=[1, 2, 3, 4], blocks=own_blocks(), log=[*own_log(), own_log()[1]], expect=EXPECT,
              fault_windows_utc=[])
    assert a.doubled == 1 and not a.log_exactly_once


def test_ids_shifted_by_one_after_an_unreadable_file_are_caught_at_the_plc_and_in_the_log() -> None:
    # the old behaviour: file 3 skipped, file 4 became part 3
    blocks = [block(1, 1, 1, 50), block(2, 2, 2, 900), block(3, 3, 3, 200)]
    log = [*own_log()[:2], {**own_log()[3], "part_id": 3}]
    assert shifted_parts(blocks, [], EXPECT) == {3}
    assert shifted_parts([], log, EXPECT) == {3}
    a = audit(triggered=[1, 2, 3, 4], blocks=blocks, log=log, expect=EXPECT, fault_windows_utc=[])
    assert a.shifted == 1 and a.unanswered_connected == 1 and not a.log_exactly_once


def test_same_verdict_other_score_is_shifted_deadline_failsafes_are_not_compared() -> None:
    assert shifted_parts([block(1, 1, 1, 70)], [], EXPECT) == {1}
    assert shifted_parts([block(1, 1, 2, 0, flags=0b01)], [], EXPECT) == set()
    assert shifted_parts([block(2, 1, 2, 0, flags=0b10)], [], EXPECT) == {2}, "readable file judged unreadable"
    assert shifted_parts([block(9, 1, 1, 50)], [], EXPECT) == {9}, "an id outside the stream"


def test_parts_missing_inside_the_fault_window_are_not_unanswered_while_connected() -> None:
    log = own_log(t=100.0)
    log[1] = {**log[1], "plc": "missed_deadline", "t_utc": 50.0}
    blocks = [b for b in own_blocks() if b.part_id != 2]
    inside = audit(triggered=[1, 2, 3, 4], blocks=blocks, log=log, expect=EXPECT, fault_windows_utc=[(40.0, 60.0)])
    outside = audit(triggered=[1, 2, 3, 4], blocks=blocks, log=log, expect=EXPECT, fault_windows_utc=[(60.0, 70.0)])
    assert (inside.unanswered_connected, outside.unanswered_connected) == (0, 1)
    assert inside.missed_deadline == 1 and inside.log_exactly_once


def test_a_multi_line_dump_is_one_log_record() -> None:
    err = ("2026-12-06 03:26:33,552 WARNING lineguard.plc.link: fault, last 2 transactions:\n"
           "  write_regs @3 ok\n  read_regs @20 timeout\n"
           "2026-12-06 03:26:39,855 INFO    lineguard.service: service stopped\n")
    assert log_records(err) == 2


def test_a_stale_result_written_after_the_outage_contradicts_the_log() -> None:
    log = own_log()
    log[1] = {**log[1], "plc": "missed_deadline"}  # the log says never written ...
    assert log_contradicts_plc(own_blocks(), log) == {2}  # ... but the PLC got part 2 (written late)
    log[1] = {**log[1], "plc": "unacknowledged"}  # on the wire when the link died: either way
    assert log_contradicts_plc(own_blocks(), log) == set()
    a = audit(triggered=[1, 2, 3, 4], blocks=own_blocks()[2:], log=own_log(), expect=EXPECT, fault_windows_utc=[])
    assert a.log_vs_plc == 2, "parts 1 and 2 logged as written, never received"
