-- Rebuild one day of hourly_volume from transactions (parameter: %(day)s, a UTC date).
-- Runs in one transaction with the DELETE before it, so a partition is replaced atomically.
-- Every hour 0-23 for every currency seen that day, so a quiet hour is a row of zeros, not a gap.
WITH day_rows AS (
    SELECT extract(hour FROM event_time AT TIME ZONE 'UTC')::smallint AS hour, currency, amount, account_id
    FROM transactions
    WHERE event_time >= %(day)s::date AT TIME ZONE 'UTC'
      AND event_time < (%(day)s::date + 1) AT TIME ZONE 'UTC'
),
per_hour AS (
    SELECT hour, currency, count(*) AS n, sum(amount) AS amount, count(DISTINCT account_id) AS accounts
    FROM day_rows
    GROUP BY hour, currency
)
INSERT INTO hourly_volume (day, hour, currency, transaction_count, total_amount, unique_accounts)
SELECT %(day)s::date, h.hour, c.currency, coalesce(p.n, 0), coalesce(p.amount, 0), coalesce(p.accounts, 0)
FROM generate_series(0, 23) AS h(hour)
CROSS JOIN (SELECT DISTINCT currency FROM day_rows) AS c
LEFT JOIN per_hour AS p ON p.hour = h.hour AND p.currency = c.currency
