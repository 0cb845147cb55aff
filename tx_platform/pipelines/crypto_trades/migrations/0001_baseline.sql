-- Baseline: the pipeline's own table, rendered from its spec where the directive below stands
-- (columns from the contract, CHECKs from the rules: written once, in the spec), then the derived
-- tables the previous code's derived.sql made. Every statement is idempotent: a warehouse made by
-- the previous code is recognised and recorded, not rebuilt.

-- @pipeline_table

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
