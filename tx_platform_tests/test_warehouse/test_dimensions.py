"""The dimensions on the real PostgreSQL (a scratch schema of each test's own): written from the producer's
pools, idempotent, merchants type 1 (overwritten), customers type 2 on the address (a move closes the
current version and opens a new one), the name type 1."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from tx_platform.pipelines import TRANSACTIONS
from tx_platform.pipelines.transactions._generator import build_pools
from tx_platform.warehouse import DimensionLoad, load_dimensions, migrate, pool_rows
from tx_platform_tests.test_warehouse.conftest import rows as _rows

pytestmark = pytest.mark.integration


def _load(dsn: str, *rows: object, as_of: datetime) -> DimensionLoad:
    conn = psycopg2.connect(dsn)
    try:
        return load_dimensions(conn, *rows, as_of=as_of)  # type: ignore[arg-type]
    finally:
        conn.close()


def test_dimensions_from_the_pools_and_a_customer_who_moves_gets_a_new_version(scratch_dsn: str) -> None:
    migrate(scratch_dsn, [TRANSACTIONS])
    merchants, customers, cards = pool_rows(3)
    pools = build_pools(3)
    # every entity of the pools, independently counted
    assert len(customers) == len({c.customer_id for c in pools.cards}) == 2000
    expected_merchants = (
        sum(len(v) for v in pools.merchants_by_country.values())
        + sum(len(v) for v in pools.atms_by_country.values())
        + len(pools.transfer_hubs)
    )
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    first = _load(scratch_dsn, merchants, customers, cards, as_of=t0)
    assert first == DimensionLoad(expected_merchants, 2000, 0, 0, len(pools.cards))
    assert _load(scratch_dsn, merchants, customers, cards, as_of=t0 + timedelta(hours=1)) == DimensionLoad(
        0, 0, 0, 0, 0
    )

    # customer 7 moves, customer 8 corrects their name, merchant 0 is renamed
    mover, renamed = customers[7], customers[8]
    moved = dataclasses.replace(mover, city="Somewhere Else", latitude=mover.latitude + 1.0)
    customers2 = [*customers[:7], moved, dataclasses.replace(renamed, name="New Name"), *customers[9:]]
    merchants2 = [dataclasses.replace(merchants[0], name="Renamed Shop"), *merchants[1:]]
    t1 = t0 + timedelta(days=10)
    assert _load(scratch_dsn, merchants2, customers2, cards, as_of=t1) == DimensionLoad(1, 1, 1, 1, 0)

    versions = _rows(
        scratch_dsn,
        "SELECT city, latitude, valid_from, valid_to, is_current FROM customers WHERE customer_id = %s "
        "ORDER BY valid_from",
        (mover.customer_id,),
    )
    assert versions == [
        (mover.city, mover.latitude, t0, t1, False),
        ("Somewhere Else", mover.latitude + 1.0, t1, None, True),
    ]
    assert _rows(scratch_dsn, "SELECT name, count(*) FROM customers WHERE customer_id = %s GROUP BY 1",
                 (renamed.customer_id,)) == [("New Name", 1)]  # fmt: skip
    assert _rows(scratch_dsn, "SELECT count(*), count(*) FILTER (WHERE is_current) FROM customers") == [(2001, 2000)]
    assert _rows(scratch_dsn, "SELECT name FROM merchants WHERE merchant_id = %s", (merchants[0].merchant_id,)) == [
        ("Renamed Shop",)
    ]
    assert _rows(scratch_dsn, "SELECT count(*) FROM merchants") == [(expected_merchants,)]
    # the address a transaction saw: the version valid at its time
    at = _rows(
        scratch_dsn,
        "SELECT city FROM customers WHERE customer_id = %s AND valid_from <= %s "
        "AND (valid_to IS NULL OR %s < valid_to)",
        (mover.customer_id, t1 - timedelta(seconds=1), t1 - timedelta(seconds=1)),
    )
    assert at == [(mover.city,)]
