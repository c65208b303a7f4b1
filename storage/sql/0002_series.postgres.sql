-- Time series on plain PostgreSQL: native range partitions (created ahead of the data by
-- storage.partitions) and rollup tables that the ingest path keeps up to date.

CREATE TABLE IF NOT EXISTS readings (
    meter_id     text NOT NULL,
    ts           timestamptz NOT NULL,
    register_m3  double precision NOT NULL,
    flow_lph     real,
    battery_pct  real,
    rssi_dbm     real,
    flags        text[] NOT NULL DEFAULT '{}',
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, ts)
) PARTITION BY RANGE (ts);

-- Register differences split at hour boundaries (see meterwatch.consumption).
CREATE TABLE IF NOT EXISTS consumption (
    meter_id   text NOT NULL,
    ts         timestamptz NOT NULL,
    ts_end     timestamptz NOT NULL,
    volume_m3  double precision NOT NULL,
    kind       text NOT NULL,
    PRIMARY KEY (meter_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS usage_hourly (
    meter_id    text NOT NULL,
    hour        timestamptz NOT NULL,
    volume_m3   double precision NOT NULL,
    reverse_m3  double precision NOT NULL,
    covered_s   double precision NOT NULL,
    PRIMARY KEY (meter_id, hour)
) PARTITION BY RANGE (hour);

CREATE TABLE IF NOT EXISTS usage_daily (
    meter_id    text NOT NULL,
    day         timestamptz NOT NULL,
    volume_m3   double precision NOT NULL,
    reverse_m3  double precision NOT NULL,
    covered_s   double precision NOT NULL,
    PRIMARY KEY (meter_id, day)
);
