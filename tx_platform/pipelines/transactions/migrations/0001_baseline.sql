-- Baseline: the pipeline's own table, rendered from its spec where the directive below stands
-- (columns from the contract, CHECKs from the rules: written once, in the spec), then the derived
-- tables the previous code's derived.sql made. Every statement is idempotent: a warehouse made by
-- the previous code is recognised and recorded, not rebuilt.

-- @pipeline_table

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
