"""Stored usage as the fleet model's history: one row of 24 hourly volumes per meter and local day.

At start the edge has no fleet history in memory; rather than wait two weeks it seeds
``detectors.fleet.FleetOutliers`` from ``usage_hourly``, which the writer (or TimescaleDB) keeps
for both storage flavours with the same columns. Only whole local days are returned, so a day that
is still open, or that starts before the meter's first reading, is never taken for a quiet day.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray

HOURS = 24

# The first local midnight at or after ``since`` and the last one at or before ``until``. The
# next midnight is found as in ``storage.queries``: 26 hours after a midnight is always inside the
# next day whatever the daylight-saving shift.
BOUNDS = """
SELECT CASE WHEN date_trunc('day', %(since)s::timestamptz, %(tz)s) = %(since)s::timestamptz
            THEN %(since)s::timestamptz
            ELSE date_trunc('day', date_trunc('day', %(since)s::timestamptz, %(tz)s)
                                   + interval '26 hours', %(tz)s)
       END,
       date_trunc('day', %(until)s::timestamptz, %(tz)s)
"""

# Hours are summed by local clock hour, so the repeated hour of a 25-hour day adds into one slot
# and the skipped hour of a 23-hour day stays 0. A day counts only when its hours cover at least
# ``min_coverage`` of it: ``covered_s`` is the time spanned by consumption pieces, which is short
# before a meter's first reading and after its last.
PROFILES = """
WITH h AS (
    SELECT meter_id, date_trunc('day', hour, %(tz)s) AS day_start,
           extract(hour FROM hour AT TIME ZONE %(tz)s)::int AS hod, volume_m3, covered_s
    FROM usage_hourly
    WHERE hour >= %(lo)s AND hour < %(hi)s
), whole AS (
    SELECT meter_id, day_start FROM h
    GROUP BY meter_id, day_start
    HAVING sum(covered_s) >= %(cov)s * extract(
        epoch FROM date_trunc('day', day_start + interval '26 hours', %(tz)s) - day_start)
), slots AS (
    SELECT h.meter_id, h.day_start, h.hod, sum(h.volume_m3) AS volume_m3
    FROM h JOIN whole USING (meter_id, day_start)
    GROUP BY h.meter_id, h.day_start, h.hod
)
SELECT meter_id, (day_start AT TIME ZONE %(tz)s)::date - DATE '1970-01-01' AS day,
       array_agg(hod ORDER BY hod), array_agg(volume_m3 ORDER BY hod)
FROM slots
GROUP BY meter_id, day_start
ORDER BY meter_id, day_start
"""


def latest_reading_at(conn: psycopg.Connection[Any]) -> datetime | None:
    """The time of the newest stored reading, None when there is none: where history ends."""
    row = conn.execute("SELECT max(ts) FROM readings").fetchone()
    return row[0] if row is not None else None


def day_profiles(
    conn: psycopg.Connection[Any],
    *,
    since: datetime,
    until: datetime,
    timezone: str,
    min_coverage: float = 0.95,
) -> tuple[list[str], NDArray[np.int64], NDArray[np.float32]]:
    """(meter_id, local day, 24 hourly m3) of every whole local day in ``[since, until)``.

    ``day`` counts local days since 1970-01-01 in ``timezone`` and column h of the profile is the
    local clock hour h, as ``FleetOutliers`` expects. Rows are sorted by meter and day. Volumes
    are net of reverse flow, as in ``usage_hourly``. A day some meter reported nothing in is left
    out rather than returned as zeros.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    params: dict[str, Any] = {"since": since, "until": until, "tz": timezone}
    bounds = conn.execute(BOUNDS, params).fetchone()
    assert bounds is not None
    lo, hi = bounds
    if lo >= hi:
        return [], np.zeros(0, np.int64), np.zeros((0, HOURS), np.float32)
    rows = conn.execute(
        PROFILES, {"lo": lo, "hi": hi, "tz": timezone, "cov": float(min_coverage)}, binary=True
    ).fetchall()
    meter_ids = [r[0] for r in rows]
    days = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    counts = np.fromiter((len(r[2]) for r in rows), dtype=np.intp, count=len(rows))
    hods = np.fromiter((h for r in rows for h in r[2]), dtype=np.intp, count=int(counts.sum()))
    vols = np.fromiter((v for r in rows for v in r[3]), dtype=np.float64, count=len(hods))
    profiles = np.zeros((len(rows), HOURS), dtype=np.float32)
    profiles[np.repeat(np.arange(len(rows)), counts), hods] = vols
    return meter_ids, days, profiles
