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


def a_heartbeat(**fields: object) -> dict:
    return {"v": VERSION, "t": "heartbeat", "scheduler": "s1", "since": 1.0, "sent": 2.0,
            "digest": "d", "eligible": True, "reason": None, **fields}  # fmt: skip


def test_a_well_formed_heartbeat_with_every_optional_field_decodes() -> None:
    frame = msgpack.packb(a_heartbeat(heard={"s2": 1.5}, quorum_since=0.5, workers=["w1"],
                                      pauses="p"))  # fmt: skip
    kind, msg = decode(frame)
    assert kind == "heartbeat" and msg["heard"] == {"s2": 1.5} and msg["workers"] == ["w1"]


@pytest.mark.parametrize(
    "fields",
    [
        {"heard": {"s2": float("nan")}},
        {"heard": {"s2": float("inf")}},
        {"heard": {"s2": True}},
        {"heard": {"s2": "1.0"}},
        {"heard": {7: 1.0}},
        {"heard": {"x" * 1000: 1.0}},
        {"heard": {f"s{i}": 1.0 for i in range(65)}},
        {"heard": [["s2", 1.0]]},
        {"quorum_since": float("nan")},
        {"quorum_since": float("-inf")},
        {"quorum_since": "yesterday"},
        {"workers": [1]},
        {"workers": ["w" * 1000]},
        {"workers": ["w"] * 4097},
        {"workers": "w1"},
        {"since": float("nan")},
        {"sent": 1e300},
    ],
)
def test_hostile_heartbeat_fields_are_rejected(fields: dict) -> None:
    """A peer's heartbeat feeds liveness, echoes and the silent-worker decision: anything
    non-finite, mistyped or unbounded there is refused before it reaches them."""
    with pytest.raises(ProtocolError):
        decode(msgpack.packb(a_heartbeat(**fields)))


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
