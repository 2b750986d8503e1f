"""Control endpoint of the running service: JSON over HTTP for status, swap and shadow.

Where it sits: beside the service, on its own threads (``http.server`` with a thread per request),
talking only to the changeover controller, whose worker does the swap. Local only by default
(127.0.0.1 or a unix socket; a plant-network address needs ``allow_remote``), and every request
must carry ``Authorization: Bearer <token>`` matching the token file (constant-time comparison).

    GET  /status                       active bundle, recipe map, last swaps, shadow, rollback watch
    POST /swap    {"bundle": ID} | {"recipe": N} [, "wait_s": S]   200 done, 409 refused, 202 pending
    POST /shadow  {"bundle": ID} | {"stop": true}                  shadow report

Must never: block the inspection thread (nothing here touches it), answer without checking the
token, or read an unbounded request body.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lineguard.changeover.config import ControlConfig
from lineguard.changeover.requests import SwapControl, SwapRequest
from lineguard.errors import ConfigError, LineGuardError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024


def read_token(path: Path) -> bytes:
    """The shared secret; refused when empty or readable by group/others (it would not be a secret)."""
    try:
        mode = path.stat().st_mode
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"control token file {path} cannot be read: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"control token file {path} is readable by others; chmod 600 {path}")
    if len(token) < 16:
        raise ConfigError(f"control token in {path} is shorter than 16 characters")
    return token


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _reply(self, code: int, doc: dict[str, Any]) -> None:
        body = (json.dumps(doc, indent=2, default=str) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        prefix = "Bearer "
        token = given[len(prefix):].encode() if given.startswith(prefix) else b""
        if hmac.compare_digest(token, self.server.token):
            return True
        self.server.unauthorised += 1
        self._reply(401, {"error": "missing or wrong token"})
        return False

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._reply(413, {"error": f"body must be 0..{MAX_BODY_BYTES} bytes"})
            return None
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            self._reply(400, {"error": f"body is not JSON: {exc}"})
            return None
        if not isinstance(doc, dict):
            self._reply(400, {"error": "body must be a JSON object"})
            return None
        return doc

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path != "/status":
            self._reply(404, {"error": "GET /status only"})
            return
        self._reply(200, self.server.controller.status())

    def do_POST(self) -> None:
        if not self._authorised():
            return
        doc = self._body()
        if doc is None:
            return
        try:
            if self.path == "/swap":
                self._swap(doc)
            elif self.path == "/shadow":
                self._shadow(doc)
            else:
                self._reply(404, {"error": "POST /swap or /shadow"})
        except LineGuardError as exc:
            self._reply(409, {"error": str(exc)})

    def _swap(self, doc: dict[str, Any]) -> None:
        bundle, recipe = doc.get("bundle"), doc.get("recipe")
        if (bundle is None) == (recipe is None) or not (
            isinstance(bundle, str) or (isinstance(recipe, int) and 0 < recipe <= 65535)
        ):
            self._reply(400, {"error": 'give exactly one of {"bundle": "<id>"} or {"recipe": 1..65535}'})
            return
        wait_s = min(float(doc.get("wait_s", self.server.wait_max_s)), self.server.wait_max_s)
        req = self.server.controller.submit(SwapRequest(source="control", bundle_id=bundle, recipe=recipe))
        if not req.done.wait(max(wait_s, 0.0)) or req.result is None:
            self._reply(202, {"pending": True, "requested": req.what})
            return
        self._reply(200 if req.result.ok else 409, req.result.to_json())

    def _shadow(self, doc: dict[str, Any]) -> None:
        c = self.server.controller
        if doc.get("stop"):
            self._reply(200, {"stopped": c.stop_shadow()})
        elif isinstance(doc.get("bundle"), str):
            self._reply(200, {"started": c.start_shadow(doc["bundle"])})
        else:
            self._reply(400, {"error": 'give {"bundle": "<id>"} or {"stop": true}'})


class _Server:
    """Attributes the handler reads (mixed into both server classes)."""

    controller: SwapControl
    token: bytes
    wait_max_s: float
    unauthorised: int = 0


class _TcpServer(_Server, ThreadingHTTPServer):
    daemon_threads = True


class _UnixServer(_Server, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = super().get_request()
        return conn, ("unix", 0)  # http.server expects a (host, port) client address


class ControlServer:
    """The endpoint's server and thread; ``start``/``stop`` from the controller."""

    def __init__(self, *, cfg: ControlConfig, controller: SwapControl, token: bytes) -> None:
        self.cfg = cfg
        self._controller = controller
        self._token = token
        self._server: _TcpServer | _UnixServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: ControlConfig, *, controller: SwapControl, token: bytes | None) -> ControlServer:
        return cls(cfg=cfg, controller=controller, token=token if token is not None else read_token(cfg.token_file))

    @property
    def address(self) -> str:
        if self.cfg.unix_socket is not None:
            return f"unix:{self.cfg.unix_socket}"
        return f"http://{self.cfg.host}:{self.port or self.cfg.port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if isinstance(self._server, _TcpServer) else 0

    def start(self) -> None:
        server: _TcpServer | _UnixServer
        try:
            if self.cfg.unix_socket is not None:
                path = self.cfg.unix_socket
                path.unlink(missing_ok=True)
                server = _UnixServer(str(path), _Handler)
                os.chmod(path, 0o600)
            else:
                server = _TcpServer((self.cfg.host, self.cfg.port), _Handler)
        except OSError as exc:
            raise ConfigError(f"control endpoint cannot listen on {self.address}: {exc}") from exc
        server.controller, server.token, server.wait_max_s = self._controller, self._token, self.cfg.swap_wait_max_s
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        self._thread.start()
        log.info("control endpoint on %s", self.address)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        if self.cfg.unix_socket is not None:
            self.cfg.unix_socket.unlink(missing_ok=True)
        self._server = None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def call(
    cfg: ControlConfig, token: bytes, method: str, path: str, body: dict[str, Any] | None = None, *,
    timeout_s: float = 150.0, port: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """Client side (``lineguard swap``, tests): one request, JSON answer, ``(status, doc)``."""
    conn: http.client.HTTPConnection
    if cfg.unix_socket is not None:
        conn = _UnixConnection(cfg.unix_socket, timeout_s)
    else:
        conn = http.client.HTTPConnection(cfg.host, port if port is not None else cfg.port, timeout=timeout_s)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token.decode()}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as exc:
        raise LineGuardError(f"control endpoint {cfg.unix_socket or cfg.host} not reachable: {exc}") from exc
    finally:
        conn.close()
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {"error": raw.decode(errors="replace")}
    return resp.status, doc
