"""Decision log: one JSON line per verdict, for audits ("which bundle judged part 4711?").

Sits at the end of the pipeline beside the PLC writer. Writes go through a bounded queue to a
writer thread so a slow disk never stalls inspection; a full queue drops log lines (counted),
never verdicts. Files rotate by size.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

from lineguard.contracts import Decision


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
        "bundle_id": d.bundle_id,
        "camera_id": d.camera_id,
        "latency_ms": round(d.latency_ms, 3),
        "reasons": list(d.reasons),
    }


class DecisionLog:
    """Rotating JSON-lines log of decisions, written off the inspection thread."""

    def __init__(self, *, path: Path, max_bytes: int = 50_000_000, backups: int = 10, queue_size: int = 4096):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._q: queue.Queue[Decision | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, d: Decision) -> None:
        try:
            self._q.put_nowait(d)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            d = self._q.get()
            if d is None:
                break
            record = logging.LogRecord("decision", logging.INFO, "", 0, json.dumps(decision_record(d)), None, None)
            self._handler.emit(record)
            self.written += 1
        self._handler.flush()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)
        self._handler.close()


class NullDecisionLog:
    """Stand-in when no decision log is configured."""

    dropped = 0
    written = 0

    def write(self, d: Decision) -> None:
        return None

    def close(self) -> None:
        return None
