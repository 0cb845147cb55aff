-- Rebuild one day of customer_daily_spend from transactions (parameter: %(day)s, a UTC date).
-- Runs in one transaction with the DELETE before it, so a partition is replaced atomically.
-- Spend is every debit (purchases, withdrawals, transfers); refunds are credits, kept apart.
INSERT INTO customer_daily_spend (
    day, customer_id, currency,
    transaction_count, total_amount, spend_amount, refund_amount,
    unique_merchants, unique_cards, first_event_time, last_event_time
)
SELECT
    %(day)s::date,
    customer_id,
    currency,
    count(*),
    sum(amount),
    coalesce(sum(amount) FILTER (WHERE transaction_type <> 'REFUND'), 0),
    coalesce(sum(amount) FILTER (WHERE transaction_type = 'REFUND'), 0),
    count(DISTINCT merchant_id),
    count(DISTINCT card_id),
    min(event_time),
    max(event_time)
FROM transactions
WHERE event_time >= %(day)s::date AT TIME ZONE 'UTC'
  AND event_time < (%(day)s::date + 1) AT TIME ZONE 'UTC'
GROUP BY customer_id, currency
