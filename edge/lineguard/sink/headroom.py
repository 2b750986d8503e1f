"""Headroom file of the sink store: space held back so SQLite can always open and evict.

Data flow: :class:`~lineguard.sink.store.FrameStore` releases it before it opens the index and
before an eviction commit on a disk with less free space than it holds, and restores it once the
disk has room again. Why: a disk that other programs filled to the last byte leaves SQLite no room
for its shared-memory file (opening fails) or for the WAL pages of the eviction that would free
space, so without it the store could neither start nor make room on its own.

Must never: hold more than ``size`` bytes, or raise (a missing headroom only costs that safety).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

HEADROOM_BYTES = 1024 * 1024  # SQLite's -shm (32 KB) plus the WAL pages of an eviction, with margin


class Headroom:
    """A file of ``size`` allocated bytes at ``path`` (outside the frames, never indexed)."""

    def __init__(self, path: Path, size: int = HEADROOM_BYTES) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def restore(self) -> bool:
        """Allocate the file again when the disk has room for it; True when it is held."""
        if self.held:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)  # reserves blocks without writing them
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.pwrite(fd, b"\0" * self.size, 0)  # a file system without fallocate
            return True
        except OSError:  # no room: hold nothing rather than part of it
            os.close(fd)
            fd = -1
            self.release()
            return False
        finally:
            if fd >= 0:
                os.close(fd)
