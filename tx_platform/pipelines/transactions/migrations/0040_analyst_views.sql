-- Views for analysts (the txp_analyst role reads every table and view: `psql "$TXP_ANALYST_DSN"`).
-- Amounts are never summed across currencies. Days are UTC days of event_time.

-- The fraud alerts the views read are made by migration 0030 (streaming fraud detection); this repeats its
-- definition, so the views are valid in a warehouse where 0030 is not there yet (a no-op where it is).
CREATE TABLE IF NOT EXISTS fraud_alerts (
    alert_id         uuid        PRIMARY KEY,
    rule             text        NOT NULL CHECK (rule IN ('velocity', 'amount_spike', 'impossible_travel', 'card_testing')),
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    account_id       text        NOT NULL,
    card_id          text        NOT NULL,
    transaction_ids  text[]      NOT NULL CHECK (cardinality(transaction_ids) > 0),
    event_time       timestamptz NOT NULL,
    details          jsonb       NOT NULL DEFAULT '{}',
    batch_id         bigint      NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    published_offset bigint
);

-- Per day and currency: purchases, refunds, net revenue (purchases minus refunds), and how many
-- records arrived later than the allowed lateness.
CREATE OR REPLACE VIEW daily_revenue AS
SELECT (event_time AT TIME ZONE 'UTC')::date                                 AS day,
       currency,
       count(*)                                                              AS transactions,
       count(*) FILTER (WHERE transaction_type = 'PURCHASE')                 AS purchases,
       count(*) FILTER (WHERE transaction_type = 'REFUND')                   AS refunds,
       coalesce(sum(amount) FILTER (WHERE transaction_type = 'PURCHASE'), 0) AS purchase_amount,
       coalesce(sum(amount) FILTER (WHERE transaction_type = 'REFUND'), 0)   AS refund_amount,
       coalesce(sum(amount) FILTER (WHERE transaction_type = 'PURCHASE'), 0)
           - coalesce(sum(amount) FILTER (WHERE transaction_type = 'REFUND'), 0) AS net_revenue,
       count(*) FILTER (WHERE late)                                          AS late_transactions
FROM transactions
GROUP BY 1, 2;

-- Merchants by purchase amount, ranked within each currency (1 = the largest), with the merchant
-- dimension's name and category label (NULL for a merchant not loaded: txp db load-dimensions).
CREATE OR REPLACE VIEW top_merchants AS
SELECT t.merchant_id,
       m.name                                                            AS merchant_name,
       t.merchant_category,
       m.category_label,
       m.country,
       t.currency,
       count(*)                                                          AS purchases,
       sum(t.amount)                                                     AS purchase_amount,
       count(DISTINCT t.customer_id)                                     AS customers,
       rank() OVER (PARTITION BY t.currency ORDER BY sum(t.amount) DESC) AS rank_in_currency
FROM transactions t
LEFT JOIN merchants m USING (merchant_id)
WHERE t.transaction_type = 'PURCHASE'
GROUP BY t.merchant_id, m.name, t.merchant_category, m.category_label, m.country, t.currency;

-- Per merchant category: transactions, how many were named by a fraud alert, and the share.
CREATE OR REPLACE VIEW fraud_rate_by_category AS
WITH flagged AS (
    SELECT DISTINCT unnest(transaction_ids) AS transaction_id FROM fraud_alerts
), labels AS (
    SELECT merchant_category, min(category_label) AS category_label FROM merchants GROUP BY 1
)
SELECT t.merchant_category,
       l.category_label,
       count(*)                                                     AS transactions,
       count(f.transaction_id)                                      AS flagged_transactions,
       round(count(f.transaction_id)::numeric / count(*), 6)       AS fraud_rate
FROM transactions t
LEFT JOIN flagged f ON f.transaction_id = t.transaction_id::text
LEFT JOIN labels l USING (merchant_category)
GROUP BY t.merchant_category, l.category_label;

-- One row per customer: the current address (and how often it changed), cards and accounts, and
-- activity (through the accounts: transactions.account_id is indexed, and a filter on customer_id is
-- pushed into each grouped subquery), with the fraud alerts on those accounts.
CREATE OR REPLACE VIEW customer_360 AS
SELECT c.customer_id,
       c.name,
       c.country,
       c.city,
       c.valid_from                                                               AS address_since,
       (SELECT count(*) - 1 FROM customers v WHERE v.customer_id = c.customer_id) AS address_changes,
       (SELECT count(*) FROM cards k WHERE k.customer_id = c.customer_id)         AS cards,
       (SELECT count(DISTINCT k.account_id) FROM cards k WHERE k.customer_id = c.customer_id) AS accounts,
       coalesce(x.transactions, 0)                                                AS transactions,
       coalesce(x.merchants, 0)                                                   AS merchants,
       coalesce(x.countries, 0)                                                   AS countries,
       x.first_transaction_at,
       x.last_transaction_at,
       coalesce(x.late_transactions, 0)                                           AS late_transactions,
       coalesce(al.fraud_alerts, 0)                                               AS fraud_alerts,
       al.last_alert_at
FROM customers c
LEFT JOIN (
    SELECT a.customer_id,
           count(*)                       AS transactions,
           count(DISTINCT t.merchant_id)  AS merchants,
           count(DISTINCT t.country)      AS countries,
           min(t.event_time)              AS first_transaction_at,
           max(t.event_time)              AS last_transaction_at,
           count(*) FILTER (WHERE t.late) AS late_transactions
    FROM (SELECT DISTINCT customer_id, account_id FROM cards) a
    JOIN transactions t ON t.account_id = a.account_id
    GROUP BY a.customer_id
) x USING (customer_id)
LEFT JOIN (
    SELECT a.customer_id, count(*) AS fraud_alerts, max(f.detected_at) AS last_alert_at
    FROM (SELECT DISTINCT customer_id, account_id FROM cards) a
    JOIN fraud_alerts f ON f.account_id = a.account_id
    GROUP BY a.customer_id
) al USING (customer_id)
WHERE c.is_current;
