"""A receiver down for ten minutes, in real time: nothing lost, nothing twice, nobody delayed.

    python -m bench.notify_outage                     # 10 minutes down, this machine's PostgreSQL
    python -m bench.notify_outage --down-min 2        # a shorter run

Burst alerts are raised at a steady pace (one every ``--every-s`` seconds) and routed to two
webhook receivers. One is stopped for ``--down-min`` minutes (connection refused) and started
again on the same port. The dispatcher runs as in production (``Dispatcher.run``, the wall clock,
the default backoff of 5 s doubling to a minute). Printed: latency from enqueue to delivery on the
healthy channel before and during the outage (same run, the baseline), and for the receiver that
was down: notifications delivered, duplicates by idempotency key, tries, and how long after its
return the backlog was gone.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from detectors.alert import Alert, Severity
from notify.channels import ChannelContext
from notify.config import NotifyConfig
from notify.dispatcher import DispatchConfig, Dispatcher
from notify.service import build_channels, serve_until
from storage.db import connect
from storage.migrate import migrate
from tests.helpers import count, queue_alerts, wait_until
from tests.receivers import HttpReceiver

SECRET = "bench-secret"


def produce(db_url: str, config: NotifyConfig, stop: threading.Event, every_s: float) -> int:
    """One new burst alert every ``every_s`` seconds until ``stop``; the number raised."""
    n = 0
    while not stop.is_set():
        t = datetime.now(UTC)
        alert = Alert(f"WH-OUT{n:05d}", "burst", Severity.CRITICAL, t, t, {"flow_lph": 900.0})
        queue_alerts(db_url, config, [alert], secret=SECRET, tenant="acme")
        n += 1
        stop.wait(every_s)
    return n


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def latencies(db_url: str, channel: str, since: datetime, until: datetime) -> list[float]:
    with connect(db_url) as conn:
        rows = conn.execute(
            """SELECT extract(epoch FROM sent_at - created_at) FROM outbox
               WHERE channel = %s AND created_at >= %s AND created_at < %s AND status = 'sent'""",
            (channel, since, until),
        ).fetchall()
    return [float(r[0]) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--down-min", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=30.0)
    p.add_argument("--every-s", type=float, default=3.0)
    opts = p.parse_args()

    name = f"mw_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(opts.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db_url = psycopg.conninfo.make_conninfo(opts.database_url, dbname=name)
    healthy = HttpReceiver("webhook", secret=SECRET).start()
    flaky = HttpReceiver("webhook", secret=SECRET).start()
    try:
        with connect(db_url) as conn:
            migrate(conn, timescale="off")
        config = NotifyConfig.model_validate(
            {
                "channels": {
                    "healthy": {"kind": "webhook", "url": healthy.url, "secret": SECRET},
                    "flaky": {"kind": "webhook", "url": flaky.url, "secret": SECRET},
                },
                "rules": [{"name": "duty", "audience": "staff", "channels": ["healthy", "flaky"]}],
            }
        )
        channels = build_channels(config, ChannelContext(database_url=db_url))
        dispatcher = Dispatcher(db_url, channels, DispatchConfig())
        stop_dispatch, stop_produce = threading.Event(), threading.Event()
        sender = threading.Thread(target=serve_until, args=(dispatcher, stop_dispatch))
        sender.start()
        raised: list[int] = []
        producer = threading.Thread(
            target=lambda: raised.append(produce(db_url, config, stop_produce, opts.every_s))
        )
        producer.start()

        t_start = datetime.now(UTC)
        time.sleep(opts.warmup_s)
        t_down = datetime.now(UTC)
        flaky.stop()
        print(f"receiver 'flaky' down at {t_down:%H:%M:%S} for {opts.down_min:g} min", flush=True)
        time.sleep(opts.down_min * 60)
        flaky.start()
        t_up = datetime.now(UTC)
        print(f"receiver 'flaky' back at {t_up:%H:%M:%S}", flush=True)
        time.sleep(opts.warmup_s)
        stop_produce.set()
        producer.join()
        total = raised[0]
        unsent = "SELECT count(*) FROM outbox WHERE status <> 'sent'"
        wait_until(lambda: count(db_url, unsent) == 0, 15 * 60, every=1)
        t_done = datetime.now(UTC)
        stop_dispatch.set()
        sender.join(60)

        with connect(db_url) as conn:
            status = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY 1").fetchall())
            tries = conn.execute(
                """SELECT count(*) FILTER (WHERE NOT d.ok), count(*) FILTER (WHERE d.ok),
                          max(d.at) FILTER (WHERE d.ok)
                   FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
                   WHERE o.channel = 'flaky'"""
            ).fetchone()
        assert tries is not None
        before = latencies(db_url, "healthy", t_start, t_down)
        during = latencies(db_url, "healthy", t_down, t_up)
        keys = flaky.keys()
        print(f"notify outage ({opts.down_min:g} min down, one alert every {opts.every_s:g} s, "
              f"{total} alerts, 2 channels)")  # fmt: skip
        print(f"  outbox: {status}")
        for label, lat in (("before the outage", before), ("during the outage", during)):
            p50, p99 = percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000
            print(f"  healthy channel, enqueue -> delivered, {label:17}: p50 {p50:.0f} ms, "
                  f"p99 {p99:.0f} ms ({len(lat)} notifications)")  # fmt: skip
        ratio = percentile(during, 0.99) / percentile(before, 0.99)
        print(f"  healthy p99 during / before: {ratio:.2f}")
        print(f"  flaky channel: {len(set(keys))} of {total} delivered, "
              f"{len(keys) - len(set(keys))} duplicates by idempotency key, "
              f"{tries[0]} failed tries, {tries[1]} successful")  # fmt: skip
        if tries[2] is not None:
            gone = (tries[2] - t_up).total_seconds()
            cap = DispatchConfig().backoff_max_s
            print(f"  flaky backlog gone {gone:.0f} s after the receiver came back "
                  f"(backoff cap {cap:g} s)")  # fmt: skip
        print(f"  run {(t_done - t_start).total_seconds():.0f} s")
    finally:
        healthy.stop()
        flaky.stop()
        with psycopg.connect(opts.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main()
