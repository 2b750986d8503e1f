"""Decision log: one JSON line per verdict, for audits ("which bundle judged part 4711?").

Sits at the end of the pipeline beside the PLC writer. :meth:`DecisionLog.write` only time-stamps
the decision and puts it on a bounded queue (never blocks, never raises); a writer thread
serialises it and appends it to the file, which rotates by size.

Disk faults (full disk, read-only remount, I/O error) must never reach the PLC path nor flood the
journal. The writer thread keeps lines it cannot write in a bounded in-memory **backlog**, logs one
WARNING when the fault starts and one INFO when writing works again ("N lines deferred and
written, M lost"), retries every ``retry_ms``, and writes the backlog in order before newer lines
once space returns. A log file deleted or moved away under the running service is created again
rather than written into the void. Lines beyond the backlog are lost and counted by reason
(``lineguard_decision_log_lost_lines_total``). A write that fails half-way is cut back to the last
complete line, so the file only ever holds whole lines. :meth:`DecisionLog.close` makes one last
attempt, reports what could not be written in one line, and never raises.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import logging
import math
import os
import queue
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision
from lineguard.episode import FaultEpisode
from lineguard.metrics import DecisionLogMetrics

log = logging.getLogger(__name__)

CHUNK_LINES = 512  # lines per os.write: one syscall for a burst, small enough to cut back cheaply


def decision_record(d: Decision) -> dict[str, Any]:
    conf = None if math.isnan(d.class_confidence) else round(d.class_confidence, 5)
    return {
        "t_utc": time.time(),
        "seq": d.seq,
        "part_id": d.part_id,
        "verdict": d.verdict.label,
        "failsafe": d.failsafe,
        "anomaly_score": None if math.isnan(d.anomaly_score) else round(d.anomaly_score, 6),
        "defect_class": d.defect_class,
        "class_confidence": conf,
        "class_guess": d.class_guess,  # the classifier's arg-max, also for a recheck or an unknown defect
        "bundle_id": d.bundle_id,
        "camera_id": d.camera_id,
        "latency_ms": round(d.latency_ms, 3),
        "reasons": list(d.reasons),
    }


@dataclass(frozen=True, slots=True)
class _Entry:
    decision: Decision
    t_utc: float  # when write() was called: a deferred line keeps the time of its verdict
    extra: Mapping[str, Any] | None


_STOP = object()


class DecisionLog:
    """Rotating JSON-lines log of decisions, written off the inspection thread; survives disk faults."""

    def __init__(self, *, path: Path, max_bytes: int = 50_000_000, backups: int = 10, queue_size: int = 4096,
                 backlog_lines: int = 50_000, retry_ms: int = 1000, metrics: DecisionLogMetrics | None = None,
                 close_timeout_s: float = 5.0) -> None:
        # A folder that cannot be made now (full or read-only disk) is a fault episode of the writer
        # thread, reported and retried like any other, never a crash of the service at start.
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._backlog_max = backlog_lines
        self._retry_s = retry_ms / 1000.0
        self._close_timeout_s = close_timeout_s
        self._m = metrics if metrics is not None else DecisionLogMetrics(CollectorRegistry())
        self._q: queue.Queue[_Entry | object] = queue.Queue(maxsize=queue_size)
        self._backlog: collections.deque[bytes] = collections.deque()  # writer thread only
        self._fd: int | None = None
        self._size = 0
        self._regular = True  # set on open: only a regular file is rotated
        self._ident = (0, 0)  # (device, inode) of the open file, to notice it deleted or moved
        self._next_retry = 0.0  # monotonic time of the next write attempt during a fault
        self._episode = FaultEpisode(log, f"decision log {path}")
        self._deferred = 0  # lines that waited in the backlog during the current episode
        self._lost_at_start = 0  # self.lost when the current episode started
        self._lost_seqs: list[int] = []  # seq of the first and last line the backlog could not take
        self._lost_lock = threading.Lock()  # write() (inspection thread) and the writer thread both count
        self._closed = False
        self.written = 0
        self.lost = 0  # every line that never reached the file, whatever the reason
        self.unwritten_at_close = 0
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    # --- any thread ---------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Lines lost so far (kept for callers of the first version)."""
        return self.lost

    @property
    def fault_episodes(self) -> int:
        return self._episode.episodes

    @property
    def failed_attempts(self) -> int:
        """Write attempts that failed in the current (or last) fault episode."""
        return self._episode.failures

    def write(self, d: Decision, extra: Mapping[str, Any] | None = None) -> None:
        """Queue one line for ``d`` (``extra`` keys are added to the record); never blocks nor raises."""
        if self._closed:
            self._lose(1, "closed")
            return
        try:
            self._q.put_nowait(_Entry(d, time.time(), extra))
        except queue.Full:  # the writer thread itself is stuck (a hung disk): count, never wait
            self._lose(1, "queue_full")

    def close(self) -> None:
        """Write what can be written, report the rest in one line; never raises. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self._close_timeout_s
        while True:
            try:
                self._q.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # a write hangs in the kernel (dead NFS, failing disk)
            pending = self._q.qsize() + len(self._backlog)
            log.error("decision log %s: writer still blocked after %.1f s; %d lines not written",
                      self.path, self._close_timeout_s, pending)
            self.unwritten_at_close = pending
            return
        self._close_fd()

    # --- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            # During a fault new lines are taken in as they come, but the disk is tried once per retry_ms.
            timeout = max(0.001, self._next_retry - time.monotonic()) if self._episode.active else 0.5
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                item = None
            batch = [item] if item is not None else []
            while len(batch) < CHUNK_LINES:  # take what else is waiting, without blocking
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            for it in batch:
                if it is _STOP:
                    stopping = True
                elif isinstance(it, _Entry):
                    self._enqueue(it)
            self._m.backlog_lines.set(len(self._backlog))
            retry_due = not self._episode.active or time.monotonic() >= self._next_retry
            if self._backlog and (retry_due or stopping):  # stopping: one last try, whenever it is
                self._flush()
        self._report_at_close()

    def _enqueue(self, e: _Entry) -> None:
        # Outside a fault the backlog only holds the chunk being written; during one it is bounded.
        limit = self._backlog_max if self._episode.active else max(self._backlog_max, CHUNK_LINES)
        if len(self._backlog) >= limit:  # keep the oldest lines in order: the newest one is lost
            if not self._lost_seqs:
                log.warning("decision log %s: backlog of %d lines full; further lines are lost (counted) "
                            "until the disk is writable again", self.path, self._backlog_max)
                self._lost_seqs = [e.decision.seq, e.decision.seq]
            self._lost_seqs[1] = e.decision.seq
            self._lose(1, "backlog_full")
            return
        record = decision_record(e.decision)
        record["t_utc"] = e.t_utc
        if e.extra:
            record.update(e.extra)
        # default=str: an odd value in ``extra`` must cost its readability, not the writer thread
        self._backlog.append((json.dumps(record, default=str) + "\n").encode())
        if self._episode.active:
            self._deferred += 1

    def _lose(self, n: int, reason: str) -> None:
        with self._lost_lock:
            self.lost += n
        self._m.lost_lines_total.labels(reason=reason).inc(n)

    def _flush(self) -> None:
        """Write the backlog in order, chunk by chunk; on an OSError keep the rest for the next retry."""
        while self._backlog:
            try:
                lines = self._next_chunk()
                self._append(b"".join(lines))
            except OSError as exc:
                self._on_fault(exc)
                return
            for _ in lines:
                self._backlog.popleft()
            self.written += len(lines)
            self._m.written_lines_total.inc(len(lines))
        self._m.backlog_lines.set(0)
        if self._episode.active:
            lost = self.lost - self._lost_at_start
            seqs = f" (backlog full for seq {self._lost_seqs[0]}..{self._lost_seqs[1]})" if self._lost_seqs else ""
            self._episode.recover(f"{self._deferred} lines deferred and written, {lost} lost{seqs}")
            self._m.fault.set(0)
            self._deferred, self._lost_seqs = 0, []

    def _on_fault(self, exc: OSError) -> None:
        self._close_fd()  # reopen on retry: the folder may have been remounted or replaced
        self._next_retry = time.monotonic() + self._retry_s
        self._m.backlog_lines.set(len(self._backlog))
        detail = f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc.strerror or exc}"
        consequence = (f"verdicts still go to the PLC; keeping up to {self._backlog_max} lines in memory and "
                       f"retrying every {self._retry_s:g} s")
        if self._episode.fail(detail, consequence):
            self._deferred = len(self._backlog)
            self._lost_at_start = self.lost
            self._lost_seqs = []
            self._m.fault_episodes_total.inc()
            self._m.fault.set(1)

    def _next_chunk(self) -> list[bytes]:
        """The next lines to write at once: up to CHUNK_LINES, cut where the file has to rotate."""
        self._open()
        room = self._max_bytes - self._size if self._regular and self._size > 0 else self._max_bytes
        lines: list[bytes] = []
        size = 0
        for line in itertools.islice(self._backlog, CHUNK_LINES):
            if lines and size + len(line) > room:
                break
            lines.append(line)
            size += len(line)
        return lines

    def _append(self, data: bytes) -> None:
        """Append whole lines; a partial write is cut back so the file never holds half a line."""
        fd = self._open()
        if self._size > 0 and self._size + len(data) > self._max_bytes and self._regular:
            self._rotate()
            fd = self._open()
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError:
            with contextlib.suppress(OSError):  # if this fails too, the next open starts a fresh line
                os.ftruncate(fd, start)
            raise
        self._size = start + len(data)

    def _open(self) -> int:
        if self._fd is not None and not self._still_at_path():
            self._close_fd()  # deleted or moved away: writing on would fill a file nobody can read
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # RDWR: pread below
            st = os.fstat(fd)
            self._ident = (st.st_dev, st.st_ino)
            self._regular = stat.S_ISREG(st.st_mode)  # never rotate /dev/null, /dev/full or a pipe
            self._size = st.st_size if self._regular else 0
            self._fd = fd
            if self._size and os.pread(fd, 1, self._size - 1) != b"\n":  # a torn line from a crash
                self._append(b"\n")
        return self._fd

    def _still_at_path(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._ident

    def _rotate(self) -> None:
        self._close_fd()
        for i in range(self._backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self._backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # close may report a delayed write error: nothing to retry
                os.close(self._fd)
            self._fd = None

    def _report_at_close(self) -> None:
        left = len(self._backlog)
        if left:
            self._lose(left, "shutdown")
            self.unwritten_at_close = left
            self._backlog.clear()
            self._m.backlog_lines.set(0)
            log.error("decision log %s: %d lines could not be written before shutdown (still failing after "
                      "%.1f s); the PLC received their verdicts", self.path, left, self._episode.duration_s())


class NullDecisionLog:
    """Stand-in when no decision log is configured."""

    dropped = 0
    written = 0
    lost = 0
    fault_episodes = 0

    def write(self, d: Decision, extra: Mapping[str, Any] | None = None) -> None:
        return None

    def close(self) -> None:
        return None
