-- Daily-partitioned derived tables of the `transactions` pipeline (daily_merchant_summary is in the baseline).
-- Each is keyed by day first: a partition is recomputed with DELETE ... WHERE day = d + INSERT ... SELECT in one
-- transaction, and the primary key's leading day serves that DELETE and every per-day read.

-- Per day (UTC), merchant category (ISO 18245) and currency; amounts are never summed across currencies.
CREATE TABLE IF NOT EXISTS daily_category_volume (
    day               date          NOT NULL,
    merchant_category text          NOT NULL,
    currency          text          NOT NULL,
    transaction_count bigint        NOT NULL,
    purchase_count    bigint        NOT NULL,
    refund_count      bigint        NOT NULL,
    total_amount      numeric(38,2) NOT NULL,
    purchase_amount   numeric(38,2) NOT NULL,
    refund_amount     numeric(38,2) NOT NULL,
    unique_merchants  bigint        NOT NULL,
    unique_cards      bigint        NOT NULL,
    computed_at       timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (day, merchant_category, currency)
);

-- Per day (UTC), customer and currency: what the customer spent (purchases, withdrawals, transfers) and got back.
CREATE TABLE IF NOT EXISTS customer_daily_spend (
    day               date          NOT NULL,
    customer_id       text          NOT NULL,
    currency          text          NOT NULL,
    transaction_count bigint        NOT NULL,
    total_amount      numeric(38,2) NOT NULL,
    spend_amount      numeric(38,2) NOT NULL,
    refund_amount     numeric(38,2) NOT NULL,
    unique_merchants  bigint        NOT NULL,
    unique_cards      bigint        NOT NULL,
    first_event_time  timestamptz   NOT NULL,
    last_event_time   timestamptz   NOT NULL,
    computed_at       timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (day, customer_id, currency)
);

-- Per day (UTC), hour of day (0-23) and currency seen that day: all 24 hours, zeros where the hour had none.
CREATE TABLE IF NOT EXISTS hourly_volume (
    day               date          NOT NULL,
    hour              smallint      NOT NULL CHECK (hour BETWEEN 0 AND 23),
    currency          text          NOT NULL,
    transaction_count bigint        NOT NULL,
    total_amount      numeric(38,2) NOT NULL,
    unique_accounts   bigint        NOT NULL,
    computed_at       timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (day, hour, currency)
);
