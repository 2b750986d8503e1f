"""The one typed error of the PLC link: every pymodbus exception *and* every Modbus exception
response becomes a ``PlcTransactionError`` with a ``kind``, so callers check one channel.

Never raised out of the writer thread's hot path; the link counts it by kind and recovers.
"""

from __future__ import annotations

import enum

from lineguard.errors import PlcError


class PlcErrorKind(str, enum.Enum):
    """Why a transaction failed; the label of ``lineguard_plc_errors_total``."""

    TIMEOUT = "timeout"  # no (complete) response in timeout_ms
    CONNECTION = "connection"  # cannot connect / connection lost / TLS handshake failed
    ILLEGAL_ADDRESS = "illegal_address"  # exception code 2: the map does not match the PLC
    DEVICE = "device"  # exception codes 10/11 (gateway: no such unit) or a wrong unit answered
    EXCEPTION_RESPONSE = "exception_response"  # any other Modbus exception code
    PROTOCOL = "protocol"  # malformed or unexpected response

    @property
    def breaks_connection(self) -> bool:
        """After these the byte stream cannot be trusted; reconnect before the next request."""
        return self in (PlcErrorKind.TIMEOUT, PlcErrorKind.CONNECTION, PlcErrorKind.PROTOCOL)


class PlcTransactionError(PlcError):
    """A Modbus transaction failed; ``kind`` says how, ``exception_code`` is set for responses."""

    def __init__(self, message: str, *, kind: PlcErrorKind, exception_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.exception_code = exception_code
