"""The dimension tables ``merchants`` (type 1), ``customers`` (type 2 on the address) and ``cards``,
written from the producer's entity pools (``build_pools(seed)``), so analysts join transactions to who
and where.

A load is one transaction: merchants are upserted (a change overwrites), cards inserted once, and each
customer whose address differs from its current version gets that version closed at ``as_of`` and a
new current one from ``as_of``; a name change corrects the current version in place. Loading the same
pools twice changes nothing. Written by the pipeline role (rows, no DDL): the tables come from the
``transactions`` pipeline's migration 0004.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg2.extensions import connection as Connection
from psycopg2.extras import execute_values

#: execute_values' page size large enough for one statement (so ``rowcount`` counts every row).
_ONE_STATEMENT = 1_000_000


@dataclass(frozen=True)
class CustomerRow:
    """A customer as the pools know it now (its home is its address)."""

    customer_id: str
    name: str
    country: str
    city: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class MerchantRow:
    """A merchant (or ATM, or transfer hub) as the pools know it now."""

    merchant_id: str
    name: str
    merchant_category: str
    category_label: str
    country: str
    city: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class DimensionLoad:
    """What one load changed."""

    merchants_written: int
    customers_added: int
    customers_closed: int
    customers_renamed: int
    cards_added: int


def pool_rows(seed: int) -> tuple[list[MerchantRow], list[CustomerRow], list[tuple[str, str, str]]]:
    """(merchants, customers, cards as (card, account, customer)) of the producer's pools for ``seed``."""
    from tx_platform.pipelines.transactions._generator import build_pools

    pools = build_pools(seed)
    merchants = [
        *(m for ms in pools.merchants_by_country.values() for m in ms),
        *(m for ms in pools.atms_by_country.values() for m in ms),
        *pools.transfer_hubs.values(),
    ]
    merchant_rows = [
        MerchantRow(m.merchant_id, m.name, m.category.mcc, m.category.label, m.place.country, m.place.city,
                    m.place.latitude, m.place.longitude)
        for m in merchants
    ]  # fmt: skip
    customers: dict[str, CustomerRow] = {}
    for card in pools.cards:
        home = card.home
        customers[card.customer_id] = CustomerRow(
            card.customer_id, card.customer_name, home.country, home.city, home.latitude, home.longitude
        )
    cards = [(c.card_id, c.account_id, c.customer_id) for c in pools.cards]
    return merchant_rows, list(customers.values()), cards


def load_dimensions(
    conn: Connection,
    merchants: Iterable[MerchantRow],
    customers: Iterable[CustomerRow],
    cards: Iterable[tuple[str, str, str]] = (),
    as_of: datetime | None = None,
) -> DimensionLoad:
    """Write the dimensions in one transaction (see the module docstring); ``as_of`` (UTC-aware, default
    now) is when a changed address took effect."""
    at = as_of or datetime.now(UTC)
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            """
            INSERT INTO merchants AS m (merchant_id, name, merchant_category, category_label, country, city,
                                        latitude, longitude, updated_at)
            VALUES %s
            ON CONFLICT (merchant_id) DO UPDATE SET
                name = EXCLUDED.name, merchant_category = EXCLUDED.merchant_category,
                category_label = EXCLUDED.category_label, country = EXCLUDED.country, city = EXCLUDED.city,
                latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, updated_at = EXCLUDED.updated_at
            WHERE (m.name, m.merchant_category, m.category_label, m.country, m.city, m.latitude, m.longitude)
                IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.merchant_category, EXCLUDED.category_label,
                                  EXCLUDED.country, EXCLUDED.city, EXCLUDED.latitude, EXCLUDED.longitude)
            """,
            [(*_fields(m), at) for m in merchants],
            page_size=_ONE_STATEMENT,
        )
        merchants_written = cur.rowcount
        cur.execute(
            "CREATE TEMP TABLE stage_customers (customer_id text PRIMARY KEY, name text, country text, city text, "
            "latitude double precision, longitude double precision) ON COMMIT DROP"
        )
        execute_values(
            cur,
            "INSERT INTO stage_customers (customer_id, name, country, city, latitude, longitude) VALUES %s",
            [_fields(c) for c in customers],
            page_size=_ONE_STATEMENT,
        )
        # type 2: a changed address closes the current version ...
        cur.execute(
            """
            UPDATE customers c SET valid_to = %(at)s, is_current = false
            FROM stage_customers s
            WHERE c.customer_id = s.customer_id AND c.is_current
              AND (c.country, c.city, c.latitude, c.longitude)
                  IS DISTINCT FROM (s.country, s.city, s.latitude, s.longitude)
            """,
            {"at": at},
        )
        closed = cur.rowcount
        # ... type 1: a new name corrects the current version in place ...
        cur.execute(
            "UPDATE customers c SET name = s.name FROM stage_customers s "
            "WHERE c.customer_id = s.customer_id AND c.is_current AND c.name <> s.name"
        )
        renamed = cur.rowcount
        # ... and every customer without a current version (new, or just closed) gets one from as_of
        cur.execute(
            """
            INSERT INTO customers (customer_id, name, country, city, latitude, longitude, valid_from, is_current)
            SELECT s.customer_id, s.name, s.country, s.city, s.latitude, s.longitude, %(at)s, true
            FROM stage_customers s
            WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id AND c.is_current)
            """,
            {"at": at},
        )
        added = cur.rowcount
        execute_values(
            cur,
            "INSERT INTO cards (card_id, account_id, customer_id) VALUES %s ON CONFLICT (card_id) DO NOTHING",
            list(cards),
            page_size=_ONE_STATEMENT,
        )
        cards_added = cur.rowcount
    return DimensionLoad(merchants_written, added, closed, renamed, cards_added)


def _fields(row: Any) -> tuple[Any, ...]:  # noqa: ANN401 - a row dataclass
    return tuple(vars(row).values())
