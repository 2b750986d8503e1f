"""Config models of the PLC link (the lead nests ``PlcConfig`` in the top-level config).

Sits at the very end of the data flow: Decision -> PLC link -> Modbus registers of the PLC.
Side-effect free: validating a config never opens a socket or reads a certificate; file and
network work happens in ``PlcLink.from_config`` / ``ModbusTransport.from_config``.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lineguard.contracts import Verdict

MAX_REGS_PER_REQUEST = 123  # FC16 carries at most 123 registers; FC3 reads 125, keep one bound


class DataType(str, enum.Enum):
    """How one field is laid out in 16-bit Modbus registers."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    F32 = "f32"

    @property
    def words(self) -> int:
        return 1 if self in (DataType.U16, DataType.I16) else 2


class FieldSpec(BaseModel):
    """One field of the register map: a holding-register address and a data type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: int = Field(ge=0, le=65535, description="0-based holding register address (protocol address)")
    dtype: DataType = Field(default=DataType.U16, description="u16, i16, u32, i32 or f32")


def _f(address: int, dtype: DataType = DataType.U16) -> FieldSpec:
    return FieldSpec(address=address, dtype=dtype)


class RegisterMapConfig(BaseModel):
    """Where each value lives in the PLC. The defaults are the map documented in docs/plc.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit / device id of the PLC")
    word_order: Literal["big", "little"] = Field(
        default="big", description="order of the two words of 32-bit values: big = high word first"
    )
    # LineGuard -> PLC
    heartbeat: FieldSpec = Field(default=_f(0), description="counter, +1 every heartbeat period")
    status: FieldSpec = Field(default=_f(1), description="status bits (docs/plc.md), u16")
    result_seq: FieldSpec = Field(default=_f(9), description="result sequence number 1..65535, 0 = none yet")
    part_id: FieldSpec = Field(default=_f(3, DataType.U32), description="part id echo of the result")
    verdict: FieldSpec = Field(default=_f(5), description="verdict code: 1 accept 2 reject 3 recheck 4 fail-safe")
    defect_class: FieldSpec = Field(default=_f(6), description="defect class code, 0 = none")
    score: FieldSpec = Field(default=_f(7), description="anomaly score; integer types hold score * score_scale")
    result_flags: FieldSpec = Field(default=_f(8), description="bit0 deadline fail-safe, bit1 decision fail-safe")
    active_recipe: FieldSpec = Field(default=_f(2), description="recipe / bundle number in use")
    class_guess: FieldSpec | None = Field(
        default=_f(10), description="classifier's best-guess class code of a reject or recheck (also when "
        "defect_class is unknown), 0 = none; null = not written")
    class_confidence: FieldSpec | None = Field(
        default=_f(11), description="classifier's probability of class_guess; integer types hold "
        "round(p * confidence_scale), top of range = none; null = not written")
    confidence_scale: float = Field(default=1000.0, gt=0, le=1e9,
                                    description="integer class_confidence = round(p * scale) (1000: per mille)")
    status_coils_address: int | None = Field(
        default=None, ge=0, le=65535, description="if set, status bits are mirrored to coils from here"
    )
    # PLC -> LineGuard
    trigger_seq: FieldSpec = Field(default=_f(20), description="PLC increments it for every trigger")
    trigger_part_id: FieldSpec = Field(default=_f(21, DataType.U32), description="part id of the trigger")
    recipe_request: FieldSpec = Field(default=_f(23), description="recipe the PLC asks for, 0 = none")
    result_ack: FieldSpec = Field(default=_f(24), description="last result_seq the PLC consumed")
    # scaling / codes
    score_scale: float = Field(default=1000.0, gt=0, le=1e9, description="integer score = round(score*scale)")
    unknown_defect_code: int = Field(
        default=255, ge=1, le=65535, description="code for a defect class not in the class list"
    )

    def output_fields(self) -> dict[str, FieldSpec]:
        return {
            "heartbeat": self.heartbeat,
            "status": self.status,
            "result_seq": self.result_seq,
            "part_id": self.part_id,
            "verdict": self.verdict,
            "defect_class": self.defect_class,
            "score": self.score,
            "result_flags": self.result_flags,
            "active_recipe": self.active_recipe,
        } | self.class_fields()

    def class_fields(self) -> dict[str, FieldSpec]:
        """The optional class_guess / class_confidence registers that are configured (not null)."""
        return {name: spec for name, spec in (("class_guess", self.class_guess),
                                              ("class_confidence", self.class_confidence)) if spec is not None}

    def input_fields(self) -> dict[str, FieldSpec]:
        return {
            "trigger_seq": self.trigger_seq,
            "trigger_part_id": self.trigger_part_id,
            "recipe_request": self.recipe_request,
            "result_ack": self.result_ack,
        }

    @model_validator(mode="after")
    def _verify(self) -> RegisterMapConfig:
        verify_no_overlap({**self.output_fields(), **self.input_fields()})
        verify_input_span(self.input_fields())
        return self


def verify_no_overlap(fields: dict[str, FieldSpec]) -> None:
    """Two fields sharing a register would silently corrupt each other."""
    owner: dict[int, str] = {}
    for name, spec in fields.items():
        for addr in range(spec.address, spec.address + spec.dtype.words):
            if addr in owner:
                hint = (" (class_guess and class_confidence default to registers 10 and 11: move them or set "
                        "them to null)" if {name, owner[addr]} & {"class_guess", "class_confidence"} else "")
                raise ValueError(f"register {addr} is used by both {owner[addr]} and {name}{hint}")
            owner[addr] = name


def verify_input_span(fields: dict[str, FieldSpec]) -> None:
    """The PLC -> LineGuard fields are read with one FC3 request each poll, so they must be close."""
    lo = min(s.address for s in fields.values())
    hi = max(s.address + s.dtype.words for s in fields.values())
    if hi - lo > MAX_REGS_PER_REQUEST:
        raise ValueError(f"input fields span {hi - lo} registers; keep them within {MAX_REGS_PER_REQUEST}")


class TcpTransportConfig(BaseModel):
    """Modbus TCP (plain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tcp"] = "tcp"
    host: str = Field(default="127.0.0.1", min_length=1, description="PLC host name or IP")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus TCP port")


class TlsTransportConfig(BaseModel):
    """Modbus/TCP Security: TLS with real certificate verification (never unverified)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tls"] = "tls"
    host: str = Field(min_length=1, description="PLC host name or IP")
    port: int = Field(default=802, ge=1, le=65535, description="Modbus/TCP Security port (802)")
    ca_file: Path = Field(description="PEM file of the CA(s) that sign the PLC's certificate")
    cert_file: Path = Field(description="PEM client certificate (Modbus/TCP Security needs mutual TLS)")
    key_file: Path = Field(description="PEM private key of the client certificate")
    check_hostname: bool = Field(default=True, description="verify that the PLC certificate names the host")
    server_hostname: str | None = Field(
        default=None, description="name to check in the PLC certificate when host is an IP (default: host)"
    )


class RtuTransportConfig(BaseModel):
    """Modbus RTU over a serial line (RS-485 / RS-232)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["rtu"] = "rtu"
    device: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=19200, ge=1200, le=921600, description="bits per second")
    parity: Literal["N", "E", "O"] = Field(default="E", description="Modbus RTU default is even parity")
    stopbits: Literal[1, 2] = Field(default=1, description="stop bits")
    bytesize: Literal[7, 8] = Field(default=8, description="data bits")


TransportConfig = Annotated[TcpTransportConfig | TlsTransportConfig | RtuTransportConfig, Field(discriminator="type")]


class PlcConfig(BaseModel):
    """Everything the PLC link needs: transport, register map, handshake, deadline, timing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: TransportConfig = Field(
        default_factory=TcpTransportConfig, description="tcp, tls or rtu; the type key picks the schema"
    )
    registers: RegisterMapConfig = Field(default_factory=RegisterMapConfig, description="register map")
    handshake: Literal["fire_and_forget", "acknowledged"] = Field(
        default="acknowledged", description="acknowledged: next result only after the PLC acks the last"
    )
    result_buffer_size: int = Field(
        default=8, ge=1, le=1024, description="results held unacknowledged; overflow is a counted fault"
    )
    deadline_ms: float = Field(default=200.0, gt=0, le=60000, description="trigger -> verdict deadline")
    failsafe_verdict: Literal["reject", "recheck", "failsafe"] = Field(
        default="reject", description="verdict written when the deadline passes without a verdict"
    )
    expect_on_trigger: bool = Field(
        default=True, description="start a part's deadline when its PLC trigger is read (trigger-driven lines)"
    )
    timeout_ms: float = Field(default=100.0, ge=5, le=10000, description="per-transaction response timeout")
    heartbeat_period_ms: float = Field(default=250.0, ge=10, le=60000, description="heartbeat write period")
    poll_period_ms: float = Field(default=10.0, ge=1, le=10000, description="read period of PLC inputs")
    ack_poll_period_ms: float = Field(
        default=2.0, ge=0.5, le=1000, description="read period while a result waits for its ack"
    )
    reconnect_backoff_initial_ms: float = Field(default=50.0, ge=1, le=60000, description="first retry delay")
    reconnect_backoff_max_ms: float = Field(default=2000.0, ge=1, le=600000, description="retry delay cap")
    reconnected_flag_hold_ms: float = Field(
        default=2000.0, ge=0, le=600000, description="how long status bit 'link recovered' stays set"
    )
    flight_recorder_size: int = Field(default=64, ge=1, le=100000, description="transactions kept for dumps")
    inbox_capacity: int = Field(
        default=4096, ge=16, le=1_000_000, description="expect/submit calls queued to the writer thread"
    )
    writer_nice: int = Field(
        default=0, ge=-20, le=19, description="nice value for the writer thread (negative needs CAP_SYS_NICE)"
    )

    @model_validator(mode="after")
    def _verify(self) -> PlcConfig:
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_initial_ms:
            raise ValueError("reconnect_backoff_max_ms must be >= reconnect_backoff_initial_ms")
        return self

    @property
    def failsafe_code(self) -> Verdict:
        return Verdict[self.failsafe_verdict.upper()]
