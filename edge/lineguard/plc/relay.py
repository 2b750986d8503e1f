"""A Modbus/TCP relay that loses replies on purpose: for the tests and the hardware-in-the-loop
check of "a result whose answer never came is read back, not written again or counted missed".

LineGuard connects to the relay, the relay to the PLC (the simulator, or the real PLC on the rig).
Requests and replies pass through unchanged, except the reply to every ``every``-th write that
covers the ``result_seq`` register: the PLC gets that write and answers, the relay swallows the
answer. Whatever the PLC does with a write is its own; the relay only takes away the reply, as a
network that fails after the request got through does.

Not used by the service; never on the hot path.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_WRITES = {6, 16, 23}  # write single register, write multiple registers, read/write multiple


def _read_frame(sock: socket.socket) -> bytes | None:
    """One Modbus/TCP frame (MBAP header + PDU), or None when the peer closed."""
    head = _read_exact(sock, _MBAP.size)
    if head is None:
        return None
    _, _, length, _ = _MBAP.unpack(head)
    body = _read_exact(sock, length - 1)
    return None if body is None else head + body


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def _write_span(frame: bytes) -> tuple[int, int] | None:
    """(first register, count) a write request covers; None for anything else."""
    pdu = frame[_MBAP.size :]
    fc = pdu[0]
    if fc not in _WRITES or len(pdu) < 5:
        return None
    if fc == 6:
        return struct.unpack(">H", pdu[1:3])[0], 1
    if fc == 23:  # read/write multiple: the write part follows the read part
        address, count = struct.unpack(">HH", pdu[5:9])
        return address, count
    address, count = struct.unpack(">HH", pdu[1:5])
    return address, count


class ReplyLossRelay:
    """Listens on ``127.0.0.1:<port>``; one upstream connection to ``target`` per client."""

    def __init__(self, target: tuple[str, int], *, result_seq_address: int, every: int) -> None:
        self.target = target
        self.seq_address = result_seq_address
        self.every = every
        self.result_writes = 0
        self.swallowed = 0  # replies taken away
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._closed = False

    def start(self) -> ReplyLossRelay:
        threading.Thread(target=self._accept, name="reply-loss-relay", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # the PLC is not there: neither is the relay, for this client
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            drop: set[int] = set()  # transaction ids whose reply is swallowed
            threading.Thread(target=self._requests, args=(client, upstream, drop), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, drop), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, drop: set[int]) -> None:
        while (frame := _read_frame(client)) is not None:
            span = _write_span(frame)
            if span is not None and span[0] <= self.seq_address < span[0] + span[1]:
                with self._lock:
                    self.result_writes += 1
                    if self.result_writes % self.every == 0:
                        drop.add(_MBAP.unpack(frame[: _MBAP.size])[0])
            try:
                upstream.sendall(frame)
            except OSError:
                break
        self._close(client, upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, drop: set[int]) -> None:
        while (frame := _read_frame(upstream)) is not None:
            tid = _MBAP.unpack(frame[: _MBAP.size])[0]
            with self._lock:
                if tid in drop:
                    drop.discard(tid)
                    self.swallowed += 1
                    continue
            try:
                client.sendall(frame)
            except OSError:
                break
        self._close(client, upstream)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
