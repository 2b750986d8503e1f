"""HTTP server of the labelling page: the queue as JSON, frames with the anomaly map overlaid, labels in.

Data flow: browser <-> :class:`LabelServer` (stdlib ``ThreadingHTTPServer`` on loopback by default)
<-> :class:`lineguard.sink.labels.LabelBook` (the sink store's index and label log). Before
answering ``/api/queue`` it asks the injected ``planner`` (active learning, see
``lineguard_models.active.plan_shift``) to top up this shift's selection, so the page shows the
most informative frames first.

API: ``GET /`` page, ``GET /api/queue``, ``GET /api/image/<message_id>?overlay=0|1`` (PNG),
``POST /api/label`` with JSON ``{"message_id": ..., "label": ...}``.

Must never: serve a file outside the store (frames are looked up by id in the index, never by a
path from the request), accept a label that is not a class name, or hide a failed write (the page
shows the error and the frame stays in the queue).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from lineguard.errors import ImageError, PublisherError
from lineguard.imageio import read_image
from lineguard.labelling.page import PAGE
from lineguard.sink.labels import LabelBook, LabelError, QueuedFrame

log = logging.getLogger(__name__)
_ID = re.compile(r"^/api/image/([0-9a-f-]{36})$")
_MAX_BODY_BYTES = 4096
Planner = Callable[[], str]  # tops up the current shift's selection; returns the shift id


class LabelServerConfig(BaseModel):
    """``lineguard label`` server settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, max_length=255, description="address to bind (loopback default)")
    port: int = Field(8090, ge=0, le=65535, description="TCP port; 0 = any free port")
    labeller: str = Field("operator", min_length=1, max_length=64, description="name recorded with each label")
    queue_limit: int = Field(50, ge=1, le=10_000, description="frames sent to the page per request")
    budget_per_shift: int = Field(50, ge=1, le=100_000, description="shown on the page with the shift's progress")


def render_frame(frame: QueuedFrame, *, overlay: bool) -> bytes:
    """The frame as an 8-bit PNG, optionally with its anomaly map blended in (jet colours)."""
    image = read_image(frame.image_path)
    if image.dtype == np.uint16:  # display only: scale to 8 bit
        image = (image.astype(np.float32) * (255.0 / max(float(image.max()), 1.0))).astype(np.uint8)
    code = cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR
    bgr = np.asarray(cv2.cvtColor(image, code), dtype=np.uint8)
    if overlay and frame.map_path is not None and frame.map_shape is not None:
        amap = np.fromfile(frame.map_path, dtype="<f2").reshape(frame.map_shape).astype(np.float32)
        bgr = _blend(bgr, amap, frame.lower, frame.upper)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageError(f"frame {frame.message_id}: PNG encoding failed")
    return bytes(buf.tobytes())


def _blend(bgr: npt.NDArray[np.uint8], amap: npt.NDArray[np.float32], lower: float | None,
           upper: float | None) -> npt.NDArray[np.uint8]:
    # Scale by the bundle's thresholds, so "hot" means "near a reject" on every frame alike.
    lo = 0.5 * lower if lower is not None else float(np.nanmin(amap))
    hi = upper if upper is not None else float(np.nanmax(amap))
    norm = np.clip((np.nan_to_num(amap) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    norm = cv2.resize(norm, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.6 * norm)[:, :, None]
    return np.asarray(bgr * (1 - alpha) + heat * alpha, dtype=np.uint8)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("label http: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: object) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        app = self.server.app
        try:
            if path == "/":
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/queue":
                self._json(HTTPStatus.OK, app.queue_doc())
            elif m := _ID.match(path):
                frame = app.book.frame(m.group(1))
                if frame is None:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "no such frame"})
                else:
                    self._send(HTTPStatus.OK, render_frame(frame, overlay="overlay=1" in query), "image/png")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})
        except (PublisherError, ImageError, OSError) as exc:
            log.warning("label http: %s failed: %s", path, exc)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})

    def do_POST(self) -> None:
        if self.path != "/api/label":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get_content_type() != "application/json" or not 0 < length <= _MAX_BODY_BYTES:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "expected a small application/json body"})
            return
        try:
            doc = json.loads(self.rfile.read(length))
            mid, label = str(doc["message_id"]), str(doc["label"])
        except (ValueError, KeyError, TypeError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body must be {\"message_id\": ..., \"label\": ...}"})
            return
        try:
            event = self.server.app.book.label(mid, label, labeller=self.server.app.cfg.labeller)
        except LabelError as exc:
            status = HTTPStatus.NOT_FOUND if "not in the store" in str(exc) else HTTPStatus.BAD_REQUEST
            self._json(status, {"error": str(exc)})
            return
        log.info("labelled %s as %s (event %d)", mid, label, event.event_id)
        self._json(HTTPStatus.OK, {"event_id": event.event_id})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: LabelServer


class LabelServer:
    """The labelling page's server; :meth:`start` serves in a daemon thread, :meth:`stop` frees the port."""

    def __init__(self, *, book: LabelBook, config: LabelServerConfig, planner: Planner | None = None) -> None:
        self.book = book
        self.cfg = config
        self._planner = planner
        self._plan_lock = threading.Lock()
        self._httpd = _Server((config.host, config.port), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    @classmethod
    def from_store(cls, store_dir: str | Path, config: LabelServerConfig,
                   planner_factory: Callable[[LabelBook], Planner] | None = None) -> LabelServer:
        book = LabelBook.open(store_dir)
        return cls(book=book, config=config, planner=planner_factory(book) if planner_factory else None)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def queue_doc(self) -> dict[str, Any]:
        shift = ""
        if self._planner is not None:
            with self._plan_lock:  # two browser tabs must not both top up the same shift
                shift = self._planner()
        frames = self.book.queue(shift=shift, limit=self.cfg.queue_limit)
        return {"shift": shift or "-", "budget": self.cfg.budget_per_shift,
                "labelled_this_shift": sum(1 for f in self.book.queue(shift=shift, limit=10**9,
                                                                       include_labelled=True)
                                           if f.selected and f.label is not None),
                "unlabelled": len(self.book.unlabelled()),
                "classes": self.book.classes(), "frames": [f.public() for f in frames]}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="label-http", daemon=True)
        self._thread.start()
        log.info("labelling page at %s", self.url)

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self.book.close()
