-- Example queries for analysts, as the README shows them: paste into psql "$TXP_ANALYST_DSN".
-- A test runs each one as the analyst role (tx_platform_tests/test_warehouse/test_roles.py).

-- Revenue per day and currency over the last 7 days, with the records that arrived late
SELECT day, currency, transactions, purchases, refunds, net_revenue, late_transactions
FROM daily_revenue
WHERE day >= current_date - 7
ORDER BY day DESC, net_revenue DESC;

-- The 10 merchants with the largest purchase amount in EUR
SELECT rank_in_currency, merchant_id, merchant_name, category_label, country, purchases, purchase_amount
FROM top_merchants
WHERE currency = 'EUR'
ORDER BY rank_in_currency
LIMIT 10;

-- Merchant categories by share of transactions named in a fraud alert
SELECT merchant_category, category_label, transactions, flagged_transactions, fraud_rate
FROM fraud_rate_by_category
ORDER BY fraud_rate DESC, transactions DESC
LIMIT 10;

-- Everything about one customer
SELECT *
FROM customer_360
WHERE customer_id = 'C0000042';

-- The customers with the most fraud alerts, with where they live now
SELECT customer_id, name, city, country, transactions, fraud_alerts, last_alert_at
FROM customer_360
WHERE fraud_alerts > 0
ORDER BY fraud_alerts DESC, last_alert_at DESC
LIMIT 10;

-- A customer's address history (slowly changing type 2: one row per address, the current one open)
SELECT customer_id, city, country, valid_from, valid_to, is_current
FROM customers
WHERE customer_id = 'C0000042'
ORDER BY valid_from;

-- Today's transactions (one daily partition is read), how many arrived late
SELECT count(*) AS transactions, count(*) FILTER (WHERE late) AS late
FROM transactions
WHERE event_time >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
