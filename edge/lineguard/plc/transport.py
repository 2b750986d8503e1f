"""Modbus transport of the PLC link: TCP, TLS (Modbus/TCP Security) or RTU, one sync client.

Data flow: PlcLink writer thread -> ModbusTransport -> pymodbus client -> PLC.
Owned by exactly one thread (the writer); never retries on the hot path (retries=0) and
never blocks longer than ``timeout_ms`` per request. Every pymodbus exception and every
Modbus exception response becomes one ``PlcTransactionError``; every request is recorded in
the flight recorder.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.client import ModbusSerialClient, ModbusTcpClient, ModbusTlsClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from lineguard.errors import ConfigError
from lineguard.plc.config import (
    PlcConfig,
    RtuTransportConfig,
    TcpTransportConfig,
    TlsTransportConfig,
)
from lineguard.plc.errors import PlcErrorKind, PlcTransactionError
from lineguard.plc.recorder import FlightRecorder, Transaction

_ILLEGAL_ADDRESS = 0x02
_GATEWAY_CODES = (0x0A, 0x0B)


def build_tls_context(cfg: TlsTransportConfig) -> ssl.SSLContext:
    """Client context that verifies the PLC: CA file, hostname check, our client certificate.

    pymodbus' default ``SSLContext(PROTOCOL_TLS_CLIENT)`` has no CA loaded; we never use it.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file))
        ctx.load_cert_chain(certfile=str(cfg.cert_file), keyfile=str(cfg.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"PLC TLS: cannot load CA {cfg.ca_file} or client cert {cfg.cert_file}/{cfg.key_file}: {exc}; "
            "check the paths and that the files are PEM"
        ) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Modbus/TCP Security requires TLS 1.2 or later
    ctx.check_hostname = cfg.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _VerifiedTlsClient(ModbusTlsClient):
    """pymodbus' sync TLS client wraps the socket without ``server_hostname``, which makes
    hostname checking impossible; this connect() passes it so verification really happens."""

    def __init__(self, host: str, *, server_hostname: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._server_hostname = server_hostname

    def connect(self) -> bool:
        if self.socket:
            return True
        params = self.comm_params
        raw = socket.create_connection((params.host, params.port), timeout=params.timeout_connect)
        try:
            assert params.sslctx is not None
            self.socket = params.sslctx.wrap_socket(raw, server_side=False, server_hostname=self._server_hostname)
        except BaseException:
            raw.close()
            raise
        return True


def _build_client(cfg: PlcConfig) -> ModbusTcpClient | ModbusSerialClient:
    t = cfg.transport
    common: dict[str, Any] = {"timeout": cfg.timeout_ms / 1000.0, "retries": 0, "name": "lineguard-plc"}
    if isinstance(t, TcpTransportConfig):
        return ModbusTcpClient(t.host, port=t.port, **common)
    if isinstance(t, TlsTransportConfig):
        return _VerifiedTlsClient(
            t.host,
            port=t.port,
            sslctx=build_tls_context(t),
            server_hostname=t.server_hostname or t.host,
            **common,
        )
    if isinstance(t, RtuTransportConfig):
        return ModbusSerialClient(
            t.device, baudrate=t.baudrate, parity=t.parity, stopbits=t.stopbits, bytesize=t.bytesize, **common
        )
    raise ConfigError(f"unknown PLC transport {t!r}")  # pragma: no cover - pydantic prevents it


def _kind_of_code(code: int) -> PlcErrorKind:
    if code == _ILLEGAL_ADDRESS:
        return PlcErrorKind.ILLEGAL_ADDRESS
    if code in _GATEWAY_CODES:
        return PlcErrorKind.DEVICE
    return PlcErrorKind.EXCEPTION_RESPONSE


class ModbusTransport:
    """One Modbus client plus the error mapping and the flight recorder."""

    def __init__(
        self,
        *,
        client: ModbusTcpClient | ModbusSerialClient,
        unit_id: int,
        recorder: FlightRecorder,
        describe: str,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._client = client
        self._unit = unit_id
        self._recorder = recorder
        self._clock = clock_ns
        self.describe = describe
        self.connected = False

    @classmethod
    def from_config(cls, cfg: PlcConfig, *, recorder: FlightRecorder) -> ModbusTransport:
        """Builds the client (loads TLS files); connects later, in the writer thread."""
        t = cfg.transport
        describe = f"rtu:{t.device}" if isinstance(t, RtuTransportConfig) else f"{t.type}://{t.host}:{t.port}"
        return cls(client=_build_client(cfg), unit_id=cfg.registers.unit_id, recorder=recorder, describe=describe)

    def connect(self) -> None:
        t0 = self._clock()
        err = ""
        try:
            ok = bool(self._client.connect())
            if not ok:
                raise PlcTransactionError(f"cannot connect to PLC at {self.describe}", kind=PlcErrorKind.CONNECTION)
        except PlcTransactionError:
            err = PlcErrorKind.CONNECTION.value
            raise
        except (OSError, ssl.SSLError, ModbusException) as exc:
            err = PlcErrorKind.CONNECTION.value
            raise PlcTransactionError(
                f"cannot connect to PLC at {self.describe}: {exc}; check address, cable, TLS certificates",
                kind=PlcErrorKind.CONNECTION,
            ) from exc
        finally:
            latency_us = (self._clock() - t0) / 1e3
            self._recorder.record(
                Transaction(t_ns=t0, op="connect", address=0, values=(), latency_us=latency_us, error=err)
            )
            if err:
                self.close()
        self.connected = True

    def close(self) -> None:
        self.connected = False
        self._client.close()  # type: ignore[no-untyped-call]

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        self._call(
            "write_regs",
            address,
            tuple(values),
            lambda: self._client.write_registers(address, list(values), device_id=self._unit),
        )

    def write_coils(self, address: int, bits: Sequence[bool]) -> None:
        self._call(
            "write_coils",
            address,
            tuple(int(b) for b in bits),
            lambda: self._client.write_coils(address, list(bits), device_id=self._unit),
        )

    def read_registers(self, address: int, count: int) -> list[int]:
        resp = self._call(
            "read_regs",
            address,
            (count,),
            lambda: self._client.read_holding_registers(address, count=count, device_id=self._unit),
        )
        regs = list(getattr(resp, "registers", []))
        if len(regs) < count:
            raise PlcTransactionError(
                f"PLC returned {len(regs)} registers for a read of {count} at {address}", kind=PlcErrorKind.PROTOCOL
            )
        return regs[:count]

    def _call(self, op: str, address: int, values: tuple[int, ...], fn: Callable[[], Any]) -> Any:
        t0 = self._clock()
        err: PlcErrorKind | None = None
        try:
            resp = fn()
            if resp.isError():
                raise _from_response(resp, f"PLC {self.describe} answered {op} @{address}")
            return resp
        except PlcTransactionError as exc:
            err = exc.kind
            raise
        except (ModbusException, OSError, ValueError) as exc:
            mapped = _from_exception(exc, f"PLC {self.describe} {op} @{address}")
            err = mapped.kind
            raise mapped from exc
        finally:
            self._recorder.record(
                Transaction(
                    t_ns=t0,
                    op=op,
                    address=address,
                    values=values,
                    latency_us=(self._clock() - t0) / 1e3,
                    error=err.value if err else "",
                )
            )
            if err is not None and err.breaks_connection:
                self.close()


def _from_response(resp: Any, what: str) -> PlcTransactionError:
    """A Modbus exception response (the second error channel of pymodbus) as our one error."""
    code = int(getattr(resp, "exception_code", 0))
    kind = _kind_of_code(code)
    hint = {
        PlcErrorKind.ILLEGAL_ADDRESS: "; the address is not in the PLC: check the register map",
        PlcErrorKind.DEVICE: "; no such unit behind the gateway: check registers.unit_id",
    }.get(kind, "")
    return PlcTransactionError(f"{what} with Modbus exception code {code}{hint}", kind=kind, exception_code=code)


def _from_exception(exc: Exception, what: str) -> PlcTransactionError:
    """A pymodbus / socket exception as our one error, classified by kind."""
    if isinstance(exc, ConnectionException | OSError):
        return PlcTransactionError(f"{what}: connection lost: {exc}", kind=PlcErrorKind.CONNECTION)
    if isinstance(exc, ModbusIOException):
        # pymodbus raises ModbusIOException both for "no response" and "wrong unit answered"
        kind = PlcErrorKind.DEVICE if "device id" in str(exc) else PlcErrorKind.TIMEOUT
        return PlcTransactionError(f"{what}: no valid response in time: {exc}", kind=kind)
    return PlcTransactionError(f"{what}: {exc}", kind=PlcErrorKind.PROTOCOL)
