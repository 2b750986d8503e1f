"""ResultBook: deadlines, fail-safe, late/duplicate verdicts, buffer overflow, both handshakes."""

from __future__ import annotations

import dataclasses

from lineguard.contracts import Decision, Verdict
from lineguard.plc.book import LATE_VERDICT_WAIT_NS, Outcome, PlcOutcome, ResultBook
from lineguard.plc.regmap import FLAG_DEADLINE_FAILSAFE, FLAG_DECISION_FAILSAFE

MS = 1_000_000


def _book(*, ack: bool = True, capacity: int = 8) -> ResultBook:
    return ResultBook(
        deadline_ns=100 * MS,
        failsafe_verdict=Verdict.REJECT,
        capacity=capacity,
        acknowledged=ack,
        class_codes={"scratch": 1, "dent": 2},
    )


def _dec(part_id: int, verdict: Verdict = Verdict.ACCEPT, defect: str = "", failsafe: bool = False) -> Decision:
    return Decision(
        seq=part_id,
        part_id=part_id,
        verdict=verdict,
        anomaly_score=0.3,
        bundle_id="b",
        camera_id="c",
        t_capture_ns=0,
        t_decided_ns=0,
        defect_class=defect,
        failsafe=failsafe,
    )


def _drain(book: ResultBook) -> list[tuple[int, int, int]]:
    """Write + ack everything queued; returns (part_id, verdict, flags) in wire order."""
    out = []
    while (r := book.to_write()) is not None:
        out.append((r.part_id, r.verdict, r.flags))
        book.mark_written(r.seq)
        book.ack(r.seq)
    return out


def test_verdict_before_deadline_is_written_once() -> None:
    b = _book()
    b.expect(1, 0)
    assert [e.outcome for e in b.submit(_dec(1, Verdict.REJECT, "dent"), 50 * MS, 50 * MS)] == [Outcome.QUEUED]
    assert b.expire(10_000 * MS) == []  # answered parts never fire
    r = b.to_write()
    assert r is not None and (r.verdict, r.defect_code, r.flags) == (2, 2, 0)
    assert _drain(b) == [(1, 2, 0)]


def test_deadline_fires_failsafe_and_late_verdict_is_not_written() -> None:
    b = _book()
    b.expect(1, 0)
    assert b.next_deadline_ns() == 100 * MS
    assert b.expire(99 * MS) == []
    [ev] = b.expire(100 * MS)
    assert ev.outcome is Outcome.FAILSAFE_QUEUED
    assert [e.outcome for e in b.submit(_dec(1), 150 * MS, 150 * MS)] == [Outcome.LATE]
    assert _drain(b) == [(1, int(Verdict.REJECT), FLAG_DEADLINE_FAILSAFE)]
    assert b.next_deadline_ns() is None


def test_submit_timestamp_decides_not_processing_time() -> None:
    b = _book()
    b.expect(1, 0)
    b.expect(2, 0)
    # submitted in time, processed by a lagging writer after the deadline: the real verdict wins
    assert b.submit(_dec(1), 99 * MS, 300 * MS)[0].outcome is Outcome.QUEUED
    # submitted after the deadline but before the writer ran expire(): fail-safe wins, verdict is late
    assert [e.outcome for e in b.submit(_dec(2), 101 * MS, 300 * MS)] == [Outcome.FAILSAFE_QUEUED, Outcome.LATE]
    assert b.expire(300 * MS) == []
    assert _drain(b) == [(1, 1, 0), (2, 2, FLAG_DEADLINE_FAILSAFE)]


def test_duplicate_verdicts_and_duplicate_expects_are_ignored() -> None:
    b = _book()
    b.expect(1, 0)
    b.expect(1, 50 * MS)  # the service and the trigger poller both announce the part
    b.submit(_dec(1), 10 * MS, 10 * MS)
    assert b.submit(_dec(1, Verdict.REJECT), 20 * MS, 20 * MS)[0].outcome is Outcome.DUPLICATE
    b.expect(1, 30 * MS)  # an answered part is not re-armed
    assert b.expire(10_000 * MS) == []
    assert _drain(b) == [(1, 1, 0)]


def test_unexpected_parts_are_written_without_deadline() -> None:
    b = _book()
    b.submit(_dec(5, Verdict.RECHECK, "mystery"), 0, 0)
    r = b.to_write()
    assert r is not None and (r.verdict, r.defect_code) == (3, 255)  # unknown class code


def test_recheck_of_an_unknown_defect_carries_the_guess_code_and_confidence() -> None:
    b = _book()
    d = dataclasses.replace(_dec(6, Verdict.RECHECK, "unknown"), class_guess="dent", class_confidence=0.42)
    b.submit(d, 0, 0)
    r = b.to_write()
    assert r is not None and (r.verdict, r.defect_code, r.guess_code) == (3, 255, 2)
    assert r.confidence == 0.42
    b.expect(7, 0)
    b.expire(1_000 * MS)  # a deadline fail-safe has no guess
    _drain(b)


def test_decision_failsafe_flag() -> None:
    b = _book()
    b.submit(_dec(5, Verdict.FAILSAFE, failsafe=True), 0, 0)
    # a decision-stage fail-safe is written as the configured fail-safe verdict (reject here), flagged bit1
    assert _drain(b) == [(5, int(Verdict.REJECT), FLAG_DECISION_FAILSAFE)]


def test_ack_mode_waits_for_the_matching_ack() -> None:
    b = _book()
    for pid in (1, 2):
        b.submit(_dec(pid), 0, 0)
    r1 = b.to_write()
    assert r1 is not None
    b.mark_written(r1.seq)
    assert b.to_write() is None and b.awaiting_ack
    assert not b.ack(r1.seq - 1)  # a stale ack does not advance
    b.connection_lost()
    r1_again = b.to_write()
    assert r1_again is not None and r1_again.seq == r1.seq  # re-written with the same seq
    b.mark_written(r1.seq)
    assert b.ack(r1.seq)
    r2 = b.to_write()
    assert r2 is not None and r2.part_id == 2 and r2.seq == r1.seq + 1


def test_overflow_when_plc_stops_acking() -> None:
    b = _book(capacity=3)
    outcomes = []
    for pid in range(1, 6):
        b.expect(pid, 0)
        outcomes += [e.outcome for e in b.submit(_dec(pid), 1, 1)]
    assert outcomes == [Outcome.QUEUED] * 3 + [Outcome.OVERFLOW] * 2
    assert b.expire(10_000 * MS) == []  # overflowed parts are answered (counted), no second fail-safe
    assert [p for p, _, _ in _drain(b)] == [1, 2, 3]


def test_fire_and_forget_does_not_wait() -> None:
    b = _book(ack=False, capacity=2)
    for pid in (1, 2):
        b.submit(_dec(pid), 0, 0)
    seqs = []
    while (r := b.to_write()) is not None:
        seqs.append(r.seq)
        b.mark_written(r.seq)
    assert seqs == [1, 2] and b.queued == 0


def test_numbering_continues_after_the_plc_value() -> None:
    b = _book()
    b.set_start_seq(65535)
    b.submit(_dec(1), 0, 0)
    r = b.to_write()
    assert r is not None and r.seq == 1


# ---- one record per part: what the PLC got (the decision log's plc field) ------------------------
def _records(b: ResultBook) -> dict[int, tuple[PlcOutcome, bool]]:
    """part_id -> (outcome, has a decision); fails on a second record for a part."""
    out: dict[int, tuple[PlcOutcome, bool]] = {}
    for r in b.take_done():
        assert r.part_id not in out, r
        out[r.part_id] = (r.plc, r.decision is not None)
    return out


def test_every_part_gets_exactly_one_record() -> None:
    b = _book(capacity=2)
    for pid in (1, 2, 3):
        b.expect(pid, 0)
        b.submit(_dec(pid), 10 * MS, 10 * MS)  # 3 overflows the buffer of 2
    r1 = b.to_write()
    assert r1 is not None
    b.mark_written(r1.seq)
    assert _records(b) == {3: (PlcOutcome.OVERFLOW, True)}  # 1 waits for its ack
    b.ack(r1.seq)
    r2 = b.to_write()
    assert r2 is not None
    b.drop_head(r2.seq)  # the PLC refused it
    assert _records(b) == {1: (PlcOutcome.WRITTEN, True), 2: (PlcOutcome.PLC_REJECTED, True)}
    assert b.take_done() == []


def test_deadline_failsafe_record_carries_the_late_verdict() -> None:
    b = _book()
    b.expect(1, 0)
    b.expect(2, 0)
    b.expire(100 * MS)
    _drain(b)
    assert _records(b) == {}  # both fail-safes reached the PLC; the records wait for the verdicts
    b.submit(_dec(1, Verdict.REJECT), 150 * MS, 150 * MS)
    [rec] = b.take_done()
    assert (rec.part_id, rec.plc, rec.decision is not None) == (1, PlcOutcome.FAILSAFE_DEADLINE, True)
    assert rec.decision is not None and rec.decision.verdict is Verdict.REJECT
    b.expire(100 * MS + LATE_VERDICT_WAIT_NS)  # part 2's verdict never comes: logged without one
    assert _records(b) == {2: (PlcOutcome.FAILSAFE_DEADLINE, False)}
    b.submit(_dec(2), 100 * MS + LATE_VERDICT_WAIT_NS + 1, 100 * MS + LATE_VERDICT_WAIT_NS + 1)
    assert b.take_done() == []  # too late even for the log: never a second record


def test_link_down_results_past_their_deadline_are_never_written_late() -> None:
    b = _book()
    for pid in (1, 2, 3):
        b.expect(pid, pid * 10 * MS)  # deadlines 110, 120, 130 ms
        b.submit(_dec(pid), pid * 10 * MS, pid * 10 * MS)
    r1 = b.to_write()
    assert r1 is not None
    b.mark_written(r1.seq)
    b.connection_lost()
    assert b.drop_stale(115 * MS) == {PlcOutcome.UNACKNOWLEDGED: 1}  # on the wire before the loss
    assert b.drop_stale(125 * MS) == {PlcOutcome.MISSED_DEADLINE: 1}
    r3 = b.to_write()
    assert r3 is not None and r3.part_id == 3  # still within its deadline: written after the reconnect
    assert _records(b) == {1: (PlcOutcome.UNACKNOWLEDGED, True), 2: (PlcOutcome.MISSED_DEADLINE, True)}


def test_drain_records_what_is_still_buffered() -> None:
    b = _book()
    b.expect(9, 0)
    b.expire(100 * MS)  # part 9: fail-safe queued, verdict never came
    for pid in (1, 2):
        b.submit(_dec(pid), 0, 0)
    r = b.to_write()
    assert r is not None
    b.mark_written(r.seq)
    assert b.drain() == {PlcOutcome.UNACKNOWLEDGED: 1, PlcOutcome.UNSENT: 2}
    assert _records(b) == {
        9: (PlcOutcome.UNACKNOWLEDGED, False),
        1: (PlcOutcome.UNSENT, True),
        2: (PlcOutcome.UNSENT, True),
    }
    assert b.queued == 0 and b.waiting_records == 0


def test_deadline_while_the_link_is_down_queues_nothing() -> None:
    b = _book(capacity=1)
    b.link_up = False
    for pid in (1, 2, 3):
        b.expect(pid, 0)
    assert [e.outcome for e in b.expire(100 * MS)] == [Outcome.MISSED_DEADLINE] * 3  # no overflow either
    assert b.queued == 0
    b.submit(_dec(2), 150 * MS, 150 * MS)  # the late verdict joins its record
    assert _records(b) == {2: (PlcOutcome.MISSED_DEADLINE, True)}
    b.expire(100 * MS + LATE_VERDICT_WAIT_NS)
    assert _records(b) == {1: (PlcOutcome.MISSED_DEADLINE, False), 3: (PlcOutcome.MISSED_DEADLINE, False)}


# ---- a write whose answer never came: in doubt until the PLC's result_seq is read back ------------
def _in_doubt(*, ack: bool) -> tuple[ResultBook, int]:
    """Parts 1 (deadline 110 ms) and 2 (deadline 300 ms) queued; part 1's write got no answer."""
    b = _book(ack=ack)
    b.expect(1, 10 * MS)
    b.expect(2, 200 * MS)
    b.submit(_dec(1), 10 * MS, 10 * MS)
    b.submit(_dec(2), 20 * MS, 20 * MS)
    r1 = b.to_write()
    assert r1 is not None and r1.part_id == 1
    b.write_unanswered(r1.seq)
    b.connection_lost()
    return b, r1.seq


def test_in_doubt_head_is_neither_rewritten_nor_dropped_while_the_link_is_down() -> None:
    b, seq = _in_doubt(ack=False)
    assert b.to_write() is None and b.in_doubt is not None and b.in_doubt.seq == seq
    # far past part 1's deadline: only part 2 is dropped, part 1 waits for the read-back
    assert b.drop_stale(400 * MS) == {PlcOutcome.MISSED_DEADLINE: 1}
    assert _records(b) == {2: (PlcOutcome.MISSED_DEADLINE, True)} and b.queued == 1


def test_in_doubt_head_that_landed_is_written_not_missed() -> None:
    for ack in (False, True):
        b, seq = _in_doubt(ack=ack)
        b.drop_stale(150 * MS)
        assert b.resolve_doubt(seq, 160 * MS) is PlcOutcome.WRITTEN
        if ack:  # at the PLC: its ack is awaited, it is not written again
            assert b.awaiting_ack and b.to_write() is None
            assert b.ack(seq)
        assert _records(b) == {1: (PlcOutcome.WRITTEN, True)}
        r2 = b.to_write()
        assert r2 is not None and r2.part_id == 2


def test_in_doubt_head_that_did_not_land() -> None:
    # within its deadline: written again (same seq)
    b, seq = _in_doubt(ack=False)
    assert b.resolve_doubt(seq - 1, 50 * MS) is None
    r = b.to_write()
    assert r is not None and r.seq == seq and _records(b) == {}
    # past its deadline: never written late
    b, seq = _in_doubt(ack=False)
    assert b.resolve_doubt(seq - 1, 150 * MS) is PlcOutcome.MISSED_DEADLINE
    assert _records(b) == {1: (PlcOutcome.MISSED_DEADLINE, True)}
    r = b.to_write()
    assert r is not None and r.part_id == 2
    # past its deadline and the PLC's seq unreadable: recorded as in doubt, not as missed
    b, seq = _in_doubt(ack=False)
    assert b.resolve_doubt(None, 150 * MS) is PlcOutcome.IN_DOUBT
    assert _records(b) == {1: (PlcOutcome.IN_DOUBT, True)}


def test_drain_records_an_unresolved_head_as_in_doubt() -> None:
    b, _ = _in_doubt(ack=True)
    assert b.drain() == {PlcOutcome.IN_DOUBT: 1, PlcOutcome.UNSENT: 1}
    assert _records(b) == {1: (PlcOutcome.IN_DOUBT, True), 2: (PlcOutcome.UNSENT, True)}
    assert b.in_doubt is None
