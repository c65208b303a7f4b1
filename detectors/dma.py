"""DMA water balance: what the inlet (bulk) meter let in against what the customers' meters took.

The difference is the district's loss (leaks, unmetered and under-registered use: 产销差). Every
network has some; a new network leak shows as the daily loss rising above the district's own
normal. A day is balanced once the watermark is ``lateness`` past its end, so customers whose
meters upload yesterday's values in the morning are counted. Pure: fed with closed meter-days,
asked to decide at a watermark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from detectors.config import FleetSettings


@dataclass
class _Day:
    inlet_m3: float = 0.0
    customers_m3: float = 0.0
    customer_days: int = 0
    inlet_min_m3h: float = float("nan")
    end: int = 0
    has_inlet: bool = False


@dataclass
class _District:
    losses: list[float] = field(default_factory=list)  # normal daily losses (learning)
    inflows: list[float] = field(default_factory=list)
    run: int = 0
    run_start: int = -1
    open: bool = False
    done_day: int = -1  # last local day balanced


@dataclass(frozen=True)
class Decision:
    dma: int
    day: int
    start: int  # when the excess began (epoch s)
    at: int  # event time of the decision
    cleared: bool
    evidence: dict[str, Any]
    excess_m3: float


class DmaBalance:
    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.days: dict[tuple[int, int], _Day] = {}
        self.districts: dict[int, _District] = {}

    def add_days(
        self, dma: NDArray[np.int32], inlet: NDArray[np.bool_], day: NDArray[np.int64],
        volume: NDArray[np.float64], day_min: NDArray[np.float32], end: NDArray[np.int64],
    ) -> None:  # fmt: skip
        rows = np.flatnonzero(dma >= 0)
        for i in rows:
            key = (int(dma[i]), int(day[i]))
            d = self.days.get(key)
            if d is None:
                dist = self.districts.setdefault(key[0], _District())
                if key[1] <= dist.done_day:
                    continue  # too late: that day is balanced already
                d = self.days[key] = _Day(end=int(end[i]))
            if inlet[i]:
                d.inlet_m3 += float(volume[i])
                d.inlet_min_m3h = float(day_min[i])
                d.has_inlet = True
            else:
                d.customers_m3 += float(volume[i])
                d.customer_days += 1

    def decide(self, watermark: int) -> list[Decision]:
        s = self.settings
        ready = sorted(
            (k for k, d in self.days.items() if d.end + s.dma_lateness_h * 3600 <= watermark),
            key=lambda k: (k[1], k[0]),
        )
        out = []
        for key in ready:
            d = self.days.pop(key)
            dist = self.districts.setdefault(key[0], _District())
            dist.done_day = max(dist.done_day, key[1])
            if not d.has_inlet or d.customer_days == 0:
                continue
            at = d.end + round(s.dma_lateness_h * 3600)
            loss = d.inlet_m3 - d.customers_m3
            if len(dist.losses) < s.dma_warmup_days:
                dist.losses.append(loss)
                dist.inflows.append(d.inlet_m3)
                continue
            normal = float(np.median(dist.losses))
            inflow = float(np.mean(dist.inflows))
            excess = loss - normal
            limit = max(s.dma_excess_share * inflow, s.dma_excess_min_m3)
            evidence = {
                "day": key[1],
                "inflow_m3": round(d.inlet_m3, 3),
                "customers_m3": round(d.customers_m3, 3),
                "customer_meters": d.customer_days,
                "loss_m3": round(loss, 3),
                "normal_loss_m3": round(normal, 3),
                "excess_m3": round(excess, 3),
                "excess_share_of_inflow": round(excess / inflow, 4) if inflow > 0 else None,
                "inlet_min_flow_m3h": None
                if np.isnan(d.inlet_min_m3h)
                else round(d.inlet_min_m3h, 3),
            }
            if excess >= limit:
                dist.run += 1
                if dist.run == 1:
                    dist.run_start = d.end - 86400
                if dist.run >= s.dma_days:
                    dist.open = True
                    out.append(
                        Decision(key[0], key[1], dist.run_start, at, False, evidence, excess)
                    )
                continue
            dist.run = 0
            if dist.open:
                dist.open = False
                out.append(Decision(key[0], key[1], at, at, True, evidence, 0.0))
            # Learn the normal loss slowly from ordinary days (a rolling two weeks).
            dist.losses = [*dist.losses, loss][-14:]
            dist.inflows = [*dist.inflows, d.inlet_m3][-14:]
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "days": [[k[0], k[1], vars(v)] for k, v in self.days.items()],
                "districts": {str(k): vars(v) for k, v in self.districts.items()},
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_bytes(cls, settings: FleetSettings, data: bytes) -> DmaBalance:
        obj = orjson.loads(data)
        out = cls(settings)
        # JSON has no NaN: a day whose inlet has not closed yet comes back with null.
        out.days = {}
        for a, b, v in obj["days"]:
            if v["inlet_min_m3h"] is None:
                v["inlet_min_m3h"] = float("nan")
            out.days[(int(a), int(b))] = _Day(**v)
        out.districts = {int(k): _District(**v) for k, v in obj["districts"].items()}
        return out
