"""``lineguard sink-upload``: copy the sink's stored frames and index rows to S3-compatible storage.

Runs once (for a systemd timer, systemd/lineguard-sink-upload.timer) or every ``--interval-s``.
Credentials come from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, e.g. a
systemd ``EnvironmentFile`` or ``LoadCredential``) or boto3's other usual sources, never from flags.
``--metrics-textfile`` writes gauges for node_exporter's textfile collector. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from pydantic import ValidationError

from lineguard.errors import ConfigError
from lineguard.ops.s3upload import S3UploadConfig, SinkUploader, UploadResult, run_periodically

HELP = "upload the sink's stored frames and index rows to S3-compatible storage"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, type=Path, help="the sink's store folder")
    p.add_argument("--bucket", required=True, help="target bucket (must exist)")
    p.add_argument("--prefix", required=True, help="key prefix, e.g. plant-1/press-3")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint, e.g. https://s3.plant.local:9000")
    p.add_argument("--region", default="us-east-1", help="S3 region name")
    p.add_argument("--ca-bundle", type=Path, default=None, help="PEM CA file of a plant-internal endpoint")
    p.add_argument("--state", type=Path, default=None, help="progress file (default <store>/upload-state.json)")
    p.add_argument("--batch-rows", type=int, default=200, help="index rows per batch")
    p.add_argument("--interval-s", type=float, default=None, help="keep running, one pass every N seconds")
    p.add_argument("--metrics-textfile", type=Path, default=None,
                   help="write lineguard_sink_upload_* gauges here (node_exporter textfile collector, *.prom)")


def _config(args: argparse.Namespace) -> S3UploadConfig:
    try:
        return S3UploadConfig(store_dir=args.store, bucket=args.bucket, prefix=args.prefix.strip("/"),
                              endpoint_url=args.endpoint_url, region_name=args.region, ca_bundle=args.ca_bundle,
                              state_file=args.state, batch_rows=args.batch_rows)
    except ValidationError as exc:
        raise ConfigError(f"invalid sink-upload options: {exc}") from exc


def write_textfile(path: Path, result: UploadResult, *, ok: bool) -> None:
    """Gauges for node_exporter's textfile collector (written atomically by prometheus_client)."""
    reg = CollectorRegistry()
    Gauge("lineguard_sink_upload_last_run_ok", "1 if the last upload run finished without error",
          registry=reg).set(1 if ok else 0)
    Gauge("lineguard_sink_upload_pending_rows", "index rows not uploaded yet", registry=reg).set(result.pending_rows)
    Gauge("lineguard_sink_upload_uploaded_frames", "frames uploaded since the state file was created",
          registry=reg).set(result.state.frames)
    Gauge("lineguard_sink_upload_evicted_before_upload", "frames the sink evicted before they were uploaded",
          registry=reg).set(result.state.evicted_before_upload)
    Gauge("lineguard_sink_upload_last_row_id", "highest uploaded index row id", registry=reg).set(
        result.state.last_row_id)
    write_to_textfile(str(path), reg)


def run(args: argparse.Namespace) -> int:
    uploader = SinkUploader.from_config(_config(args))
    try:
        if args.interval_s is None:
            result = uploader.run_once()
            if args.metrics_textfile is not None:
                write_textfile(args.metrics_textfile, result, ok=True)
            print(f"uploaded {result.frames} frames ({result.bytes} bytes) in {result.batches} batches; "
                  f"{result.pending_rows} rows pending; {result.evicted_before_upload} evicted before upload",
                  flush=True)
            return 0
        stop = threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        run_periodically(uploader, interval_s=args.interval_s, stop_check=stop.is_set)
        return 0
    finally:
        uploader.close()
