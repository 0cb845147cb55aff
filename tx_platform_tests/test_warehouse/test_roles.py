"""Roles and analyst views on the session's real stack: the pipeline role writes rows and creates nothing,
the analyst reads every table and view and writes nothing, every README example query runs as the
analyst; and, in a scratch schema, each view's figures equal those computed here from the seeded records."""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

import psycopg2
import pytest
from psycopg2 import errors

from tx_platform.config import Settings
from tx_platform.pipelines import TRANSACTIONS, PipelineSpec
from tx_platform.warehouse import PartitionRange, commit_batch, load_dimensions, migrate, pool_rows
from tx_platform_tests.test_warehouse.conftest import rows as _rows
from tx_platform_tests.test_warehouse.test_partitions import _staged

pytestmark = pytest.mark.integration

VIEWS = ("top_merchants", "fraud_rate_by_category", "daily_revenue", "customer_360")


def examples() -> list[tuple[str, str]]:
    """(title, query) of each example in ``analyst_examples.sql`` (what the README shows)."""
    text = resources.files("tx_platform.warehouse").joinpath("analyst_examples.sql").read_text("utf-8")
    found = []
    for block in text.split("\n\n")[1:]:
        title, _, query = block.strip().partition("\n")
        found.append((title.removeprefix("-- "), query.strip().rstrip(";")))
    return found


def test_the_pipeline_role_writes_rows_and_creates_nothing(settings: Settings) -> None:
    conn = psycopg2.connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("txp_pipeline",)
            for ddl in ("CREATE TABLE public.pipeline_scratch (x int)", "CREATE VIEW public.pipeline_view AS SELECT 1"):
                with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema public"):
                    cur.execute(ddl)
                conn.rollback()
            with pytest.raises(errors.InsufficientPrivilege):
                cur.execute("ALTER TABLE transactions ADD COLUMN x int")
            conn.rollback()
            with pytest.raises(errors.InsufficientPrivilege):
                cur.execute("DELETE FROM schema_migrations")
            conn.rollback()
            # its rows: written and read (rolled back)
            cur.execute(
                "INSERT INTO sink_batches (topic, batch_id, records, inserted, quarantined, skipped) "
                "VALUES ('roles_probe', 0, 1, 1, 0, 0) RETURNING records"
            )
            assert cur.fetchone() == (1,)
            cur.execute("DELETE FROM sink_batches WHERE topic = 'roles_probe'")
            assert cur.rowcount == 1
            conn.rollback()
    finally:
        conn.close()


def test_the_analyst_reads_every_table_and_view_and_writes_nothing() -> None:
    dsn = os.environ["TXP_ANALYST_DSN"]
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("txp_analyst",)
            cur.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition ORDER BY 1"
            )
            relations = [name for (name,) in cur.fetchall()]
            assert set(VIEWS) | {"transactions", "merchants", "customers", "cards", "quarantine"} <= set(relations)
            for name in relations:  # SELECT on each, including those made after the role (default privileges)
                cur.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - names from the catalog
                assert cur.fetchone()[0] >= 0
            for statement in (
                "INSERT INTO transactions (transaction_id) VALUES (gen_random_uuid())",
                "UPDATE merchants SET name = 'x'",
                "DELETE FROM customers",
                "CREATE TABLE public.analyst_scratch (x int)",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(statement)
                conn.rollback()
    finally:
        conn.close()


def test_every_readme_example_runs_as_the_analyst(settings: Settings, spec: PipelineSpec) -> None:
    # a customer with transactions today, so the examples have rows to show
    conn = psycopg2.connect(settings.dsn())
    try:
        load_dimensions(conn, *pool_rows(42))
        merchants, customers, cards = pool_rows(42)
        card = next(c for c in cards if c[2] == "C0000042")
        now = datetime.now(UTC).replace(microsecond=0)
        records = [
            {**r, "card_id": card[0], "account_id": card[1], "customer_id": card[2], "currency": "EUR"}
            for r in spec.generate(5, 42, now - timedelta(minutes=30), span=timedelta(minutes=20))
        ]
        lines = [
            _staged(spec, r, 0, i, r["event_time"] + timedelta(minutes=11 * (i % 2))) for i, r in enumerate(records)
        ]
        commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, len(lines) - 1)})
    finally:
        conn.close()
    shown = examples()
    assert len(shown) == 7
    conn = psycopg2.connect(os.environ["TXP_ANALYST_DSN"])
    try:
        with conn.cursor() as cur:
            for title, query in shown:
                cur.execute(query)
                result = cur.fetchall()
                if "customer_id = 'C0000042'" in query or "daily_revenue" in query or "Today" in title:
                    assert result, f"example {title!r} returned no row"
            cur.execute("SELECT transactions, late_transactions FROM customer_360 WHERE customer_id = 'C0000042'")
            transactions, late = cur.fetchone()
            assert transactions >= 5 and late >= 2
    finally:
        conn.close()


def test_each_view_s_figures_equal_those_computed_from_the_seeded_records(scratch_dsn: str) -> None:
    migrate(scratch_dsn, [TRANSACTIONS])
    merchants, customers, cards = pool_rows(5)
    conn = psycopg2.connect(scratch_dsn)
    start = datetime(2026, 4, 1, tzinfo=UTC)
    records = list(TRANSACTIONS.generate(600, 5, start, span=timedelta(days=3)))
    # every third record arrives 15 minutes after its event time (late: beyond 10 minutes)
    delays = [timedelta(minutes=15) if i % 3 == 0 else timedelta(seconds=5) for i in range(len(records))]
    lines = [
        _staged(TRANSACTIONS, r, 0, i, r["event_time"] + d)
        for i, (r, d) in enumerate(zip(records, delays, strict=True))
    ]
    flagged = [str(records[i]["transaction_id"]) for i in (3, 4, 50)]
    try:
        load_dimensions(conn, merchants, customers, cards)
        commit_batch(conn, TRANSACTIONS, 0, lines, [], {0: PartitionRange(0, len(lines) - 1)})
        with conn, conn.cursor() as cur:
            for n, (ids, rule) in enumerate(((flagged[:2], "velocity"), (flagged[2:], "amount_spike"))):
                first = next(r for r in records if str(r["transaction_id"]) == ids[0])
                cur.execute(
                    "INSERT INTO fraud_alerts (alert_id, rule, topic, kafka_partition, account_id, card_id, "
                    "transaction_ids, event_time, batch_id) VALUES (%s, %s, 'transactions', 0, %s, %s, %s, %s, 0)",
                    (str(uuid.UUID(int=n + 1)), rule, first["account_id"], first["card_id"], ids, first["event_time"]),
                )
    finally:
        conn.close()

    # daily_revenue
    revenue: dict[tuple[Any, str], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0), Decimal(0), 0])
    for r, d in zip(records, delays, strict=True):
        row = revenue[(r["event_time"].astimezone(UTC).date(), r["currency"])]
        row[0] += 1
        if r["transaction_type"] == "PURCHASE":
            row[1] += 1
            row[3] += r["amount"]
        if r["transaction_type"] == "REFUND":
            row[2] += 1
            row[4] += r["amount"]
        row[5] += d > timedelta(minutes=10)
    expected = sorted(
        (day, cur, n, p, rf, pa, ra, pa - ra, late) for (day, cur), (n, p, rf, pa, ra, late) in revenue.items()
    )
    got = _rows(
        scratch_dsn,
        "SELECT day, currency, transactions, purchases, refunds, purchase_amount, refund_amount, net_revenue, "
        "late_transactions FROM daily_revenue ORDER BY 1, 2",
    )
    assert got == expected

    # top_merchants
    names = {m.merchant_id: m.name for m in merchants}
    sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    counts: Counter[tuple[str, str]] = Counter()
    for r in records:
        if r["transaction_type"] == "PURCHASE":
            sums[(r["merchant_id"], r["currency"])] += r["amount"]
            counts[(r["merchant_id"], r["currency"])] += 1
    got_top = _rows(
        scratch_dsn, "SELECT merchant_id, merchant_name, currency, purchases, purchase_amount FROM top_merchants"
    )
    assert sorted(got_top) == sorted((m, names[m], c, counts[(m, c)], s) for (m, c), s in sums.items())
    (eur_first,) = _rows(
        scratch_dsn, "SELECT merchant_id FROM top_merchants WHERE currency = 'EUR' AND rank_in_currency = 1"
    )
    assert sums[(eur_first[0], "EUR")] == max(s for (m, c), s in sums.items() if c == "EUR")

    # fraud_rate_by_category
    per_category: Counter[str] = Counter(r["merchant_category"] for r in records)
    flagged_per: Counter[str] = Counter(r["merchant_category"] for r in records if str(r["transaction_id"]) in flagged)
    got_fraud = _rows(
        scratch_dsn,
        "SELECT merchant_category, transactions, flagged_transactions, fraud_rate FROM fraud_rate_by_category",
    )
    assert sorted(got_fraud) == sorted(
        (c, n, flagged_per[c], round(Decimal(flagged_per[c]) / n, 6)) for c, n in per_category.items()
    )
    assert sum(f for _, _, f, _ in got_fraud) == 3

    # customer_360
    by_customer: dict[str, list[Any]] = defaultdict(list)
    for r, d in zip(records, delays, strict=True):
        by_customer[r["customer_id"]].append((r, d))
    alerts_per: Counter[str] = Counter()
    for ids in (flagged[:2], flagged[2:]):
        alerts_per[next(r["customer_id"] for r in records if str(r["transaction_id"]) == ids[0])] += 1
    got_360 = {
        row[0]: row[1:]
        for row in _rows(
            scratch_dsn,
            "SELECT customer_id, transactions, merchants, first_transaction_at, last_transaction_at, "
            "late_transactions, fraud_alerts, address_changes FROM customer_360",
        )
    }
    assert len(got_360) == len(customers)
    for customer, items in by_customer.items():
        times = [r["event_time"] for r, _ in items]
        assert got_360[customer] == (
            len(items),
            len({r["merchant_id"] for r, _ in items}),
            min(times),
            max(times),
            sum(d > timedelta(minutes=10) for _, d in items),
            alerts_per[customer],
            0,
        )
    assert sum(v[0] for v in got_360.values()) == 600


def test_the_examples_file_holds_only_read_queries() -> None:
    for title, query in examples():
        assert re.match(r"^SELECT\b", query), title
