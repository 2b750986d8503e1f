"""The hardware-in-the-loop rig description (hil/rig.yaml) and a metrics sampler for HIL runs.

Not part of the frame path: read by the hil/ tests only. The rig file says which line config
drives the real camera and PLC, the line rate, and the pass criteria; ``hil/rig.example.yaml`` is
the annotated template. Sampling reads a running service's /metrics over HTTP and its RSS from
/proc; nothing here touches the camera or the PLC itself.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from lineguard.config import LineConfig
from lineguard.ops.soak import SoakLimits, SoakSample, histogram_quantile
from lineguard.yamlcfg import load_file


class RoundTripLimits(BaseModel):
    """Verdict round trip through the real PLC (hil/test_plc_roundtrip.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parts: int = Field(200, ge=10, le=1_000_000, description="parts the PLC triggers during the check")
    timeout_s: float = Field(300.0, gt=0, le=86_400, description="time allowed for all parts")
    e2e_p99_max_ms: float = Field(150.0, gt=0, le=60_000, description="p99 image -> verdict")
    plc_write_p99_max_ms: float = Field(20.0, gt=0, le=10_000, description="p99 Modbus result write")


class RigConfig(BaseModel):
    """hil/rig.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="rig / station name for the report")
    line_config: Path = Field(description="line.yaml with the real camera (genicam) and the real PLC")
    line_rate_parts_per_s: float = Field(gt=0, le=1000, description="trigger rate the PLC / pulse generator runs")
    report_dir: Path = Field(Path("hil-reports"), description="where the summaries are written")
    roundtrip: RoundTripLimits = Field(default_factory=lambda: RoundTripLimits(), description="PLC round trip")
    soak: SoakLimits = Field(default_factory=lambda: SoakLimits(), description="soak test criteria")


RIG_ENV = "LINEGUARD_HIL_RIG"


def load_rig(path: str | Path) -> RigConfig:
    return load_file(RigConfig, path)


def rig_from_env() -> RigConfig | None:
    """The rig named by ``$LINEGUARD_HIL_RIG``; None when it is unset (the HIL checks then skip)."""
    path = os.environ.get(RIG_ENV)
    return load_rig(path) if path else None


def metrics_url(line: LineConfig) -> str:
    """Where a running line's /metrics is scraped from this host (a wildcard bind is reached on loopback)."""
    host = "127.0.0.1" if line.metrics.host in ("0.0.0.0", "::") else line.metrics.host
    return f"http://{host}:{line.metrics.port}/metrics"


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value), ...]}`` of a /metrics endpoint."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def e2e_p99_ms(samples: dict[str, list[tuple[dict[str, str], float]]],
               name: str = "lineguard_e2e_latency_seconds_bucket", q: float = 0.99, **match: str) -> float:
    """Quantile (ms) of a histogram's ``*_bucket`` samples, summed over the labels not in ``match``."""
    by_le: dict[float, float] = {}
    for labels, value in samples.get(name, []):
        if any(labels.get(k) != v for k, v in match.items()):
            continue
        le = float(labels["le"])
        by_le[le] = by_le.get(le, 0.0) + value
    return histogram_quantile(q, list(by_le.items()))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def soak_sample(t_s: float, pid: int, samples: dict[str, list[tuple[dict[str, str], float]]]) -> SoakSample:
    """One soak sample: frames, every kind of drop, fail-safe verdicts, camera + PLC reconnects."""
    return SoakSample(
        t_s=t_s, rss_bytes=rss_bytes(pid), frames=total(samples, "lineguard_frames_total"),
        drops=total(samples, "lineguard_drops_total") + total(samples, "lineguard_plc_missed_triggers_total"),
        failsafe=total(samples, "lineguard_failsafe_verdicts_total")
        + total(samples, "lineguard_plc_failsafe_verdicts_total"),
        reconnects=total(samples, "lineguard_camera_reconnects_total")
        + total(samples, "lineguard_plc_reconnects_total"),
    )
