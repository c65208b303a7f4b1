"""Scenarios: a TOML file in, a fleet's recording and its ground truth out.

The stages run in this order, each with its own random stream derived from the scenario seed, so
the same file and seed give byte-identical outputs:

1. fleet: customers (residential, commercial, industrial) in tenants and DMAs, one bulk inlet
   meter per DMA, and each meter's upload mode (LoRa every interval, NB-IoT once a day);
2. profiles: each customer's normal use per interval (``simulators.profiles``);
3. faults: leaks, bursts, stuck and vacant meters, reverse flow, tamper, battery, silence,
   rollovers, replacements, network leaks, with labels (``simulators.faults``);
4. DMA inlets: the sum of the district's customers' true use plus background losses and any
   network leak; registers are the cumulative counted use, in whole litres, wrapped at the
   register's range;
5. reporting: what each meter sends and when (``simulators.reporting``), as a recording.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from meterwatch.domain import Meter, MeterKind
from meterwatch.holidays import DayType, day_type, holidays_in
from simulators import faults, profiles, reporting
from simulators.fleet import make_fleet
from simulators.grid import Grid, local_seconds
from simulators.labels import Label
from simulators.recording import Recording
from simulators.state import FleetState, new_state

# Random streams per stage: adding draws to one stage never shifts another's.
FLEET, PROFILES, FAULTS, INLETS, REPORTING, REGISTERS = 1, 2, 3, 4, 5, 6
# Standard bulk meter sizes: (dn_mm, q3_m3h), ISO 4064 R-series.
BULK_SIZES = ((50, 25.0), (65, 40.0), (80, 63.0), (100, 100.0), (125, 160.0), (150, 250.0),
              (200, 400.0), (250, 630.0), (300, 1000.0))  # fmt: skip
LORA, NBIOT = "lora", "nbiot"
NO_CONSUMPTION_DAYS = 7.0  # DESIGN.md: no_consumption is flagged after 7 days
MIN_LEAK_LPH = 5.0  # leaks below this are invisible on a 1 L register at 15 minutes
_SECTIONS = {"scenario", "fleet", "profiles", "faults", "reporting"}
_FLEET_KEYS = {"customers", "tenants", "dmas", "mix", "nbiot_share", "background_loss"}


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    start: datetime
    days: float
    interval_min: int
    customers: int
    tenants: int = 5
    dmas: int = 4
    mix: dict[MeterKind, float] = field(default_factory=dict)
    nbiot_share: float = 0.3
    background_loss: float = 0.06  # of the DMA's mean customer use, as a steady loss
    profiles: profiles.ProfileConfig = field(default_factory=lambda: profiles.ProfileConfig())
    faults: faults.FaultConfig = field(default_factory=lambda: faults.FaultConfig())
    reporting: reporting.ReportingConfig = field(
        default_factory=lambda: reporting.ReportingConfig()
    )

    @property
    def grid(self) -> Grid:
        steps = round(self.days * 1440 / self.interval_min) + 1
        return Grid(int(self.start.timestamp()), self.interval_min * 60, steps)

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> Scenario:
        unknown = set(data) - _SECTIONS
        if unknown:
            raise ValueError(f"unknown scenario sections {sorted(unknown)}")
        head = dict(data.get("scenario", {}))
        fleet = dict(data.get("fleet", {}))
        if set(fleet) - _FLEET_KEYS:
            raise ValueError(f"unknown [fleet] keys {sorted(set(fleet) - _FLEET_KEYS)}")
        try:
            start = head.pop("start")
            start = start if isinstance(start, datetime) else datetime.fromisoformat(str(start))
            if start.tzinfo is None:
                raise ValueError("[scenario] start needs a UTC offset")
            scn = cls(
                name=str(head.pop("name")),
                seed=int(head.pop("seed")),
                start=start,
                days=float(head.pop("days")),
                interval_min=int(head.pop("interval_min", 15)),
                customers=int(fleet.pop("customers")),
                tenants=int(fleet.pop("tenants", 5)),
                dmas=int(fleet.pop("dmas", 4)),
                mix={MeterKind(k): float(v) for k, v in fleet.pop("mix", {}).items()},
                nbiot_share=float(fleet.pop("nbiot_share", 0.3)),
                background_loss=float(fleet.pop("background_loss", 0.06)),
                profiles=profiles.ProfileConfig.from_toml(data.get("profiles", {})),
                faults=faults.FaultConfig.from_toml(data.get("faults", {})),
                reporting=reporting.ReportingConfig.from_toml(data.get("reporting", {})),
            )
        except KeyError as e:
            raise ValueError(f"scenario is missing {e.args[0]!r}") from None
        if head:
            raise ValueError(f"unknown [scenario] keys {sorted(head)}")
        if scn.days <= 0 or scn.customers < 1 or not 1 <= scn.interval_min <= 1440:
            raise ValueError("days > 0, customers >= 1 and 1 <= interval_min <= 1440 required")
        return scn

    @classmethod
    def load(cls, name_or_path: str | Path) -> Scenario:
        """A shipped scenario by name (``small``, ``city``, ...) or a TOML file by path."""
        path = Path(name_or_path)
        if path.suffix == ".toml" or path.is_file():
            text = path.read_text(encoding="utf-8")
        else:
            entry = resources.files("simulators").joinpath("scenarios", f"{name_or_path}.toml")
            if not entry.is_file():
                raise ValueError(f"no scenario {str(name_or_path)!r}; shipped: {shipped()}")
            text = entry.read_text(encoding="utf-8")
        return cls.from_toml(tomllib.loads(text))


def shipped() -> list[str]:
    folder = resources.files("simulators").joinpath("scenarios")
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


@dataclass(eq=False)
class Simulation:
    scenario: Scenario
    meters: list[Meter]
    modes: list[str]
    grid: Grid
    state: FleetState
    register_m3: NDArray[np.float64]
    recording: Recording
    labels: list[Label]


def _rng(scn: Scenario, stage: int) -> np.random.Generator:
    return np.random.default_rng([scn.seed, stage])


NBIOT_UPLOAD_S = 86400


def build_fleet(scn: Scenario) -> tuple[list[Meter], list[str]]:
    """Customers from the basic fleet model plus one bulk inlet meter per DMA (sized later)."""
    customers = make_fleet(
        scn.customers, seed=scn.seed, tenants=scn.tenants, dmas=scn.dmas,
        interval_min=scn.interval_min, mix=scn.mix or None,
    )  # fmt: skip
    dmas = sorted({m.dma for m in customers if m.dma})
    inlets = [
        Meter(
            meter_id=f"{dma}-INLET",
            tenant="utility",
            dma=dma,
            kind=MeterKind.BULK,
            dn_mm=100,
            q3_m3h=100.0,
            timezone=customers[0].timezone,
            install_date=date(2016, 1, 1),
            register_max_m3=10_000_000.0,
            expected_interval_s=scn.interval_min * 60,
        )
        for dma in dmas
    ]
    rng = _rng(scn, FLEET)
    nbiot = rng.random(len(customers)) < scn.nbiot_share
    modes = [NBIOT if b else LORA for b in nbiot] + [LORA] * len(inlets)
    # The registry says how often a meter uploads: NB-IoT meters send once a day.
    customers = [
        m._replace(expected_interval_s=NBIOT_UPLOAD_S) if b else m
        for m, b in zip(customers, nbiot, strict=True)
    ]
    return customers + inlets, modes


def _initial_registers(
    meters: list[Meter], use: NDArray[np.float64], scn: Scenario
) -> NDArray[np.float64]:
    """Register at the start: the meter's age times its mean daily use, within half its range."""
    days = max(scn.days, 1e-9)
    daily = use.sum(axis=1) / days
    age = np.array(
        [((scn.start.date() - (m.install_date or scn.start.date())).days) for m in meters],
        dtype=np.float64,
    )
    limit = np.array([m.register_max_m3 for m in meters]) * 0.5
    rng = _rng(scn, REGISTERS)
    initial: NDArray[np.float64] = np.minimum(
        daily * np.maximum(age, 0) * rng.uniform(0.8, 1.2, len(meters)), limit
    )
    return initial


def _fill_inlets(meters: list[Meter], state: FleetState, grid: Grid, scn: Scenario) -> list[Meter]:
    """Inlet use = customers' true use + steady background losses + network leaks; size meters."""
    rng = _rng(scn, INLETS)
    out = list(meters)
    dma_of = np.array([m.dma or "" for m in meters])
    hours = grid.interval_s / 3600.0
    for i, m in enumerate(meters):
        if m.kind != MeterKind.BULK:
            continue
        members = (dma_of == m.dma) & np.array([x.kind != MeterKind.BULK for x in meters])
        customers = state.use[members].sum(axis=0)
        background = scn.background_loss * customers[1:].mean() if grid.steps > 1 else 0.0
        noise = rng.normal(1.0, 0.05, grid.steps).clip(0.8, 1.2)
        inflow = customers + background * noise + state.network_loss.get(m.dma or "", 0.0)
        inflow[0] = 0.0
        state.use[i] = inflow
        peak_m3h = float(inflow.max()) / hours
        dn, q3 = next(((d, q) for d, q in BULK_SIZES if q >= 1.5 * peak_m3h), BULK_SIZES[-1])
        out[i] = m._replace(dn_mm=dn, q3_m3h=q3)
    return out


def registers(
    meters: list[Meter], state: FleetState
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Registers (whole litres, wrapped at the register's range) and counted use per interval."""
    counted = np.where(state.measured, state.use, 0.0)
    cum = np.cumsum(counted, axis=1)
    reg = state.initial_register_m3[:, None] + cum
    for m in np.flatnonzero(state.replaced_at >= 0):
        r = int(state.replaced_at[m])
        reg[m, r:] = cum[m, r:] - cum[m, r]  # the new meter reads 0 at its first column
    reg = np.floor(reg * 1000.0 + 1e-6) / 1000.0
    reg = np.mod(reg, np.array([m.register_max_m3 for m in meters])[:, None])
    return reg, counted


def simulate(scn: Scenario) -> Simulation:
    meters, modes = build_fleet(scn)
    grid = scn.grid
    state = new_state(len(meters), grid.steps)
    prof = profiles.simulate(meters, grid, _rng(scn, PROFILES), scn.profiles)
    state.use[:] = prof.use
    state.initial_register_m3[:] = _initial_registers(meters, state.use, scn)
    labels = faults.inject(state, meters, grid, _rng(scn, FAULTS), scn.faults)
    meters = _fill_inlets(meters, state, grid, scn)
    reg, counted = registers(meters, state)
    flow_lph = counted * (1000.0 * 3600.0 / grid.interval_s)
    recording, noise = reporting.messages(
        [m.meter_id for m in meters], modes, grid, reg, flow_lph, state,
        _rng(scn, REPORTING), scn.reporting,
    )  # fmt: skip
    recording.meta.update(
        {"scenario": scn.name, "seed": str(scn.seed), "interval_s": str(grid.interval_s)}
    )
    end = datetime.fromtimestamp(grid.end_s, UTC)
    holidays = [
        Label(
            "*",
            "holiday",
            start.isoformat(),
            (start + timedelta(days=1)).isoformat(),
            False,
            {"name": name},
        )
        for day, name in holidays_in(scn.start.date(), end.date())
        for start in [datetime.combine(day, datetime.min.time(), scn.start.tzinfo).astimezone(UTC)]
    ]
    derived = behaviour_labels(meters, grid, reg, prof.drip_lph, labels)
    labels = labels + derived + noise + holidays
    return Simulation(scn, meters, modes, grid, state, reg, recording, labels)


def behaviour_labels(
    meters: list[Meter],
    grid: Grid,
    reg: NDArray[np.float64],
    drip_lph: NDArray[np.float64],
    faults_labels: list[Label],
) -> list[Label]:
    """Ground truth for what normal behaviour alone produces, read off the final arrays (``reg``:
    the registers, meters x columns).

    A home empty for a week or more shows no consumption, an alert the utility wants (vacant or
    stuck); a dripping tap at a leak's rate is a leak, and a slower one is labelled as noise.
    """
    # A register that stands still for a week is a vacancy whatever else happens to the meter
    # (a low battery, a tamper flag, a burst on another day), except while the meter is silent
    # (nobody can see it stand still) or stuck by an injected fault (labelled as that fault).
    taken = {
        x.meter_id
        for x in faults_labels
        if x.meter_id != "*" and x.expect_alert and x.type in ("silent", "no_consumption")
    }
    week = round(NO_CONSUMPTION_DAYS * 86400 / grid.interval_s)
    # Homes empty over a public holiday are travelling, not vacant: holiday days do not count
    # towards the week (Spring Festival alone empties a third of a city's homes).
    zone = meters[0].timezone if meters else "UTC"
    local_days = (local_seconds(grid.ts, zone) // 86400).astype("datetime64[D]")
    workday_col = day_type(local_days) < DayType.HOLIDAY
    out: list[Label] = []
    for i, m in enumerate(meters):
        if m.kind == MeterKind.BULK or m.meter_id in taken:
            continue
        if drip_lph[i] > 0:
            leak = bool(drip_lph[i] >= MIN_LEAK_LPH)
            params = {"rate_lph": round(float(drip_lph[i]), 2), "cause": "drip"}
            kind = "leak" if leak else "drip"
            out.append(Label(m.meter_id, kind, grid.iso(0), None, leak, params))
        # "No consumption" is what the meter shows: a register that does not move. Use below a
        # litre in an interval moves the true count but not the register, so the registers decide.
        zero = np.concatenate(([False], reg[i, 1:] == reg[i, :-1], [False]))
        edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
        for lo, hi in zip(edges[::2], edges[1::2], strict=True):
            if np.count_nonzero(workday_col[lo:hi]) >= week:
                end = None if hi >= grid.steps else grid.iso(int(hi))
                days = round(float(hi - lo) * grid.interval_s / 86400, 2)
                params = {"cause": "vacant_home", "days": days}
                out.append(
                    Label(m.meter_id, "no_consumption", grid.iso(int(lo)), end, True, params)
                )
    return out
