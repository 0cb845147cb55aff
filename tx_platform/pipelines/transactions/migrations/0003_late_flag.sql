-- Late data: Kafka's timestamp of each stored record (the sink stages it already), and `late`, true
-- when the record reached Kafka more than the pipeline's allowed lateness after its event time. The
-- allowed lateness is configuration, on the spec (`PipelineSpec.allowed_lateness`, 10 minutes for
-- `transactions`; the streaming watermark uses the same value): the directive below is rendered from
-- it, and `txp db migrate` rebuilds the column when the spec's value changes (a rewrite of the table).
-- Rows stored before this migration have no Kafka timestamp: `late` is NULL for them (unknown).

ALTER TABLE transactions ADD COLUMN kafka_timestamp timestamptz;
-- @late_column
