"""PLC link over Modbus (TCP, TLS, RTU): the output stage that tells the PLC each part's verdict.

Public API: ``PlcConfig`` (config), ``PlcLink`` / ``NullPlcLink`` (the link), ``PlcSimulator``
(lives in ``lineguard.plc.sim``; imported lazily so the service does not load the server side).
"""

from lineguard.plc.api import PlcHealth, PlcLinkLike, RecordSink
from lineguard.plc.book import PlcOutcome
from lineguard.plc.config import PlcConfig, RegisterMapConfig
from lineguard.plc.errors import PlcErrorKind, PlcTransactionError
from lineguard.plc.link import PlcLink
from lineguard.plc.null import NullPlcLink

__all__ = [
    "NullPlcLink",
    "PlcConfig",
    "PlcErrorKind",
    "PlcHealth",
    "PlcLink",
    "PlcLinkLike",
    "PlcOutcome",
    "PlcTransactionError",
    "RecordSink",
    "RegisterMapConfig",
]
