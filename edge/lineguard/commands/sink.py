"""``lineguard sink``: run the collection sink for uncertain frames until SIGTERM / Ctrl-C.

Builds a :class:`~lineguard.sink.config.SinkConfig` from the flags (validated like any config) and
runs :class:`~lineguard.sink.server.SinkServer` in the main thread. Prints one machine-readable
line ``sink listening on <endpoint>`` (and ``metrics on <port>``) so scripts and tests can wait for it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from lineguard.errors import ConfigError
from lineguard.sink.config import DEFAULT_MIN_FREE_BYTES, CurveServerConfig, SinkConfig
from lineguard.sink.server import SinkServer

HELP = "run the collection sink for uncertain frames"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default="tcp://127.0.0.1:5560", help="ZeroMQ endpoint to bind (PULL)")
    p.add_argument("--store", required=True, type=Path, help="store folder (index.sqlite3, frames/)")
    p.add_argument("--quota-mb", type=float, default=20 * 1024, help="disk quota for frame files in MB")
    p.add_argument("--min-free-mb", type=float, default=DEFAULT_MIN_FREE_BYTES / 1024**2,
                   help="free space kept on the store's disk; the quota shrinks to respect it (evicting)")
    p.add_argument("--max-message-mb", type=float, default=64, help="larger messages are refused")
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics endpoint address")
    p.add_argument("--metrics-port", type=int, default=None, help="metrics endpoint port (0 = any free)")
    p.add_argument("--decode-threads", type=int, default=2, help="threads verifying received PNGs")
    p.add_argument("--no-fsync", action="store_true", help="skip fsync (survives kill -9, not power loss)")
    p.add_argument("--curve-secret-key", type=Path, default=None, help="sink's .key_secret (enables CurveZMQ)")
    p.add_argument("--curve-authorized-dir", type=Path, default=None,
                   help="folder of public .key files of allowed edge boxes (with --curve-secret-key)")


def _config(args: argparse.Namespace) -> SinkConfig:
    curve = None
    if (args.curve_secret_key is None) != (args.curve_authorized_dir is None):
        raise ConfigError("--curve-secret-key and --curve-authorized-dir go together")
    try:
        if args.curve_secret_key is not None:
            curve = CurveServerConfig(server_secret_key_file=args.curve_secret_key,
                                      authorized_clients_dir=args.curve_authorized_dir)
        return SinkConfig(
            bind=args.bind, store_dir=args.store, quota_bytes=int(args.quota_mb * 1024 * 1024),
            min_free_bytes=int(args.min_free_mb * 1024 * 1024),
            max_message_bytes=int(args.max_message_mb * 1024 * 1024), metrics_host=args.metrics_host,
            metrics_port=args.metrics_port, fsync=not args.no_fsync, curve=curve,
            decode_threads=args.decode_threads,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid sink options: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    server = SinkServer.from_config(_config(args))

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(f"sink listening on {server.endpoint}", flush=True)
    if server.metrics_server is not None:
        print(f"metrics on {server.metrics_server.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        stats = server.stats
        server.close()
        print(f"sink stopped: received {stats.received}, stored {stats.stored}, duplicates "
              f"{stats.duplicates}, rejected {stats.rejected}", file=sys.stderr, flush=True)
    return 0
