"""The detector bank on synthetic meters, fed as ingest feeds it: messages in arrival order.

No services: every test builds a few meters' readings from litres per interval (registers count
whole litres), sorts the messages by when they reach ingest and calls ``Monitor.observe_messages``
in chunks. LoRa meters send one reading every 15 minutes as it is taken; NB-IoT meters send a day
of hourly readings at once, the next morning.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from numpy.typing import ArrayLike, NDArray

from detectors.alert import Alert, Severity
from detectors.bank import Monitor
from detectors.config import ThresholdBook, Thresholds
from detectors.params import day_types, week_slot
from meterwatch.domain import Meter, MeterKind, Reading

LOCAL = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 4, tzinfo=LOCAL)  # a Wednesday; no public holiday for four weeks
QUARTER, HOUR, DAY = 900, 3600, 86400
# A home's litres per local hour: nothing at night, peaks morning and evening (278 L a day).
HOME = np.array(
    [0, 0, 0, 0, 0, 0, 15, 40, 25, 10, 8, 10, 15, 10, 6, 6, 8, 12, 30, 35, 25, 15, 8, 0], float
)
# A shop's: it never stops (a chiller, a tap), busy from 07:00 to 20:00 (3,940 L a day).
SHOP = np.array(
    [30] * 7 + [150, 250, 300, 300, 280, 320, 350, 300, 280, 300, 320, 280, 200, 120] + [30] * 3,
    float,
)


@dataclass(frozen=True)
class Arrival:
    """One message as ingest receives it."""

    at: int  # epoch seconds of arrival
    readings: list[Reading]


def at(start: datetime = T0, **delta: float) -> datetime:
    return start + timedelta(**delta)


def hourly(profile: NDArray[np.float64], days: int) -> NDArray[np.float64]:
    return np.tile(profile, days)


def quarters(litres_per_hour: ArrayLike) -> NDArray[np.float64]:
    """Hourly litres spread evenly over the hour's four 15-minute intervals."""
    return np.repeat(np.asarray(litres_per_hour, float) / 4.0, 4)


def registers(litres: ArrayLike, first_l: float) -> NDArray[np.float64]:
    """Register values (m3, whole litres) before the first interval and after each one."""
    total = first_l + np.concatenate([[0.0], np.cumsum(np.asarray(litres, float))])
    return np.floor(total + 1e-9) / 1000.0


def lora(
    meter_id: str,
    litres: ArrayLike,
    *,
    start: datetime = T0,
    step_s: int = QUARTER,
    flags: Mapping[int, tuple[str, ...]] | None = None,
    battery: Mapping[int, float] | None = None,
    drop: Collection[int] = (),
    first_l: float = 100_000.0,
) -> list[Arrival]:
    """One reading per message, sent when taken; reading k at ``start + k * step_s``, after k
    intervals of ``litres``. ``flags``/``battery`` by reading; ``drop``: readings never sent."""
    reg = registers(litres, first_l)
    t0 = int(start.timestamp())
    out = []
    for k, r in enumerate(reg.tolist()):
        if k in drop:
            continue
        ts = t0 + k * step_s
        bat = (battery or {}).get(k)
        reading = Reading(meter_id, at(start, seconds=k * step_s), r, None, bat, None,
                          (flags or {}).get(k, ()))  # fmt: skip
        out.append(Arrival(ts, [reading]))
    return out


def nbiot(
    meter_id: str,
    litres_per_hour: ArrayLike,
    *,
    start: datetime = T0,
    upload_min: int = 6 * 60,
    flags: Mapping[int, tuple[str, ...]] | None = None,
    skip_days: Collection[int] = (),
    first_l: float = 100_000.0,
) -> list[Arrival]:
    """Hourly readings, day d's 24 (00:00..23:00) in one message uploaded on day d+1 at
    ``upload_min`` minutes after midnight. ``flags`` by day; ``skip_days``: uploads lost."""
    reg = registers(litres_per_hour, first_l).tolist()
    t0 = int(start.timestamp())
    out = []
    for d in range(0, (len(reg) + 23) // 24):
        if d in skip_days:
            continue
        ks = range(24 * d, min(24 * d + 24, len(reg)))
        msg = [Reading(meter_id, at(start, hours=k), reg[k]) for k in ks]
        msg[-1] = msg[-1]._replace(flags=(flags or {}).get(d, ()))
        out.append(Arrival(t0 + (d + 1) * DAY + upload_min * 60, msg))
    return out


def arrivals(*streams: Iterable[Arrival]) -> list[Arrival]:
    """All messages in arrival order (ties keep the order the streams are given in)."""
    return sorted((a for s in streams for a in s), key=lambda a: a.at)


def feed(monitor: Monitor, stream: Sequence[Arrival], chunk: int = 64) -> list[Alert]:
    out: list[Alert] = []
    for i in range(0, len(stream), chunk):
        out += monitor.observe_messages([a.readings for a in stream[i : i + chunk]])
    return out


def run(
    meters: Sequence[Meter], *streams: Iterable[Arrival], chunk: int = 64, **kw: Any
) -> list[Alert]:
    return feed(Monitor(meters, **kw), arrivals(*streams), chunk)


def of(alerts: Iterable[Alert], alert_type: str) -> list[Alert]:
    return [a for a in alerts if a.type == alert_type]


def raised(alerts: Iterable[Alert], alert_type: str) -> list[Alert]:
    return [a for a in of(alerts, alert_type) if not a.cleared]


def cleared(alerts: Iterable[Alert], alert_type: str) -> list[Alert]:
    return [a for a in of(alerts, alert_type) if a.cleared]


HOMES = [Meter(f"H{i}") for i in range(10)]


# -- leak ---------------------------------------------------------------------------------------


def leak_home(
    extra_lph: float = 20.0, hours: range = range(30, 71), days: int = 3
) -> NDArray[np.float64]:
    """A home's litres per hour with ``extra_lph`` flowing in ``hours`` (30 is 06:00 on day 1)."""
    use = hourly(HOME, days)
    use[hours.start : hours.stop] += extra_lph
    return use


def test_constant_flow_raises_one_leak_a_day_after_onset_and_a_quiet_hour_clears_it() -> None:
    alerts = run(HOMES[:1], lora("H0", quarters(leak_home(days=11))))
    onset = at(hours=30)
    (leak,) = raised(alerts, "leak")
    assert onset + timedelta(hours=24) <= leak.detected_at <= onset + timedelta(hours=26)
    assert leak.started_at == onset
    assert leak.evidence["rule"] == "continuous_flow"
    assert leak.evidence["leak_lph"] == pytest.approx(20, abs=2)
    assert leak.estimated_loss_m3_per_day == pytest.approx(0.48, abs=0.05)
    (gone,) = cleared(alerts, "leak")
    assert gone.detected_at == at(hours=72)  # the end of hour 71, the first without the leak


def test_a_leak_that_pauses_and_returns_within_the_hold_stays_one_alert() -> None:
    use = leak_home(days=15)
    use[90:160] += 20.0  # back 19 hours after the zero hour that ended its first run
    alerts = run(HOMES[:1], lora("H0", quarters(use)))
    flow = [a.cleared for a in alerts if a.type == "leak"]
    assert flow[-1] and not any(flow[:-1])  # raised, repeated, cleared once: one episode
    (gone,) = cleared(alerts, "leak")
    assert gone.detected_at > at(hours=160)


def test_a_home_with_quiet_nights_raises_nothing_in_two_weeks() -> None:
    assert run(HOMES[:1], lora("H0", quarters(hourly(HOME, 14)))) == []


@pytest.mark.parametrize(("drip_lph", "leaks"), [(4.0, False), (6.0, True)])
def test_a_drip_is_a_leak_from_5_litres_an_hour(drip_lph: float, leaks: bool) -> None:
    alerts = run(HOMES[:1], lora("H0", quarters(hourly(HOME, 5) + drip_lph)))
    assert bool(raised(alerts, "leak")) is leaks


SHOP_METER = Meter("S1", kind=MeterKind.COMMERCIAL, q3_m3h=6.3, dn_mm=25)


def test_a_shop_leak_is_found_against_its_learned_night_flow() -> None:
    use = hourly(SHOP, 12)
    use[6 * 24 :] += 100.0  # from day 6, a Tuesday
    alerts = run([SHOP_METER], nbiot("S1", use))
    onset = at(days=6)
    leak = raised(alerts, "leak")[0]
    assert onset < leak.detected_at <= onset + timedelta(days=3)
    assert leak.started_at == onset
    assert leak.evidence["leak_lph"] == pytest.approx(100, abs=10)


def test_a_shop_using_three_times_as_much_all_day_is_not_leaking() -> None:
    use = hourly(SHOP, 12)
    use[6 * 24 :] *= 3.0
    assert raised(run([SHOP_METER], nbiot("S1", use)), "leak") == []


def test_a_lost_daily_upload_spreads_a_day_over_25_hours_and_is_no_leak() -> None:
    nb = Meter("N0", expected_interval_s=DAY)
    assert run([nb], nbiot("N0", hourly(HOME, 7), skip_days={3})) == []


# -- burst --------------------------------------------------------------------------------------


def burst_home(day: int, days: int = 3, minutes: int = 45) -> NDArray[np.float64]:
    """1.5 m3/h more than usual from 10:00 on ``day`` for ``minutes``."""
    q = quarters(hourly(HOME, days))
    first = (day * 24 + 10) * 4
    q[first : first + minutes // 15] += 1500.0 / 4
    return q


def test_a_burst_is_raised_after_30_minutes_from_its_start_and_cleared_after_it() -> None:
    alerts = run(HOMES[:1], lora("H0", burst_home(day=2)))
    start = at(days=2, hours=10)
    assert [(a.cleared, a.detected_at) for a in of(alerts, "burst")] == [
        (False, start + timedelta(minutes=30)),
        (True, start + timedelta(minutes=60)),  # the first reading after it shows no burst
    ]
    burst = raised(alerts, "burst")[0]
    assert (burst.started_at, burst.severity) == (start, Severity.CRITICAL)
    assert burst.evidence["volume_m3"] == pytest.approx(0.75 + 0.01, abs=0.02)


def test_no_burst_on_a_meters_first_day() -> None:
    assert of(run(HOMES[:1], lora("H0", burst_home(day=0))), "burst") == []


def test_a_30_hour_gap_holding_2_m3_is_no_burst() -> None:
    q = quarters(hourly(HOME, 5))
    gap = range(2 * 96 + 40, 2 * 96 + 40 + 120)  # 30 h from 10:00 on day 2
    q[gap.start : gap.stop] = 2000.0 / len(gap)
    alerts = run(HOMES[:1], lora("H0", q, drop=range(gap.start + 1, gap.stop)))
    assert of(alerts, "burst") == []


@pytest.mark.parametrize(("ramp", "bursts"), [(False, True), (True, False)])
def test_flow_that_rose_over_hours_is_no_burst(ramp: bool, bursts: bool) -> None:
    """A meter that passes 20 L/h reaches 2.3 m3/h on day 8: a step is a burst, a climb over
    hours is the day's use (an office busy through a holiday), however far above its normal."""
    use = np.full(9 * 24, 20.0)
    climb = [1000.0, 1300.0, 1600.0, 2000.0] if ramp else [20.0] * 4
    use[8 * 24 + 6 : 8 * 24 + 10] = climb
    use[8 * 24 + 10 : 8 * 24 + 14] = 2300.0
    office = Meter("O1", kind=MeterKind.COMMERCIAL, q3_m3h=6.3, dn_mm=25)
    alerts = run([office], lora("O1", quarters(use)), chunk=1)  # live: hours close as they end
    assert bool(raised(alerts, "burst")) is bursts


# -- reverse flow -------------------------------------------------------------------------------


def home_quarters(days: int = 2) -> NDArray[np.float64]:
    """A home's litres per 15 minutes; quarter 104 is 02:00 on day 1, when nothing flows."""
    return quarters(hourly(HOME, days))


def test_two_register_decreases_holding_20_litres_raise_reverse_flow() -> None:
    q = home_quarters()
    q[104:106] = -10.0
    alerts = run(HOMES[:1], lora("H0", q))
    back = at(days=1, hours=2)
    (rev,) = raised(alerts, "reverse_flow")
    assert (rev.started_at, rev.detected_at) == (back, back + timedelta(minutes=30))
    assert rev.evidence == {"source": "register", "volume_l": 20.0, "intervals": 2}
    assert [a.detected_at for a in cleared(alerts, "reverse_flow")] == [
        back + timedelta(minutes=45)
    ]


def test_one_step_back_of_3_litres_is_register_jitter() -> None:
    q = home_quarters()
    q[104] = -3.0
    q[105] = 3.0
    assert of(run(HOMES[:1], lora("H0", q)), "reverse_flow") == []


def test_the_meters_reverse_flag_alone_raises_reverse_flow() -> None:
    alerts = run(HOMES[:1], lora("H0", home_quarters(), flags={105: ("reverse",)}))
    (rev,) = raised(alerts, "reverse_flow")
    assert rev.detected_at == at(days=1, hours=2, minutes=15)
    assert rev.evidence["source"] == "meter_flag"
    assert [a.detected_at for a in cleared(alerts, "reverse_flow")] == [
        at(days=1, hours=2, minutes=30)
    ]


# -- tamper, battery ----------------------------------------------------------------------------


def test_a_magnet_on_three_readings_raises_tamper_then_clears() -> None:
    magnet = dict.fromkeys(range(50, 53), ("magnetic",))
    alerts = run(HOMES[:1], lora("H0", home_quarters(1), flags=magnet))
    assert [(a.cleared, a.detected_at) for a in of(alerts, "tamper")] == [
        (False, at(minutes=50 * 15)),
        (True, at(minutes=53 * 15)),
    ]
    assert raised(alerts, "tamper")[0].evidence["flags"] == ["magnetic"]


def test_tamper_in_a_daily_upload_started_with_the_messages_first_reading() -> None:
    nb = Meter("N0", expected_interval_s=DAY)
    alerts = run([nb], nbiot("N0", hourly(HOME, 3), flags={1: ("tamper",)}))
    (t,) = raised(alerts, "tamper")
    assert (t.started_at, t.detected_at) == (at(days=1), at(days=1, hours=23))
    assert [a.detected_at for a in cleared(alerts, "tamper")] == [at(days=2, hours=23)]


def test_low_battery_opens_below_10_percent_and_closes_only_well_above() -> None:
    levels = {10: 30.0, 20: 9.0, 30: 12.0, 40: 11.0, 50: 20.0}
    alerts = run(HOMES[:1], lora("H0", home_quarters(1), battery=levels))
    assert [(a.cleared, a.detected_at) for a in of(alerts, "low_battery")] == [
        (False, at(minutes=20 * 15)),
        (True, at(minutes=50 * 15)),
    ]
    assert raised(alerts, "low_battery")[0].evidence["battery_pct"] == 9.0


# -- silent -------------------------------------------------------------------------------------


def quiet_lora_meter() -> list[Arrival]:
    """Eight LoRa homes over 20 hours; H7 sends nothing from 10:15 to 17:45."""
    q = home_quarters(1)[: 20 * 4]
    streams = [lora(m.meter_id, q) for m in HOMES[:7]]
    return arrivals(*streams, lora("H7", q, drop=range(41, 72)))


def test_a_lora_meter_is_silent_4_hours_after_its_last_reading_by_the_fleets_clock() -> None:
    stream = quiet_lora_meter()
    due = at(hours=14)  # last reading 10:00, silent_min_h = 4
    before = [a for a in stream if a.at < due.timestamp()]
    at_due = [a for a in stream if a.at == due.timestamp()]
    after = [a for a in stream if a.at > due.timestamp()]
    monitor = Monitor(HOMES[:8])
    assert of(feed(monitor, before), "silent") == []
    (silent,) = of(feed(monitor, at_due), "silent")
    assert (silent.meter_id, silent.cleared) == ("H7", False)
    assert (silent.started_at, silent.detected_at) == (at(hours=10), due)
    back = of(feed(monitor, after, 1), "silent")
    assert [(a.meter_id, a.cleared, a.detected_at) for a in back] == [("H7", True, at(hours=18))]


def test_a_silent_meter_is_cleared_at_its_first_reading_back_in_any_batch() -> None:
    back = of(run(HOMES[:8], quiet_lora_meter(), chunk=64), "silent")
    assert [(a.cleared, a.detected_at) for a in back] == [
        (False, at(hours=14)),
        (True, at(hours=18)),
    ]


NB_FLEET = [Meter(f"N{i}", expected_interval_s=DAY) for i in range(8)]


def nb_fleet(days: int, *, skip: Collection[int] = (), stop: int | None = None) -> list[Arrival]:
    """Eight daily-upload homes, uploading one after another from 06:00; N7 (last) loses the
    uploads of days ``skip`` and sends nothing from day ``stop`` on."""
    use = hourly(HOME, days)
    streams = [nbiot(f"N{i}", use, upload_min=360 + 5 * i) for i in range(7)]
    n7 = nbiot("N7", use if stop is None else use[: stop * 24 - 1], upload_min=395, skip_days=skip)
    return arrivals(*streams, n7)


def test_daily_uploads_are_not_silent() -> None:
    assert of(run(NB_FLEET, nb_fleet(8), chunk=1), "silent") == []


def test_a_daily_upload_meter_that_stops_goes_silent() -> None:
    alerts = run(NB_FLEET, nb_fleet(10, stop=3), chunk=1)
    (silent,) = of(alerts, "silent")
    assert silent.meter_id == "N7"
    assert silent.started_at == at(days=2, hours=23)  # its newest reading


def test_a_daily_upload_meter_is_silent_once_two_uploads_are_surely_missed() -> None:
    # N7's last upload is on day 3 (day 2's readings); the uploads of days 4, 5 and 6 are lost.
    # In event time a fleet of daily uploaders cannot tell "not sent yet today" from "lost"
    # until the next day's uploads, so one lost upload never raises it and two surely lost do.
    stream = nb_fleet(8, skip={3, 4, 5})
    by_end_of_day_5 = [a for a in stream if a.at < at(days=6).timestamp()]
    assert of(feed(Monitor(NB_FLEET), by_end_of_day_5, 1), "silent") == []
    by_end_of_day_6 = [a for a in stream if a.at < at(days=7).timestamp()]
    assert [a.meter_id for a in of(feed(Monitor(NB_FLEET), by_end_of_day_6, 1), "silent")] == ["N7"]


# -- no consumption -----------------------------------------------------------------------------


def flat_after_first_day(days: int, start: datetime = T0) -> list[Arrival]:
    """An hourly LoRa home used on its first day only; its register stands still from 23:00."""
    use = hourly(HOME, days)
    use[24:] = 0.0
    return lora("H0", use, start=start, step_s=HOUR)


def test_a_still_register_warns_after_7_days_and_is_critical_after_28() -> None:
    alerts = run(HOMES[:1], flat_after_first_day(31))
    since = at(hours=23)
    assert [(a.severity, a.started_at, a.detected_at) for a in of(alerts, "no_consumption")] == [
        (Severity.WARNING, since, since + timedelta(days=7)),
        (Severity.CRITICAL, since, since + timedelta(days=28)),
    ]


def test_spring_festival_days_do_not_count_as_no_consumption() -> None:
    start = datetime(2027, 1, 31, tzinfo=LOCAL)  # a Sunday; Spring Festival is 02-05..02-12
    alerts = run(HOMES[:1], flat_after_first_day(20, start=start))
    since = at(start, hours=23)
    (nc,) = of(alerts, "no_consumption")
    assert nc.started_at == since
    assert nc.detected_at == since + timedelta(days=7 + 8)  # 7 days plus the 8 days off


# -- abnormal use -------------------------------------------------------------------------------


def use_by_day(factors: Mapping[int, float], days: int) -> list[Arrival]:
    use = hourly(HOME, days).reshape(days, 24)
    for d, f in factors.items():
        use[d] *= f
    return lora("H0", use.ravel(), step_s=HOUR)


def test_four_times_the_usual_use_for_days_on_end_is_abnormal_high() -> None:
    alerts = run(HOMES[:1], use_by_day({10: 4.0, 11: 4.0, 12: 4.0}, 15))
    need = Thresholds().abnormal_days  # days in a row before it is called
    high = raised(alerts, "abnormal_high")
    assert (high[0].started_at, high[0].detected_at) == (at(days=10), at(days=10 + need))
    assert high[0].evidence["ratio"] == pytest.approx(4.0, rel=0.05)
    assert [a.detected_at for a in cleared(alerts, "abnormal_high")] == [at(days=14)]


def test_one_day_at_three_times_the_usual_use_is_not_abnormal() -> None:
    assert of(run(HOMES[:1], use_by_day({10: 3.0}, 14)), "abnormal_high") == []


# A small home's litres per hour: water in 6 of its 18 waking hours (200 L a day).
SPARSE = np.zeros(24)
SPARSE[[7, 8, 12, 19, 20, 21]] = [40, 20, 30, 50, 40, 20]


def sparse_home(days: int, *, start: datetime = T0, **extra: ArrayLike) -> list[Arrival]:
    """``SPARSE`` every day; ``extra={"d10": litres_per_hour}`` adds to day 10."""
    use = hourly(SPARSE, days).reshape(days, 24)
    for key, litres in extra.items():
        use[int(key[1:])] += np.asarray(litres, float)
    return lora("H0", use.ravel(), start=start, step_s=HOUR)


SPREAD = np.r_[np.zeros(6), np.full(18, 400.0 / 18)]  # 400 L more, over all waking hours
BIGGER = 2.0 * SPARSE  # 400 L more, in the hours that already use water


@pytest.mark.parametrize(("extra", "raises"), [(SPREAD, True), (BIGGER, False)])
def test_a_small_homes_tripled_use_is_abnormal_only_if_it_spreads_over_the_day(
    extra: NDArray[np.float64], raises: bool
) -> None:
    alerts = run(HOMES[:1], sparse_home(16, d10=extra, d11=extra, d12=extra))
    high = raised(alerts, "abnormal_high")
    assert bool(high) is raises
    if raises:
        assert (high[0].started_at, high[0].detected_at) == (at(days=10), at(days=13))
        assert high[0].evidence["active_hours"] == 18
        assert high[0].evidence["usual_active_hours"] == pytest.approx(6.0)


def test_a_busy_first_spring_festival_is_judged_against_the_homes_weekends() -> None:
    start = datetime(2027, 1, 25, tzinfo=LOCAL)  # Monday; Spring Festival is 02-05..02-12
    sf = {f"d{d}": SPREAD for d in (12, 13, 14)}  # 02-06..02-08, three times the usual
    alerts = run(HOMES[:1], sparse_home(24, start=start, **sf))
    (high,) = raised(alerts, "abnormal_high")
    assert (high.started_at, high.detected_at) == (at(start, days=12), at(start, days=15))
    assert raised(run(HOMES[:1], sparse_home(24, start=start)), "abnormal_high") == []


def home_days(days: int, factors: Mapping[int, float], *, start: datetime = T0,
              drip_lph: float = 0.0) -> list[Arrival]:  # fmt: skip
    """An hourly LoRa home: ``HOME`` times ``factors[d]`` on day d (0: away), plus a drip."""
    use = hourly(HOME, days).reshape(days, 24)
    for d, f in factors.items():
        use[d] *= f
    return lora("H0", use.ravel() + drip_lph, start=start, step_s=HOUR)


def test_a_home_using_a_tenth_of_its_usual_for_three_workdays_is_abnormal_low() -> None:
    low = {d: 0.1 for d in range(12, 17)}  # Monday 16 March to Friday
    (alert, *_) = raised(run(HOMES[:1], home_days(19, low)), "abnormal_low")
    assert (alert.started_at, alert.detected_at) == (at(days=12), at(days=15))
    assert alert.evidence["ratio"] == pytest.approx(0.1, abs=0.01)


def test_an_empty_home_with_a_dripping_tap_is_not_low_use() -> None:
    """A 1.7 L/h drip moves the register 1 or 2 litres an hour; nobody uses water."""
    away = dict.fromkeys(range(12, 17), 0.0)
    alerts = run(HOMES[:1], home_days(19, away, drip_lph=1.7))
    assert of(alerts, "abnormal_low") == []
    assert of(alerts, "leak") == []


def test_low_days_either_side_of_spring_festival_are_not_days_in_a_row() -> None:
    """Little use the two days before leaving for Spring Festival and the day back: the week
    away between them (02-05..02-12, register still) is not skipped over to make three."""
    start = datetime(2027, 1, 4, tzinfo=LOCAL)  # a Monday, five weeks before
    factors = {30: 0.1, 31: 0.1, 40: 0.1} | dict.fromkeys(range(32, 40), 0.0)
    assert of(run(HOMES[:1], home_days(45, factors, start=start)), "abnormal_low") == []


def test_low_use_is_not_judged_against_two_days_of_history() -> None:
    """Back from a trip with two workdays learned: too few to call three quiet days abnormal."""
    start = datetime(2026, 3, 2, tzinfo=LOCAL)  # a Monday
    factors = dict.fromkeys(range(2, 7), 0.0) | dict.fromkeys(range(7, 10), 0.1)
    assert of(run(HOMES[:1], home_days(11, factors, start=start)), "abnormal_low") == []


def test_a_shop_leak_over_a_weekend_is_a_leak_not_more_use() -> None:
    use = hourly(SHOP, 16)
    use[10 * 24 :] += 200.0  # from Saturday, day 10: the learned low flow is judged on workdays
    alerts = run([SHOP_METER], nbiot("S1", use))
    assert raised(alerts, "leak")
    assert raised(alerts, "abnormal_high") == []


def test_a_homes_growing_leak_is_not_abnormal_use() -> None:
    use = hourly(SPARSE, 16)
    use[10 * 24 :] += np.minimum(20.0 + np.arange(6 * 24) * 2.0, 300.0)  # 20 L/h, 2 L/h more hourly
    alerts = run(HOMES[:1], lora("H0", use, step_s=HOUR))
    assert raised(alerts, "leak")
    assert raised(alerts, "abnormal_high") == []


# -- DMA balance --------------------------------------------------------------------------------


def dma_stream(
    days: int = 8, extra_from: int = 5, inlet_step_s: int = QUARTER
) -> tuple[list[Meter], list[Arrival]]:
    """20 NB-IoT homes and the DMA's inlet on LoRa: the customers' use plus 5 % background loss,
    and 15 % of the customers' use more from day ``extra_from``."""
    customers = [Meter(f"C{i:02d}", dma="D1", expected_interval_s=DAY) for i in range(20)]
    inlet = Meter("INLET", dma="D1", kind=MeterKind.BULK, dn_mm=100, q3_m3h=100.0)
    rng = np.random.default_rng(3)
    use = [hourly(HOME, days) * rng.uniform(1.5, 2.5) for _ in customers]
    total = np.sum(use, axis=0)
    share = np.where(np.arange(days * 24) >= extra_from * 24, 1.20, 1.05)
    streams = [nbiot(m.meter_id, u) for m, u in zip(customers, use, strict=True)]
    inflow = total * share
    if inlet_step_s == QUARTER:
        inflow = quarters(inflow)
    return [*customers, inlet], arrivals(*streams, lora("INLET", inflow, step_s=inlet_step_s))


def test_a_new_network_loss_raises_dma_imbalance_on_the_inlet_after_the_lateness() -> None:
    meters, stream = dma_stream()
    alerts = run(meters, stream)
    dma = of(alerts, "dma_imbalance")
    assert [(a.meter_id, a.cleared) for a in dma] == [("INLET", False)]
    assert dma[0].started_at == at(days=5)
    assert dma[0].detected_at == at(days=6, hours=42)  # the day's end + dma_lateness_h
    ev = dma[0].evidence
    assert ev["excess_m3"] == pytest.approx(0.15 * ev["customers_m3"], rel=0.05)


def test_no_dma_imbalance_while_the_loss_is_normal() -> None:
    meters, stream = dma_stream(extra_from=99)
    assert of(run(meters, stream), "dma_imbalance") == []


# -- the bank as a whole ------------------------------------------------------------------------


def mixed() -> tuple[list[Meter], list[Arrival]]:
    """Six days of a DMA losing more from day 3, a leak, a burst on a meter that then stops,
    reverse flow and a low battery, a magnet: mostly hourly LoRa, to keep 1-message chunks quick."""
    days = 6
    meters, dma = dma_stream(days, extra_from=3, inlet_step_s=HOUR)
    rev = hourly(HOME, days)
    rev[26:28] = -10.0
    streams = [
        dma,
        lora("H0", leak_home(days=days), step_s=HOUR),
        lora("H1", burst_home(day=2)),
        lora("H2", rev, step_s=HOUR, battery={60: 8.0, 100: 30.0}),
        lora(
            "H3", hourly(HOME, days), step_s=HOUR, flags=dict.fromkeys(range(50, 53), ("magnetic",))
        ),
    ]
    return [*meters, *HOMES[:4]], arrivals(*streams)


@pytest.fixture(scope="module")
def mixed_run() -> tuple[list[Meter], list[Arrival], list[Alert]]:
    meters, stream = mixed()
    return meters, stream, feed(Monitor(meters), stream, 37)


def per_meter_and_type(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    """The alerts grouped by (meter, type), each group in emitted order: what the store sees."""
    return [a.to_json() for a in sorted(alerts, key=lambda a: (a.meter_id, a.type))]


def test_the_mixed_fleet_raises_every_kind_it_holds(
    mixed_run: tuple[list[Meter], list[Arrival], list[Alert]],
) -> None:
    kinds = {a.type for a in mixed_run[2] if not a.cleared}
    assert kinds == {
        "leak", "burst", "reverse_flow", "tamper", "low_battery", "silent", "dma_imbalance"
    }  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 10_000_000])
def test_alerts_do_not_depend_on_how_the_stream_is_cut(
    mixed_run: tuple[list[Meter], list[Arrival], list[Alert]], chunk: int
) -> None:
    meters, stream, by_37 = mixed_run
    alerts = feed(Monitor(meters), stream, chunk)
    assert per_meter_and_type(alerts) == per_meter_and_type(by_37)


def test_a_restored_checkpoint_carries_on_as_an_uninterrupted_run(
    mixed_run: tuple[list[Meter], list[Arrival], list[Alert]],
) -> None:
    meters, stream, whole = mixed_run
    half = 37 * (len(stream) // 74)
    first = Monitor(meters)
    alerts = feed(first, stream[:half], 37)
    states, meta = first.checkpoint(everything=True), first.global_state()
    second = Monitor(meters)
    assert second.restore(states) == len(meters)
    second.restore_global(meta)
    alerts += feed(second, stream[half:], 37)
    assert [a.to_json() for a in alerts] == [a.to_json() for a in whole]


def test_a_meters_state_fits_in_2_kib() -> None:
    assert Monitor.state_size() <= 2048


# -- thresholds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "leaks"),
    [
        ("", 1),
        ("[kind.residential]\nleak_min_lph = 30\n", 0),
        ('[meter."H0"]\ndisabled = ["leak"]\n', 0),
        ('[meter."H1"]\ndisabled = ["leak"]\n', 1),
        ("[kind.commercial]\nleak_min_lph = 30\n", 1),
    ],
)
def test_thresholds_file_overrides_by_kind_and_meter(tmp_path: Path, toml: str, leaks: int) -> None:
    path = tmp_path / "detectors.toml"
    path.write_text(toml)
    book = ThresholdBook.load(path)
    alerts = run(HOMES[:1], lora("H0", quarters(leak_home())), thresholds=book)
    assert len(raised(alerts, "leak")) == leaks


def test_an_unknown_threshold_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "detectors.toml"
    path.write_text("[kind.residential]\nleak_min_lph_typo = 30\n")
    with pytest.raises(ValueError, match="leak_min_lph_typo"):
        ThresholdBook.load(path)


def test_reloading_the_registry_updates_changed_meters_only() -> None:
    monitor = Monitor([Meter("A"), Meter("B")])
    before = monitor.params[:2].copy()
    monitor.add_meters([Meter("A"), Meter("B", q3_m3h=10.0)])
    assert monitor.params[0] == before[0]
    assert monitor.params["q3"][1] == pytest.approx(10.0)
    assert monitor.params["burst_q"][1] == pytest.approx(3.0)  # 30 % of the new Q3


def test_public_holidays_take_the_sunday_slot_of_the_hour_of_week() -> None:
    # Baselines, burst normals and the abnormal-use evidence all read the hour of the week here.
    # Thursday (National Day), Saturday (a worked day in China), Sunday, Monday.
    days = [date(2026, 10, 1), date(2026, 10, 10), date(2026, 10, 11), date(2026, 10, 12)]
    lday = np.array([(d - date(1970, 1, 1)).days for d in days])
    nine = np.full(lday.size, 9)
    in_china = week_slot(lday, nine, day_types(lday, np.ones(lday.size, np.bool_)))
    elsewhere = week_slot(lday, nine, day_types(lday, np.zeros(lday.size, np.bool_)))
    assert in_china.tolist() == [6 * 24 + 9, 5 * 24 + 9, 6 * 24 + 9, 9]
    assert elsewhere.tolist() == [3 * 24 + 9, 5 * 24 + 9, 6 * 24 + 9, 9]
