-- Streaming fraud detection (spark_jobs/fraud): its alerts, its offset ledger, and the ground truth of the
-- incidents the producer injects (`txp produce --fraud-ratio`), which `txp fraud report` scores alerts against.

-- One row per alert. alert_id is uuid5 of the rule and the triggering transaction ids: a batch replayed after
-- a crash produces the same ids and inserts nothing twice (ON CONFLICT DO NOTHING). published_offset is the
-- offset of the alert's record in the topic fraud.alerts, set once Kafka acknowledged it (the outbox).
CREATE TABLE IF NOT EXISTS fraud_alerts (
    alert_id         uuid        PRIMARY KEY,
    rule             text        NOT NULL CHECK (rule IN ('velocity', 'amount_spike', 'impossible_travel', 'card_testing')),
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    account_id       text        NOT NULL,
    card_id          text        NOT NULL,
    transaction_ids  text[]      NOT NULL CHECK (cardinality(transaction_ids) > 0),
    event_time       timestamptz NOT NULL,
    details          jsonb       NOT NULL DEFAULT '{}',
    batch_id         bigint      NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    published_offset bigint
);
CREATE INDEX IF NOT EXISTS fraud_alerts_unpublished_idx ON fraud_alerts (topic, kafka_partition, event_time)
    WHERE published_offset IS NULL;
CREATE INDEX IF NOT EXISTS fraud_alerts_account_idx ON fraud_alerts (account_id, event_time);

-- The fraud query's own offset ledger (sink_offsets is the sink's): per query, topic and partition, the offset
-- after the last record that reached the detector, committed in the same transaction as the batch's alerts.
CREATE TABLE IF NOT EXISTS fraud_offsets (
    query_name  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    batch_id    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (query_name, topic, partition)
);

-- Incidents the producer injected: the transactions an alert of the same scenario must name.
CREATE TABLE IF NOT EXISTS fraud_ground_truth (
    incident_id     text        PRIMARY KEY,
    scenario        text        NOT NULL CHECK (scenario IN ('velocity', 'amount_spike', 'impossible_travel', 'card_testing')),
    topic           text        NOT NULL,
    seed            bigint      NOT NULL,
    account_id      text        NOT NULL,
    card_id         text        NOT NULL,
    transaction_ids text[]      NOT NULL,
    first_event     timestamptz NOT NULL,
    last_event      timestamptz NOT NULL,
    produced_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS fraud_ground_truth_topic_idx ON fraud_ground_truth (topic, produced_at);
