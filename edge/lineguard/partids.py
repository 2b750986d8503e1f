"""Part ids from the PLC's triggers: the join of camera frames and PLC trigger part ids.

Where it sits: between the PLC link (which reads ``trigger_seq`` / ``trigger_part_id``, docs/plc.md
registers 20-22) and the source (which numbers every part it knows of, fault frames included, as
``seq`` 0, 1, 2, ...). With ``service.part_ids: plc_trigger`` the service hands
:class:`TriggerPartIds` to the source as its ``part_id_fn``: the source's part ``seq`` is the
PLC's trigger number ``seq + 1`` since the link's first read, and gets that trigger's part id.

Why by trigger *number* and not by the queue of part ids the link read: the link sees only the
latest trigger every poll period (10 ms), so a trigger issued between two polls has no part id of
its own; counting them (``trigger_seq`` jumps by 2) keeps the numbers aligned where a queue would
shift every later part by one. The part id of a trigger the link saw is exact; one it did not see
is inferred from the nearest one it did, which needs the PLC's part ids to grow by 1 per trigger
(docs/plc.md). A jump in that rule is logged once per change of offset.

Pure apart from the wait: no I/O; the clock and sleep are injectable for the unit tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LastTrigger = Callable[[], "tuple[int, int] | None"]
_U32 = 1 << 32


class TriggerPartIds:
    """``part_id_fn`` of a source on a trigger-driven line (see the module docstring)."""

    def __init__(
        self,
        last_trigger: LastTrigger,
        *,
        wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._last_trigger = last_trigger
        self._wait_s = wait_s
        self._clock = clock
        self._sleep = sleep
        self._offset: int | None = None  # part_id - trigger number of the latest trigger read
        self.exact = 0  # parts whose trigger the link read itself
        self.inferred = 0  # parts numbered from a neighbouring trigger (polled too late, or not yet)
        self.untriggered = 0  # parts before any trigger was read: numbered seq + 1
        self._warned_untriggered = False

    def __call__(self, seq: int) -> int:
        n = seq + 1  # the camera's part seq is the PLC's n-th trigger
        latest = self._wait_for(n)
        if latest is None:
            self.untriggered += 1
            if not self._warned_untriggered:
                self._warned_untriggered = True
                log.warning("part %d: no PLC trigger read yet (is the PLC triggering, is the link up?); "
                            "numbering parts by the camera's count until one is", n)
            return n
        count, part_id = latest
        self._check_offset(count, part_id)
        if count == n:
            self.exact += 1
        else:
            self.inferred += 1
        return (part_id + (n - count)) % _U32

    def _wait_for(self, n: int) -> tuple[int, int] | None:
        """The latest trigger once the n-th was read, or the latest after ``wait_s`` (a frame can
        arrive before the link's next poll has seen its trigger)."""
        deadline = self._clock() + self._wait_s
        while True:
            latest = self._last_trigger()
            if latest is not None and latest[0] >= n:
                return latest
            if self._clock() >= deadline:
                return latest
            self._sleep(0.001)

    def _check_offset(self, count: int, part_id: int) -> None:
        offset = (part_id - count) % _U32
        if self._offset is not None and offset != self._offset:
            log.warning("PLC part ids do not grow by 1 per trigger (trigger %d has part id %d, %+d from the "
                        "previous numbering): parts between the two triggers may carry inferred ids",
                        count, part_id, (offset - self._offset + _U32 // 2) % _U32 - _U32 // 2)
        self._offset = offset
