"""The reporting stage: what each meter actually sends, and when, as a recording.

Registers say what a meter measured; real networks deliver it late, twice, out of order, skewed,
garbled or not at all, and ingest and the detectors must cope. So this stage turns the fleet's
registers and status arrays into messages the way the two common radio families send them:

- LoRa meters send each reading when it is taken, a few seconds of airtime later;
- NB-IoT meters wake once a day (at a fixed time per meter in an early-morning window, plus some
  jitter) and send the previous local day's 24 frozen hourly values in one message.

Then a share of messages is dropped (some re-sent hours later with their original timestamps),
sent twice, delayed past later ones (LoRa), or replaced by garbage of a known kind; a few meters
have a clock that is off by a constant. Silent meters send nothing. Each such noise event is
labelled (``expect_alert=False``) once per meter and kind, with a count, so the labels file stays
small at city scale. Everything is numpy over all messages; only labels and the few malformed
payloads are built one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import orjson
from numpy.typing import NDArray

from meterwatch.codec import BAD_JSON, BAD_REGISTER, BAD_UTF8, METER_ID_MISMATCH, encode_uplink
from simulators.grid import Grid
from simulators.labels import Label
from simulators.recording import Recording
from simulators.state import FleetState

LORA, NBIOT = "lora", "nbiot"
# Kinds of garbage a meter or gateway sends, and the reason code ingest must give each.
MALFORMED_KINDS: dict[str, str] = {
    "truncated": BAD_JSON,
    "wrong_meter_id": METER_ID_MISMATCH,
    "missing_register": BAD_REGISTER,
    "non_utf8": BAD_UTF8,
    "string_register": BAD_REGISTER,
}
_KIND_NAMES = tuple(MALFORMED_KINDS)


@dataclass(frozen=True)
class ReportingConfig:
    """The ``[reporting]`` table of a scenario. Rates are shares of all messages."""

    timezone: str = "Asia/Shanghai"  # local days (its UTC offset at the grid's start)
    lora_delay_max_s: int = 5  # LoRa airtime and gateway latency, uniform 0..max
    nbiot_window_h: tuple[float, float] = (0.0, 6.0)  # local upload time of day, per meter
    nbiot_jitter_s: int = 300  # day-to-day variation of an NB-IoT meter's upload time
    drop_rate: float = 0.005  # messages lost in the network
    resend_share: float = 0.5  # of dropped messages, those re-sent later
    resend_delay_h: tuple[float, float] = (1.0, 12.0)
    duplicate_rate: float = 0.003  # messages delivered twice
    duplicate_delay_max_s: int = 120
    out_of_order_rate: float = 0.002  # LoRa messages held back past later ones
    out_of_order_delay_intervals: tuple[float, float] = (1.5, 4.0)
    malformed_rate: float = 0.0005  # messages replaced by garbage
    skew_share: float = 0.01  # meters whose clock is off by a constant
    skew_s: tuple[float, float] = (30.0, 600.0)  # size of that offset, either sign
    rssi_dbm: tuple[float, float] = (-118.0, -75.0)  # per-meter signal strength range

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"reporting.timezone {self.timezone!r} is not a known zone") from None
        rates = (self.drop_rate, self.duplicate_rate, self.out_of_order_rate, self.malformed_rate)
        if min(rates) < 0 or sum(rates) > 1:
            raise ValueError("reporting rates must be >= 0 and sum to at most 1")
        if not 0 <= self.resend_share <= 1 or not 0 <= self.skew_share <= 1:
            raise ValueError("reporting.resend_share and skew_share must be in [0, 1]")
        if min(self.lora_delay_max_s, self.nbiot_jitter_s, self.duplicate_delay_max_s) < 0:
            raise ValueError("reporting delays must be >= 0")
        for name in ("nbiot_window_h", "resend_delay_h", "out_of_order_delay_intervals",
                     "skew_s", "rssi_dbm"):  # fmt: skip
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"reporting.{name} must be [low, high]")
        if self.nbiot_window_h[0] < 0 or self.nbiot_window_h[1] > 24:
            raise ValueError("reporting.nbiot_window_h must lie within [0, 24]")

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> ReportingConfig:
        """The config of a ``[reporting]`` table; unknown keys and bad values raise ValueError."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"unknown key reporting.{key}")
            default = getattr(cls(), key)
            values[key] = _coerce(f"reporting.{key}", value, default)
        return cls(**values)


def _coerce(where: str, value: Any, default: Any) -> Any:
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"{where} must be [low, high]")
        return tuple(_coerce(where, v, 0.0) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number")
    if isinstance(default, int) and not isinstance(value, int):
        raise ValueError(f"{where} must be an integer")
    return type(default)(value)


@dataclass(eq=False)
class _Sent:
    """Messages (one entry each) and the readings they carry (grouped by message, in order).

    LoRa messages and their readings come first, so "is LoRa" is an index comparison.
    """

    send: NDArray[np.int64]  # per message
    first: NDArray[np.int32]  # first reading row
    n: NDArray[np.int32]  # readings in the message
    battery: NDArray[np.float32]
    rssi: NDArray[np.float32]
    flags: NDArray[np.uint8]
    r_meter: NDArray[np.int32]  # per reading
    r_col: NDArray[np.int32]  # grid column of the reading
    n_lora: int = 0  # messages (and readings) sent by LoRa meters

    def take(self, name: str) -> NDArray[Any]:
        """A column, released from the table: layout frees each one once used, which keeps the
        stage's peak memory near the size of its output."""
        col: NDArray[Any] = getattr(self, name)
        setattr(self, name, np.empty(0, dtype=col.dtype))  # not col[:0]: a view keeps it alive
        return col

    def events(self, idx: NDArray[np.int64], grid: Grid) -> tuple[NDArray[Any], NDArray[Any]]:
        """Meter and (true) first reading time of the messages ``idx``."""
        first = self.first[idx]
        return self.r_meter[first], grid.ts[self.r_col[first]]


def messages(
    meter_ids: Sequence[str],
    modes: Sequence[str],
    grid: Grid,
    register_m3: NDArray[np.float64],
    flow_lph: NDArray[np.float64],
    state: FleetState,
    rng: np.random.Generator,
    cfg: ReportingConfig,
) -> tuple[Recording, list[Label]]:
    """The recording of everything the fleet sends, and the labels of its noise events."""
    n_meters, steps = register_m3.shape
    if len(meter_ids) != n_meters or len(modes) != n_meters or steps != grid.steps:
        raise ValueError("meter_ids, modes and the arrays must follow the same meters and grid")
    if flow_lph.shape != register_m3.shape or state.flags.shape != register_m3.shape:
        raise ValueError("flow_lph and the state must have the registers' shape")
    unknown = set(modes) - {LORA, NBIOT}
    if unknown:
        raise ValueError(f"unknown upload modes {sorted(unknown)}; use {LORA!r} or {NBIOT!r}")
    nbiot = np.array([m == NBIOT for m in modes], dtype=np.bool_)
    ts = grid.ts
    local_start = grid.start.astimezone(ZoneInfo(cfg.timezone))
    offset = int(local_start.utcoffset().total_seconds())  # type: ignore[union-attr]
    day = (ts + offset) // 86400

    lo, hi = cfg.rssi_dbm
    base_rssi = np.asarray(rng.uniform(lo, hi, n_meters), dtype=np.float64)
    skew = _skews(n_meters, rng, cfg)
    sent = _lora(np.flatnonzero(~nbiot), ts, day, state, base_rssi, rng, cfg)
    _append(sent, _nbiot(np.flatnonzero(nbiot), grid, offset, day, state, base_rssi, rng, cfg))
    faults = _decide(sent, grid, rng, cfg)
    rec, bad_rows = _layout(sent, faults, tuple(meter_ids), grid, register_m3, flow_lph, skew)
    del sent
    malformed = _garble(rec, bad_rows, skew, rng)
    rec.meta["interval_s"] = str(grid.interval_s)
    return rec, _labels(meter_ids, faults, malformed, grid, skew)


def _skews(n_meters: int, rng: np.random.Generator, cfg: ReportingConfig) -> NDArray[np.int64]:
    skewed = rng.random(n_meters) < cfg.skew_share
    size = rng.uniform(*cfg.skew_s, n_meters)
    sign = np.where(rng.random(n_meters) < 0.5, -1, 1)
    return np.where(skewed, np.round(sign * size), 0).astype(np.int64)


def _status_rssi(base: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float32]:
    return np.clip(np.round(base + rng.normal(0.0, 2.0, base.size)), -140, -30).astype(np.float32)


def _lora(
    meters: NDArray[np.int64],
    ts: NDArray[np.int64],
    day: NDArray[np.int64],
    state: FleetState,
    base_rssi: NDArray[np.float64],
    rng: np.random.Generator,
    cfg: ReportingConfig,
) -> _Sent:
    """One message per reading, in (column, meter) order so send times come nearly sorted."""
    cols, j = np.nonzero(~state.silent[meters].T)
    meter = meters[j].astype(np.int32)
    col = cols.astype(np.int32)
    del j, cols
    n = col.size
    send = ts[col] + rng.integers(0, cfg.lora_delay_max_s + 1, n)
    battery = np.full(n, np.nan, dtype=np.float32)
    rssi = np.full(n, np.nan, dtype=np.float32)
    day_first = np.r_[True, day[1:] != day[:-1]]
    daily = np.flatnonzero(day_first[col])  # battery and signal once a day
    battery[daily] = np.round(state.battery_pct[meter[daily], col[daily]], 1)
    rssi[daily] = _status_rssi(base_rssi[meter[daily]], rng)
    return _Sent(
        send=send.astype(np.int64), first=np.arange(n, dtype=np.int32),
        n=np.ones(n, dtype=np.int32), battery=battery, rssi=rssi,
        flags=state.flags[meter, col], r_meter=meter, r_col=col, n_lora=n,
    )  # fmt: skip


def _hourly_columns(grid: Grid, offset: int) -> NDArray[np.int64]:
    """Columns on the local hour: the values an NB-IoT meter freezes."""
    if grid.interval_s <= 3600 and 3600 % grid.interval_s == 0:
        on_hour = np.flatnonzero((grid.ts + offset) % 3600 == 0)
        if on_hour.size:
            return on_hour
        return np.arange(0, grid.steps, 3600 // grid.interval_s)
    if grid.interval_s % 3600 == 0:
        return np.arange(grid.steps)
    raise ValueError(
        f"NB-IoT needs an interval dividing or divisible by 1 h, not {grid.interval_s}"
    )


def _nbiot(
    meters: NDArray[np.int64],
    grid: Grid,
    offset: int,
    day: NDArray[np.int64],
    state: FleetState,
    base_rssi: NDArray[np.float64],
    rng: np.random.Generator,
    cfg: ReportingConfig,
) -> _Sent:
    """Each local day's hourly values, sent the next morning unless the meter is silent then."""
    ts = grid.ts
    hours = _hourly_columns(grid, offset)
    n_days = int(day[-1] - day[0]) + 1
    k = meters.size
    upload = np.round(rng.uniform(*cfg.nbiot_window_h, k) * 3600).astype(np.int64)
    jitter = rng.integers(0, cfg.nbiot_jitter_s + 1, (k, n_days))
    midnight = (day[0] + np.arange(n_days) + 1) * 86400 - offset  # the end of each local day
    send = midnight[None, :] + upload[:, None] + jitter  # (k, n_days)
    send_col = np.minimum(np.searchsorted(ts, send), grid.steps - 1)
    awake = ~state.silent[meters[:, None], send_col]

    j, c = np.nonzero(~state.silent[meters][:, hours])  # readings by meter, then hour
    key = j * n_days + (day[hours[c]] - day[0])  # message of each reading, increasing
    counts = np.bincount(key, minlength=k * n_days)
    keep = awake.ravel() & (counts > 0)
    taken = keep[key]
    kept = np.flatnonzero(keep)
    n = counts[kept].astype(np.int32)
    mj, md = np.divmod(kept, n_days)
    meter = meters[mj].astype(np.int32)

    day_starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    day_flags = np.bitwise_or.reduceat(state.flags[meters], day_starts, axis=1)
    m_send_col = send_col.ravel()[kept]
    return _Sent(
        send=send.ravel()[kept], first=(np.cumsum(n) - n).astype(np.int32), n=n,
        battery=np.round(state.battery_pct[meter, m_send_col], 1).astype(np.float32),
        rssi=_status_rssi(base_rssi[meter], rng), flags=day_flags[mj, md],
        r_meter=meters[j[taken]].astype(np.int32), r_col=hours[c[taken]].astype(np.int32),
    )  # fmt: skip


def _append(a: _Sent, b: _Sent) -> None:
    """Append ``b`` to ``a`` field by field, so the copy never holds two whole tables at once."""
    for f in fields(_Sent):
        if f.name != "n_lora":
            x, y = getattr(a, f.name), getattr(b, f.name)
            setattr(a, f.name, np.concatenate((x, y + a.r_meter.size if f.name == "first" else y)))
            del x


@dataclass(eq=False)
class _Faults:
    """What the network does to the messages, and who it happened to when (for the labels)."""

    malformed: NDArray[np.int64]  # indices of generated messages
    order: NDArray[np.int32]  # messages as delivered, in send order (duplicates twice)
    send: NDArray[np.int64]  # their send times
    events: dict[str, tuple[NDArray[Any], NDArray[Any]]]  # kind -> (meters, true reading times)
    resend_delay: NDArray[np.int64]  # of the late uploads, in the same order


def _decide(sent: _Sent, grid: Grid, rng: np.random.Generator, cfg: ReportingConfig) -> _Faults:
    """Garble, drop, re-send, duplicate and hold back messages, then order them by send time."""
    q = sent.send.size
    cuts = np.cumsum([cfg.malformed_rate, cfg.drop_rate, cfg.duplicate_rate, cfg.out_of_order_rate])
    u = rng.random(q)
    hit = np.flatnonzero(u < cuts[-1])  # one draw puts a message in at most one category
    cat = np.searchsorted(cuts, u[hit], side="right")
    dropped = hit[cat == 1]
    resent_mask = (u[dropped] - cuts[0]) < cfg.resend_share * cfg.drop_rate
    del u
    resent, lost = dropped[resent_mask], dropped[~resent_mask]
    delayed = hit[cat == 3]
    delayed = delayed[delayed < sent.n_lora]  # NB-IoT sends one message a day: nothing to pass

    send = sent.take("send")
    lo, hi = cfg.resend_delay_h
    resend_delay = np.round(rng.uniform(lo * 3600, hi * 3600, resent.size)).astype(np.int64)
    send[resent] += resend_delay
    lo, hi = cfg.out_of_order_delay_intervals
    send[delayed] += np.round(rng.uniform(lo, hi, delayed.size) * grid.interval_s).astype(np.int64)
    duplicated = hit[cat == 2]
    dup_send = send[duplicated] + rng.integers(0, cfg.duplicate_delay_max_s + 1, duplicated.size)

    keep = np.ones(q, dtype=np.bool_)
    keep[lost] = False
    msg = np.concatenate((np.flatnonzero(keep).astype(np.int32), duplicated.astype(np.int32)))
    msg_send = np.concatenate((send[keep], dup_send))
    del keep, send
    order = np.argsort(msg_send, kind="stable")  # ties keep generation order: deterministic
    events = {
        "duplicates": sent.events(duplicated, grid),
        "out_of_order": sent.events(delayed, grid),
        "late_upload": sent.events(resent, grid),
    }
    return _Faults(hit[cat == 0], msg[order], msg_send[order], events, resend_delay)


def _layout(
    sent: _Sent,
    faults: _Faults,
    meter_ids: tuple[str, ...],
    grid: Grid,
    register_m3: NDArray[np.float64],
    flow_lph: NDArray[np.float64],
    skew: NDArray[np.int64],
) -> tuple[Recording, NDArray[np.int64]]:
    """The delivered messages as rows, consuming ``sent``; returns the malformed messages' rows.

    Malformed messages get one placeholder row each; their payloads come later. Most messages
    carry one reading, so rows are only expanded from messages when some carry more.
    """
    msg = faults.order
    n_of = sent.take("n")
    n_of[faults.malformed] = 1  # garbage replaces the whole message with one row
    n = n_of[msg]
    is_bad = np.zeros(n_of.size, dtype=np.bool_)
    del n_of
    is_bad[faults.malformed] = True
    bad = is_bad[msg]
    del is_bad
    ends = np.cumsum(n, dtype=np.int64)
    total = int(ends[-1]) if ends.size else 0
    single = total == msg.size
    last = ends - 1
    battery = np.full(total, np.nan, dtype=np.float32)
    rssi = np.full(total, np.nan, dtype=np.float32)
    flags = np.zeros(total, dtype=np.uint8)
    battery[last] = sent.take("battery")[msg]
    rssi[last] = sent.take("rssi")[msg]
    flags[last] = sent.take("flags")[msg]
    del last

    first = sent.take("first")[msg]
    bad_rows = (ends - n)[bad]
    if single:
        reading = first.astype(np.int64)
    else:
        reading = np.repeat(first - (ends - n), n) + np.arange(total)
    del first, bad, ends
    meter = sent.take("r_meter")[reading]
    col = sent.take("r_col")[reading]
    frozen = reading >= sent.n_lora  # NB-IoT frozen values are registers only
    del reading
    flat = meter.astype(np.int64) * grid.steps + col
    register = np.take(register_m3, flat)
    flow = np.take(flow_lph, flat).astype(np.float32)
    del flat
    flow[frozen] = np.nan
    del frozen
    ts = grid.ts[col]
    del col
    if skew.any():
        ts += skew.astype(np.int32)[meter]

    msg_id = np.arange(msg.size, dtype=np.int64)
    rec = Recording(
        send_s=faults.send if single else np.repeat(faults.send, n),
        msg_id=msg_id if single else np.repeat(msg_id, n),
        meter=meter, ts_s=ts, register_m3=register, flow_lph=flow,
        battery_pct=battery, rssi_dbm=rssi, flags=flags, meter_ids=meter_ids,
    )  # fmt: skip
    return rec, bad_rows


def _garble(
    rec: Recording, rows: NDArray[np.int64], skew: NDArray[np.int64], rng: np.random.Generator
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Put garbage in place of the malformed messages' rows; return who, when and which kind."""
    kinds = rng.integers(0, len(_KIND_NAMES), rows.size)
    cut = rng.random(rows.size)
    ids = list(rec.meter_ids)
    rec.raw = {
        int(row): _garbage(ids, int(rec.meter[row]), int(rec.ts_s[row]),
                           float(rec.register_m3[row]), kind, frac)
        for row, kind, frac in zip(rows, kinds.tolist(), cut.tolist(), strict=True)
    }  # fmt: skip
    for column in (rec.register_m3, rec.flow_lph, rec.battery_pct, rec.rssi_dbm):
        column[rows] = np.nan
    rec.flags[rows] = 0
    meters = rec.meter[rows]
    return meters, rec.ts_s[rows] - skew[meters], kinds


def _labels(
    meter_ids: Sequence[str],
    faults: _Faults,
    malformed: tuple[NDArray[Any], NDArray[Any], NDArray[Any]],
    grid: Grid,
    skew: NDArray[np.int64],
) -> list[Label]:
    labels: list[Label] = []
    for kind in ("duplicates", "out_of_order"):
        meters, times = faults.events[kind]
        for m, sel in _by_meter(meters):
            labels.append(_label(meter_ids[m], kind, times[sel], {}))
    meters, times = faults.events["late_upload"]
    for m, sel in _by_meter(meters):
        delay = {"max_delay_s": int(faults.resend_delay[sel].max())}
        labels.append(_label(meter_ids[m], "late_upload", times[sel], delay))
    meters, times, kinds = malformed
    for m, sel in _by_meter(meters):
        names, counts = np.unique(kinds[sel], return_counts=True)
        by_kind = {_KIND_NAMES[k]: int(c) for k, c in zip(names, counts, strict=True)}
        labels.append(_label(meter_ids[m], "malformed", times[sel], {"kinds": by_kind}))
    start, end = grid.iso(0), grid.iso(grid.steps - 1)
    labels += [
        Label(meter_ids[m], "clock_skew", start, end, False, {"offset_s": int(skew[m])})
        for m in np.flatnonzero(skew).tolist()
    ]
    return labels


def _by_meter(meters: NDArray[np.int32]) -> list[tuple[int, NDArray[np.int64]]]:
    """Each meter among ``meters`` with the positions of its events."""
    order = np.argsort(meters, kind="stable")
    ids, first = np.unique(meters[order], return_index=True)
    bounds = np.r_[first, meters.size]
    return [(int(m), order[bounds[i] : bounds[i + 1]]) for i, m in enumerate(ids.tolist())]


def _label(meter_id: str, kind: str, times: NDArray[np.int64], params: dict[str, Any]) -> Label:
    """One noise label per meter and kind: first and last event time and how many there were."""

    def iso(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat()

    return Label(
        meter_id, kind, iso(int(times.min())), iso(int(times.max())), False,
        {"count": int(times.size), **params},
    )  # fmt: skip


def _garbage(
    meter_ids: list[str], m: int, ts: int, register: float, kind: int, frac: float
) -> bytes:
    """A malformed message in place of one reading; its kind decides the rejection reason.

    One reading per payload keeps it to one rejection, so one dead letter, whatever the kind.
    """
    meter_id = meter_ids[m]
    when = datetime.fromtimestamp(ts, UTC)
    name = _KIND_NAMES[kind]
    if name == "truncated":
        good = encode_uplink(meter_id, [(when, register, None)])
        return good[: 1 + int(frac * (len(good) - 2))]  # a proper prefix of an object is no JSON
    if name == "wrong_meter_id":
        other = meter_ids[(m + 1) % len(meter_ids)]
        if other == meter_id:
            other = ("X" if meter_id[0] != "X" else "Y") + meter_id[1:]
        return encode_uplink(other, [(when, register, None)])
    if name == "non_utf8":
        good = encode_uplink(meter_id, [(when, register, None)])
        return good.replace(b'"readings"', b'"readings\xff\xfe"', 1)
    reading: dict[str, Any] = {"ts": when.isoformat()}
    if name == "string_register":
        reading["register_m3"] = f"{register:.3f}"
    return orjson.dumps({"meter_id": meter_id, "readings": [reading]})
