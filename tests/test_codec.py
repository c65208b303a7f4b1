from datetime import UTC, datetime, timedelta

import orjson
import pytest

from meterwatch import codec
from meterwatch.codec import decode_uplink, encode_uplink, meter_id_from_topic, uplink_topic

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TOPIC = "meters/WH-000123/up"


def decode(payload: object, topic: str = TOPIC, **kw):
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_uplink(topic, raw, received_at=NOW, **kw)


def test_batched_message_as_in_the_contract():
    d = decode(
        {
            "meter_id": "WH-000123",
            "readings": [
                {"ts": "2026-11-21T08:15:00+08:00", "register_m3": 1234.567, "flow_lph": 12.5},
                {"ts": "2026-11-21T09:15:00+08:00", "register_m3": 1234.600},
            ],
            "battery_pct": 87,
            "rssi_dbm": -95,
            "flags": ["tamper"],
        }
    )
    assert d.rejections == []
    assert [r.register_m3 for r in d.readings] == [1234.567, 1234.600]
    assert d.readings[0].ts == datetime(2026, 11, 21, 0, 15, tzinfo=UTC)
    assert d.readings[0].flow_lph == 12.5
    # Status describes the meter at upload time: it goes with the latest reading only.
    assert (d.readings[0].battery_pct, d.readings[0].flags) == (None, ())
    assert (d.readings[1].battery_pct, d.readings[1].rssi_dbm) == (87, -95)
    assert d.readings[1].flags == ("tamper",)


def test_single_reading_shorthand_and_epoch_seconds():
    epoch = NOW.timestamp() - 60
    d = decode({"meter_id": "WH-000123", "ts": epoch, "register_m3": 5, "battery_pct": 50})
    assert d.rejections == []
    (r,) = d.readings
    assert r.ts == NOW - timedelta(seconds=60)
    assert (r.register_m3, r.battery_pct) == (5.0, 50)


def test_roundtrip_with_encoder():
    ts = NOW - timedelta(hours=1)
    raw = encode_uplink("WH-1", [(ts, 10.0, 1.5), (NOW, 10.25, None)], flags=["leak"])
    d = decode_uplink(uplink_topic("WH-1", "p/"), raw, received_at=NOW, prefix="p/")
    assert [(r.ts, r.register_m3, r.flow_lph) for r in d.readings] == [
        (ts, 10.0, 1.5),
        (NOW, 10.25, None),
    ]
    assert d.readings[1].flags == ("leak",)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", codec.BAD_UTF8),
        (b"{not json", codec.BAD_JSON),
        (b"[1, 2]", codec.NOT_AN_OBJECT),
        ({"ts": "2026-11-21T08:00:00+08:00", "register_m3": 1}, codec.BAD_METER_ID),
        ({"meter_id": "bad id!", "ts": 1, "register_m3": 1}, codec.BAD_METER_ID),
        ({"meter_id": "WH-999", "ts": "2026-11-21T08:00:00+08:00", "register_m3": 1},
         codec.METER_ID_MISMATCH),
        ({"meter_id": "WH-000123", "readings": []}, codec.NO_READINGS),
        ({"meter_id": "WH-000123", "readings": {"ts": 1}}, codec.NO_READINGS),
    ],
)  # fmt: skip
def test_whole_message_rejections(payload, reason):
    d = decode(payload)
    assert d.readings == []
    assert [(r.reason, r.position) for r in d.rejections] == [(reason, None)]


def test_payload_too_large():
    d = decode({"meter_id": "WH-000123", "ts": 1, "register_m3": 1, "pad": "x" * 2000},
               max_bytes=1024)  # fmt: skip
    assert [r.reason for r in d.rejections] == [codec.PAYLOAD_TOO_LARGE]


def test_bad_topic():
    d = decode({"meter_id": "WH-000123"}, topic="meters/WH-000123/down")
    assert d.meter_id is None
    assert [r.reason for r in d.rejections] == [codec.BAD_TOPIC]
    assert meter_id_from_topic("x/meters/A/up", "x/") == "A"
    assert meter_id_from_topic("meters/A/up", "x/") is None
    assert meter_id_from_topic("meters/a/b/up") is None


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        ("not an object", codec.BAD_READING),
        ({"register_m3": 1}, codec.BAD_TS),
        ({"ts": "yesterday", "register_m3": 1}, codec.BAD_TS),
        ({"ts": "2026-11-21T08:00:00", "register_m3": 1}, codec.BAD_TS),  # no offset
        ({"ts": True, "register_m3": 1}, codec.BAD_TS),
        ({"ts": "1999-12-31T23:00:00+00:00", "register_m3": 1}, codec.TS_OUT_OF_RANGE),
        ({"ts": "2026-11-23T12:00:01+00:00", "register_m3": 1}, codec.TS_OUT_OF_RANGE),
        ({"ts": 1e300, "register_m3": 1}, codec.TS_OUT_OF_RANGE),
        ({"ts": "2026-11-21T08:00:00+08:00"}, codec.BAD_REGISTER),
        ({"ts": "2026-11-21T08:00:00+08:00", "register_m3": "12"}, codec.BAD_REGISTER),
        ({"ts": "2026-11-21T08:00:00+08:00", "register_m3": -1}, codec.BAD_REGISTER),
        ({"ts": "2026-11-21T08:00:00+08:00", "register_m3": 1, "flow_lph": "x"}, codec.BAD_FLOW),
    ],
)
def test_bad_reading_is_rejected_alone(reading, reason):
    good = {"ts": "2026-11-21T08:00:00+08:00", "register_m3": 1.0}
    d = decode({"meter_id": "WH-000123", "readings": [good, reading, good | {"register_m3": 2}]})
    assert [r.register_m3 for r in d.readings] == [1.0, 2.0]
    assert [(r.reason, r.position) for r in d.rejections] == [(reason, 1)]


def test_nan_register_is_rejected():
    raw = b'{"meter_id":"WH-000123","ts":"2026-11-21T08:00:00+08:00","register_m3":NaN}'
    assert [r.reason for r in decode(raw).rejections] == [codec.BAD_JSON]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"battery_pct": 150}, codec.BAD_BATTERY),
        ({"rssi_dbm": 20}, codec.BAD_RSSI),
        ({"flags": "tamper"}, codec.BAD_FLAGS),
        ({"flags": ["Tamper!"]}, codec.BAD_FLAGS),
    ],
)
def test_bad_status_keeps_readings(status, reason):
    d = decode({"meter_id": "WH-000123", "readings": [{"ts": 1.7e9, "register_m3": 3}], **status})
    assert len(d.readings) == 1
    assert [r.reason for r in d.rejections] == [reason]


def test_unknown_flags_are_kept_not_dropped():
    d = decode({"meter_id": "WH-000123", "ts": 1.7e9, "register_m3": 3, "flags": ["valve_closed"]})
    assert d.readings[0].flags == ("valve_closed",)
