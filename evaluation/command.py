"""``meterwatch evaluate``: alerts (an offline run's stream, or the alert store) against labels.

Every input has a file form and a database form, so a detector can be scored offline straight after
``simulate --out`` and a live deployment can be scored on what it stored: alerts from ``--alerts``
or table ``alerts``; meter-days from ``--meter-days``, the recording, or ``usage_daily``; the
report's plots from the recording or ``usage_hourly``. The heavy imports (psycopg, numpy, the
stores) wait until the command runs, so declaring its arguments costs the rest of the CLI nothing.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from evaluation.episodes import Episode
    from evaluation.scores import Scores
    from evaluation.series import Series
    from meterwatch.settings import Settings

log = logging.getLogger("meterwatch.evaluate")


def read_episodes(conn: psycopg.Connection[Any]) -> list[Episode]:
    """The alert store's rows: it folds alerts into episodes itself, one row each.

    A row resolved by staff rather than by a clear still counts as ended then.
    """
    from detectors.alert import Severity
    from evaluation.episodes import Episode
    from storage.alerts import read_alerts

    return [
        Episode(
            a.meter_id,
            a.type,
            Severity(a.severity),
            a.started_at,
            a.detected_at,
            a.last_seen_at,
            a.resolved_at,
        )
        for a in read_alerts(conn)
    ]


def db_meter_days(conn: psycopg.Connection[Any]) -> float:
    """One ``usage_daily`` row is one meter observed on one day."""
    row = conn.execute("SELECT count(*) FROM usage_daily").fetchone()
    return float(row[0]) if row else 0.0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels", required=True, metavar="FILE",
        help="ground truth, NAME.labels.jsonl of simulate",
    )  # fmt: skip
    p.add_argument(
        "--alerts", metavar="STREAM.jsonl",
        help="alert stream, JSON Lines (default: the database's alerts table)",
    )  # fmt: skip
    p.add_argument(
        "--recording", metavar="F.parquet",
        help="the scenario's recording (.parquet): meter-days and report plots",
    )  # fmt: skip
    p.add_argument(
        "--meter-days", type=float, metavar="N",
        help="observed meter-days for false-alert rates (default: from the recording or database)",
    )  # fmt: skip
    p.add_argument(
        "--report", metavar="DIR",
        help="write scores.json, report.md and cases.png into this folder",
    )  # fmt: skip


def run_evaluate(args: argparse.Namespace, settings: Settings) -> Scores:
    """Score and, with ``--report``, write the report; a database is opened only when needed."""
    from evaluation.episodes import episodes, read_alert_stream
    from evaluation.report import write_report
    from evaluation.scores import score
    from evaluation.series import recording_meter_days, series_from_db, series_from_recording
    from simulators.labels import read_labels
    from storage.db import connect

    labels = read_labels(args.labels)
    with ExitStack() as stack:
        conns: list[psycopg.Connection[Any]] = []

        def db() -> psycopg.Connection[Any]:
            if not conns:
                conns.append(stack.enter_context(connect(settings.database_url)))
            return conns[0]

        eps = episodes(read_alert_stream(args.alerts)) if args.alerts else read_episodes(db())
        if args.meter_days is not None:
            meter_days = float(args.meter_days)
        elif args.recording:
            meter_days = recording_meter_days(args.recording)
        elif settings.database_url:
            meter_days = db_meter_days(db())
        else:
            log.warning("meter-days unknown (no --meter-days, --recording or database)")
            meter_days = 0.0
        scores = score(eps, labels, meter_days=meter_days)
        if args.report:
            if not args.recording and not settings.database_url:
                raise ValueError("--report needs --recording or a database for the meters' use")
            series: Series = (
                series_from_recording(args.recording) if args.recording else series_from_db(db())
            )
            paths = write_report(scores, scores.matching.outcomes, Path(args.report), series)
            log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return scores


def evaluate_text(scores: Scores) -> str:
    return f"{scores.table_markdown()}\n\n{scores.noise_markdown()}"
