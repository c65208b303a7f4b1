-- Registry and dead letters: plain tables, the same on PostgreSQL and TimescaleDB.

CREATE TABLE IF NOT EXISTS tenants (
    tenant      text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (tenant, name) VALUES ('unassigned', 'Auto-registered meters')
ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS meters (
    meter_id            text PRIMARY KEY,
    tenant              text NOT NULL DEFAULT 'unassigned' REFERENCES tenants (tenant),
    dma                 text,
    kind                text NOT NULL DEFAULT 'residential'
                        CHECK (kind IN ('residential', 'commercial', 'industrial', 'bulk')),
    dn_mm               integer NOT NULL DEFAULT 15 CHECK (dn_mm > 0),
    q3_m3h              double precision NOT NULL DEFAULT 2.5 CHECK (q3_m3h > 0),
    timezone            text NOT NULL DEFAULT 'Asia/Shanghai',
    install_date        date,
    register_max_m3     double precision NOT NULL DEFAULT 100000 CHECK (register_max_m3 > 0),
    tariff_cny_per_m3   numeric(10, 4) NOT NULL DEFAULT 0 CHECK (tariff_cny_per_m3 >= 0),
    parent_meter_id     text REFERENCES meters (meter_id),
    closed_hours        jsonb,
    expected_interval_s integer NOT NULL DEFAULT 900 CHECK (expected_interval_s > 0),
    auto_registered     boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS meters_tenant_idx ON meters (tenant);
CREATE INDEX IF NOT EXISTS meters_dma_idx ON meters (dma);

-- One row per rejected message (reading_index NULL) or rejected reading of a batch message.
-- A redelivered copy of the same bad payload is the same dead letter, hence the digest key.
CREATE TABLE IF NOT EXISTS dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at     timestamptz NOT NULL,
    topic           text NOT NULL,
    meter_id        text,
    reason          text NOT NULL,
    detail          text NOT NULL,
    reading_index   integer,
    payload         bytea NOT NULL,
    payload_sha256  bytea NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_dedupe_idx
    ON dead_letters (payload_sha256, topic, reason, (coalesce(reading_index, -1)));
CREATE INDEX IF NOT EXISTS dead_letters_received_idx ON dead_letters (received_at);
