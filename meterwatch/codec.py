"""The MQTT wire codec (contract v1), shared by ingest and the simulators so they cannot drift.

Decoding never raises on bad input: it returns the valid readings and a list of rejections, each
with a stable reason code, so ingest can keep the good readings of a message and dead-letter the
rest. Message-level ``battery_pct``, ``rssi_dbm`` and ``flags`` describe the meter at upload time,
so they are attached to the latest reading of the message, not smeared over a day of frozen values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from meterwatch.domain import Reading

UPLINK_SUFFIX = "/up"
METER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
FLAG_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_REGISTER_M3 = 1e9
MAX_ABS_FLOW_LPH = 1e7

# Reason codes are part of the operator contract (they show up in dead_letters.reason).
PAYLOAD_TOO_LARGE = "payload_too_large"
BAD_UTF8 = "bad_utf8"
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
BAD_TOPIC = "bad_topic"
BAD_METER_ID = "bad_meter_id"
METER_ID_MISMATCH = "meter_id_mismatch"
NO_READINGS = "no_readings"
BAD_READING = "bad_reading"
BAD_TS = "bad_ts"
TS_OUT_OF_RANGE = "ts_out_of_range"
BAD_REGISTER = "bad_register"
BAD_FLOW = "bad_flow"
BAD_BATTERY = "bad_battery"
BAD_RSSI = "bad_rssi"
BAD_FLAGS = "bad_flags"
UNKNOWN_METER = "unknown_meter"
STORAGE_ERROR = "storage_error"  # the database refused the message's content

REASONS = (
    PAYLOAD_TOO_LARGE, BAD_UTF8, BAD_JSON, NOT_AN_OBJECT, BAD_TOPIC, BAD_METER_ID,
    METER_ID_MISMATCH, NO_READINGS, BAD_READING, BAD_TS, TS_OUT_OF_RANGE, BAD_REGISTER,
    BAD_FLOW, BAD_BATTERY, BAD_RSSI, BAD_FLAGS, UNKNOWN_METER, STORAGE_ERROR,
)  # fmt: skip


class Rejection(NamedTuple):
    reason: str
    detail: str
    position: int | None = None  # index in ``readings``; None for the whole message


@dataclass(slots=True)
class Decoded:
    meter_id: str | None
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def uplink_topic(meter_id: str, prefix: str = "") -> str:
    return f"{prefix}meters/{meter_id}{UPLINK_SUFFIX}"


def uplink_filter(prefix: str = "", shared_group: str = "") -> str:
    base = f"{prefix}meters/+{UPLINK_SUFFIX}"
    return f"$share/{shared_group}/{base}" if shared_group else base


def meter_id_from_topic(topic: str, prefix: str = "") -> str | None:
    if not topic.startswith(prefix) or not topic.endswith(UPLINK_SUFFIX):
        return None
    parts = topic[len(prefix) : -len(UPLINK_SUFFIX)].split("/")
    if len(parts) != 2 or parts[0] != "meters" or not METER_ID_RE.match(parts[1]):
        return None
    return parts[1]


def _number(value: Any, reason: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(reason, f"{name} must be a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise _Invalid(reason, f"{name} must be finite")
    return f


def parse_ts(value: Any, received_at: datetime, max_skew: timedelta) -> datetime:
    if isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(BAD_TS, f"ts {value[:40]!r} is not ISO 8601") from None
        if ts.tzinfo is None:
            raise _Invalid(BAD_TS, f"ts {value[:40]!r} has no UTC offset")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise _Invalid(BAD_TS, "epoch ts must be finite")
        try:
            ts = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise _Invalid(TS_OUT_OF_RANGE, f"epoch ts {value!r} is out of range") from None
    else:
        raise _Invalid(BAD_TS, "ts must be an ISO 8601 string or epoch seconds")
    if ts < EARLIEST_TS or ts > received_at + max_skew:
        raise _Invalid(TS_OUT_OF_RANGE, f"ts {ts.isoformat()} is before 2000 or in the future")
    return ts


def _optional_range(
    obj: dict[str, Any], key: str, reason: str, lo: float, hi: float
) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    f = _number(value, reason, key)
    if not lo <= f <= hi:
        raise _Invalid(reason, f"{key} {f} outside [{lo}, {hi}]")
    return f


def _flags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(f, str) and FLAG_RE.match(f) for f in value
    ):
        raise _Invalid(BAD_FLAGS, "flags must be a list of short lower-case names")
    return tuple(dict.fromkeys(value))


def _reading(meter_id: str, item: Any, received_at: datetime, max_skew: timedelta) -> Reading:
    if not isinstance(item, dict):
        raise _Invalid(BAD_READING, "a reading must be an object")
    if "ts" not in item:
        raise _Invalid(BAD_TS, "reading has no ts")
    ts = parse_ts(item["ts"], received_at, max_skew)
    if "register_m3" not in item:
        raise _Invalid(BAD_REGISTER, "reading has no register_m3")
    register = _number(item["register_m3"], BAD_REGISTER, "register_m3")
    if not 0 <= register < MAX_REGISTER_M3:
        raise _Invalid(BAD_REGISTER, f"register_m3 {register} outside [0, {MAX_REGISTER_M3:g})")
    flow = _optional_range(item, "flow_lph", BAD_FLOW, -MAX_ABS_FLOW_LPH, MAX_ABS_FLOW_LPH)
    battery = _optional_range(item, "battery_pct", BAD_BATTERY, 0, 100)
    rssi = _optional_range(item, "rssi_dbm", BAD_RSSI, -200, 0)
    return Reading(meter_id, ts, register, flow, battery, rssi, _flags(item.get("flags")))


def decode_uplink(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    prefix: str = "",
    max_bytes: int = 256 * 1024,
    max_skew_s: float = 86400,
) -> Decoded:
    topic_id = meter_id_from_topic(topic, prefix)
    if topic_id is None:
        return Decoded(None, rejections=[Rejection(BAD_TOPIC, f"topic {topic[:200]!r}")])
    out = Decoded(topic_id)
    try:
        msg = _message(topic_id, payload, max_bytes)
    except _Invalid as e:
        out.rejections.append(Rejection(e.reason, e.detail))
        return out

    max_skew = timedelta(seconds=max_skew_s)
    items = msg.get("readings")
    if items is None:
        items = [msg]  # single-reading shorthand: ts and register_m3 at top level
    elif not isinstance(items, list) or not items:
        out.rejections.append(Rejection(NO_READINGS, "readings must be a non-empty list"))
        return out

    # Meter status at upload time; a bad status field is reported but does not cost the readings.
    status: dict[str, Any] = {}
    for key, reason, lo, hi in (
        ("battery_pct", BAD_BATTERY, 0, 100),
        ("rssi_dbm", BAD_RSSI, -200, 0),
    ):
        try:
            status[key] = _optional_range(msg, key, reason, lo, hi)
        except _Invalid as e:
            out.rejections.append(Rejection(e.reason, e.detail))
    try:
        status["flags"] = _flags(msg.get("flags"))
    except _Invalid as e:
        out.rejections.append(Rejection(e.reason, e.detail))

    single = items is not msg.get("readings")
    for i, item in enumerate(items):
        try:
            out.readings.append(_reading(topic_id, item, received_at, max_skew))
        except _Invalid as e:
            out.rejections.append(Rejection(e.reason, e.detail, None if single else i))
    if out.readings and any(status.values()):
        j = max(range(len(out.readings)), key=lambda k: out.readings[k].ts)
        r = out.readings[j]
        out.readings[j] = r._replace(
            battery_pct=r.battery_pct if r.battery_pct is not None else status.get("battery_pct"),
            rssi_dbm=r.rssi_dbm if r.rssi_dbm is not None else status.get("rssi_dbm"),
            flags=tuple(dict.fromkeys(r.flags + status.get("flags", ()))),
        )
    return out


def _message(topic_id: str, payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise _Invalid(PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > {max_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid(BAD_UTF8, str(e)) from None
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise _Invalid(BAD_JSON, str(e)[:200]) from None
    if not isinstance(msg, dict):
        raise _Invalid(NOT_AN_OBJECT, f"payload is a JSON {type(msg).__name__}")
    body_id = msg.get("meter_id")
    if not isinstance(body_id, str) or not METER_ID_RE.match(body_id):
        raise _Invalid(BAD_METER_ID, "meter_id missing or not a valid id")
    if body_id != topic_id:
        raise _Invalid(METER_ID_MISMATCH, f"payload meter_id {body_id!r} != topic {topic_id!r}")
    return msg


def encode_uplink(
    meter_id: str,
    readings: Iterable[tuple[datetime | float, float, float | None]],
    *,
    battery_pct: float | None = None,
    rssi_dbm: float | None = None,
    flags: Sequence[str] = (),
) -> bytes:
    """Build a v1 uplink payload from ``(ts, register_m3, flow_lph)`` tuples."""
    items: list[dict[str, Any]] = []
    for ts, register, flow in readings:
        item: dict[str, Any] = {
            "ts": ts.isoformat() if isinstance(ts, datetime) else ts,
            "register_m3": round(register, 6),
        }
        if flow is not None:
            item["flow_lph"] = round(flow, 3)
        items.append(item)
    msg: dict[str, Any] = {"meter_id": meter_id, "readings": items}
    if battery_pct is not None:
        msg["battery_pct"] = battery_pct
    if rssi_dbm is not None:
        msg["rssi_dbm"] = rssi_dbm
    if flags:
        msg["flags"] = list(flags)
    return orjson.dumps(msg)
