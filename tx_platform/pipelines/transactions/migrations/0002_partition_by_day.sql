-- `transactions`, partitioned by UTC day on event_time (declarative PARTITION BY RANGE).
--
-- The table made by the baseline (or by the previous code) is renamed, a partitioned table with the same
-- columns, defaults, NOT NULLs and CHECKs takes its name, a partition is created for every day that has
-- rows and for nothing else (migrate then adds the days around today, see _partitions.py), the rows are
-- moved, and the old table is dropped: one transaction, so a failure leaves the old table as it was.
--
-- A partitioned table's unique constraints must contain the partition key: the primary key is
-- (transaction_id, event_time) and the Kafka coordinates are unique with event_time. A record replayed
-- from Kafka has the same event time, so a replay still conflicts and is dropped; one transaction_id
-- reused with a different event time is no longer refused by the table (the reconciliation check
-- `no_unexplained_loss` counts ids stored twice).
--
-- Indexes: BRIN on event_time (rows arrive in about event-time order: a few pages per range instead of a
-- b-tree entry per row), b-trees on account_id and merchant_id (per-account and per-merchant look-ups).

LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE;
ALTER TABLE transactions RENAME TO transactions_unpartitioned;

-- index and constraint names are per schema: free the old table's for the new one
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'transactions_unpartitioned'::regclass AND contype IN ('p', 'u') LOOP
        EXECUTE format('ALTER TABLE transactions_unpartitioned DROP CONSTRAINT %I', c.conname);
    END LOOP;
END
$$;
DROP INDEX IF EXISTS transactions_event_time_idx;

CREATE TABLE transactions (LIKE transactions_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (event_time);
ALTER TABLE transactions
    ADD CONSTRAINT transactions_pkey PRIMARY KEY (transaction_id, event_time),
    ADD CONSTRAINT transactions_kafka_coordinates_key UNIQUE (kafka_topic, kafka_partition, kafka_offset, event_time);

-- the safety net: a row whose day has no partition yet lands here, never refused
CREATE TABLE transactions_default PARTITION OF transactions DEFAULT;

DO $$
DECLARE
    d date;
BEGIN
    FOR d IN SELECT DISTINCT (event_time AT TIME ZONE 'UTC')::date FROM transactions_unpartitioned LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF transactions FOR VALUES FROM (%L) TO (%L)',
            'transactions_p' || to_char(d, 'YYYYMMDD'),
            (d::timestamp AT TIME ZONE 'UTC'),
            ((d + 1)::timestamp AT TIME ZONE 'UTC')
        );
    END LOOP;
END
$$;

INSERT INTO transactions SELECT * FROM transactions_unpartitioned;
DROP TABLE transactions_unpartitioned;

CREATE INDEX transactions_event_time_brin ON transactions USING brin (event_time);
CREATE INDEX transactions_account_id_idx ON transactions (account_id);
CREATE INDEX transactions_merchant_id_idx ON transactions (merchant_id);
