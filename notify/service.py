"""``meterwatch notify``: the dispatcher as a service, channels built from the notify config."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping

from meterwatch.settings import Settings
from meterwatch.signals import stop_on_signals
from notify.channels import Channel, ChannelContext, build_channel
from notify.channels.base import NO_CONTEXT
from notify.config import NotifyConfig
from notify.dispatcher import DispatchConfig, Dispatcher, DispatchStats

log = logging.getLogger(__name__)


def dispatch_config(settings: Settings) -> DispatchConfig:
    return DispatchConfig(
        batch=settings.notify_batch,
        lease_s=settings.notify_lease_s,
        backoff_s=settings.notify_backoff_s,
        backoff_max_s=settings.notify_backoff_max_s,
        give_up_h=settings.notify_give_up_h,
    )


def channel_context(settings: Settings) -> ChannelContext:
    return ChannelContext(
        database_url=settings.database_url,
        mqtt_url=settings.mqtt_url,
        topic_prefix=settings.topic_prefix,
    )


def build_channels(
    config: NotifyConfig, context: ChannelContext = NO_CONTEXT
) -> dict[str, Channel]:
    """Every channel the config names, built with the process-wide defaults of ``context``."""
    return {name: build_channel(name, spec, context) for name, spec in config.channels.items()}


def dispatcher_from(
    settings: Settings, channels: Mapping[str, Channel] | None = None
) -> Dispatcher:
    if not settings.database_url:
        raise ValueError("no database URL (set METERWATCH_DATABASE_URL or pass --database-url)")
    if channels is None:
        config = NotifyConfig.load(settings.notify_config)
        channels = build_channels(config, channel_context(settings))
    return Dispatcher(settings.database_url, channels, dispatch_config(settings))


async def serve(dispatcher: Dispatcher, stop: asyncio.Event) -> DispatchStats:
    orphans = await dispatcher.mark_orphans()
    if orphans:
        log.warning("%d pending notifications name channels no longer configured: dead", orphans)
    log.info("notifier: channels %s", ", ".join(sorted(dispatcher.channels)) or "(none)")
    return await dispatcher.run(stop)


def serve_until(dispatcher: Dispatcher, stop: threading.Event) -> DispatchStats:
    """Dispatch on an event loop of this thread until ``stop`` is set (from any thread)."""

    async def main() -> DispatchStats:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        waiter = loop.run_in_executor(None, stop.wait)
        waiter.add_done_callback(lambda _f: loop.call_soon_threadsafe(done.set))
        try:
            return await serve(dispatcher, done)
        finally:
            stop.set()

    return asyncio.run(main())


def run(settings: Settings) -> DispatchStats:
    """Dispatch until SIGINT/SIGTERM."""
    dispatcher = dispatcher_from(settings)
    stop = threading.Event()
    with stop_on_signals(stop, log, "finishing sends in hand and stopping"):
        return serve_until(dispatcher, stop)
