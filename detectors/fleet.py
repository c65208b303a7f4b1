"""The ``fleet_outlier`` model: meters whose day looks unlike the days of comparable meters.

A home's day has a shape (when the water is used) and a size (how much). Each meter-day becomes 25
numbers, the 24 hourly shares of the day's volume and ``log10(litres + 1)``, and is scored by an
IsolationForest trained on other meters' days of the same group (the bank passes the meter kind),
so an office is never judged against homes. Shares make small and large homes comparable; the
log volume still separates a home that used 30 m3 from one that used 0.3.

Everything is in event time and deterministic. The model that scores day ``D`` of a group is fitted
on the stored days ``D - history_days .. D - 2`` of that group (``D - 1`` may still be open in
another timezone when ``D`` closes), with a random state drawn from ``(seed, group, D)``. The stored
days are a sample chosen by a hash of each row's content, so the same rows give the same sample,
the same model and the same scores whatever order or chunks they arrived in; a cached model is
dropped when late rows change the sample of a day it was trained on. Memory is bounded:
at most ``rows_per_day`` rows per group and day, for the last ``history_days + 2`` days.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import IsolationForest

HOURS = 24
N_FEATURES = HOURS + 1
FORMAT_VERSION = 1
KEEP_MODELS = 16  # (group, day) models kept: a few groups times the one or two days being closed
REFIT_DAYS = 7  # a model serves a week (days D..D+6, D a multiple of 7 since 1970)
# Rows per tree. sklearn's 256 caps trees at depth 8, where a day unlike all others and the rarest
# ordinary ones end up at nearly the same depth; 1024 roughly doubled the gap between them on
# simulated fleets and halved the false alarms on the mixed commercial group.
MAX_SAMPLES = 1024


def day_features(
    profiles: NDArray[np.floating[Any]],
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """(n, 25) features and which rows have any use.

    Hours with reverse flow count as zero use: backflow is another detector's business and a
    negative share has no meaning. Rows with a missing hour or no use at all are not scorable;
    their features are zeros.
    """
    p = np.asarray(profiles, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != HOURS:
        raise ValueError(f"profiles must have shape (n, {HOURS}), got {p.shape}")
    ok = np.asarray(np.isfinite(p).all(axis=1), dtype=np.bool_)
    p = np.where(ok[:, None], np.clip(p, 0.0, None), 0.0)
    total = p.sum(axis=1)
    ok &= total > 0
    x = np.zeros((len(p), N_FEATURES), dtype=np.float64)
    x[:, :HOURS] = p / np.where(ok, total, 1.0)[:, None]
    x[:, HOURS] = np.log10(total * 1000.0 + 1.0)
    x[~ok] = 0.0
    return x.astype(np.float32), ok


class FleetOutliers:
    """Scores meter-days against the recent days of their group; lower scores are odder.

    The bank calls ``score_days`` when meters close a local day and ``add_days`` afterwards (it
    may leave out the days it flagged, so a leak does not teach the model that leaks are normal).
    During warm-up, while a group has fewer than ``min_rows`` stored rows in the window, scores
    are NaN and nothing is flagged.

    ``threshold`` applies to sklearn's ``score_samples`` (about -0.4 for ordinary days, towards
    -0.75 for days unlike any other). -0.60 flags about 0.15 % of the meter-days of the project's
    simulated fleet (mostly offices on weekends, a minority shape among commercial meters) and none
    of the ordinary homes of ``tests/test_fleet.py``, whose flat and night-only meters score -0.64
    or lower. Groups differ: a group of very varied days (homes whose days are mostly idle hours)
    has compressed scores, so the threshold is a parameter, not a constant.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        history_days: int = 14,
        rows_per_day: int = 2000,
        min_rows: int = 500,
        n_estimators: int = 50,
        threshold: float = -0.62,
    ) -> None:
        if history_days < 2 or rows_per_day < 1 or min_rows < 1 or n_estimators < 1:
            raise ValueError(
                "history_days >= 2, rows_per_day >= 1, min_rows >= 1, n_estimators >= 1"
            )
        self.seed = int(seed)
        self.history_days = int(history_days)
        self.rows_per_day = int(rows_per_day)
        self.min_rows = int(min_rows)
        self.n_estimators = int(n_estimators)
        self.threshold = float(threshold)
        # (group, day) -> (features (k, 25) float32, content keys (k,) uint64 ascending)
        self._days: dict[tuple[int, int], tuple[NDArray[np.float32], NDArray[np.uint64]]] = {}
        self._models: OrderedDict[tuple[int, int], IsolationForest | None] = OrderedDict()
        self._newest: int | None = None

    def score_days(
        self, group: NDArray[np.int8], day: NDArray[np.int64], profiles: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """(score, outlier) per row; NaN and False where there is no use or no model yet."""
        g, d = _check(group, day, profiles)
        x, ok = day_features(profiles)
        scores = np.full(len(g), np.nan, dtype=np.float32)
        for gi, di, rows in _by_group_day(g, d, ok):
            model = self._model(gi, di)
            if model is not None:
                scores[rows] = model.score_samples(x[rows])
        with np.errstate(invalid="ignore"):
            outlier = scores < self.threshold
        return scores, outlier

    def add_days(
        self, group: NDArray[np.int8], day: NDArray[np.int64], profiles: NDArray[np.float32]
    ) -> None:
        """Store closed meter-days as history; adding the same meter-day again changes nothing."""
        g, d = _check(group, day, profiles)
        x, ok = day_features(profiles)
        if not ok.any():
            return
        newest = int(d[ok].max())
        self._newest = newest if self._newest is None else max(self._newest, newest)
        oldest = self._oldest_kept()
        raw = np.ascontiguousarray(profiles, dtype=np.float32)
        for gi, di, rows in _by_group_day(g, d, ok & (d >= oldest)):
            keys = _content_keys(self.seed, gi, di, raw[rows])
            if self._merge(gi, di, x[rows], keys):
                # Models whose training window holds that day are stale now.
                for key in [
                    k
                    for k in self._models
                    if k[0] == gi
                    and _window(k[1], self.history_days)[0]
                    <= di
                    < _window(k[1], self.history_days)[1]
                ]:
                    del self._models[key]
        for key in [k for k in self._days if k[1] < oldest]:
            del self._days[key]

    def seed_history(
        self, group: NDArray[np.int8], day: NDArray[np.int64], profiles: NDArray[np.float32]
    ) -> None:
        """Train from stored days at start (``storage.history.day_profiles``), as if just seen.

        The same as ``add_days``: because the sample depends only on the rows, an edge that seeds
        from the database and then sees some of those days again live ends up with the same model
        as one that ran all along.
        """
        self.add_days(group, day, profiles)

    def explain(self, group: int, profile: NDArray[np.float32]) -> dict[str, Any]:
        """JSON-able evidence: how the day's volume and its most unusual hours compare.

        The group's figures are medians over all its stored days, the meters it was judged by.
        """
        x, ok = day_features(np.asarray(profile, dtype=np.float32).reshape(1, HOURS))
        volume = float(np.clip(np.asarray(profile, dtype=np.float64), 0.0, None).sum())
        parts = [v[0] for (gi, _), v in sorted(self._days.items()) if gi == int(group)]
        out: dict[str, Any] = {"day_volume_m3": round(volume, 4), "group_rows": 0}
        if not parts or not ok[0]:
            return out
        ref = np.concatenate(parts).astype(np.float64)
        group_shape = np.median(ref[:, :HOURS], axis=0)
        group_volume = float(np.median(10.0 ** ref[:, HOURS] - 1.0)) / 1000.0
        shares = x[0, :HOURS].astype(np.float64)
        worst = np.argsort(-np.abs(shares - group_shape), kind="stable")[:3]
        out["group_rows"] = len(ref)
        out["group_median_day_volume_m3"] = round(group_volume, 4)
        out["volume_ratio"] = round(volume / group_volume, 3) if group_volume > 0 else None
        out["hours"] = [
            {"hour": int(h), "share": round(float(shares[h]), 4),
             "group_share": round(float(group_shape[h]), 4)}
            for h in worst
        ]  # fmt: skip
        return out

    def to_bytes(self) -> bytes:
        """Parameters and the stored sample (``np.savez``, no pickle); models are refitted."""
        keys = sorted(self._days)
        feats = [self._days[k][0] for k in keys]
        hashes = [self._days[k][1] for k in keys]
        buf = io.BytesIO()
        np.savez(
            buf,
            version=np.array([FORMAT_VERSION], dtype=np.int64),
            params=np.array(
                [self.seed, self.history_days, self.rows_per_day, self.min_rows, self.n_estimators],
                dtype=np.int64,
            ),
            threshold=np.array([self.threshold], dtype=np.float64),
            newest=np.array([] if self._newest is None else [self._newest], dtype=np.int64),
            day_keys=np.array(keys, dtype=np.int64).reshape(-1, 2),
            counts=np.array([len(f) for f in feats], dtype=np.int64),
            features=np.concatenate(feats) if feats else np.zeros((0, N_FEATURES), np.float32),
            hashes=np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FleetOutliers:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["version"][0]) != FORMAT_VERSION:
                raise ValueError(f"unsupported FleetOutliers format {int(z['version'][0])}")
            seed, history_days, rows_per_day, min_rows, n_estimators = (int(v) for v in z["params"])
            self = cls(
                seed=seed,
                history_days=history_days,
                rows_per_day=rows_per_day,
                min_rows=min_rows,
                n_estimators=n_estimators,
                threshold=float(z["threshold"][0]),
            )
            newest = z["newest"]
            self._newest = int(newest[0]) if len(newest) else None
            ends = np.cumsum(z["counts"])
            feats, hashes = z["features"], z["hashes"]
            for (gi, di), end, n in zip(z["day_keys"], ends, z["counts"], strict=True):
                start = int(end - n)
                self._days[(int(gi), int(di))] = (feats[start:end].copy(), hashes[start:end].copy())
        return self

    def stored_rows(self) -> int:
        """Rows held as history, for monitoring memory."""
        return sum(len(v[1]) for v in self._days.values())

    def _oldest_kept(self) -> int:
        # Day D needs D - history_days; days in other timezones may lag the newest by one.
        assert self._newest is not None
        return self._newest - self.history_days - 1

    def _merge(
        self, group: int, day: int, x: NDArray[np.float32], keys: NDArray[np.uint64]
    ) -> bool:
        """Keep the rows with the lowest content keys; True if the kept set changed."""
        old = self._days.get((group, day))
        if old is not None:
            x = np.concatenate([old[0], x])
            keys = np.concatenate([old[1], keys])
        kept_keys, first = np.unique(keys, return_index=True)
        kept_keys, first = kept_keys[: self.rows_per_day], first[: self.rows_per_day]
        if old is not None and np.array_equal(kept_keys, old[1]):
            return False
        self._days[(group, day)] = (x[first], kept_keys)
        return True

    def _model(self, group: int, day: int) -> IsolationForest | None:
        """The model for ``day``: refitted once a week (``REFIT_DAYS``), on the days before."""
        day = day - day % REFIT_DAYS
        key = (group, day)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        lo, hi = _window(day, self.history_days)
        parts = [self._days[(group, d)][0] for d in range(lo, hi) if (group, d) in self._days]
        n = sum(len(p) for p in parts)
        model: IsolationForest | None = None
        if n >= self.min_rows:
            state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, group & 0xFF, day & 0xFFFFFFFF])
            model = IsolationForest(
                n_estimators=self.n_estimators,
                max_samples=min(MAX_SAMPLES, n),
                random_state=int(state.generate_state(1)[0]),
            ).fit(np.concatenate(parts))
        self._models[key] = model
        while len(self._models) > KEEP_MODELS:
            self._models.popitem(last=False)
        return model


def _window(anchor: int, history_days: int) -> tuple[int, int]:
    """Training days [lo, hi) of the model anchored at ``anchor``: D-history..D-2 (D-1 may still
    be incomplete when day D is scored)."""
    return anchor - history_days, anchor - 1


def _check(
    group: NDArray[np.int8], day: NDArray[np.int64], profiles: NDArray[np.float32]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    g = np.asarray(group).astype(np.int64).reshape(-1)
    d = np.asarray(day).astype(np.int64).reshape(-1)
    n = np.shape(profiles)[0] if np.ndim(profiles) else -1
    if len(g) != n or len(d) != n:
        raise ValueError(f"group, day and profiles need the same rows: {len(g)}, {len(d)}, {n}")
    return g, d


def _by_group_day(
    g: NDArray[np.int64], d: NDArray[np.int64], mask: NDArray[np.bool_]
) -> list[tuple[int, int, NDArray[np.intp]]]:
    """Row indices of each (group, day), in ascending order of both."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    order = idx[np.lexsort((d[idx], g[idx]))]
    gs, ds = g[order], d[order]
    cut = np.flatnonzero((gs[1:] != gs[:-1]) | (ds[1:] != ds[:-1])) + 1
    return [(int(gs[c[0]]), int(ds[c[0]]), order[c]) for c in np.split(np.arange(len(order)), cut)]


def _content_keys(seed: int, group: int, day: int, raw: NDArray[np.float32]) -> NDArray[np.uint64]:
    """A 64-bit hash of each row's bytes, salted with (seed, group, day).

    Ranking rows by it is a uniform random sample that depends on the rows only, never on when or
    in what chunks they were added; the salt draws a different sample each day.
    """
    salt = np.random.SeedSequence([seed & 0xFFFFFFFF, group & 0xFF, day & 0xFFFFFFFF])
    h = np.full(len(raw), salt.generate_state(1, np.uint64)[0], dtype=np.uint64)
    words = raw.view(np.uint32).astype(np.uint64)
    for j in range(HOURS):
        h = _splitmix64(h ^ words[:, j])
    return h


def _splitmix64(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
