"""``meterwatch simulate``: a basic fleet or a scenario, published over MQTT or written to files."""

from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterwatch.domain import Meter
from meterwatch.mqtt import BrokerAddress
from meterwatch.settings import Settings


def _register(settings: Settings, meters: list[Meter]) -> None:
    """Put the fleet in the registry first, so ingest knows kinds, sizes and register ranges."""
    if not settings.database_url:
        return
    from storage.db import connect
    from storage.registry import upsert_meters

    with connect(settings.database_url) as conn:
        upsert_meters(conn, meters)


def run_scenario(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from simulators.output import summary, write_simulation
    from simulators.scenario import Scenario, simulate

    scn = Scenario.load(args.scenario)
    if args.seed is not None:
        scn = dataclasses.replace(scn, seed=args.seed)
    t0 = time.perf_counter()
    sim = simulate(scn)
    generate_s = time.perf_counter() - t0
    out: dict[str, Any] = summary(sim)
    out["generate_s"] = round(generate_s, 3)
    out["readings_per_s"] = round(out["readings"] / generate_s) if generate_s > 0 else None
    if args.out:
        t1 = time.perf_counter()
        paths = write_simulation(sim, Path(args.out))
        out["write_s"] = round(time.perf_counter() - t1, 3)
        out["files"] = {k: str(v) for k, v in paths.__dict__.items()}
        return out
    from simulators.replay import replay

    _register(settings, sim.meters)
    res = replay(
        sim.recording, address=BrokerAddress.parse(settings.mqtt_url),
        prefix=settings.topic_prefix, speed=args.speed,
    )  # fmt: skip
    out["published"] = {"readings": res.readings, "messages": res.messages,
                        "elapsed_s": round(res.elapsed_s, 3)}  # fmt: skip
    return out


def run_basic(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from simulators.fleet import generate, make_fleet
    from simulators.publish import meters_csv, publish_fleet

    seed = 1 if args.seed is None else args.seed
    fleet = make_fleet(args.meters, seed=seed, interval_min=args.interval_min)
    if args.registry_out:
        Path(args.registry_out).write_text(meters_csv(fleet), encoding="utf-8")
    _register(settings, fleet)
    start = args.start or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    series = generate(fleet, start=start, days=args.days, interval_min=args.interval_min, seed=seed)
    res = publish_fleet(
        series, fleet, address=BrokerAddress.parse(settings.mqtt_url),
        prefix=settings.topic_prefix, speed=args.speed,
        readings_per_message=args.readings_per_message,
    )  # fmt: skip
    rate = res.readings / res.elapsed_s if res.elapsed_s > 0 else 0.0
    return {"readings": res.readings, "messages": res.messages, "elapsed_s": res.elapsed_s,
            "readings_per_s": round(rate, 1)}  # fmt: skip


def run_simulate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.scenario:
        return run_scenario(args, settings)
    if args.out:
        raise ValueError("--out needs --scenario (a basic fleet is only published)")
    return run_basic(args, settings)
