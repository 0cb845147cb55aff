-- Warehouse tables written by the pipeline role. Applied idempotently by `ensure_schema`.
-- The `transactions` columns are tested against the Avro contract (transaction.avsc).

CREATE TABLE IF NOT EXISTS transactions (
    transaction_id    uuid             PRIMARY KEY,
    account_id        text             NOT NULL,
    customer_id       text             NOT NULL,
    card_id           text             NOT NULL,
    merchant_id       text             NOT NULL,
    merchant_category text             NOT NULL CHECK (merchant_category ~ '^[0-9]{4}$'),
    amount            numeric(18,2)    NOT NULL,
    currency          text             NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    channel           text             NOT NULL CHECK (channel IN ('POS', 'ECOM', 'ATM', 'TRANSFER')),
    transaction_type  text             NOT NULL CHECK (transaction_type IN ('PURCHASE', 'REFUND', 'WITHDRAWAL', 'TRANSFER')),
    country           text             NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    city              text             NOT NULL,
    latitude          double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude         double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    event_time        timestamptz      NOT NULL,
    -- where the record came from: lets every row be traced to exactly one Kafka record
    kafka_topic       text             NOT NULL,
    kafka_partition   integer          NOT NULL,
    kafka_offset      bigint           NOT NULL,
    ingested_at       timestamptz      NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS transactions_event_time_idx ON transactions (event_time);

-- Records the sink rejected, with the raw bytes and why. One row per Kafka record, like above.
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
-- Records in [first_offset, next_offset) of a partition are all in transactions or quarantine,
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

-- One row per committed micro-batch: an audit trail of what each batch did.
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

-- Daily activity per merchant and currency (amounts are never summed across currencies).
CREATE TABLE IF NOT EXISTS daily_merchant_summary (
    day               date          NOT NULL,
    merchant_id       text          NOT NULL,
    currency          text          NOT NULL,
    merchant_category text          NOT NULL,
    country           text          NOT NULL,
    transaction_count bigint        NOT NULL,
    purchase_count    bigint        NOT NULL,
    refund_count      bigint        NOT NULL,
    -- sums of numeric(18,2) amounts need more digits than one amount
    total_amount      numeric(38,2) NOT NULL,
    purchase_amount   numeric(38,2) NOT NULL,
    refund_amount     numeric(38,2) NOT NULL,
    avg_amount        numeric(18,2) NOT NULL,
    unique_cards      bigint        NOT NULL,
    first_event_time  timestamptz   NOT NULL,
    last_event_time   timestamptz   NOT NULL,
    computed_at       timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (day, merchant_id, currency)
);

-- Warehouses created before the sums were widened: numeric(18,2) overflowed on large days.
DO $$
BEGIN
    IF (SELECT numeric_precision FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'daily_merchant_summary'
          AND column_name = 'total_amount') < 38 THEN
        ALTER TABLE daily_merchant_summary
            ALTER COLUMN total_amount TYPE numeric(38,2),
            ALTER COLUMN purchase_amount TYPE numeric(38,2),
            ALTER COLUMN refund_amount TYPE numeric(38,2);
    END IF;
END
$$;
