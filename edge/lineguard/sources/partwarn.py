"""Bounded warnings for parts a source cannot deliver (unreadable replay files, incomplete camera
buffers). Each such part is answered with the fail-safe and counted in the source's stats and the
metrics; the log only needs to say that it happens and show examples. A folder of broken files or a
camera dropping buffers for an hour must not write one line per part (issue 21: a fault writes a
handful of lines): the first few are logged one by one, then at most one line per interval with
how many more there were, and a closing line at ``flush()`` (source close) for the rest.

Called from the source's read path and, for GenICam, from harvesters' callback thread: locked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class PartWarnings:
    """``warn()`` per bad part; logs the first ``first`` as given, then one summary line per ``every_s``."""

    def __init__(self, log: logging.Logger, what: str, *, first: int = 5, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._what = what  # plural noun phrase for the summary lines, e.g. "unreadable replay files"
        self._first = first
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self.total = 0
        self._quiet = 0  # warned about but not logged since the last line
        self._last_line = 0.0

    def warn(self, msg: str, *args: object) -> None:
        with self._lock:
            self.total += 1
            now = self._clock()
            if self.total <= self._first:
                self._last_line = now
                if self.total == self._first:
                    msg += " (more %s: one line per %.0f s, all counted in the metrics)"
                    args = (*args, self._what, self._every_s)
                self._log.warning(msg, *args)
                return
            self._quiet += 1
            elapsed = now - self._last_line
            if elapsed < self._every_s:
                return
            n, self._quiet, self._last_line = self._quiet, 0, now
        self._log.warning("%d %s in the last %.0f s (%d in all); latest: " + msg, n, self._what,
                          elapsed, self.total, *args)

    def flush(self) -> None:
        """At close: the ones not logged since the last line, so the log's counts add up."""
        with self._lock:
            n, self._quiet = self._quiet, 0
        if n:
            self._log.warning("%d more %s not logged one by one (%d in all)", n, self._what, self.total)
