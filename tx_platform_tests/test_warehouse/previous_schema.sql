-- The warehouse as the code before versioned migrations made it (ensure_schema at bd62b0a: schema.sql,
-- then per pipeline its generated table and derived.sql), frozen for the upgrade test.

-- Tables every pipeline shares (quarantine, the offset ledger, the sink's audit and latency),
-- written by the pipeline role. Applied idempotently by `ensure_schema`, before each pipeline's
-- own table (generated from its spec, see _ddl.py) and its derived tables (its derived.sql).

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

-- pipeline transactions: its generated table
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id uuid NOT NULL PRIMARY KEY,
    account_id text NOT NULL,
    customer_id text NOT NULL,
    card_id text NOT NULL,
    merchant_id text NOT NULL,
    merchant_category text NOT NULL,
    amount numeric(18,2) NOT NULL,
    currency text NOT NULL,
    channel text NOT NULL,
    transaction_type text NOT NULL,
    country text NOT NULL,
    city text NOT NULL,
    latitude double precision NOT NULL,
    longitude double precision NOT NULL,
    event_time timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset),
    CONSTRAINT enum_channel_1bf59c52 CHECK (channel IN ('POS', 'ECOM', 'ATM', 'TRANSFER')),
    CONSTRAINT enum_transaction_type_d8d7fca9 CHECK (transaction_type IN ('PURCHASE', 'REFUND', 'WITHDRAWAL', 'TRANSFER')),
    CONSTRAINT rule1_non_positive_amount_f9f87a23 CHECK (amount > 0),
    CONSTRAINT rule4_invalid_merchant_category_f0f289b0 CHECK (merchant_category ~ '^(?:[0-9]{4})$'),
    CONSTRAINT rule5_invalid_coordinates_ad15a58a CHECK (latitude BETWEEN -90 AND 90),
    CONSTRAINT rule6_invalid_coordinates_1ac04b6e CHECK (longitude BETWEEN -180 AND 180),
    CONSTRAINT rule7_event_time_too_old_0c7fe13c CHECK (event_time >= '2025-01-01T00:00:00+00:00'::timestamptz)
);
CREATE INDEX IF NOT EXISTS transactions_event_time_idx ON transactions (event_time);

-- Derived tables of the `transactions` pipeline. Applied idempotently by `ensure_schema`.

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

-- pipeline crypto_trades: its generated table
CREATE TABLE IF NOT EXISTS crypto_trades (
    trade_id uuid NOT NULL PRIMARY KEY,
    exchange text NOT NULL,
    symbol text NOT NULL,
    side text NOT NULL,
    price numeric(24,10) NOT NULL,
    quantity numeric(30,18) NOT NULL,
    quote_currency text NOT NULL,
    taker_order_id text NOT NULL,
    event_time timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset),
    CONSTRAINT enum_side_5540bef2 CHECK (side IN ('BUY', 'SELL')),
    CONSTRAINT rule1_unknown_symbol_af615945 CHECK (symbol IN ('BTC-USD', 'BTC-USDT', 'DOGE-USD', 'ETH-EUR', 'ETH-USD', 'SOL-USD')),
    CONSTRAINT rule2_unknown_exchange_1db2bc63 CHECK (exchange IN ('BINANCE', 'BITSTAMP', 'COINBASE', 'KRAKEN')),
    CONSTRAINT rule3_unknown_quote_currency_de0b5885 CHECK (quote_currency IN ('EUR', 'USD', 'USDT')),
    CONSTRAINT rule4_non_positive_price_2425a422 CHECK (price > 0),
    CONSTRAINT rule5_non_positive_quantity_3fd98668 CHECK (quantity > 0),
    CONSTRAINT rule6_event_time_too_old_0c7fe13c CHECK (event_time >= '2025-01-01T00:00:00+00:00'::timestamptz)
);
CREATE INDEX IF NOT EXISTS crypto_trades_event_time_idx ON crypto_trades (event_time);

-- Derived tables of the `crypto_trades` pipeline. Applied idempotently by `ensure_schema`, after the
-- generated `crypto_trades` table.
--
-- Every derived row carries `source_topic`, the Kafka topic its trades came from (default: the
-- pipeline's own `crypto.trades`), and it is part of every per-minute key: the same pipeline on
-- another topic (tests, a second environment) never overwrites the shipped topic's figures.

-- The instruments of tx_platform/pipelines/crypto_trades/_market.py, synced on each rebuild
-- (`sync_instruments`) so that SQL can join each symbol's whale threshold.
CREATE TABLE IF NOT EXISTS crypto_instruments (
    symbol         text        PRIMARY KEY,
    base           text        NOT NULL,
    quote          text        NOT NULL,
    -- a trade with price x quantity at or above this (in the quote currency) is a whale trade
    whale_notional numeric     NOT NULL CHECK (whale_notional > 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One-minute OHLCV candles, written by the Spark streaming query `crypto_trades_candles`
-- (spark_jobs/transforms/candles.py) from the topic itself: event time, a watermark of allowed
-- lateness, one row per symbol and minute upserted whole at each micro-batch that changes it.
CREATE TABLE IF NOT EXISTS crypto_candles_1m (
    symbol           text        NOT NULL,
    minute           timestamptz NOT NULL,                  -- start of the minute (UTC)
    open             numeric     NOT NULL,                  -- price of the first trade (event_time, then trade_id)
    high             numeric     NOT NULL,
    low              numeric     NOT NULL,
    close            numeric     NOT NULL,                  -- price of the last trade (event_time, then trade_id)
    volume           numeric     NOT NULL,                  -- sum of quantity (base asset)
    notional         numeric     NOT NULL,                  -- sum of price x quantity (quote currency)
    trade_count      bigint      NOT NULL,
    vwap             numeric     NOT NULL,                  -- notional / volume
    first_trade_time timestamptz NOT NULL,
    last_trade_time  timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    source_topic     text        NOT NULL DEFAULT 'crypto.trades',
    PRIMARY KEY (symbol, minute, source_topic)
);

-- The ledger of streaming queries that write Postgres from foreachBatch (the candle query): one row
-- per micro-batch, written in the same transaction as the batch's rows. A batch id already here with
-- the same end offsets is a replay and writes nothing.
CREATE TABLE IF NOT EXISTS stream_batches (
    query        text        NOT NULL,
    batch_id     bigint      NOT NULL,
    end_offsets  jsonb       NOT NULL,                      -- Spark's end offsets of the batch: {topic: {partition: offset}}
    rows         bigint      NOT NULL,                      -- rows the batch upserted
    committed_at timestamptz NOT NULL DEFAULT now(),
    source_topic text        NOT NULL DEFAULT 'crypto.trades',
    PRIMARY KEY (query, source_topic, batch_id)
);

-- Per symbol and minute (one row per candle): the minute's VWAP, the notional-weighted VWAP of the
-- 15 minutes ending at that minute, and the sample standard deviation of the one-minute log returns
-- of close over those 15 minutes (NULL with fewer than 2 returns). Rebuilt from crypto_candles_1m.
CREATE TABLE IF NOT EXISTS crypto_symbol_metrics (
    symbol         text        NOT NULL,
    minute         timestamptz NOT NULL,
    vwap           numeric     NOT NULL,
    vwap_15m       numeric     NOT NULL,
    volatility_15m numeric,
    source_topic   text        NOT NULL DEFAULT 'crypto.trades',
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, minute, source_topic)
);

-- Cross-exchange spread per symbol and minute, over the exchanges that traded the symbol that minute
-- (a row only when at least 2 did): each exchange's VWAP, spread_bps = (high - low) / mid x 1e4 with
-- mid = (high + low) / 2. Rebuilt from crypto_trades.
CREATE TABLE IF NOT EXISTS crypto_spread_1m (
    symbol            text        NOT NULL,
    minute            timestamptz NOT NULL,
    exchanges         integer     NOT NULL,
    low_vwap          numeric     NOT NULL,
    high_vwap         numeric     NOT NULL,
    spread_bps        numeric     NOT NULL,
    cheapest_exchange text        NOT NULL,
    dearest_exchange  text        NOT NULL,
    source_topic      text        NOT NULL DEFAULT 'crypto.trades',
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, minute, source_topic)
);

-- Trades whose notional (price x quantity) reaches their symbol's whale_notional. Rebuilt from
-- crypto_trades joined with crypto_instruments.
CREATE TABLE IF NOT EXISTS crypto_whale_alerts (
    trade_id     uuid        PRIMARY KEY,
    symbol       text        NOT NULL,
    exchange     text        NOT NULL,
    side         text        NOT NULL,
    price        numeric     NOT NULL,
    quantity     numeric     NOT NULL,
    notional     numeric     NOT NULL,
    threshold    numeric     NOT NULL,
    event_time   timestamptz NOT NULL,
    source_topic text        NOT NULL DEFAULT 'crypto.trades',
    computed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS crypto_whale_alerts_event_time_idx ON crypto_whale_alerts (event_time);

-- Trades printed more than ANOMALY_PCT outside the previous minute's [low, high] candle of their
-- symbol. Flagged, not rejected: exchanges do print such trades, and rejecting them would make volume
-- and VWAP disagree with the venue. deviation_pct is signed: above the high > 0, below the low < 0.
CREATE TABLE IF NOT EXISTS crypto_price_anomalies (
    trade_id      uuid        PRIMARY KEY,
    symbol        text        NOT NULL,
    exchange      text        NOT NULL,
    price         numeric     NOT NULL,
    previous_low  numeric     NOT NULL,
    previous_high numeric     NOT NULL,
    deviation_pct numeric     NOT NULL,
    event_time    timestamptz NOT NULL,
    source_topic  text        NOT NULL DEFAULT 'crypto.trades',
    computed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS crypto_price_anomalies_event_time_idx ON crypto_price_anomalies (event_time);
