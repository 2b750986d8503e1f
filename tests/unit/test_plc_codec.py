"""Register codec and map: round trips, clamping, and a cross-check against pymodbus' own converter."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from pymodbus.client import ModbusTcpClient

from lineguard.plc.codec import decode, encode, scale_score
from lineguard.plc.config import DataType, FieldSpec, PlcConfig, RegisterMapConfig
from lineguard.plc.regmap import (
    FLAG_DEADLINE_FAILSAFE,
    PlcResult,
    RegisterMap,
    contiguous_runs,
    next_seq,
    status_word,
)

_PYMODBUS_TYPE = {
    DataType.U16: ModbusTcpClient.DATATYPE.UINT16,
    DataType.I16: ModbusTcpClient.DATATYPE.INT16,
    DataType.U32: ModbusTcpClient.DATATYPE.UINT32,
    DataType.I32: ModbusTcpClient.DATATYPE.INT32,
    DataType.F32: ModbusTcpClient.DATATYPE.FLOAT32,
}
CASES = [
    (DataType.U16, 0),
    (DataType.U16, 65535),
    (DataType.I16, -32768),
    (DataType.I16, 1234),
    (DataType.U32, 0x12345678),
    (DataType.U32, 4_000_000_000),
    (DataType.I32, -123456789),
    (DataType.F32, 0.8125),
    (DataType.F32, -3.5e7),
]


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize(("dtype", "value"), CASES)
def test_encode_matches_pymodbus_and_round_trips(dtype: DataType, value: float, word_order: str) -> None:
    words = encode(value, dtype, word_order)
    expected = ModbusTcpClient.convert_to_registers(value, _PYMODBUS_TYPE[dtype], word_order=word_order)  # type: ignore[arg-type]
    assert words == expected
    assert decode(words, dtype, word_order) == value


def test_big_word_order_puts_high_word_first() -> None:
    assert encode(0x0001_0002, DataType.U32, "big") == [1, 2]
    assert encode(0x0001_0002, DataType.U32, "little") == [2, 1]


def test_out_of_range_integers_clamp_instead_of_raising() -> None:
    assert encode(70000, DataType.U16) == [65535]
    assert encode(-5, DataType.U16) == [0]
    assert decode(encode(-40000, DataType.I16), DataType.I16) == -32768


def test_score_scaling() -> None:
    assert scale_score(0.4567, DataType.U16, 1000.0) == 457
    assert scale_score(123.0, DataType.U16, 1000.0) == 65535  # clamped
    assert scale_score(float("nan"), DataType.U16, 1000.0) == 65535  # no score never looks good
    assert scale_score(0.25, DataType.F32, 1000.0) == 0.25
    assert math.isnan(float(decode(encode(float("nan"), DataType.F32), DataType.F32)))


def test_seq_skips_zero_on_wrap() -> None:
    assert next_seq(0) == 1
    assert next_seq(65534) == 65535
    assert next_seq(65535) == 1


def test_status_word_bits() -> None:
    assert status_word({"ready": True, "fault": False, "camera_ok": True}) == 0b10001
    assert status_word({"result_overflow": True}) == 1 << 6


def test_default_result_block_is_one_write_with_seq_last() -> None:
    rmap = RegisterMap(cfg=RegisterMapConfig())
    res = PlcResult(
        seq=7, part_id=0x00012345, verdict=2, defect_code=3, score=0.5, flags=FLAG_DEADLINE_FAILSAFE, t_queued_ns=0
    )
    runs = rmap.result_runs(res)
    # 10-11: class_guess 0 and class_confidence "none" (top of the u16 range) for a result without guess
    assert runs == [(3, [0x0001, 0x2345, 2, 3, 500, 1, 7, 0, 0xFFFF])]
    image = {runs[0][0] + i: w for i, w in enumerate(runs[0][1])}
    assert rmap.decode_result(image) == {
        "result_seq": 7,
        "part_id": 0x12345,
        "verdict": 2,
        "defect_class": 3,
        "score": 500,
        "result_flags": 1,
        "class_guess": 0,
        "class_confidence": 0xFFFF,
    }


def test_class_guess_and_confidence_registers_and_null_turns_them_off() -> None:
    res = PlcResult(seq=3, part_id=9, verdict=3, defect_code=255, score=0.5, flags=0, t_queued_ns=0,
                    guess_code=2, confidence=0.4237)
    assert RegisterMap(cfg=RegisterMapConfig()).result_runs(res) == [(3, [0, 9, 3, 255, 500, 0, 3, 2, 424])]
    off = RegisterMapConfig(class_guess=None, class_confidence=None)
    assert RegisterMap(cfg=off).result_runs(res) == [(3, [0, 9, 3, 255, 500, 0, 3])]
    with pytest.raises(ValidationError, match=r"register 10 is used by both .*set them to null"):
        RegisterMapConfig(result_flags=FieldSpec(address=10))


def test_scattered_map_writes_the_seq_run_last() -> None:
    cfg = RegisterMapConfig(result_seq=FieldSpec(address=40), score=FieldSpec(address=41, dtype=DataType.F32))
    runs = RegisterMap(cfg=cfg).result_runs(
        PlcResult(seq=1, part_id=1, verdict=1, defect_code=0, score=0.25, flags=0, t_queued_ns=0)
    )
    assert [addr for addr, _ in runs] == [3, 8, 10, 40]  # part_id..defect, flags, class guess, then seq+score
    assert runs[-1][1][0] == 1  # seq first word of the last run, float score after it
    assert decode(runs[-1][1][1:], DataType.F32) == 0.25


def test_heartbeat_block_is_contiguous_by_default() -> None:
    runs = RegisterMap(cfg=RegisterMapConfig()).heartbeat_runs(heartbeat=5, status=0b1001, recipe=12)
    assert runs == [(0, [5, 0b1001, 12])]


def test_inputs_decode_from_one_read() -> None:
    rmap = RegisterMap(cfg=RegisterMapConfig())
    assert (rmap.input_start, rmap.input_count) == (20, 5)
    inputs = rmap.decode_inputs([4, 0x0002, 0x0003, 9, 77])
    assert (inputs.trigger_seq, inputs.trigger_part_id, inputs.recipe_request, inputs.result_ack) == (4, 0x20003, 9, 77)


def test_overlapping_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="used by both"):
        RegisterMapConfig(verdict=FieldSpec(address=4))  # inside part_id (3-4)


def test_input_fields_must_fit_one_read() -> None:
    with pytest.raises(ValidationError, match="span"):
        RegisterMapConfig(result_ack=FieldSpec(address=500))


def test_config_rejects_unknown_keys_and_bad_bounds() -> None:
    with pytest.raises(ValidationError):
        PlcConfig.model_validate({"deadline_ms": 0})
    with pytest.raises(ValidationError):
        PlcConfig.model_validate({"retries": 3})
    with pytest.raises(ValidationError):
        PlcConfig.model_validate({"reconnect_backoff_initial_ms": 500, "reconnect_backoff_max_ms": 100})
    cfg = PlcConfig.model_validate({"transport": {"type": "rtu", "device": "/dev/ttyUSB0"}})
    assert cfg.transport.type == "rtu"


def test_contiguous_runs() -> None:
    assert contiguous_runs({5: 1, 3: 9, 4: 8, 10: 2}) == [(3, [9, 8, 1]), (10, [2])]
