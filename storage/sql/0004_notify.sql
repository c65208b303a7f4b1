-- The alert lifecycle, its audit trail, and the notification outbox: plain tables on both flavours.

-- Lifecycle columns. A detector's clear no longer resolves an alert on the spot: it records when
-- the condition ended (cleared_at) and the scheduler resolves the alert once the condition has
-- stayed away for the type's auto-resolve time (event time), so a condition that flickers stays
-- one alert. notified_severity is the severity people were last told about: a raise that lifts
-- the severity above it is worth a new notification, a repeat is not.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS team text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS cleared_at timestamptz;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS notified_severity text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS escalation_level integer NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS acknowledged_at timestamptz;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS acknowledged_by text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS resolved_by text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS resolution_note text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS reopened integer NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS reopened_at timestamptz;
-- The event time the SLA clock (acknowledge and resolve targets, escalation) starts: when the
-- alert became known, greatest(detected_at, the event clock when it opened), again at a
-- reopening. A meter that uploads a day at once raises alerts detected hours before anyone
-- could see them; their targets run from the upload, not from the reading.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS sla_from timestamptz;
-- A repair reported by staff waits for the data to confirm it (e.g. a zero hour after a leak).
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS repair_reported_at timestamptz;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS repair_reported_by text;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS confirmed_at timestamptz;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS volume_lost_m3 double precision;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS volume_saved_m3 double precision;
CREATE INDEX IF NOT EXISTS alerts_unacked_idx ON alerts ((coalesce(sla_from, detected_at)))
    WHERE status = 'open';
CREATE INDEX IF NOT EXISTS alerts_cleared_idx ON alerts (cleared_at)
    WHERE cleared_at IS NOT NULL AND status <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_repair_idx ON alerts (repair_reported_at)
    WHERE repair_reported_at IS NOT NULL AND status <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_resolved_key_idx ON alerts (meter_id, type, resolved_at DESC)
    WHERE status = 'resolved';

-- Every transition of an alert, who made it and why. at is the wall clock of the change;
-- event_time the event time it refers to, when a detector or the scheduler made it.
CREATE TABLE IF NOT EXISTS alert_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    event_time  timestamptz,
    kind        text NOT NULL CHECK (kind IN (
                    'opened', 'severity', 'cleared', 'returned', 'acknowledged', 'resolved',
                    'reopened', 'escalated', 'repair_reported', 'confirmed', 'feedback',
                    'suppressed')),
    actor       text NOT NULL DEFAULT 'system',
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS alert_events_alert_idx ON alert_events (alert_id, id);

-- Notifications to send, written in the transaction that changes the alert, so a crash between
-- commit and send loses nothing: the dispatcher sends what is pending after a restart.
-- hold_until (event time) keeps a customer reminder back through quiet hours; the scheduler
-- releases it when the event clock passes. next_attempt_at and lease_until are wall-clock times
-- of the dispatcher (retries with backoff; a claimed row is leased so a dead dispatcher's rows
-- go out again). idem_key is stable across retries: receivers drop duplicates by it.
CREATE TABLE IF NOT EXISTS outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id         bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    trigger          text NOT NULL,
    level            integer NOT NULL DEFAULT 0,
    channel          text NOT NULL,
    audience         text NOT NULL CHECK (audience IN ('customer', 'staff')),
    idem_key         text NOT NULL UNIQUE,
    payload          jsonb NOT NULL,
    hold_until       timestamptz,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'dead', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_due_idx ON outbox (next_attempt_at)
    WHERE status = 'pending' AND hold_until IS NULL;
CREATE INDEX IF NOT EXISTS outbox_held_idx ON outbox (hold_until)
    WHERE status = 'pending' AND hold_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_alert_idx ON outbox (alert_id, channel, id);

-- One row per delivery attempt, with its outcome.
CREATE TABLE IF NOT EXISTS deliveries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id    bigint NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    channel      text NOT NULL,
    at           timestamptz NOT NULL,
    duration_ms  double precision NOT NULL,
    ok           boolean NOT NULL,
    detail       text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_outbox_idx ON deliveries (outbox_id, id);

-- A customer's "expected" answer: raises of this meter and type inside [since, until) are
-- dropped (a pool being filled, a production run).
CREATE TABLE IF NOT EXISTS suppressions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id    text NOT NULL,
    type        text NOT NULL,
    since       timestamptz NOT NULL,
    until       timestamptz NOT NULL,
    reason      text NOT NULL DEFAULT '',
    actor       text NOT NULL,
    alert_id    bigint REFERENCES alerts (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (until > since)
);
CREATE INDEX IF NOT EXISTS suppressions_key_idx ON suppressions (meter_id, type, until);

-- Customers' answers, kept as labelled cases for tuning: the alert as it was when answered.
CREATE TABLE IF NOT EXISTS feedback (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id       bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    meter_id       text NOT NULL,
    type           text NOT NULL,
    answer         text NOT NULL CHECK (answer IN ('expected', 'not_expected')),
    suppress_days  double precision,
    note           text NOT NULL DEFAULT '',
    actor          text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    alert_started_at  timestamptz NOT NULL,
    evidence       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS feedback_alert_idx ON feedback (alert_id);

-- Event time as ingest last saw it (the detectors' watermark): the scheduler's clock for quiet
-- hours, escalation and auto-resolve, so a replay at any speed escalates as real time would.
CREATE TABLE IF NOT EXISTS event_clock (
    name        text PRIMARY KEY,
    at          timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Alerts open before this migration were announced by the old code (or by nobody) and have no
-- SLA start: they are taken as announced at their severity, with their targets running from the
-- upgrade, so the first scheduler run neither re-announces them nor walks them up every rung.
UPDATE alerts SET notified_severity = severity, sla_from = greatest(detected_at, now())
WHERE status <> 'resolved' AND notified_severity IS NULL AND sla_from IS NULL;
