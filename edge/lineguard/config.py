"""The line config: one YAML file, one strict schema (unknown keys and bad values refused).

Sections are owned by the modules that use them (sources, engines, plc, publisher); this module
only assembles them and adds the service's own. Loaded only through :func:`load_config`, which
reports each error with its YAML line (``lineguard check-config``). docs/config.md documents it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lineguard.changeover.config import ChangeoverConfig, decode_public_key
from lineguard.drift_detect import DriftConfig
from lineguard.engines.config import EngineConfig, OrtEngineConfig
from lineguard.plc.config import PlcConfig
from lineguard.publisher import PublisherConfig
from lineguard.sources import SourceConfig
from lineguard.yamlcfg import load_file

_Strict = ConfigDict(extra="forbid", frozen=True)


class LineSection(BaseModel):
    """Identity of the line / station."""

    model_config = _Strict

    name: str = Field("line", min_length=1, max_length=64, description="line / station name, shown in logs")


class BundleSection(BaseModel):
    """Which model bundle the service runs."""

    model_config = _Strict

    path: Path = Field(description="directory of the model bundle to run (verified at start)")
    trusted_keys: list[str] = Field(
        default_factory=list, max_length=32,
        description="lines without a changeover section: base64 Ed25519 public keys whose bundle signatures "
        "`run` accepts (with a changeover section, changeover.trusted_keys applies to run too)",
    )
    allow_unsigned: bool | None = Field(
        None, description="lines without a changeover section: false refuses unsigned, untrusted or edited "
        "bundles at start; true accepts them (development, logged as a WARNING at every start); unset: "
        "false when trusted_keys are listed, otherwise true with the same warning (configs from before run "
        "checked signatures)",
    )

    @field_validator("trusted_keys")
    @classmethod
    def verify_keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            decode_public_key(k)
        return keys


class MetricsSection(BaseModel):
    """The Prometheus /metrics endpoint."""

    model_config = _Strict

    enabled: bool = Field(True, description="serve Prometheus metrics")
    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 exposes it to the plant network")
    port: int = Field(9108, ge=0, le=65535, description="TCP port of /metrics (0 = any free port)")


class ServiceSection(BaseModel):
    """Queues, liveness and the decision log of the inspection service."""

    model_config = _Strict

    queue_size_frames: int = Field(
        4, ge=1, le=1024, description="frames waiting for inspection; when full, new frames get a fail-safe verdict"
    )
    overflow_policy: Literal["failsafe_newest", "block"] = Field(
        "failsafe_newest",
        description="queue full: failsafe_newest answers the new frame with the fail-safe verdict at once (a "
        "line that cannot wait); block makes acquisition wait for room (replay, benchmarks)",
    )
    acquire_timeout_ms: int = Field(200, ge=1, le=60_000, description="timeout of one source read")
    stall_budget_ms: int = Field(
        5000, ge=100, le=600_000, description="a loop without progress this long is wedged (watchdog stops)"
    )
    decision_log_path: Path | None = Field(None, description="JSON-lines decision log (rotated); none = off")
    decision_log_backlog_lines: int = Field(
        50_000, ge=0, le=5_000_000,
        description="lines kept in memory while the decision log cannot be written (disk full, read-only) and "
        "written in order when it can again (~320 bytes each); lines beyond are lost and counted",
    )
    decision_log_retry_ms: int = Field(
        1000, ge=10, le=600_000, description="how often a decision log that cannot be written is tried again"
    )
    part_ids: Literal["source", "plc_trigger"] = Field(
        "source",
        description="where part ids come from: source counts every part the camera/replay delivers (1, 2, 3, "
        "fault frames included); plc_trigger gives the n-th part the part id of the PLC's n-th trigger "
        "(registers 20-22; the PLC's part ids must grow by 1 per trigger; docs/plc.md)",
    )
    trigger_wait_ms: int = Field(
        50, ge=0, le=10_000,
        description="part_ids: plc_trigger: how long a frame may wait for the PLC link to read its trigger",
    )


class LineConfig(BaseModel):
    """Top level of line.yaml."""

    model_config = _Strict

    line: LineSection = Field(default_factory=lambda: LineSection(), description="line identity")
    bundle: BundleSection = Field(description="the model bundle to run")
    source: SourceConfig = Field(description="image source; `type:` genicam, replay or synthetic")
    engine: EngineConfig = Field(default_factory=lambda: OrtEngineConfig(), description="inference back-end")
    plc: PlcConfig | None = Field(None, description="PLC link; absent = no PLC (verdicts only logged)")
    publisher: PublisherConfig = Field(
        default_factory=lambda: PublisherConfig(), description="uncertain frames to the collection sink (ZeroMQ)"
    )
    metrics: MetricsSection = Field(default_factory=lambda: MetricsSection(), description="Prometheus endpoint")
    drift: DriftConfig = Field(default_factory=lambda: DriftConfig(), description="imaging / process drift monitor")
    service: ServiceSection = Field(default_factory=lambda: ServiceSection(), description="queues, watchdog, log")
    changeover: ChangeoverConfig | None = Field(
        None, description="bundle store, signed bundles, hot swap, shadow mode, control endpoint; absent = off"
    )

    @model_validator(mode="after")
    def verify_one_signature_policy(self) -> LineConfig:
        b = self.bundle
        if self.changeover is not None and (b.trusted_keys or b.allow_unsigned is not None):
            raise ValueError("bundle.trusted_keys / bundle.allow_unsigned are set but so is a changeover section, "
                             "whose trusted_keys / allow_unsigned apply to run too: keep them under changeover only")
        if self.changeover is None and b.allow_unsigned is False and not b.trusted_keys:
            raise ValueError("bundle.allow_unsigned is false but bundle.trusted_keys is empty: every bundle would "
                             "be refused (add the public key printed by lineguard sign-bundle --generate-key)")
        return self

    @model_validator(mode="after")
    def verify_part_id_source(self) -> LineConfig:
        if self.service.part_ids == "plc_trigger" and self.plc is None:
            raise ValueError("service.part_ids is plc_trigger but there is no plc section to read the triggers "
                             "from: add plc (registers 20-22 carry the trigger) or set service.part_ids: source")
        return self

    def signature_policy(self) -> tuple[list[str], bool, str]:
        """(trusted keys, allow unsigned, config field of the keys): one policy for run, swaps and checks."""
        if self.changeover is not None:
            return list(self.changeover.trusted_keys), self.changeover.allow_unsigned, "changeover.trusted_keys"
        b = self.bundle
        # unset: keys listed = enforce them; no keys = a config written before run checked signatures,
        # still accepted so it keeps working, but with a WARNING at every start (signing.warn_if_permissive)
        allow = b.allow_unsigned if b.allow_unsigned is not None else not b.trusted_keys
        return list(b.trusted_keys), allow, "bundle.trusted_keys"


def load_config(path: str | Path) -> LineConfig:
    return load_file(LineConfig, path)
