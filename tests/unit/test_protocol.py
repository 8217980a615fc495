import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcron.errors import ProtocolError
from zcron.protocol import VERSION, decode, encode, record


def a_record(**values: object) -> dict:
    return record(**{"run_id": "r1", "job": "j", "tick": 1.0, "status": "ok", **values})


def test_result_round_trips() -> None:
    kind, msg = decode(encode("result", record=a_record(exit_code=0)))
    assert kind == "result" and msg["record"]["exit_code"] == 0


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (msgpack.packb([1, 2]), "malformed"),
        (msgpack.packb({"v": 99, "t": "ack", "run_ids": []}), "version"),
        (msgpack.packb({"v": VERSION, "t": "nope"}), "unknown_type"),
        (msgpack.packb({"v": VERSION, "t": "ack"}), "missing_field"),
        (msgpack.packb({"v": VERSION, "t": "ack", "run_ids": [], "x": 1}), "unknown_field"),
        (msgpack.packb({"v": VERSION, "t": "ack", "run_ids": "r"}), "bad_field"),
        (msgpack.packb({"v": VERSION, "t": "ack", "run_ids": [1]}), "bad_field"),
        (msgpack.packb({"v": VERSION, "t": "ack", "run_ids": ["r"] * 10001}), "too_large"),
        (encode("result", record=a_record(status="great")), "bad_field"),
        (encode("result", record={**a_record(), "tick": True}), "bad_field"),
        (encode("result", record={"run_id": "r"}), "missing_field"),
        (b"\x00" * (2 << 20), "too_large"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    try:
        decode(frame)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_frames_decode_or_raise_protocol_error(data: st.DataObject) -> None:
    frame = bytearray(encode("result", record=a_record()))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(frame))
    except ProtocolError:
        pass
