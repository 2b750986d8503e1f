"""Config of the changeover subsystem (``changeover:`` in line.yaml; the lead nests it in LineConfig).

Sits before everything in :mod:`lineguard.changeover`: config -> ``ChangeoverController.from_config``
-> store, signature verifier, control endpoint, shadow runner. Side-effect free: validating never
reads the token file, the store or a key file (that happens in the ``from_config`` classmethods).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_Strict = ConfigDict(extra="forbid", frozen=True)
ED25519_PUBLIC_KEY_BYTES = 32


def decode_public_key(text: str) -> bytes:
    """Raw 32-byte Ed25519 public key from its base64 text (what ``sign-bundle --generate-key`` prints)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"trusted key {text!r} is not base64 ({exc})") from exc
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise ValueError(f"trusted key {text!r} decodes to {len(raw)} bytes, an Ed25519 public key has 32")
    return raw


class ControlConfig(BaseModel):
    """The control endpoint of the running service (JSON over HTTP: status, swap, shadow)."""

    model_config = _Strict

    host: str = Field("127.0.0.1", min_length=1, description="interface to bind (TCP); loopback by default")
    port: int = Field(9110, ge=0, le=65535, description="TCP port (0 = any free port, reported in the log)")
    unix_socket: Path | None = Field(
        None, description="serve on this unix socket instead of TCP (file permissions then guard it too)"
    )
    token_file: Path = Field(description="file holding the shared secret; clients send it as a Bearer token")
    allow_remote: bool = Field(
        False, description="permit a non-loopback host; without it such a host is refused at config check"
    )
    swap_wait_max_s: float = Field(
        120.0, gt=0, le=3600, description="longest a POST /swap may wait for its result before answering 202"
    )

    @model_validator(mode="after")
    def verify_local_only(self) -> ControlConfig:
        if self.unix_socket is None and not self.allow_remote:
            try:
                loopback = ipaddress.ip_address(self.host).is_loopback
            except ValueError:
                loopback = self.host == "localhost"
            if not loopback:
                raise ValueError(f"control host {self.host!r} is not loopback; set allow_remote: true to expose it")
        return self


class ShadowConfig(BaseModel):
    """A candidate bundle judging the same live frames off the PLC path."""

    model_config = _Strict

    queue_size_frames: int = Field(
        2, ge=1, le=64, description="frames waiting for the candidate; when full the newest is dropped (counted)"
    )
    intra_op_threads: int = Field(
        1, ge=0, le=64, description="ONNX Runtime threads of the candidate (small: the active bundle comes first)"
    )
    nice: int = Field(10, ge=0, le=19, description="nice value of the shadow thread (Linux), so it yields the CPU")
    score_tolerance_fraction: float = Field(
        0.05, ge=0, le=10, description="scores within this fraction of the upper threshold count as agreeing"
    )


class RollbackConfig(BaseModel):
    """After a promotion: return to the previous bundle when the new one leaves its window."""

    model_config = _Strict

    enabled: bool = Field(True, description="watch newly promoted bundles and roll back automatically")
    watch_parts: int = Field(500, ge=1, le=10_000_000, description="parts judged by the new bundle under watch")
    min_parts: int = Field(30, ge=1, le=1_000_000, description="parts needed before the window is judged at all")
    reject_rate_min_fraction: float = Field(0.0, ge=0, le=1, description="lowest plausible reject rate")
    reject_rate_max_fraction: float = Field(
        0.5, ge=0, le=1, description="highest plausible reject rate (fail-safe verdicts count as rejects)"
    )
    latency_p95_max_ms: float = Field(
        1000.0, gt=0, le=600_000, description="95th percentile end-to-end latency the new bundle may reach"
    )

    @model_validator(mode="after")
    def verify_window(self) -> RollbackConfig:
        if self.reject_rate_min_fraction > self.reject_rate_max_fraction:
            raise ValueError("reject_rate_min_fraction is above reject_rate_max_fraction")
        if self.min_parts > self.watch_parts:
            raise ValueError("min_parts is above watch_parts: the window would never be judged")
        return self


class ChangeoverConfig(BaseModel):
    """Bundle store, signatures, swap requests (PLC, control endpoint, file drop), shadow, rollback."""

    model_config = _Strict

    store_dir: Path = Field(description="bundle store on this box (versions, recipe map, install records)")
    trusted_keys: list[str] = Field(
        default_factory=list, max_length=32,
        description="base64 Ed25519 public keys whose signatures are accepted (from sign-bundle --generate-key)",
    )
    allow_unsigned: bool = Field(
        False, description="development only: accept bundles without a valid signature (logged loudly)"
    )
    follow_plc_recipe: bool = Field(True, description="swap when the PLC's recipe-request register changes")
    plc_poll_ms: int = Field(
        20, ge=5, le=10_000, description="how often the swap worker looks at the recipe request the PLC link read"
    )
    drop_dir: Path | None = Field(
        None, description="watched folder: a bundle directory X plus a marker file X.ready installs and swaps it"
    )
    drop_poll_ms: int = Field(1000, ge=50, le=600_000, description="how often the drop folder is looked at")
    preload_bundles: int = Field(
        2, ge=0, le=16,
        description="prepared bundles kept in memory (engines built, golden passed) so a swap is one reference",
    )
    retire_after_s: float = Field(
        5.0, ge=0.1, le=600, description="an engine replaced by a swap is closed only after this long"
    )
    control: ControlConfig | None = Field(None, description="control endpoint; absent = no endpoint")
    shadow: ShadowConfig = Field(default_factory=lambda: ShadowConfig(), description="shadow mode")
    rollback: RollbackConfig = Field(default_factory=lambda: RollbackConfig(), description="automatic rollback")

    @field_validator("trusted_keys")
    @classmethod
    def verify_keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            decode_public_key(k)
        return keys

    @model_validator(mode="after")
    def verify_some_trust(self) -> ChangeoverConfig:
        if not self.trusted_keys and not self.allow_unsigned:
            raise ValueError("no trusted_keys: every bundle would be refused (add a key or allow_unsigned for dev)")
        return self
