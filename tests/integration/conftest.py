"""Fixtures shared by the integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lineguard.plc.sim import PlcSimulator


@pytest.fixture
def sim() -> Iterator[PlcSimulator]:
    """The PLC simulator listening on a free loopback port."""
    s = PlcSimulator().start()
    yield s
    s.stop()


Waiter = Callable[..., None]


def _poll(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def wait_for() -> Waiter:
    """``wait_for(cond, timeout_s=5.0)``: poll until ``cond()`` holds, fail the test after the timeout."""
    return _poll


class SmallDisk:
    """A real, small file system (tmpfs of ``size_bytes``) mounted for one test: ENOSPC for real."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, name: str = "ballast") -> Path:
        """Write a ballast file until the disk refuses more (ENOSPC); delete it to give the space back."""
        ballast = self.path / name
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        assert self.free_bytes() == 0, f"ballast left {self.free_bytes()} bytes free"
        return ballast

    def fill_inodes(self, name: str = "inode-ballast") -> Path:
        """Create empty files until the disk has no inode left: ENOSPC with bytes still free (rmtree it)."""
        folder = self.path / name
        folder.mkdir()
        with contextlib.suppress(OSError):
            for i in range(100_000):
                (folder / str(i)).touch()
        assert os.statvfs(self.path).f_favail == 0, "mount the small disk with nr_inodes= a few hundred"
        return folder


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., SmallDisk]]:
    """``small_disk(size_bytes, nr_inodes=None)``: mount a tmpfs of that size under tmp_path (root only;
    skips otherwise)."""
    mounted: list[Path] = []

    def make(size_bytes: int, nr_inodes: int | None = None) -> SmallDisk:
        if os.geteuid() != 0:
            pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root (CAP_SYS_ADMIN)")
        mount_point = tmp_path / f"small-disk-{len(mounted)}"
        mount_point.mkdir()
        options = f"size={size_bytes},mode=0755" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "lineguard-test",
                              str(mount_point)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); a real full disk needs one")
        mounted.append(mount_point)
        return SmallDisk(mount_point, size_bytes)

    yield make
    for mount_point in reversed(mounted):
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture(scope="session")
def auto_line_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated line with two defect classes, shared by the automatic-configuration tests."""
    from lineguard_models.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("auto_line") / "data"
    write_dataset(root, SynthConfig(n_good=12, n_defect_per_class=6, defect_classes=("scratch", "pit"),
                                    defect_strength=0.6, seed=5))
    return root

