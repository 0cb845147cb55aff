-- The natural key, unique across every day partition again.
--
-- A partitioned table's unique constraints must contain the partition key, so since 0002 the primary
-- key is (transaction_id, event_time): a replayed record (same event time) still conflicts, but one
-- transaction_id sent again with another event time (a producer re-sending a record it rebuilt, a
-- seeded stream produced twice) would be stored twice. `transactions_keys` holds each transaction_id
-- once, with the Kafka record that claimed it: the sink claims a record's key here first, in the same
-- transaction, and only a claimed record is inserted; any other is quarantined as
-- DUPLICATE_TRANSACTION_ID, as before partitioning (see tx_platform/warehouse/_sink_writer.py: a
-- pipeline table `<table>` with a `<table>_keys` beside it is written this way).
--
-- Deleting a row from `transactions` (txp topics forget, a day rebuilt by hand) releases its key, through
-- the trigger below; dropping a whole partition does not (its ids stay taken, the safe side).

CREATE TABLE transactions_keys (
    transaction_id  uuid        PRIMARY KEY,
    event_time      timestamptz NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL
);

-- rows stored before: the first stored record of an id claims it (ids stored twice since 0002 keep
-- both rows; the reconciliation check counts them)
INSERT INTO transactions_keys (transaction_id, event_time, kafka_topic, kafka_partition, kafka_offset)
SELECT DISTINCT ON (transaction_id) transaction_id, event_time, kafka_topic, kafka_partition, kafka_offset
FROM transactions
ORDER BY transaction_id, ingested_at, kafka_topic, kafka_partition, kafka_offset;

CREATE FUNCTION transactions_release_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM transactions_keys
    WHERE transaction_id = OLD.transaction_id
      AND kafka_topic = OLD.kafka_topic AND kafka_partition = OLD.kafka_partition AND kafka_offset = OLD.kafka_offset;
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_release_key AFTER DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_release_key();
