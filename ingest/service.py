"""``meterwatch ingest`` as a service: settings in, signals handled, progress logged."""

from __future__ import annotations

import logging
import threading
import time

from detectors.config import FleetSettings, ThresholdBook
from ingest.consumer import Ingest, IngestConfig, IngestStats
from ingest.detection import Detection, DetectionConfig
from meterwatch.mqtt import BrokerAddress
from meterwatch.settings import MIN_SECRET, Settings
from meterwatch.signals import stop_on_signals
from notify.config import NotifyConfig
from notify.scheduler import Notifier
from storage.writer import BatchResult

log = logging.getLogger(__name__)


def config_from(settings: Settings) -> IngestConfig:
    return IngestConfig(
        database_url=settings.database_url,
        broker=BrokerAddress.parse(settings.mqtt_url),
        prefix=settings.topic_prefix,
        client_id=settings.client_id,
        shared_group=settings.shared_group,
        session_expiry_s=settings.session_expiry_s,
        receive_maximum=settings.receive_maximum,
        batch_readings=settings.batch_readings,
        batch_interval_s=settings.batch_interval_s,
        max_payload_bytes=settings.max_payload_bytes,
        max_clock_skew_s=settings.max_clock_skew_s,
        auto_register=settings.auto_register,
        default_register_max_m3=settings.default_register_max_m3,
        default_q3_m3h=settings.default_q3_m3h,
        retention_days=settings.retention_days,
    )


class ProgressLog:
    """Logs throughput at most every ``every_s`` seconds, from the batch callback."""

    def __init__(self, stats: IngestStats, every_s: float = 10.0) -> None:
        self.stats = stats
        self.every_s = every_s
        self._last = time.monotonic()
        self._last_readings = 0

    def __call__(self, _res: BatchResult) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        s = self.stats
        rate = (s.readings - self._last_readings) / (now - self._last)
        log.info(
            "%d messages, %d readings (%d new, %d duplicate), %d dead letters; %.0f readings/s",
            s.messages, s.readings, s.inserted, s.duplicates, s.dead_letters, rate,
        )  # fmt: skip
        self._last, self._last_readings = now, s.readings


def notifier_from(settings: Settings) -> Notifier:
    config = NotifyConfig.load(settings.notify_config)
    key = settings.signing_key
    if any(r.audience == "customer" for r in config.rules) and not key:
        log.warning(
            "customer reminders go out without feedback links: METERWATCH_SECRET_KEY is %s "
            "(at least %d characters signs them)",
            "too short" if settings.secret_key.get_secret_value() else "empty", MIN_SECRET,
        )  # fmt: skip
    return Notifier(config, key)


def detection_from(settings: Settings) -> Detection | None:
    if not settings.detectors:
        return None
    detection = Detection(
        DetectionConfig(
            database_url=settings.database_url,
            thresholds=ThresholdBook.load(settings.detector_config),
            fleet=FleetSettings(dma_lateness_h=settings.dma_lateness_h),
            checkpoint_interval_s=settings.detector_checkpoint_s,
            timezone=settings.timezone,
        ),
        notifier=notifier_from(settings),
    )
    detection.start()
    return detection


def run(settings: Settings) -> IngestStats:
    ingest = Ingest(config_from(settings), detection=detection_from(settings))
    ingest.on_batch = ProgressLog(ingest.stats)
    stop = threading.Event()
    log.info("ingest: %s -> database; batches of %d", settings.mqtt_url, settings.batch_readings)
    with stop_on_signals(stop, log, "flushing and stopping"):
        return ingest.run(stop)
