"""Configuration of the collection sink (``lineguard sink``); pure, no I/O."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MIN_FREE_BYTES = 512 * 1024**2  # room for the OS, logs and the SQLite WAL on a shared disk


class CurveServerConfig(BaseModel):
    """CurveZMQ server side: the sink's own certificate and the folder of allowed edge boxes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_secret_key_file: Path = Field(description="the sink's secret certificate (.key_secret)")
    authorized_clients_dir: Path = Field(description="folder of public certificates (.key) of edge "
                                                     "boxes allowed to connect")


class SinkConfig(BaseModel):
    """Config of one sink process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = Field(default="tcp://127.0.0.1:5560", min_length=6, max_length=256,
                      description="ZeroMQ PULL endpoint to bind")
    store_dir: Path = Field(description="folder holding index.sqlite3 and frames/")
    quota_bytes: int = Field(default=20 * 1024**3, ge=1024 * 1024, le=2**50,
                             description="upper bound of stored frame files; oldest unlabelled evicted first")
    min_free_bytes: int = Field(default=DEFAULT_MIN_FREE_BYTES, ge=0, le=2**50,
                                description="free space kept on the store's disk: the quota is lowered to "
                                            "stored + free - this, so a disk smaller than the quota (or filled "
                                            "by others) makes the store evict instead of failing writes")
    max_message_bytes: int = Field(default=64 * 1024**2, ge=64 * 1024, le=1024**3,
                                   description="larger messages are refused and counted as oversize")
    max_pixels: int = Field(default=50_000_000, ge=1, le=1_000_000_000,
                            description="larger images are refused before they are decoded")
    rcvhwm_msgs: int = Field(default=256, ge=1, le=100_000, description="ZeroMQ receive high-water mark")
    batch_max_msgs: int = Field(default=64, ge=1, le=4096,
                                description="messages stored per SQLite transaction at most")
    decode_threads: int = Field(default=2, ge=1, le=64,
                                description="threads verifying (decoding) received PNGs in parallel")
    fsync: bool = Field(default=True, description="fsync files and the index before a frame counts as stored "
                                                  "(false survives a process kill, not a power cut)")
    poll_timeout_ms: int = Field(default=200, ge=10, le=5000, description="how often the loop checks for stop")
    metrics_host: str = Field(default="127.0.0.1", description="metrics endpoint address")
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     description="metrics endpoint port; none = no endpoint, 0 = any free")
    curve: CurveServerConfig | None = Field(default=None, description="CurveZMQ; none = plain TCP")
