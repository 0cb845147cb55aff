-- Rebuild one day of daily_category_volume from transactions (parameter: %(day)s, a UTC date).
-- Runs in one transaction with the DELETE before it, so a partition is replaced atomically.
INSERT INTO daily_category_volume (
    day, merchant_category, currency,
    transaction_count, purchase_count, refund_count,
    total_amount, purchase_amount, refund_amount,
    unique_merchants, unique_cards
)
SELECT
    %(day)s::date,
    merchant_category,
    currency,
    count(*),
    count(*) FILTER (WHERE transaction_type = 'PURCHASE'),
    count(*) FILTER (WHERE transaction_type = 'REFUND'),
    sum(amount),
    coalesce(sum(amount) FILTER (WHERE transaction_type = 'PURCHASE'), 0),
    coalesce(sum(amount) FILTER (WHERE transaction_type = 'REFUND'), 0),
    count(DISTINCT merchant_id),
    count(DISTINCT card_id)
FROM transactions
WHERE event_time >= %(day)s::date AT TIME ZONE 'UTC'
  AND event_time < (%(day)s::date + 1) AT TIME ZONE 'UTC'
GROUP BY merchant_category, currency
