"""Result book: the deadline scheduler and the result buffer of the PLC link, as pure logic.

Data flow: ``expect``/``submit`` calls (service threads, via the writer's inbox) -> ResultBook
-> result blocks for the writer to put on the wire, and one ``PartRecord`` per part (what the
PLC got) for the decision log. Owned by the writer thread only; no locks, no I/O, no clock
reads (times come in as arguments) so it is tested exhaustively without sockets.

Invariants: every expected part leaves the result buffer exactly once, as a queued real verdict,
a queued fail-safe verdict, or a counted overflow; nothing else is ever queued for it. Every part
that was expected or submitted yields exactly one ``PartRecord`` (``take_done``), whatever the
PLC did: written, fail-safe at the deadline, missed deadline (link down), overflow, refused,
in doubt, or still buffered when the link stops. A result whose write got no answer is read back
after the reconnect (``resolve_doubt``) instead of being counted missed while the PLC holds it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
from dataclasses import dataclass

from lineguard.contracts import Decision, Verdict
from lineguard.plc.regmap import FLAG_DEADLINE_FAILSAFE, FLAG_DECISION_FAILSAFE, PlcResult, next_seq

RECENT_PARTS = 8192  # answered part ids remembered to catch late/duplicate verdicts
# After a deadline fail-safe, how long the record waits for the part's real (late) verdict so the
# decision log keeps what the model said; parts the camera never delivered are logged without one.
LATE_VERDICT_WAIT_NS = 5_000_000_000


class Outcome(str, enum.Enum):
    """What happened to one submit/expiry; the link turns these into metrics and logs."""

    QUEUED = "queued"
    FAILSAFE_QUEUED = "failsafe_queued"  # deadline passed: fail-safe verdict queued
    OVERFLOW = "overflow"  # buffer full: nothing queued, counted fail-safe
    LATE = "late"  # real verdict after the fail-safe was chosen: logged, never written
    DUPLICATE = "duplicate"  # second verdict for an answered part: ignored
    MISSED_DEADLINE = "missed_deadline"  # deadline passed while the link was down: nothing queued


class PlcOutcome(str, enum.Enum):
    """What the PLC got for one part: the ``plc`` field of the part's decision-log line."""

    WRITTEN = "written"  # its verdict reached the PLC (and was acknowledged, in acknowledged mode)
    FAILSAFE_DEADLINE = "failsafe_deadline"  # no verdict by the deadline: the fail-safe (flag bit0) reached it
    MISSED_DEADLINE = "missed_deadline"  # the link was down when the deadline passed: never written
    OVERFLOW = "overflow"  # result buffer full: never written
    PLC_REJECTED = "plc_rejected"  # the PLC answered the result block with an exception
    UNACKNOWLEDGED = "unacknowledged"  # written, never acknowledged (link lost past its deadline, or stop)
    UNSENT = "unsent"  # still buffered when the link stopped: never written
    IN_DOUBT = "in_doubt"  # its write got no answer and the PLC's result_seq could not be read back
    NONE = "none"  # no PLC configured


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    outcome: Outcome
    part_id: int
    seq: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PartRecord:
    """The end of one part at the link: its decision (None when no verdict ever came) and what
    the PLC got. ``t_deadline_ns`` is the part's deadline (monotonic), for a log line without a decision."""

    part_id: int
    decision: Decision | None
    plc: PlcOutcome
    t_deadline_ns: int


@dataclass(slots=True)
class _Entry:
    result: PlcResult
    deadline_ns: int
    decision: Decision | None  # None: a deadline fail-safe (its record waits in _late)


@dataclass(slots=True)
class _Late:
    deadline_ns: int
    give_up_ns: int
    plc: PlcOutcome | None = None  # None while the fail-safe result is still buffered
    decision: Decision | None = None


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
        self._queue: collections.deque[_Entry] = collections.deque()
        self._late: dict[int, _Late] = {}  # deadline fail-safes whose record waits (insertion = time order)
        self._done: list[PartRecord] = []
        self._head_written = False  # acknowledged mode: the head is on the wire, its ack awaited
        self._head_sent = False  # the head was written at least once (it may have reached the PLC)
        # the head's write got no answer (the connection broke during it): it may have reached the
        # PLC, so it is neither written again nor dropped until the PLC's result_seq is read back
        self._head_in_doubt = False
        self._t_now_ns = 0  # latest time seen (times only come in as arguments)
        self.link_up = True  # set by the link: a deadline passing while it is down queues nothing
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
        self._t_now_ns = max(self._t_now_ns, t_now_ns)
        pid = decision.part_id
        if pid in self._answered:
            late = self._answered[pid]
            if late:
                self._join_late(pid, decision)
            return [Event(outcome=Outcome.LATE if late else Outcome.DUPLICATE, part_id=pid)]
        deadline = self._pending.get(pid)
        if deadline is not None and t_submit_ns > deadline:
            # The writer lagged: the deadline passed before this verdict existed. Fail-safe wins.
            events = self._fail(pid, deadline, t_now_ns)
            self._join_late(pid, decision)
            return [*events, Event(outcome=Outcome.LATE, part_id=pid)]
        self._pending.pop(pid, None)
        failsafe = decision.failsafe or decision.verdict is Verdict.FAILSAFE
        flags = FLAG_DECISION_FAILSAFE if failsafe else 0
        # a frame that could not be judged gets the line's configured fail-safe verdict, like a deadline
        verdict = int(self._failsafe) if failsafe else int(decision.verdict)
        code = 0 if not decision.defect_class else self._codes.get(decision.defect_class, self._unknown)
        if deadline is None:  # never announced: its deadline counts from the capture
            deadline = decision.t_capture_ns + self._deadline_ns
        self._remember(pid, False)
        res = self._result(pid, verdict, code, decision.anomaly_score, flags, t_now_ns)
        # the best guess is written for a recheck or an unknown defect too (PlcResult.guess_code)
        guess = 0 if not decision.class_guess else self._codes.get(decision.class_guess, self._unknown)
        res = dataclasses.replace(res, guess_code=guess, confidence=decision.class_confidence)
        return [self._enqueue(_Entry(result=res, deadline_ns=deadline, decision=decision))]

    def expire(self, t_now_ns: int) -> list[Event]:
        """Fire every deadline that has passed: the fail-safe verdict is queued for the part."""
        self._t_now_ns = max(self._t_now_ns, t_now_ns)
        events: list[Event] = []
        while self._heap and self._heap[0][0] <= t_now_ns:
            deadline, pid = heapq.heappop(self._heap)
            if self._pending.get(pid) == deadline:
                events.extend(self._fail(pid, deadline, t_now_ns))
        self._close_waiting(t_now_ns)
        return events

    def _fail(self, pid: int, deadline: int, t_now_ns: int) -> list[Event]:
        self._pending.pop(pid, None)
        self._remember(pid, True)
        late = self._late[pid] = _Late(deadline_ns=deadline, give_up_ns=t_now_ns + LATE_VERDICT_WAIT_NS)
        if not self.link_up:  # a fail-safe written after the deadline would be as stale as a verdict
            late.plc = PlcOutcome.MISSED_DEADLINE
            self._maybe_close(pid, late)
            return [Event(outcome=Outcome.MISSED_DEADLINE, part_id=pid)]
        res = self._result(pid, int(self._failsafe), 0, float("nan"), FLAG_DEADLINE_FAILSAFE, t_now_ns)
        return [self._enqueue(_Entry(result=res, deadline_ns=deadline, decision=None))]

    def _result(self, pid: int, verdict: int, code: int, score: float, flags: int, t_ns: int) -> PlcResult:
        return PlcResult(
            seq=0, part_id=pid, verdict=verdict, defect_code=code, score=score, flags=flags, t_queued_ns=t_ns
        )

    def _enqueue(self, entry: _Entry) -> Event:
        pid = entry.result.part_id
        if len(self._queue) >= self._capacity:
            self._finish(entry, PlcOutcome.OVERFLOW)
            return Event(outcome=Outcome.OVERFLOW, part_id=pid)
        self.last_seq = next_seq(self.last_seq)
        entry.result = dataclasses.replace(entry.result, seq=self.last_seq)
        self._queue.append(entry)
        failsafe = entry.decision is None
        return Event(outcome=Outcome.FAILSAFE_QUEUED if failsafe else Outcome.QUEUED, part_id=pid, seq=self.last_seq)

    def _remember(self, pid: int, failsafe: bool) -> None:
        self._answered[pid] = failsafe
        if len(self._answered) > RECENT_PARTS:
            self._answered.popitem(last=False)

    # -- records (one per part) -------------------------------------------------------------
    def _pop_head(self, plc: PlcOutcome) -> _Entry:
        entry = self._queue.popleft()
        self._head_written = self._head_sent = self._head_in_doubt = False
        self._finish(entry, plc)
        return entry

    def _finish(self, entry: _Entry, plc: PlcOutcome) -> None:
        pid = entry.result.part_id
        if entry.decision is not None:
            self._done.append(self._record(pid, entry.decision, plc, entry.deadline_ns))
            return
        late = self._late.get(pid)
        if late is None:
            return
        late.plc = PlcOutcome.FAILSAFE_DEADLINE if plc is PlcOutcome.WRITTEN else plc
        self._maybe_close(pid, late)

    def _join_late(self, pid: int, decision: Decision) -> None:
        late = self._late.get(pid)
        if late is not None and late.decision is None:
            late.decision = decision
            self._maybe_close(pid, late)

    def _maybe_close(self, pid: int, late: _Late, *, force: bool = False) -> None:
        if late.plc is not None and (force or late.decision is not None or self._t_now_ns >= late.give_up_ns):
            del self._late[pid]
            self._done.append(self._record(pid, late.decision, late.plc, late.deadline_ns))

    @staticmethod
    def _record(pid: int, decision: Decision | None, plc: PlcOutcome, deadline_ns: int) -> PartRecord:
        return PartRecord(part_id=pid, decision=decision, plc=plc, t_deadline_ns=deadline_ns)

    def _close_waiting(self, t_now_ns: int) -> None:
        for pid, late in list(self._late.items()):
            if late.give_up_ns > t_now_ns:
                break  # inserted in time order: the rest waits longer
            self._maybe_close(pid, late)

    def take_done(self) -> list[PartRecord]:
        """Records of parts the link is done with since the last call (oldest first)."""
        done, self._done = self._done, []
        return done

    # -- output side -------------------------------------------------------------------------
    def to_write(self) -> PlcResult | None:
        """The result to put on the wire now, or None (nothing queued / waiting for the ack)."""
        if not self._queue:
            return None
        if (self._ack_mode and self._head_written) or self._head_in_doubt:
            return None
        return self._queue[0].result

    def mark_written(self, seq: int) -> None:
        """The head reached the PLC. Fire-and-forget: done. Acknowledged: wait for its ack."""
        if not self._queue or self._queue[0].result.seq != seq:
            return
        if self._ack_mode:
            self._head_written = self._head_sent = True
        else:
            self._pop_head(PlcOutcome.WRITTEN)

    def drop_head(self, seq: int) -> PlcResult | None:
        """The PLC refused the head (exception response): remove it so the line keeps moving."""
        if self._queue and self._queue[0].result.seq == seq:
            return self._pop_head(PlcOutcome.PLC_REJECTED).result
        return None

    def write_unanswered(self, seq: int) -> None:
        """The head's write broke the connection before its answer came: it may be at the PLC.
        It waits (past its deadline too) for ``resolve_doubt`` after the reconnect."""
        if self._queue and self._queue[0].result.seq == seq:
            self._head_in_doubt = True

    @property
    def in_doubt(self) -> PlcResult | None:
        """The head whose write got no answer, while it waits for the read-back."""
        return self._queue[0].result if self._head_in_doubt and self._queue else None

    def resolve_doubt(self, plc_seq: int | None, t_now_ns: int) -> PlcOutcome | None:
        """After the reconnect: ``plc_seq`` is the result_seq the PLC holds (None: it could not be
        read). The PLC latches a result when result_seq changes, so seq equal to the head's means
        it landed: ``WRITTEN`` (in acknowledged mode its ack is awaited, nothing is written again).
        Otherwise a head still within its deadline is written again (None) and one past it is
        ``MISSED_DEADLINE``, or ``IN_DOUBT`` when the PLC's seq could not be read."""
        if not (self._head_in_doubt and self._queue):
            return None
        self._head_in_doubt = False
        self._t_now_ns = max(self._t_now_ns, t_now_ns)
        head = self._queue[0]
        if plc_seq == head.result.seq:
            if self._ack_mode:
                self._head_written = self._head_sent = True
            else:
                self._pop_head(PlcOutcome.WRITTEN)
            return PlcOutcome.WRITTEN
        if head.deadline_ns > t_now_ns:
            return None
        plc = PlcOutcome.MISSED_DEADLINE if plc_seq is not None else PlcOutcome.IN_DOUBT
        self._pop_head(plc)
        return plc

    def connection_lost(self) -> None:
        """A written-but-unacked head may not have landed: write it again (same seq) after reconnect."""
        self._head_written = False

    def ack(self, seq: int) -> bool:
        """The PLC's ack register holds ``seq``; pop the head if that is the one it acknowledges."""
        if self._ack_mode and self._head_written and self._queue and self._queue[0].result.seq == seq:
            self._pop_head(PlcOutcome.WRITTEN)
            return True
        return False

    def drop_stale(self, t_now_ns: int) -> dict[PlcOutcome, int]:
        """The link is down: results whose part deadline has passed are never written later as if
        fresh. The head counts as ``unacknowledged`` when it was written before the link was lost."""
        self._t_now_ns = max(self._t_now_ns, t_now_ns)
        counts: dict[PlcOutcome, int] = {}
        if not self._queue or min(e.deadline_ns for e in self._queue) > t_now_ns:
            return counts
        keep: collections.deque[_Entry] = collections.deque()
        head = self._queue[0]
        for i, entry in enumerate(self._queue):
            if entry.deadline_ns > t_now_ns or (i == 0 and self._head_in_doubt):
                keep.append(entry)  # an in-doubt head waits for the read-back after the reconnect
                continue
            plc = PlcOutcome.UNACKNOWLEDGED if i == 0 and self._head_sent else PlcOutcome.MISSED_DEADLINE
            counts[plc] = counts.get(plc, 0) + 1
            self._finish(entry, plc)
        if not keep or keep[0] is not head:
            self._head_written = self._head_sent = False
        self._queue = keep
        return counts

    def drain(self) -> dict[PlcOutcome, int]:
        """The link stops: everything still buffered is recorded (never written / not acknowledged)
        and every record still waiting for a late verdict is closed."""
        counts: dict[PlcOutcome, int] = {}
        for i, entry in enumerate(self._queue):
            plc = PlcOutcome.UNSENT
            if i == 0 and self._head_in_doubt:
                plc = PlcOutcome.IN_DOUBT
            elif i == 0 and self._head_sent:
                plc = PlcOutcome.UNACKNOWLEDGED
            counts[plc] = counts.get(plc, 0) + 1
            self._finish(entry, plc)
        self._queue.clear()
        self._head_written = self._head_sent = self._head_in_doubt = False
        for pid, late in list(self._late.items()):
            self._maybe_close(pid, late, force=True)  # nobody delivers a late verdict any more
        return counts

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

    @property
    def waiting_records(self) -> int:
        """Deadline fail-safes whose decision-log record still waits for the late verdict."""
        return len(self._late)

    def next_deadline_ns(self) -> int | None:
        while self._heap and self._pending.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: answered before its deadline
        return self._heap[0][0] if self._heap else None
