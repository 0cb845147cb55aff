-- Dimensions of the transactions, written from the producer's entity pools (`txp db load-dimensions`).

-- Merchants: slowly changing type 1 (a change overwrites the row: only the present matters for a
-- merchant's name, category and place). ATMs and transfer hubs are merchants too (their ids appear in
-- transactions.merchant_id).
CREATE TABLE IF NOT EXISTS merchants (
    merchant_id       text             PRIMARY KEY,
    name              text             NOT NULL,
    merchant_category text             NOT NULL,
    category_label    text             NOT NULL,
    country           text             NOT NULL,
    city              text             NOT NULL,
    latitude          double precision NOT NULL,
    longitude         double precision NOT NULL,
    updated_at        timestamptz      NOT NULL DEFAULT now()
);

-- Customers: slowly changing type 2 on the address (country, city, coordinates): a move closes the
-- current version (valid_to = the load's time, is_current = false) and adds a new one valid from then,
-- so a transaction joins the address the customer had at its event time. The name is type 1 (corrected
-- in place on the current version). Exactly one current version per customer (partial unique index).
CREATE TABLE IF NOT EXISTS customers (
    customer_key  bigserial        PRIMARY KEY,
    customer_id   text             NOT NULL,
    name          text             NOT NULL,
    country       text             NOT NULL,
    city          text             NOT NULL,
    latitude      double precision NOT NULL,
    longitude     double precision NOT NULL,
    valid_from    timestamptz      NOT NULL,
    valid_to      timestamptz,
    is_current    boolean          NOT NULL DEFAULT true,
    CHECK (valid_to IS NULL OR valid_to > valid_from),
    CHECK (is_current = (valid_to IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS customers_current_key ON customers (customer_id) WHERE is_current;
CREATE INDEX IF NOT EXISTS customers_customer_id_idx ON customers (customer_id, valid_from);

-- Which card and account belong to which customer (the pools' cards; fixed once issued).
CREATE TABLE IF NOT EXISTS cards (
    card_id     text PRIMARY KEY,
    account_id  text NOT NULL,
    customer_id text NOT NULL
);
CREATE INDEX IF NOT EXISTS cards_customer_id_idx ON cards (customer_id);
