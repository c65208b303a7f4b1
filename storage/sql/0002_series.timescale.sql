-- Time series on TimescaleDB: hypertables, compression, retention and continuous aggregates.
-- Same tables and columns as 0002_series.postgres.sql, so every query is shared.
-- {partition_days}, {compress_after_days}, {retention_days} and {timezone} are filled in at migrate.

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
);
SELECT create_hypertable('readings', by_range('ts', INTERVAL '{partition_days} days'),
                         if_not_exists => true);
ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'meter_id',
                          timescaledb.compress_orderby = 'ts');
SELECT add_compression_policy('readings', INTERVAL '{compress_after_days} days', if_not_exists => true);
SELECT add_retention_policy('readings', INTERVAL '{retention_days} days', if_not_exists => true);

CREATE TABLE IF NOT EXISTS consumption (
    meter_id   text NOT NULL,
    ts         timestamptz NOT NULL,
    ts_end     timestamptz NOT NULL,
    volume_m3  double precision NOT NULL,
    kind       text NOT NULL,
    PRIMARY KEY (meter_id, ts)
);
SELECT create_hypertable('consumption', by_range('ts', INTERVAL '{partition_days} days'),
                         if_not_exists => true);
ALTER TABLE consumption SET (timescaledb.compress, timescaledb.compress_segmentby = 'meter_id',
                             timescaledb.compress_orderby = 'ts');
SELECT add_compression_policy('consumption', INTERVAL '{compress_after_days} days', if_not_exists => true);
SELECT add_retention_policy('consumption', INTERVAL '{retention_days} days', if_not_exists => true);

-- covered_s is cast because extract() gives numeric; readers get double precision on both flavours.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT meter_id,
       time_bucket(INTERVAL '1 hour', ts) AS hour,
       sum(volume_m3) AS volume_m3,
       sum(CASE WHEN kind = 'reverse' THEN -volume_m3 ELSE 0 END) AS reverse_m3,
       sum(extract(epoch FROM ts_end - ts)::double precision) AS covered_s
FROM consumption
GROUP BY meter_id, time_bucket(INTERVAL '1 hour', ts)
WITH NO DATA;
SELECT add_continuous_aggregate_policy('usage_hourly', start_offset => INTERVAL '{compress_after_days} days',
       end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes', if_not_exists => true);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT meter_id,
       time_bucket(INTERVAL '1 day', hour, '{timezone}') AS day,
       sum(volume_m3) AS volume_m3,
       sum(reverse_m3) AS reverse_m3,
       sum(covered_s) AS covered_s
FROM usage_hourly
GROUP BY meter_id, time_bucket(INTERVAL '1 day', hour, '{timezone}')
WITH NO DATA;
SELECT add_continuous_aggregate_policy('usage_daily', start_offset => INTERVAL '{compress_after_days} days',
       end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour', if_not_exists => true);
