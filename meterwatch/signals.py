"""SIGINT and SIGTERM as a stop event, for the long-running commands (ingest, replay)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(
    stop: threading.Event, log: logging.Logger | None = None, what: str = "stopping"
) -> Iterator[None]:
    """Set ``stop`` on Ctrl-C or SIGTERM instead of raising, so work in hand ends cleanly.

    Handlers can only be installed from the main thread; elsewhere (a test, the demo) this does
    nothing and the caller's own ``stop`` is the only way out. Previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if log is not None:
            log.info("signal %d: %s", signum, what)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
