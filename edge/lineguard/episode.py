"""Fault episodes: log a fault once when it starts and once when it ends, whatever its length.

Used by the outputs that write to a disk (decision log, sink store): a full disk fails every write,
and a warning per write turns one fault into a log flood that fills the disk further. A
:class:`FaultEpisode` turns any number of failures into one WARNING (first failure) and one INFO
(first success after it), with the episode's duration and counts in the closing line.

Single owner thread per episode object; it never raises and never does I/O besides logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class FaultEpisode:
    """One fault at a time for one resource (a file, a store); counts what happened during it."""

    def __init__(self, log: logging.Logger, what: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._what = what
        self._clock = clock
        self._since: float | None = None
        self.episodes = 0  # started since construction
        self.failures = 0  # failed attempts in the current episode

    @property
    def active(self) -> bool:
        return self._since is not None

    def duration_s(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since

    def fail(self, detail: str, consequence: str) -> bool:
        """Record one failure; the first of an episode logs one WARNING. True when it started one."""
        self.failures += 1
        if self._since is not None:
            return False
        self._since = self._clock()
        self.episodes += 1
        self.failures = 1
        self._log.warning("%s cannot be written (%s): %s", self._what, detail, consequence)
        return True

    def recover(self, summary: str) -> float | None:
        """Record a success; ending an episode logs one INFO with ``summary``. Returns its duration."""
        if self._since is None:
            return None
        took = self._clock() - self._since
        self._since = None
        self._log.info("%s writable again after %.1f s (%d failed attempts): %s",
                       self._what, took, self.failures, summary)
        return took
