"""The fleet-outlier model on synthetic fleets, and the stored history it is seeded from."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from detectors.fleet import REFIT_DAYS, FleetOutliers
from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from storage.history import day_profiles
from storage.writer import Message, Writer

HOURS = np.arange(24)
N_HOMES = 3000
FIRST_DAY = 20_500  # 2026-02-16
N_ODD = 6


def homes(n: int, seed: int) -> dict[str, np.ndarray]:
    """Household traits that stay with a home: when its peaks are, how big, how much it uses."""
    rng = np.random.default_rng(seed)
    return {
        "morning": rng.uniform(6.5, 8.5, n),
        "evening": rng.uniform(18.5, 21.5, n),
        "wm": rng.uniform(0.6, 1.2, n),
        "we": rng.uniform(0.8, 1.6, n),
        "litres": np.exp(rng.normal(np.log(300.0), 0.4, n)),
    }


def home_days(traits: dict[str, np.ndarray], day: int) -> np.ndarray:
    """One day of every home: a little night use, daytime use, morning and evening peaks, noise."""
    n = len(traits["litres"])
    rng = np.random.default_rng([99, day])
    h = HOURS[None, :]
    shape = (
        0.01
        + 0.08 * ((h >= 7) & (h <= 22))
        + traits["wm"][:, None] * np.exp(-0.5 * ((h - traits["morning"][:, None]) / 1.2) ** 2)
        + traits["we"][:, None] * np.exp(-0.5 * ((h - traits["evening"][:, None]) / 1.5) ** 2)
    )
    shape = shape * rng.gamma(4.0, 0.25, (n, 24))
    shape /= shape.sum(axis=1, keepdims=True)
    litres = traits["litres"] * np.exp(rng.normal(0.0, 0.2, n))
    return (shape * litres[:, None] / 1000).astype(np.float32)


def odd_days(n: int) -> np.ndarray:
    """Half flat around the clock (a running toilet), half used only between 00:00 and 05:00."""
    out = np.zeros((n, 24), np.float32)
    out[: n // 2] = 0.3 / 24
    out[n // 2 :, :5] = 0.3 / 5
    return out


def fleet_day(traits: dict[str, np.ndarray], day: int) -> np.ndarray:
    """The homes followed by the odd meters, which are part of the fleet every day."""
    return np.concatenate([home_days(traits, day), odd_days(N_ODD)])


def cols(n: int, day: int, group: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, group, np.int8), np.full(n, day, np.int64)


@pytest.fixture(scope="module")
def traits() -> dict[str, np.ndarray]:
    return homes(N_HOMES, seed=1)


@pytest.fixture(scope="module")
def trained(traits: dict[str, np.ndarray]) -> FleetOutliers:
    model = FleetOutliers(seed=0)
    for d in range(FIRST_DAY, FIRST_DAY + 14):
        model.add_days(*cols(N_HOMES + N_ODD, d), fleet_day(traits, d))
    return model


def test_odd_meters_are_flagged_and_normal_days_are_not(trained, traits):
    days = range(FIRST_DAY + 14, FIRST_DAY + 17)
    results = [trained.score_days(*cols(N_HOMES + N_ODD, d), fleet_day(traits, d)) for d in days]
    scores = np.stack([s for s, _ in results])
    outlier = np.stack([o for _, o in results])
    assert np.isfinite(scores).all()
    assert outlier[:, N_HOMES:].all()
    assert (scores[:, N_HOMES:] < trained.threshold).all()
    normal = outlier[:, :N_HOMES]
    assert (~normal).mean() >= 0.95
    assert normal.mean() <= 0.005  # a few in a thousand at most, or nobody would read the alerts


def test_explain_shows_the_hours_and_volume_against_the_group(trained):
    night = odd_days(2)[1]
    ev = trained.explain(0, night)
    assert json.loads(json.dumps(ev)) == ev
    assert ev["day_volume_m3"] == pytest.approx(0.3)
    assert 0.2 < ev["group_median_day_volume_m3"] < 0.45
    assert len(ev["hours"]) == 3
    for item in ev["hours"]:
        assert item["hour"] < 5 and item["share"] == pytest.approx(0.2, abs=1e-4)
        assert item["group_share"] < 0.02
    assert trained.explain(5, night) == {"day_volume_m3": 0.3, "group_rows": 0}


def test_results_do_not_depend_on_call_order_or_chunking(traits):
    days = list(range(FIRST_DAY, FIRST_DAY + 14))
    data = {d: fleet_day(traits, d) for d in days}
    n = N_HOMES + N_ODD
    target = FIRST_DAY + 14
    today = fleet_day(traits, target)

    at_once = FleetOutliers(seed=3, rows_per_day=1000)
    at_once.add_days(
        np.zeros(n * len(days), np.int8),
        np.repeat(np.array(days, np.int64), n),
        np.concatenate([data[d] for d in days]),
    )
    expected, expected_flags = at_once.score_days(*cols(n, target), today)

    # Days in reverse, rows in shuffled chunks; scoring once before the history is complete
    # must not freeze a model that the late rows would have changed.
    piecemeal = FleetOutliers(seed=3, rows_per_day=1000)
    rng = np.random.default_rng(5)
    anchor = target - target % REFIT_DAYS  # the weekly model that scores the target day
    late, held_back = anchor - 3, rng.permutation(n)[: n // 2]
    for d in reversed(days):
        rows = np.setdiff1d(np.arange(n), held_back) if d == late else np.arange(n)
        for chunk in np.array_split(rng.permutation(rows), 4):
            piecemeal.add_days(*cols(len(chunk), d), data[d][chunk])
    early, _ = piecemeal.score_days(*cols(n, target), today)
    assert not np.array_equal(early, expected)
    piecemeal.add_days(*cols(len(held_back), late), data[late][held_back])
    piecemeal.add_days(*cols(n, days[0]), data[days[0]])  # a repeat adds nothing

    picked = np.r_[0:150, N_HOMES : N_HOMES + N_ODD]
    one_by_one = np.array(
        [piecemeal.score_days(*cols(1, target), today[[i]])[0][0] for i in picked]
    )
    np.testing.assert_array_equal(one_by_one, expected[picked])
    scores, flags = piecemeal.score_days(*cols(n, target), today)
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(flags, expected_flags)


def test_days_and_groups_in_one_call_score_as_they_would_apart(trained, traits):
    a, b = FIRST_DAY + 14, FIRST_DAY + 15
    pa, pb = fleet_day(traits, a)[:500], fleet_day(traits, b)[:500]
    group = np.r_[np.zeros(500, np.int8), np.ones(500, np.int8), np.zeros(500, np.int8)]
    day = np.r_[np.full(500, a), np.full(500, a), np.full(500, b)]
    scores, _ = trained.score_days(group, day, np.concatenate([pa, pa, pb]))
    np.testing.assert_array_equal(scores[:500], trained.score_days(*cols(500, a), pa)[0])
    np.testing.assert_array_equal(scores[1000:], trained.score_days(*cols(500, b), pb)[0])
    assert np.isnan(scores[500:1000]).all()  # group 1 has no history at all


def test_without_a_model_or_without_use_nothing_is_scored(trained, traits):
    profiles = home_days(traits, FIRST_DAY)[:10]
    fresh = FleetOutliers()
    scores, flags = fresh.score_days(*cols(10, FIRST_DAY), profiles)
    assert np.isnan(scores).all() and not flags.any()

    # Too few rows: the window holds 12 days of 40 rows, under min_rows.
    small = FleetOutliers(min_rows=500)
    for d in range(FIRST_DAY, FIRST_DAY + 12):
        small.add_days(*cols(40, d), home_days(traits, d)[:40])
    assert np.isnan(small.score_days(*cols(10, FIRST_DAY + 14), profiles)[0]).all()

    # The day before is never part of the model: D - 1 may still be open elsewhere.
    assert np.isnan(trained.score_days(*cols(10, FIRST_DAY + 1), profiles)[0]).all()

    empty = np.zeros((3, 24), np.float32)
    empty[1, 3] = np.nan
    empty[2] = -0.01  # reverse flow only
    scores, flags = trained.score_days(*cols(3, FIRST_DAY + 14), empty)
    assert np.isnan(scores).all() and not flags.any()
    before = trained.stored_rows()
    trained.add_days(*cols(3, FIRST_DAY + 13), empty)
    assert trained.stored_rows() == before


def test_round_trip_gives_identical_scores(trained, traits):
    data = trained.to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        assert stored["features"].shape == (trained.stored_rows(), 25)
    restored = FleetOutliers.from_bytes(data)
    assert restored.stored_rows() == trained.stored_rows()
    assert restored.threshold == trained.threshold and restored.seed == trained.seed
    d = FIRST_DAY + 14
    today = fleet_day(traits, d)
    np.testing.assert_array_equal(
        restored.score_days(*cols(len(today), d), today)[0],
        trained.score_days(*cols(len(today), d), today)[0],
    )
    assert restored.explain(0, today[0]) == trained.explain(0, today[0])
    empty = FleetOutliers.from_bytes(FleetOutliers(history_days=7).to_bytes())
    assert empty.history_days == 7 and empty.stored_rows() == 0


def test_history_stays_bounded(traits):
    model = FleetOutliers(history_days=7, rows_per_day=300)
    for d in range(FIRST_DAY, FIRST_DAY + 40):
        model.seed_history(*cols(N_HOMES, d, group=d % 2), home_days(traits, d))
        model.add_days(*cols(N_HOMES, d, group=2), home_days(traits, d))
        assert model.stored_rows() <= (7 + 2) * 3 * 300
    assert model.stored_rows() == (7 + 2) * 300 + (7 + 2) * 300  # group 2 daily, groups 0/1 halves
    model.add_days(*cols(N_HOMES, FIRST_DAY), home_days(traits, FIRST_DAY))  # long gone: ignored
    assert model.stored_rows() == 2 * (7 + 2) * 300
    today = home_days(traits, FIRST_DAY + 40)[:5]
    assert np.isfinite(model.score_days(*cols(5, FIRST_DAY + 40, group=2), today)[0]).all()


# --- stored history -------------------------------------------------------------------------

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _message(meter_id: str, readings: list[tuple[datetime, float, None]]) -> Message:
    topic = uplink_topic(meter_id)
    payload = encode_uplink(meter_id, readings)
    received = readings[-1][0]
    return Message(topic, payload, received, decode_uplink(topic, payload, received_at=received))


def _local_hour_m3(t: datetime) -> float:
    """Test usage: (local hour + 1) litres in each hour."""
    return (t.astimezone(SHANGHAI).hour + 1) / 1000


def _write_meter(writer: Writer, meter_id: str, start: datetime, end: datetime) -> None:
    """Readings every 15 minutes from ``start`` to ``end``, one message per day."""
    register, t = 10.0, start
    readings = []
    while t <= end:
        readings.append((t, round(register, 6), None))
        register += _local_hour_m3(t) / 4
        t += timedelta(minutes=15)
    for i in range(0, len(readings), 96):
        writer.write([_message(meter_id, readings[i : i + 97])])


def test_day_profiles_returns_whole_local_days(db):
    writer = Writer(db)
    midnight = datetime(2026, 3, 2, tzinfo=SHANGHAI)  # day 20514 in Shanghai
    _write_meter(writer, "H-1", midnight, midnight + timedelta(days=3))
    _write_meter(writer, "H-2", midnight + timedelta(hours=12), midnight + timedelta(days=3))

    first = (date(2026, 3, 2) - date(1970, 1, 1)).days
    ids, days, profiles = day_profiles(
        db,
        since=midnight.astimezone(UTC),
        until=midnight + timedelta(days=3),
        timezone="Asia/Shanghai",
    )
    # H-2 started at noon: its first day is not whole and is left out, not taken for a quiet one.
    assert list(zip(ids, days.tolist(), strict=True)) == [
        ("H-1", first), ("H-1", first + 1), ("H-1", first + 2),
        ("H-2", first + 1), ("H-2", first + 2),
    ]  # fmt: skip
    assert profiles.dtype == np.float32 and profiles.shape == (5, 24)
    np.testing.assert_allclose(profiles, np.tile((HOURS + 1) / 1000, (5, 1)), atol=1e-6)

    # A window that starts or ends inside a day covers only the days wholly inside it.
    ids, days, _ = day_profiles(
        db,
        since=midnight + timedelta(hours=6),
        until=midnight + timedelta(days=2, hours=23),
        timezone="Asia/Shanghai",
    )
    assert list(zip(ids, days.tolist(), strict=True)) == [("H-1", first + 1), ("H-2", first + 1)]
    # Days are local to the zone asked for: in UTC the midnights fall elsewhere.
    ids, days, profiles = day_profiles(
        db, since=midnight, until=midnight + timedelta(days=3), timezone="UTC"
    )
    assert ids == ["H-1", "H-1", "H-2"]
    np.testing.assert_allclose(profiles[0], (np.roll(HOURS, -8) + 1) / 1000, atol=1e-6)
    empty = day_profiles(db, since=midnight, until=midnight, timezone="Asia/Shanghai")
    assert empty[0] == [] and empty[2].shape == (0, 24)
