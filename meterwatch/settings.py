"""The one settings object. Every knob is a ``METERWATCH_*`` environment variable.

Edges (CLI, ingest, api, demo) build a :class:`Settings` once and pass the values they need down;
nothing deeper in the code reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET = 16  # characters; a shorter key would make feedback links guessable


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERWATCH_", env_file=".env", extra="ignore")

    # Services. Empty means "start an embedded one" (demo) or is an error (ingest, api).
    database_url: str = ""
    mqtt_url: str = ""

    # MQTT: a prefix lets several deployments or test runs share one broker without seeing each
    # other's topics ("" in production; "t-1234/" in a test run).
    topic_prefix: str = ""
    client_id: str = "meterwatch-ingest"
    shared_group: str = ""
    # How long the broker keeps ingest's session and queue while it is away (7 days).
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    receive_maximum: int = Field(default=20000, ge=1, le=65535)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)

    # Batching: a batch is written when it holds this many readings or has waited this long.
    batch_readings: int = Field(default=5000, ge=1)
    batch_interval_s: float = Field(default=0.25, gt=0)

    # Validation.
    auto_register: bool = True
    max_clock_skew_s: int = Field(default=86400, ge=0)
    default_register_max_m3: float = Field(default=100000.0, gt=0)
    default_q3_m3h: float = Field(default=2.5, gt=0)

    # Time series housekeeping. "auto" uses TimescaleDB when the server offers it.
    timescale: str = Field(default="auto", pattern="^(auto|on|off)$")
    timezone: str = "Asia/Shanghai"
    partition_days: int = Field(default=7, ge=1)
    # Readings and consumption older than this are dropped (whole partitions or chunks).
    retention_days: int = Field(default=7300, ge=1)
    compress_after_days: int = Field(default=30, ge=1)

    # Detectors: thresholds file (TOML, see detectors/config.py), how often the bank checkpoints.
    detectors: bool = True
    detector_config: Path | None = None
    detector_checkpoint_s: float = Field(default=60.0, gt=0)
    dma_lateness_h: float = Field(default=42.0, ge=0)

    # Notifications: routing, channels, SLA (TOML, see docs/notifications.md). The secret signs
    # the customers' feedback links; set it in production (an empty or short one signs none, see
    # ``signing_key``).
    notify_config: Path | None = None
    secret_key: SecretStr = SecretStr("")
    # The notifier's outbox: how many rows one dispatcher claims at once, how long a claim lasts
    # (a dead dispatcher's rows go out again after it), and the retry backoff.
    notify_batch: int = Field(default=100, ge=1)
    notify_lease_s: float = Field(default=60.0, gt=0)
    notify_backoff_s: float = Field(default=5.0, gt=0)
    notify_backoff_max_s: float = Field(default=60.0, gt=0)
    notify_give_up_h: float = Field(default=48.0, gt=0)

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)

    # Embedded services for the demo.
    data_dir: Path = Path(".meterwatch")

    log_level: str = "INFO"

    @property
    def signing_key(self) -> str:
        """The key feedback links are signed and checked with: ``secret_key``, or "" (no links,
        none accepted) when it is shorter than ``MIN_SECRET``. Ingest, the notifier's callers in
        the API and the feedback pages all take it from here, so they cannot disagree."""
        key = self.secret_key.get_secret_value()
        return key if len(key) >= MIN_SECRET else ""

    @field_validator("detector_config", "notify_config", mode="before")
    @classmethod
    def _empty_path_is_none(cls, v: object) -> object:
        # Compose passes unset file settings as "" (``${NAME:-}``); that means "no file".
        return None if v == "" else v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, v: str) -> str:
        if v and not v.endswith("/"):
            v += "/"
        if any(c in v for c in "+#"):
            raise ValueError("topic_prefix must not contain MQTT wildcards")
        return v
