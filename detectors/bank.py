"""The detector bank: every meter's detectors behind one ``Monitor.observe(batch) -> alerts``.

Pure: the bank reads no clock and does no I/O. Time is the readings' event time; where a rule
needs "now" (a meter gone silent, a DMA day complete) it uses the fleet's watermark, the newest
reading time that a quarter of the meters have reached, which one meter with a wrong clock cannot
drag forward. Ingest, the offline runner, backtests and tests all drive the same object, so a
replay at any speed raises the same alerts as live data.

Work per batch is numpy over all its readings (register intervals, bursts, reverse flow, flags);
the hour rules run once per "k-th closed hour of each meter", so a batch that closes one hour for
each of 10,000 meters is one vectorised step, not 10,000.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors import instant
from detectors.alert import Alert, utc
from detectors.batch import Batch, from_messages
from detectors.config import FleetSettings, ThresholdBook
from detectors.dma import DmaBalance
from detectors.emit import Emitter, enabled, is_open
from detectors.fleet import FleetOutliers
from detectors.hourly import hour_step
from detectors.params import BATCH_UPLOAD_S, PARAM_DTYPE, record, utc_offset_s
from detectors.registers import (
    Intervals,
    accepted,
    group_last,
    group_starts,
    hourly,
    intervals,
)
from detectors.state import STATE_DTYPE, new_states, pack, unpack
from meterwatch.domain import Meter, MeterKind, Reading


@dataclass
class Context:
    """What the rules of one ``observe`` call share."""

    state: NDArray[np.void]
    params: NDArray[np.void]
    emit: Emitter
    dma: DmaBalance
    fleet: FleetOutliers | None
    fleet_days: list[
        tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]
    ] = field(default_factory=list)


class Monitor:
    def __init__(
        self,
        meters: Sequence[Meter] = (),
        *,
        thresholds: ThresholdBook | None = None,
        fleet: FleetSettings | None = None,
    ) -> None:
        self.book = thresholds or ThresholdBook()
        self.settings = fleet or FleetSettings()
        self.ids: list[str] = []
        self.meters: list[Meter] = []
        self._index: dict[str, int] = {}
        self._dma_codes: dict[str, int] = {}
        self.dma_names: list[str] = []
        self.dma_inlet: dict[int, int] = {}
        self.params = np.zeros(0, PARAM_DTYPE)
        self.state = new_states(0)
        self.dirty = np.zeros(0, np.bool_)
        self.watermark = -1
        self.batch_watermark = -1
        self.dma = DmaBalance(self.settings)
        self.fleet = _fleet_model(self.settings)
        self.add_meters(meters)

    # -- registry -------------------------------------------------------------------------------
    def add_meters(self, meters: Sequence[Meter]) -> None:
        """Register meters, or update the registry facts and thresholds of known ones."""
        new = [m for m in meters if m.meter_id not in self._index]
        fresh = {m.meter_id for m in new}
        if new:
            n0 = len(self.ids)
            self._grow(n0 + len(new))
            for i, m in enumerate(new):
                self._index[m.meter_id] = n0 + i
                self.ids.append(m.meter_id)
                self.meters.append(m)
        for m in meters:
            i = self._index[m.meter_id]
            if m.meter_id not in fresh and self.meters[i] == m:
                continue  # same facts, same thresholds: its parameters stand (ingest reloads often)
            self.meters[i] = m
            dma = -1
            if m.dma:
                dma = self._dma_codes.setdefault(m.dma, len(self._dma_codes))
                if dma == len(self.dma_names):
                    self.dma_names.append(m.dma)
            inlet = m.kind == MeterKind.BULK and dma >= 0
            if inlet:
                self.dma_inlet[dma] = i
            off = utc_offset_s(m.timezone)
            self.params[i] = record(m, self.book.resolve(m), dma, inlet, off)[0]

    def _grow(self, n: int) -> None:
        if n <= self.params.size:
            return
        cap = max(n, 2 * self.params.size, 64)
        params = np.zeros(cap, PARAM_DTYPE)
        params[: self.params.size] = self.params
        state = new_states(cap)
        state[: self.state.size] = self.state
        dirty = np.zeros(cap, np.bool_)
        dirty[: self.dirty.size] = self.dirty
        self.params, self.state, self.dirty = params, state, dirty

    def index(self, meter_ids: Sequence[str]) -> NDArray[np.int32]:
        """Bank indices of ``meter_ids``; unknown meters are registered with default facts."""
        unknown = [m for m in dict.fromkeys(meter_ids) if m not in self._index]
        if unknown:
            self.add_meters([Meter(m) for m in unknown])
        get = self._index.__getitem__
        return np.fromiter((get(m) for m in meter_ids), np.int32, len(meter_ids))

    def __len__(self) -> int:
        return len(self.ids)

    def known_at(self, meter_ids: Sequence[str]) -> dict[str, int]:
        """For meters that upload many readings at once (daily NB-IoT batches), the newest reading
        the bank has of each (epoch s): what they report becomes known only with the upload, so a
        condition seen in the morning is news in the evening. Other meters are left out: their
        readings are news when they are read."""
        known = [m for m in dict.fromkeys(meter_ids) if m in self._index]
        if not known:
            return {}
        idx = self.index(known)
        batched = self.params["expected_s"][idx] >= BATCH_UPLOAD_S
        last = self.state["last_ts"][idx]
        return {m: int(t) for m, b, t in zip(known, batched, last, strict=True) if b and t >= 0}

    # -- observe --------------------------------------------------------------------------------
    def observe_messages(self, messages: Sequence[Sequence[Reading]]) -> list[Alert]:
        return self.observe(from_messages(messages, self.index))

    def observe(self, batch: Batch) -> list[Alert]:
        """Feed readings in arrival order; returns the alerts (raised, repeated, cleared)."""
        n = len(self.ids)
        state, params = self.state[:n], self.params[:n]
        em = Emitter(state, self.ids)
        ctx = Context(state, params, em, self.dma, self.fleet)
        if len(batch):
            self._readings(ctx, batch)
        self._watermark_rules(ctx, batch)
        return em.alerts

    def _readings(self, ctx: Context, b: Batch) -> None:
        state, params = ctx.state, ctx.params
        order = np.argsort(b.meter, kind="stable")
        m, ts, reg = b.meter[order], b.ts[order], b.register[order]
        self.dirty[m] = True
        st = np.flatnonzero(b.status[order])
        instant.flags(
            ctx.emit, params, m[st], ts[st], b.flags[order][st], b.battery[order][st],
            b.span_start[order][st],
        )  # fmt: skip
        starts = np.flatnonzero(group_starts(m))
        fresh = ~state["seen"][m[starts]]
        state["first_ts"][m[starts][fresh]] = np.minimum.reduceat(ts, starts)[fresh]
        ok = accepted(m, ts, state["last_ts"])
        iv = intervals(
            m, ts, reg, ok, state["last_ts"], state["last_reg"], params["q3"], params["reg_max"]
        )
        rows = np.flatnonzero(ok)
        last = rows[group_last(m[rows])]
        state["last_ts"][m[last]] = ts[last]
        state["last_reg"][m[last]] = reg[last]
        state["seen"][m] = True
        instant.bursts(ctx.emit, params, iv)
        instant.reverse(ctx.emit, params, iv)
        self._silent_back(ctx, m[starts], ts[starts])
        self._hours(ctx, iv)

    def _hours(self, ctx: Context, iv: Intervals) -> None:
        state = ctx.state
        h = hourly(iv)
        if h.meter.size == 0:
            return
        vol = h.volume.copy()
        first = group_starts(h.meter)
        cont = first & (h.hour == state["hour"][h.meter])
        vol[cont] += state["hour_vol"][h.meter[cont]]
        closed = (h.hour + 1) * 3600 <= state["last_ts"][h.meter]
        last = group_last(h.meter)
        lm = h.meter[last]
        still = ~closed[last]
        state["hour"][lm] = np.where(still, h.hour[last], -1)
        state["hour_vol"][lm] = np.where(still, vol[last], 0.0)
        c = np.flatnonzero(closed)
        if c.size == 0:
            return
        meter, hour, cvol, gap = h.meter[c].astype(np.intp), h.hour[c], vol[c], h.gap[c]
        low = h.low[c]
        pos = np.arange(c.size)
        rank = pos - np.maximum.accumulate(np.where(group_starts(meter.astype(np.int32)), pos, 0))
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
        for r in range(bounds.size - 1):
            sel = by_rank[bounds[r] : bounds[r + 1]]
            hour_step(ctx, meter[sel], hour[sel], cvol[sel], gap[sel], low[sel])

    # -- rules on the watermark -----------------------------------------------------------------
    def _silent_back(
        self, ctx: Context, meters: NDArray[np.int32], first_ts: NDArray[np.int64]
    ) -> None:
        """Meters of the batch (one row each, with their first message's time in arrival order)
        that were silent are back: cleared at that first message."""
        state = ctx.state
        back = state["silent_at"][meters] >= 0
        if back.any():
            k = meters[back].astype(np.intp)
            ctx.emit.clear("silent", k, first_ts[back])
            state["silent_at"][k] = -1

    def _watermark_rules(self, ctx: Context, b: Batch) -> None:
        state, params = ctx.state, ctx.params
        seen = np.flatnonzero(state["seen"])
        if seen.size == 0:
            return
        last = state["last_ts"][seen]
        self.watermark = max(self.watermark, _quartile_top(last))
        # Meters that upload a day of values at once are judged against their own kind: their
        # newest readings always trail live meters' by up to a day.
        batched = params["expected_s"][seen] >= BATCH_UPLOAD_S
        if batched.any():
            self.batch_watermark = max(self.batch_watermark, _quartile_top(last[batched]))
        wm = np.where(batched, self.batch_watermark, self.watermark)
        due = last + params["silent_s"][seen]
        cand = seen[(due <= wm) & (state["silent_at"][seen] < 0)]
        cand = cand[enabled(params, cand, "silent")]
        if cand.size:
            when = state["last_ts"][cand] + params["silent_s"][cand]
            ctx.emit.raise_(
                "silent", cand, state["last_ts"][cand], when, 1,
                lambda j: {
                    "last_reading_at": utc(int(state["last_ts"][cand[j]])).isoformat(),
                    "expected_interval_s": int(params["expected_s"][cand[j]]),
                    "silent_after_h": round(float(params["silent_s"][cand[j]]) / 3600.0, 2),
                },
            )  # fmt: skip
            state["silent_at"][cand] = when
            self.dirty[cand] = True
        self._fleet(ctx)
        self._dma(ctx, self.watermark)

    def _dma(self, ctx: Context, wm: int) -> None:
        for d in self.dma.decide(wm):
            inlet = self.dma_inlet.get(d.dma)
            if inlet is None or not enabled(ctx.params, np.array([inlet]), "dma_imbalance")[0]:
                continue
            idx = np.array([inlet], np.intp)
            ev = {"dma": self.dma_names[d.dma], **d.evidence}
            if d.cleared:
                ctx.emit.clear("dma_imbalance", idx, np.array([d.at], np.int64))
            else:
                ctx.emit.raise_(
                    "dma_imbalance", idx, np.array([d.start], np.int64), np.array([d.at], np.int64),
                    1, _constant(ev), _constant(round(d.excess_m3, 3)),
                )  # fmt: skip

    def _fleet(self, ctx: Context) -> None:
        model = self.fleet
        if model is None or not ctx.fleet_days:
            return
        state, params = ctx.state, ctx.params
        k = np.concatenate([d[0] for d in ctx.fleet_days])
        day = np.concatenate([d[1] for d in ctx.fleet_days])
        prof = np.concatenate([d[2] for d in ctx.fleet_days]).astype(np.float32)
        end = np.concatenate([d[3] for d in ctx.fleet_days])
        group = params["kind"][k]
        scores, outlier = model.score_days(group, day, prof)
        model.add_days(group, day, prof)
        for d in np.unique(day):
            rows = np.flatnonzero(day == d)
            kk = k[rows]
            run = np.where(outlier[rows], state["fo_run"][kk].astype(np.int64) + 1, 0)
            state["fo_start"][kk] = np.where(run == 1, end[rows] - 86400, state["fo_start"][kk])
            state["fo_run"][kk] = np.minimum(run, 100).astype(np.int8)
            hit = rows[(run >= params["fo_days"][kk]) & ~is_open(state, kk, "fleet_outlier")]
            if hit.size:
                mh = k[hit]
                ctx.emit.raise_(
                    "fleet_outlier", mh, state["fo_start"][mh], end[hit], 0,
                    _fleet_evidence(model, scores[hit], group[hit], prof[hit]),
                )  # fmt: skip
            gone = rows[(run == 0) & is_open(state, kk, "fleet_outlier")]
            ctx.emit.clear("fleet_outlier", k[gone], end[gone])

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, *, everything: bool = False) -> dict[str, bytes]:
        """Per-meter state of meters changed since the last checkpoint (or all)."""
        n = len(self.ids)
        rows = np.arange(n) if everything else np.flatnonzero(self.dirty[:n])
        self.dirty[:n] = False
        return {self.ids[i]: pack(self.state[i]) for i in rows}

    def restore(self, states: Mapping[str, bytes]) -> int:
        """Load checkpoints of registered meters; returns how many were usable."""
        used = 0
        for meter_id, data in states.items():
            i = self._index.get(meter_id)
            rec = unpack(data)
            if i is not None and rec is not None:
                self.state[i] = rec[0] if rec.shape else rec
                used += 1
        return used

    def global_state(self) -> dict[str, bytes]:
        out = {
            "watermark": str(self.watermark).encode(),
            "batch_watermark": str(self.batch_watermark).encode(),
            "dma": self.dma.to_bytes(),
        }
        if self.fleet is not None:
            out["fleet"] = self.fleet.to_bytes()
        return out

    def restore_global(self, data: Mapping[str, bytes]) -> None:
        if "watermark" in data:
            self.watermark = int(data["watermark"].decode())
        if "batch_watermark" in data:
            self.batch_watermark = int(data["batch_watermark"].decode())
        if "dma" in data:
            self.dma = DmaBalance.from_bytes(self.settings, data["dma"])
        if "fleet" in data and self.fleet is not None:
            self.fleet = FleetOutliers.from_bytes(data["fleet"])

    @staticmethod
    def state_size() -> int:
        return STATE_DTYPE.itemsize + 2


def _quartile_top(last: NDArray[np.int64]) -> int:
    """The newest time that a quarter of the meters have reached."""
    k = max(1, (last.size + 3) // 4)
    return int(np.partition(last, last.size - k)[last.size - k])


def _fleet_model(settings: FleetSettings) -> FleetOutliers | None:
    return FleetOutliers(seed=settings.seed) if settings.fleet_outliers else None


def _fleet_evidence(
    model: FleetOutliers, scores: NDArray[np.float32], group: NDArray[np.int8],
    prof: NDArray[np.float32],
) -> Callable[[int], dict[str, Any]]:  # fmt: skip
    def evidence(j: int) -> dict[str, Any]:
        return {"score": round(float(scores[j]), 4), **model.explain(int(group[j]), prof[j])}

    return evidence


def _constant(value: Any) -> Callable[[int], Any]:
    return lambda _j: value
