-- Rebuild one day of daily_merchant_summary from transactions (parameter: %(day)s, a UTC date).
-- Runs in one transaction with the DELETE before it, so a partition is replaced atomically.
INSERT INTO daily_merchant_summary (
    day, merchant_id, currency, merchant_category, country,
    transaction_count, purchase_count, refund_count,
    total_amount, purchase_amount, refund_amount, avg_amount,
    unique_cards, first_event_time, last_event_time
)
SELECT
    %(day)s::date,
    merchant_id,
    currency,
    min(merchant_category),
    min(country),
    count(*),
    count(*) FILTER (WHERE transaction_type = 'PURCHASE'),
    count(*) FILTER (WHERE transaction_type = 'REFUND'),
    sum(amount),
    coalesce(sum(amount) FILTER (WHERE transaction_type = 'PURCHASE'), 0),
    coalesce(sum(amount) FILTER (WHERE transaction_type = 'REFUND'), 0),
    round(avg(amount), 2),
    count(DISTINCT card_id),
    min(event_time),
    max(event_time)
FROM transactions
WHERE event_time >= %(day)s::date AT TIME ZONE 'UTC'
  AND event_time < (%(day)s::date + 1) AT TIME ZONE 'UTC'
GROUP BY merchant_id, currency
