"""Detectors at the ingest edge: run the bank on each committed batch, store what it says.

The bank is pure; this module owns its I/O. On start it loads the meter registry and the last
checkpoint (per-meter state and the global watermark/DMA/fleet state) so a restarted or different
worker carries on where the last one stopped. Alerts are written after the batch's readings
commit; if that write fails they stay queued and go with the next batch, and the broker message
is acknowledged only after the alerts of its batch are stored, so a crash before that redelivers
the batch and the bank (restored from its checkpoint) sees it again.

The notifier rides in the same transaction as the alerts: the outbox rows of what changed, and
whatever the advancing event clock made due (escalations, auto-resolutions, held reminders).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from detectors.alert import Alert, utc
from detectors.bank import Monitor
from detectors.config import FleetSettings, ThresholdBook
from notify.scheduler import Notifier
from storage.alerts import apply_alerts, load_meta, load_states, save_meta, save_states
from storage.db import connect
from storage.history import day_profiles, latest_reading_at
from storage.registry import load_meters
from storage.writer import Message

log = logging.getLogger(__name__)
# The notifier's scheduler runs when event time has moved on by this much: deadlines are kept to
# the minute, and a replay at full speed does not run it for every batch.
TICK_S = 60
META_KEYS = ("watermark", "batch_watermark", "dma", "fleet")


@dataclass(frozen=True)
class DetectionConfig:
    database_url: str
    thresholds: ThresholdBook
    fleet: FleetSettings
    checkpoint_interval_s: float = 60.0
    registry_refresh_s: float = 60.0
    timezone: str = "Asia/Shanghai"  # local days of the stored history the fleet model learns
    history_days: int = 16


class Detection:
    def __init__(self, config: DetectionConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier
        self._ticked = -1  # event time the notifier last ran at
        self.monitor = Monitor(thresholds=config.thresholds, fleet=config.fleet)
        self.pending: list[Alert] = []
        self._conn: psycopg.Connection[Any] | None = None
        self._next_checkpoint = time.monotonic() + config.checkpoint_interval_s
        self._next_registry = 0.0

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config.database_url, autocommit=True)
        return self._conn

    def start(self) -> None:
        """Registry and checkpoint from the database."""
        conn = self._db()
        self.monitor.add_meters(load_meters(conn))
        used = self.monitor.restore(load_states(conn))
        meta = {k: v for k in META_KEYS if (v := load_meta(conn, k)) is not None}
        self.monitor.restore_global(meta)
        if "fleet" not in meta:
            self._seed_fleet_model(conn)
        self._next_registry = time.monotonic() + self.config.registry_refresh_s
        log.info("detectors: %d meters, %d resumed from checkpoint", len(self.monitor), used)

    def _seed_fleet_model(self, conn: psycopg.Connection[Any]) -> None:
        """Train the fleet-outlier model from stored days when there is no checkpoint of it."""
        fleet = self.monitor.fleet
        if fleet is None:
            return
        until = latest_reading_at(conn)
        if until is None:
            return
        ids, days, profiles = day_profiles(
            conn, since=until - timedelta(days=self.config.history_days), until=until,
            timezone=self.config.timezone,
        )  # fmt: skip
        if ids:
            fleet.seed_history(self.monitor.params["kind"][self.monitor.index(ids)], days, profiles)
            log.info("fleet model: %d stored meter-days", len(ids))

    def process(self, messages: list[Message]) -> None:
        """Run the bank on a committed batch; its alerts wait for :meth:`flush`."""
        now = time.monotonic()
        if now >= self._next_registry:
            try:
                self.monitor.add_meters(load_meters(self._db()))
                self._next_registry = now + self.config.registry_refresh_s
            except psycopg.OperationalError as e:
                log.warning("registry refresh failed (%s); using the known registry", e)
                self.close()
        readings = [m.decoded.readings for m in messages if m.decoded.readings]
        alerts = self.monitor.observe_messages(readings)
        self.pending.extend(alerts)

    def flush(self, *, checkpoint: bool | None = None) -> None:
        """Store pending alerts (and, when due, the checkpoint) in one transaction."""
        if checkpoint is None:
            checkpoint = time.monotonic() >= self._next_checkpoint
        clock = max(self.monitor.watermark, self.monitor.batch_watermark)
        tick_due = self.notifier is not None and clock >= self._ticked + TICK_S
        if not (self.pending or tick_due or checkpoint):
            return  # nothing to write: no empty transaction per batch
        try:
            conn = self._db()
            with conn.transaction():
                if self.pending:
                    changes = apply_alerts(conn, self.pending, reopen_within=self._reopen_within)
                    if self.notifier is not None:
                        known = self.monitor.known_at([a.meter_id for a in self.pending])
                        self.notifier.after_alerts(
                            conn, changes, {m: utc(t) for m, t in known.items()}
                        )
                if self.notifier is not None and tick_due:
                    self.notifier.tick(conn, utc(clock))
                if checkpoint:
                    save_states(conn, self.monitor.checkpoint())
                    for key, value in self.monitor.global_state().items():
                        save_meta(conn, key, value)
        except psycopg.OperationalError:
            self.close()
            raise
        self.pending = []
        if tick_due:
            self._ticked = clock
        if checkpoint:
            self._next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s

    @property
    def _reopen_within(self) -> timedelta | None:
        if self.notifier is None:
            return None
        return timedelta(hours=self.notifier.config.reopen_within_h)

    def stop(self) -> None:
        """Final flush and checkpoint."""
        try:
            self.flush(checkpoint=True)
        except psycopg.Error as e:
            log.warning("detector checkpoint at stop failed (%s)", e)
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
