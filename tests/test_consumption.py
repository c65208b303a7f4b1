import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterwatch import consumption as c

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MAX = 100000.0


def series(steps: list[float], start_reg: float = 10.0, minutes: int = 15):
    reg = start_reg
    out = [(T0, reg)]
    for i, s in enumerate(steps, 1):
        reg = round((reg + s) % MAX, 3)
        out.append((T0 + timedelta(minutes=minutes * i), reg))
    return out


def total(points, **kw) -> float:
    return sum(p.volume_m3 for p in c.pieces("M", points, register_max_m3=MAX, q3_m3h=2.5, **kw))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.floats(0, 0.5), min_size=1, max_size=60),
    data=st.data(),
)
def test_shuffled_and_duplicated_input_gives_sorted_totals(steps, data):
    pts = series(steps)
    shuffled = data.draw(st.permutations(pts + data.draw(st.lists(st.sampled_from(pts)))))
    expected = c.pieces("M", pts, register_max_m3=MAX, q3_m3h=2.5)
    assert c.pieces("M", shuffled, register_max_m3=MAX, q3_m3h=2.5) == expected
    assert total(pts) == pytest.approx(pts[-1][1] - pts[0][1], abs=1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.floats(0, 0.5), min_size=2, max_size=40), start=st.floats(MAX - 3, MAX))
def test_rollover_adds_the_wrapped_volume(steps, start):
    pts = series(steps, start_reg=round(start, 3) % MAX)
    got = c.intervals(pts, register_max_m3=MAX, q3_m3h=2.5)
    assert all(iv.volume_m3 >= 0 for iv in got)
    wrapped = sum((b[1] - a[1]) % MAX for a, b in itertools.pairwise(pts))
    assert sum(iv.volume_m3 for iv in got) == pytest.approx(wrapped, abs=1e-6)
    assert wrapped == pytest.approx(sum(steps), abs=0.001 * len(steps))
    assert {iv.kind for iv in got} <= {c.FLOW, c.ROLLOVER}


def test_rollover_is_classified():
    pts = [(T0, 99999.9), (T0 + timedelta(minutes=15), 0.2)]
    (iv,) = c.intervals(pts, register_max_m3=MAX, q3_m3h=2.5)
    assert iv.kind == c.ROLLOVER
    assert iv.volume_m3 == pytest.approx(0.3)


def test_replacement_counts_the_new_register_only():
    pts = [(T0, 5321.0), (T0 + timedelta(hours=1), 0.05), (T0 + timedelta(hours=2), 0.15)]
    ivs = c.intervals(pts, register_max_m3=MAX, q3_m3h=2.5)
    assert [iv.kind for iv in ivs] == [c.REPLACEMENT, c.FLOW]
    assert [round(iv.volume_m3, 6) for iv in ivs] == [0.05, 0.1]


def test_small_decrease_is_reverse_flow_never_a_reset():
    pts = [(T0, 100.0), (T0 + timedelta(minutes=15), 99.98)]
    (iv,) = c.intervals(pts, register_max_m3=MAX, q3_m3h=2.5)
    assert iv.kind == c.REVERSE
    assert iv.volume_m3 == pytest.approx(-0.02)


def test_large_decrease_not_near_zero_is_a_fault_and_totals_follow_the_register():
    pts = [(T0, 500.0), (T0 + timedelta(minutes=15), 300.0), (T0 + timedelta(minutes=30), 500.1)]
    ivs = c.intervals(pts, register_max_m3=MAX, q3_m3h=2.5)
    assert ivs[0].kind == c.FAULT
    assert ivs[1].kind == c.IMPLAUSIBLE
    assert sum(iv.volume_m3 for iv in ivs) == pytest.approx(0.1)


def test_gap_is_split_across_hours_in_proportion_to_time():
    pts = [(T0 + timedelta(minutes=30), 10.0), (T0 + timedelta(hours=3, minutes=30), 13.0)]
    ps = c.pieces("M", pts, register_max_m3=MAX, q3_m3h=2.5)
    assert [(p.ts.hour, p.ts_end.hour, round(p.volume_m3, 9)) for p in ps] == [
        (0, 1, 0.5),
        (1, 2, 1.0),
        (2, 3, 1.0),
        (3, 3, 0.5),
    ]


def test_conflicting_duplicates_resolve_the_same_way_in_any_order():
    a = [(T0, 1.0), (T0, 1.5), (T0 + timedelta(hours=1), 2.0)]
    assert c.intervals(a, register_max_m3=MAX, q3_m3h=2.5) == c.intervals(
        list(reversed(a)), register_max_m3=MAX, q3_m3h=2.5
    )
