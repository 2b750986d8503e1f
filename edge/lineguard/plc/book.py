"""Result book: the deadline scheduler and the result buffer of the PLC link, as pure logic.

Data flow: ``expect``/``submit`` calls (service threads, via the writer's inbox) -> ResultBook
-> result blocks for the writer to put on the wire. Owned by the writer thread only; no
locks, no I/O, no clock reads (times come in as arguments) so it is tested exhaustively
without sockets. Invariant: every expected part leaves exactly once, as a queued real verdict,
a queued fail-safe verdict, or a counted overflow; nothing else is ever queued for it.
"""

from __future__ import annotations

import collections
import enum
import heapq
from dataclasses import dataclass

from lineguard.contracts import Decision, Verdict
from lineguard.plc.regmap import FLAG_DEADLINE_FAILSAFE, FLAG_DECISION_FAILSAFE, PlcResult, next_seq

RECENT_PARTS = 8192  # answered part ids remembered to catch late/duplicate verdicts


class Outcome(str, enum.Enum):
    """What happened to one submit/expiry; the link turns these into metrics and logs."""

    QUEUED = "queued"
    FAILSAFE_QUEUED = "failsafe_queued"  # deadline passed: fail-safe verdict queued
    OVERFLOW = "overflow"  # buffer full: nothing queued, counted fail-safe
    LATE = "late"  # real verdict after the fail-safe was chosen: logged, never written
    DUPLICATE = "duplicate"  # second verdict for an answered part: ignored


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    outcome: Outcome
    part_id: int
    seq: int = 0


class ResultBook:
    """Deadlines of expected parts plus the bounded buffer of results not yet done with."""

    def __init__(
        self,
        *,
        deadline_ns: int,
        failsafe_verdict: Verdict,
        capacity: int,
        acknowledged: bool,
        class_codes: dict[str, int] | None = None,
        unknown_code: int = 255,
    ) -> None:
        self._deadline_ns = deadline_ns
        self._failsafe = failsafe_verdict
        self._capacity = capacity
        self._ack_mode = acknowledged
        self._codes = dict(class_codes or {})
        self._unknown = unknown_code
        self._pending: dict[int, int] = {}  # part_id -> deadline (monotonic ns)
        self._heap: list[tuple[int, int]] = []
        self._answered: collections.OrderedDict[int, bool] = collections.OrderedDict()  # -> was fail-safe
        self._queue: collections.deque[PlcResult] = collections.deque()
        self._head_written = False
        self.last_seq = 0

    # -- configuration ---------------------------------------------------------------------
    def set_class_codes(self, codes: dict[str, int]) -> None:
        self._codes = dict(codes)

    def set_start_seq(self, seq: int) -> None:
        """Continue numbering after what the PLC already holds (so an old ack cannot match)."""
        if not self._queue:
            self.last_seq = seq & 0xFFFF

    # -- inputs ----------------------------------------------------------------------------
    def expect(self, part_id: int, t_trigger_ns: int) -> None:
        if part_id in self._pending or part_id in self._answered:
            return
        deadline = t_trigger_ns + self._deadline_ns
        self._pending[part_id] = deadline
        heapq.heappush(self._heap, (deadline, part_id))

    def submit(self, decision: Decision, t_submit_ns: int, t_now_ns: int) -> list[Event]:
        """A real verdict arrived at ``t_submit_ns`` (when submit() was called, not processed)."""
        pid = decision.part_id
        if pid in self._answered:
            return [Event(outcome=Outcome.LATE if self._answered[pid] else Outcome.DUPLICATE, part_id=pid)]
        deadline = self._pending.get(pid)
        if deadline is not None and t_submit_ns > deadline:
            # The writer lagged: the deadline passed before this verdict existed. Fail-safe wins.
            events = self._fail(pid, t_now_ns)
            return [*events, Event(outcome=Outcome.LATE, part_id=pid)]
        self._pending.pop(pid, None)
        failsafe = decision.failsafe or decision.verdict is Verdict.FAILSAFE
        flags = FLAG_DECISION_FAILSAFE if failsafe else 0
        # a frame that could not be judged gets the line's configured fail-safe verdict, like a deadline
        verdict = int(self._failsafe) if failsafe else int(decision.verdict)
        code = 0 if not decision.defect_class else self._codes.get(decision.defect_class, self._unknown)
        return [self._enqueue(pid, verdict, code, decision.anomaly_score, flags, t_now_ns, False)]

    def expire(self, t_now_ns: int) -> list[Event]:
        """Fire every deadline that has passed: the fail-safe verdict is queued for the part."""
        events: list[Event] = []
        while self._heap and self._heap[0][0] <= t_now_ns:
            deadline, pid = heapq.heappop(self._heap)
            if self._pending.get(pid) == deadline:
                events.extend(self._fail(pid, t_now_ns))
        return events

    def _fail(self, pid: int, t_now_ns: int) -> list[Event]:
        self._pending.pop(pid, None)
        return [self._enqueue(pid, int(self._failsafe), 0, float("nan"), FLAG_DEADLINE_FAILSAFE, t_now_ns, True)]

    def _enqueue(self, pid: int, verdict: int, code: int, score: float, flags: int, t_ns: int, failsafe: bool) -> Event:
        self._remember(pid, failsafe)
        if len(self._queue) >= self._capacity:
            return Event(outcome=Outcome.OVERFLOW, part_id=pid)
        self.last_seq = next_seq(self.last_seq)
        self._queue.append(
            PlcResult(
                seq=self.last_seq,
                part_id=pid,
                verdict=verdict,
                defect_code=code,
                score=score,
                flags=flags,
                t_queued_ns=t_ns,
            )
        )
        return Event(outcome=Outcome.FAILSAFE_QUEUED if failsafe else Outcome.QUEUED, part_id=pid, seq=self.last_seq)

    def _remember(self, pid: int, failsafe: bool) -> None:
        self._answered[pid] = failsafe
        if len(self._answered) > RECENT_PARTS:
            self._answered.popitem(last=False)

    # -- output side -------------------------------------------------------------------------
    def to_write(self) -> PlcResult | None:
        """The result to put on the wire now, or None (nothing queued / waiting for the ack)."""
        if not self._queue:
            return None
        if self._ack_mode and self._head_written:
            return None
        return self._queue[0]

    def mark_written(self, seq: int) -> None:
        """The head reached the PLC. Fire-and-forget: done. Acknowledged: wait for its ack."""
        if not self._queue or self._queue[0].seq != seq:
            return
        if self._ack_mode:
            self._head_written = True
        else:
            self._queue.popleft()

    def drop_head(self, seq: int) -> PlcResult | None:
        """The PLC refused the head (exception response): remove it so the line keeps moving."""
        if self._queue and self._queue[0].seq == seq:
            self._head_written = False
            return self._queue.popleft()
        return None

    def connection_lost(self) -> None:
        """A written-but-unacked head may not have landed: write it again (same seq) after reconnect."""
        self._head_written = False

    def ack(self, seq: int) -> bool:
        """The PLC's ack register holds ``seq``; pop the head if that is the one it acknowledges."""
        if self._ack_mode and self._head_written and self._queue and self._queue[0].seq == seq:
            self._queue.popleft()
            self._head_written = False
            return True
        return False

    # -- introspection -------------------------------------------------------------------------
    @property
    def awaiting_ack(self) -> bool:
        return self._ack_mode and self._head_written

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def pending_deadlines(self) -> int:
        return len(self._pending)

    def next_deadline_ns(self) -> int | None:
        while self._heap and self._pending.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: answered before its deadline
        return self._heap[0][0] if self._heap else None
