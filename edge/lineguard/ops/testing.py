"""A small real line for operations tests and the HIL dry runs: synthetic bundle, replay frames,
a YAML config, and ``lineguard run`` as a child process.

Not part of the frame path and never imported by the service. It exists so the systemd, Prometheus
and metrics-coverage tests drive the real console command (the way systemd starts it), not an
in-process stand-in. Building the bundle needs the ``onnx`` package (dev extra).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KINDS = ("good", "good", "bright", "faint", "dark", "good")


def write_test_line(
    root: Path,
    *,
    metrics_port: int,
    plc: tuple[str, int] | None = None,
    sink_endpoint: str | None = None,
    frames: int = 12,
    rate_parts_per_s: float = 20.0,
    stall_budget_ms: int = 5000,
) -> Path:
    """Write bundle, replay frames (looped) and ``line.yaml`` under ``root``; return the config path.

    The replay source loops, so the service runs until it is stopped, like a real line.
    """
    import cv2
    import numpy as np

    from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image

    bundle = build_synthetic_bundle(root / "bundle", input_size=64)
    rng = np.random.default_rng(7)
    frame_dir = root / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        kind = _KINDS[i % len(_KINDS)]
        cv2.imwrite(str(frame_dir / f"{i:03d}_{kind}.png"), synthetic_image(kind, bundle.manifest.input, rng))  # type: ignore[arg-type]
    cfg: dict[str, Any] = {
        "line": {"name": "ops-test"},
        "bundle": {"path": str(root / "bundle")},
        "source": {"type": "replay", "paths": [str(frame_dir)], "rate_parts_per_s": rate_parts_per_s, "loop": True},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "service": {"stall_budget_ms": stall_budget_ms},
        "publisher": {"enabled": sink_endpoint is not None, "endpoint": sink_endpoint or "tcp://127.0.0.1:5560"},
    }
    if plc is not None:
        cfg["plc"] = {"transport": {"type": "tcp", "host": plc[0], "port": plc[1]}, "deadline_ms": 1000.0}
    path = root / "line.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML: no writer dependency
    return path


@dataclass
class LineProcess:
    """``lineguard <args>`` as a child process with its output in a log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, args: list[str], *, log_path: Path, env: Mapping[str, str] | None = None) -> LineProcess:
        # A test run under systemd must not leak the runner's own notify socket to the child.
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env.update(env or {})
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed by the child's exit; Popen dups it
        try:
            proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", *args], stdout=log_file,
                                    stderr=subprocess.STDOUT, env=full_env)
        finally:
            log_file.close()
        return cls(proc=proc, log_path=log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout_s: float) -> str:
        """Poll ``url`` until it answers 200; return the body. Fails early if the process died."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return str(resp.read().decode())
            except (urllib.error.URLError, OSError) as exc:
                last = exc
                time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer within {timeout_s} s ({last}):\n{self.log()}")

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL only if it does not stop in time (and say so)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"did not stop within {timeout_s} s after SIGTERM:\n{self.log()}") from None
