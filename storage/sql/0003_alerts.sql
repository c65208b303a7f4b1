-- Alerts and detector checkpoints: plain tables, the same on PostgreSQL and TimescaleDB.

-- One row per episode of a condition on a meter: detectors repeat an alert while the condition
-- holds, and the repeats update the open row instead of adding rows (storage.alerts). tenant and
-- dma are copied from the registry when the row opens, so the inbox filters without a join and an
-- alert stays with the tenant it was raised for.
CREATE TABLE IF NOT EXISTS alerts (
    id                          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant                      text NOT NULL,
    meter_id                    text NOT NULL,
    dma                         text,
    type                        text NOT NULL,
    severity                    text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    status                      text NOT NULL DEFAULT 'open'
                                CHECK (status IN ('open', 'acknowledged', 'resolved')),
    started_at                  timestamptz NOT NULL,
    detected_at                 timestamptz NOT NULL,
    last_seen_at                timestamptz NOT NULL,
    resolved_at                 timestamptz,
    resolution                  text,
    evidence                    jsonb NOT NULL DEFAULT '{}',
    estimated_loss_m3_per_day   double precision,
    estimated_cost_cny_per_day  double precision,
    message                     jsonb NOT NULL DEFAULT '{}',
    occurrences                 integer NOT NULL DEFAULT 1,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
-- At most one unresolved alert per meter and type; it is also the ON CONFLICT target of repeats.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_idx ON alerts (meter_id, type)
    WHERE status <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_inbox_idx ON alerts (tenant, status, detected_at DESC);
CREATE INDEX IF NOT EXISTS alerts_detected_idx ON alerts (detected_at);
CREATE INDEX IF NOT EXISTS alerts_type_idx ON alerts (type);

-- Per-meter detector checkpoints, so a meter can move to another worker or survive a restart.
CREATE TABLE IF NOT EXISTS detector_state (
    meter_id    text PRIMARY KEY,
    state       bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Checkpoints that belong to no single meter: the watermark, DMA balances, the fleet model sample.
CREATE TABLE IF NOT EXISTS detector_meta (
    key         text PRIMARY KEY,
    value       bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
