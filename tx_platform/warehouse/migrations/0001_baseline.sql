-- Baseline: the shared tables as the previous code's schema.sql made them (every statement is
-- idempotent, so a warehouse it created is recognised and recorded, not rebuilt).

-- Records the sink rejected, with the raw bytes and why. One row per Kafka record.
CREATE TABLE IF NOT EXISTS quarantine (
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    kafka_timestamp  timestamptz,
    raw_key          bytea,
    raw_value        bytea,
    error_code       text        NOT NULL,
    reason           text        NOT NULL,
    seen_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);

-- Delivery to the dead-letter topic, per quarantined record: set once Kafka acknowledged it.
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS dlq_offset bigint;
CREATE INDEX IF NOT EXISTS quarantine_unpublished_idx ON quarantine (kafka_topic, kafka_partition, kafka_offset)
    WHERE dlq_offset IS NULL;

-- Offsets the sink has committed, in the same transaction as the rows they cover.
-- Records in [first_offset, next_offset) of a partition are all in the pipeline's table or quarantine,
-- except the ranges recorded in sink_gaps. Batches must start exactly at next_offset.
CREATE TABLE IF NOT EXISTS sink_offsets (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    first_offset bigint      NOT NULL,
    next_offset  bigint      NOT NULL,
    batch_id     bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition),
    CHECK (next_offset >= first_offset)
);
-- Kafka's id of the topic the offsets belong to: a topic deleted and created again gets a new one.
ALTER TABLE sink_offsets ADD COLUMN IF NOT EXISTS topic_id text;

-- One sink per topic: a sink holds the lease (and a session advisory lock) while it runs; each
-- start increments the epoch, and a commit under an older epoch is refused (a zombie is fenced).
CREATE TABLE IF NOT EXISTS sink_leases (
    topic       text        PRIMARY KEY,
    epoch       bigint      NOT NULL,
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);

-- Offsets deleted by Kafka's retention before the sink read them, recorded only when the sink
-- runs with on_data_loss = record (the default stops with [DATA_LOSS]).
CREATE TABLE IF NOT EXISTS sink_gaps (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    first_offset bigint      NOT NULL,
    next_offset  bigint      NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, first_offset),
    CHECK (next_offset > first_offset)
);

-- Dead-letter publication progress per DLQ partition: every DLQ record below scanned_to is
-- reflected in quarantine.dlq_offset. Survives the DLQ's own retention.
CREATE TABLE IF NOT EXISTS dlq_progress (
    dlq_topic  text        NOT NULL,
    partition  integer     NOT NULL,
    scanned_to bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, partition)
);

-- One row per commit of the sink: an audit trail of what each batch did.
CREATE TABLE IF NOT EXISTS sink_batches (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    batch_id     bigint      NOT NULL,
    records      bigint      NOT NULL,
    inserted     bigint      NOT NULL,
    quarantined  bigint      NOT NULL,
    skipped      bigint      NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
-- Seconds the batch's commit transaction ran (lock wait included), measured by Postgres; NULL
-- for batches committed before the column existed.
ALTER TABLE sink_batches ADD COLUMN IF NOT EXISTS seconds double precision;
-- The Kafka partitions the commit covered: the sink commits each partition's slice of a batch from
-- the Spark task that read it, so a batch has one row per partition (NULL for rows from before).
ALTER TABLE sink_batches ADD COLUMN IF NOT EXISTS partitions integer[];

-- Cumulative latency histograms per topic, accumulated by each commit in its own transaction, so
-- they are exact and survive any restart. kind: event_time (event time -> committed), kafka_timestamp
-- (Kafka's record timestamp -> committed), commit (sink_batches.seconds). One row per bucket: count
-- holds the observations whose smallest upper bound is le (not cumulative; 'Infinity' for the
-- rest), sum the seconds they add up to. The exporter (txp metrics serve) serves them as histograms.
CREATE TABLE IF NOT EXISTS sink_latency (
    topic text             NOT NULL,
    kind  text             NOT NULL,
    le    double precision NOT NULL,
    count bigint           NOT NULL,
    sum   double precision NOT NULL,
    PRIMARY KEY (topic, kind, le)
);
