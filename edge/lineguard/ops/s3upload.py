"""Plant-wide collection: copy the sink's stored frames and index rows to S3-compatible storage.

Data flow: sink store (``index.sqlite3`` + ``frames/``, written by ``lineguard sink``) -> this
uploader (a separate process, ``lineguard sink-upload``, run by a systemd timer) -> bucket:

* ``<prefix>/frames/<day>/<message_id>.png`` (and ``.f16`` anomaly map), one object per file;
* ``<prefix>/index/<start>-<end>.jsonl``: the index rows (all columns, the wire header, the object
  keys) of one fixed window of row ids (``batch_rows`` wide), written **after** every frame object
  it names, so a consumer that lists ``index/`` only ever sees rows whose frames are there. A
  window that was not full is read back, merged and rewritten on the next run: every row lives in
  exactly one index object, and rows the sink evicted locally since stay in it.

Progress is one JSON state file (last uploaded row id), replaced atomically after each window. A
crash between the upload and the state update re-uploads the same deterministic keys: uploads are
idempotent, nothing is lost or duplicated under another name.

Must never: write to the sink's index or files (read-only SQL, ``query_only``), block the sink
(short read transactions; WAL lets the sink write meanwhile), or advance past a row whose files
exist but failed to upload. Rows evicted by the sink's quota before upload are counted, not errors.
Credentials come from boto3's usual chain (environment, credentials file, instance role); none are
stored in the config.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from lineguard.errors import LineGuardError
from lineguard.fsutil import write_atomic

log = logging.getLogger(__name__)
STATE_VERSION = 1
_COLUMNS = ("id", "message_id", "kind", "received_utc", "image_path", "map_path", "map_height", "map_width",
            "bytes", "camera_id", "bundle_id", "verdict", "anomaly_score", "defect_class", "seq", "part_id",
            "header_json", "labelled")


class UploadError(LineGuardError):
    """The upload could not proceed (store unreadable, bucket unreachable, integrity check failed)."""


class S3UploadConfig(BaseModel):
    """Where and how the sink's frames go to object storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_dir: Path = Field(description="the sink's store folder (index.sqlite3, frames/)")
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$",
                        description="target bucket (must exist)")
    prefix: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
                        description="key prefix, e.g. plant-1/press-3 (one per sink)")
    endpoint_url: str | None = Field(None, max_length=512,
                                     description="S3-compatible endpoint (MinIO, SeaweedFS, Ceph); none = AWS")
    region_name: str = Field("us-east-1", min_length=1, max_length=64, description="S3 region name")
    ca_bundle: Path | None = Field(None, description="PEM CA file for a plant-internal TLS endpoint")
    state_file: Path | None = Field(None, description="progress file; none = <store_dir>/upload-state.json")
    batch_rows: int = Field(200, ge=1, le=10_000, description="index rows per batch (one index object each)")
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="TCP connect timeout per request")
    read_timeout_s: float = Field(60.0, gt=0, le=600, description="read timeout per request")
    max_attempts: int = Field(5, ge=1, le=20, description="attempts per request (boto3 standard retry mode)")

    @property
    def state_path(self) -> Path:
        return self.state_file if self.state_file is not None else self.store_dir / "upload-state.json"


class ObjectStore(Protocol):
    """The two calls the uploader needs; boto3's S3 client satisfies it."""

    def put_object(self, **kwargs: Any) -> dict[str, Any]: ...

    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class UploadState:
    """Progress; ``last_row_id`` is the highest index row id whose batch is fully uploaded."""

    last_row_id: int = 0
    frames: int = 0
    bytes: int = 0
    batches: int = 0
    evicted_before_upload: int = 0

    @classmethod
    def load(cls, path: Path) -> UploadState:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            if raw.pop("version", None) != STATE_VERSION:
                raise UploadError(f"{path}: unknown state version; move it away to start over")
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise UploadError(f"{path}: unreadable upload state ({exc}); fix or move it away") from exc

    def save(self, path: Path) -> None:
        """Replace the state file atomically (temp file, fsync, rename, fsync folder)."""
        data = json.dumps({"version": STATE_VERSION, **{k: getattr(self, k) for k in self.__slots__}})
        write_atomic(path, data.encode())


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What one :meth:`SinkUploader.run_once` did."""

    batches: int
    frames: int
    bytes: int
    evicted_before_upload: int
    pending_rows: int
    state: UploadState


def build_s3_client(cfg: S3UploadConfig) -> ObjectStore:
    """A boto3 S3 client for ``cfg`` (boto3 is needed only on the machine that uploads)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise UploadError("sink-upload needs boto3 (pip install boto3)") from exc
    config = Config(
        connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
        retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
        # path-style and plain Content-MD5: what every S3-compatible server (MinIO, SeaweedFS, Ceph) accepts;
        # the newer default CRC trailers are not implemented everywhere.
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    client = boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region_name, config=config,
                          verify=str(cfg.ca_bundle) if cfg.ca_bundle else None)
    return client  # type: ignore[no-any-return]


class SinkUploader:
    """Uploads new index rows and their files in batches. Build it with :meth:`from_config`."""

    def __init__(self, *, cfg: S3UploadConfig, client: ObjectStore, db: sqlite3.Connection) -> None:
        self.cfg = cfg
        self._client = client
        self._db = db

    @classmethod
    def from_config(cls, cfg: S3UploadConfig, *, client: ObjectStore | None = None) -> SinkUploader:
        index = cfg.store_dir / "index.sqlite3"
        if not index.is_file():
            raise UploadError(f"{index} not found: is {cfg.store_dir} a sink store (lineguard sink --store)?")
        try:
            db = sqlite3.connect(index, timeout=10.0, check_same_thread=False)
            db.execute("PRAGMA query_only = ON")  # the uploader must never change the sink's index
        except sqlite3.Error as exc:
            raise UploadError(f"cannot open {index} ({exc})") from exc
        return cls(cfg=cfg, client=client if client is not None else build_s3_client(cfg), db=db)

    def close(self) -> None:
        self._db.close()

    def pending_rows(self, after_id: int) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM frames WHERE id > ?", (after_id,)).fetchone()[0])

    def run_once(self, *, max_batches: int | None = None) -> UploadResult:
        """Upload every row newer than the saved state (or ``max_batches`` batches), saving after each."""
        state = UploadState.load(self.cfg.state_path)
        start = state
        batches = 0
        for rows in self._batches(state.last_row_id):
            state = self._upload_batch(rows, state)
            state.save(self.cfg.state_path)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
        return UploadResult(
            batches=batches, frames=state.frames - start.frames, bytes=state.bytes - start.bytes,
            evicted_before_upload=state.evicted_before_upload - start.evicted_before_upload,
            pending_rows=self.pending_rows(state.last_row_id), state=state,
        )

    def _batches(self, after_id: int) -> Iterator[list[dict[str, Any]]]:
        """New rows grouped by their fixed id window ``[k*B+1, (k+1)*B]``."""
        last, width = after_id, self.cfg.batch_rows
        while True:
            try:
                cur = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM frames WHERE id > ? ORDER BY id LIMIT ?",
                                       (last, width))
                rows = [dict(zip(_COLUMNS, r, strict=True)) for r in cur.fetchall()]
            except sqlite3.Error as exc:
                raise UploadError(f"reading the sink index failed ({exc})") from exc
            if not rows:
                return
            window = (int(rows[0]["id"]) - 1) // width
            rows = [r for r in rows if (int(r["id"]) - 1) // width == window]
            yield rows
            last = int(rows[-1]["id"])

    def _index_key(self, row_id: int) -> tuple[str, int]:
        """Key of the index object holding ``row_id``, and the window's first id."""
        width = self.cfg.batch_rows
        start = (row_id - 1) // width * width + 1
        return f"{self.cfg.prefix}/index/{start:012d}-{start + width - 1:012d}.jsonl", start

    def _upload_batch(self, rows: list[dict[str, Any]], state: UploadState) -> UploadState:
        frames = nbytes = evicted = 0
        prev = state.last_row_id
        key, start = self._index_key(int(rows[0]["id"]))
        records = self._existing_records(key) if state.last_row_id >= start else {}
        for row in rows:
            evicted += int(row["id"]) - prev - 1  # ids are consecutive; a gap is a row evicted before we saw it
            prev = int(row["id"])
            keys = self._upload_files(row)
            if keys is None:  # evicted between the SELECT and the read: the sink's quota won
                evicted += 1
                continue
            frames += 1
            nbytes += int(row["bytes"])
            record = {k: v for k, v in row.items() if k != "header_json"}
            record["header"] = json.loads(str(row["header_json"]))
            record["labelled"] = bool(row["labelled"])
            record["objects"] = keys
            records[str(row["message_id"])] = record
        lines = [json.dumps(r, sort_keys=True) for r in sorted(records.values(), key=lambda r: int(r["id"]))]
        # the index object last: its presence promises that every frame object it names exists
        self._put(key, ("\n".join(lines) + "\n").encode() if lines else b"", "application/x-ndjson", {})
        last = int(rows[-1]["id"])
        return UploadState(last_row_id=last, frames=state.frames + frames, bytes=state.bytes + nbytes,
                           batches=state.batches + 1, evicted_before_upload=state.evicted_before_upload + evicted)

    def _existing_records(self, key: str) -> dict[str, dict[str, Any]]:
        """Rows already in a partly filled window's index object (they may be gone from the sink)."""
        try:
            body = self._client.get_object(Bucket=self.cfg.bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's NoSuchKey and transport errors share no useful base
            if "NoSuchKey" in type(exc).__name__ or "NoSuchKey" in str(exc) or "404" in str(exc):
                return {}
            raise UploadError(f"reading s3://{self.cfg.bucket}/{key} failed: {exc}; the next run retries") from exc
        records = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        return {str(r["message_id"]): r for r in records}

    def _upload_files(self, row: dict[str, Any]) -> dict[str, str] | None:
        """Upload a row's image (and map); their keys, or None when the sink already evicted them."""
        keys: dict[str, str] = {}
        for name, rel, ctype in (("image", row["image_path"], "image/png"),
                                 ("anomaly_map", row["map_path"], "application/octet-stream")):
            if not rel:
                continue
            try:
                data = (self.cfg.store_dir / str(rel)).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise UploadError(f"cannot read {rel} from the sink store ({exc})") from exc
            key = f"{self.cfg.prefix}/{rel}"
            meta = {"message-id": str(row["message_id"]), "bundle-id": str(row["bundle_id"]),
                    "verdict": str(row["verdict"]), "camera-id": str(row["camera_id"])}
            self._put(key, data, ctype, meta)
            keys[name] = key
        return keys

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        """One PUT with Content-MD5 (the server refuses a corrupted body) and an ETag check."""
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        try:
            resp = self._client.put_object(Bucket=self.cfg.bucket, Key=key, Body=data, ContentType=content_type,
                                           ContentMD5=base64.b64encode(digest).decode(), Metadata=metadata)
        except Exception as exc:  # botocore raises many unrelated types; all mean "not uploaded"
            raise UploadError(f"upload of s3://{self.cfg.bucket}/{key} failed: {exc}; nothing is marked "
                              "uploaded, the next run retries") from exc
        etag = str(resp.get("ETag", "")).strip('"')
        if etag and "-" not in etag and etag != digest.hex():
            raise UploadError(f"s3://{self.cfg.bucket}/{key}: server ETag {etag} != local MD5 {digest.hex()}")


def run_periodically(uploader: SinkUploader, *, interval_s: float, stop_check: Any) -> None:
    """Call :meth:`SinkUploader.run_once` every ``interval_s`` until ``stop_check()`` is true.

    A failed run is logged and retried at the next interval (the state file keeps the progress).
    """
    while not stop_check():
        t0 = time.monotonic()
        try:
            res = uploader.run_once()
            log.info("uploaded %d frames (%d bytes) in %d batches; %d rows pending, %d evicted before upload",
                     res.frames, res.bytes, res.batches, res.pending_rows, res.evicted_before_upload)
        except UploadError as exc:
            log.error("%s", exc)
        while not stop_check() and time.monotonic() - t0 < interval_s:
            time.sleep(min(0.5, interval_s))
