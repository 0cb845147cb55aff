"""The daily derived tables of `transactions`: each day rebuilt from `transactions` in SQL, read back, and checked.

Every table is keyed by day first and holds one UTC day per partition. A day is recomputed with
``DELETE ... WHERE day = d`` and an ``INSERT ... SELECT`` (the table's ``<table>.sql`` beside this
module) in the caller's transaction, so a partition is replaced atomically and recomputing it twice
leaves the same rows (late rows that reached ``transactions`` since are counted the second time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cache
from importlib import resources

import pandas as pd
import pandera.pandas as pa
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from tx_platform.contract import country_codes, currency_codes, python_full_match

#: Where the tables' SQL lives (beside this module).
_PACKAGE = "tx_platform.pipelines.transactions"
#: Count and amount per currency of one UTC day of `transactions` (the same range every rebuild selects).
_DAY_TOTALS = (
    "SELECT currency, count(*), sum(amount) FROM transactions WHERE event_time >= %(day)s::date AT TIME ZONE 'UTC' "
    "AND event_time < (%(day)s::date + 1) AT TIME ZONE 'UTC' GROUP BY currency"
)


@dataclass(frozen=True)
class Column:
    """One column of a derived table, as the migration declares it (the asset's column schema)."""

    name: str
    type: str
    description: str


@dataclass(frozen=True)
class DerivedTable:
    """A daily derived table: its columns, its rebuild query and how it reconciles with `transactions`."""

    name: str
    #: business key after ``day`` (the primary key is ``(day, *key)``)
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str
    #: the columns whose per-currency sums equal the day's count and amount in `transactions`
    count_column: str = "transaction_count"
    amount_column: str = "total_amount"
    timestamps: tuple[str, ...] = field(default=())

    @property
    def insert_sql(self) -> str:
        """The ``INSERT ... SELECT`` of one day (parameter ``%(day)s``)."""
        return resources.files(_PACKAGE).joinpath(f"{self.name}.sql").read_text("utf-8")

    @property
    def column_names(self) -> list[str]:
        """Every column, in table order."""
        return [c.name for c in self.columns]


def _c(name: str, type_: str, description: str) -> Column:
    return Column(name, type_, description)


_DAY = _c("day", "date", "UTC day of event_time (the partition).")
_CURRENCY = _c("currency", "text", "ISO 4217 code; amounts are never summed across currencies.")
_COUNT = _c("transaction_count", "bigint", "Transactions of the day in the group.")
_TOTAL = _c("total_amount", "numeric(38,2)", "Sum of amount over the group.")
_COMPUTED = _c("computed_at", "timestamptz", "When the partition was last recomputed.")

DAILY_MERCHANT_SUMMARY = DerivedTable(
    name="daily_merchant_summary",
    key=("merchant_id", "currency"),
    columns=(
        _DAY,
        _c("merchant_id", "text", "Merchant."),
        _CURRENCY,
        _c("merchant_category", "text", "ISO 18245 merchant category code."),
        _c("country", "text", "ISO 3166-1 alpha-2 country of the merchant."),
        _COUNT,
        _c("purchase_count", "bigint", "PURCHASE transactions."),
        _c("refund_count", "bigint", "REFUND transactions."),
        _TOTAL,
        _c("purchase_amount", "numeric(38,2)", "Sum of PURCHASE amounts."),
        _c("refund_amount", "numeric(38,2)", "Sum of REFUND amounts."),
        _c("avg_amount", "numeric(18,2)", "Mean amount, rounded half up to cents."),
        _c("unique_cards", "bigint", "Distinct cards."),
        _c("first_event_time", "timestamptz", "Earliest event_time."),
        _c("last_event_time", "timestamptz", "Latest event_time."),
        _COMPUTED,
    ),
    description="Per day (UTC), merchant and currency: counts, amounts, refunds, unique cards.",
    timestamps=("first_event_time", "last_event_time"),
)
DAILY_CATEGORY_VOLUME = DerivedTable(
    name="daily_category_volume",
    key=("merchant_category", "currency"),
    columns=(
        _DAY,
        _c("merchant_category", "text", "ISO 18245 merchant category code."),
        _CURRENCY,
        _COUNT,
        _c("purchase_count", "bigint", "PURCHASE transactions."),
        _c("refund_count", "bigint", "REFUND transactions."),
        _TOTAL,
        _c("purchase_amount", "numeric(38,2)", "Sum of PURCHASE amounts."),
        _c("refund_amount", "numeric(38,2)", "Sum of REFUND amounts."),
        _c("unique_merchants", "bigint", "Distinct merchants."),
        _c("unique_cards", "bigint", "Distinct cards."),
        _COMPUTED,
    ),
    description="Per day (UTC), merchant category (MCC) and currency: counts, amounts, distinct merchants and cards.",
)
CUSTOMER_DAILY_SPEND = DerivedTable(
    name="customer_daily_spend",
    key=("customer_id", "currency"),
    columns=(
        _DAY,
        _c("customer_id", "text", "Customer."),
        _CURRENCY,
        _COUNT,
        _TOTAL,
        _c("spend_amount", "numeric(38,2)", "Sum of debits: purchases, withdrawals and transfers."),
        _c("refund_amount", "numeric(38,2)", "Sum of REFUND amounts (credits)."),
        _c("unique_merchants", "bigint", "Distinct merchants."),
        _c("unique_cards", "bigint", "Distinct cards."),
        _c("first_event_time", "timestamptz", "Earliest event_time."),
        _c("last_event_time", "timestamptz", "Latest event_time."),
        _COMPUTED,
    ),
    description="Per day (UTC), customer and currency: spend (debits), refunds, merchants and cards used.",
    timestamps=("first_event_time", "last_event_time"),
)
HOURLY_VOLUME = DerivedTable(
    name="hourly_volume",
    key=("hour", "currency"),
    columns=(
        _DAY,
        _c("hour", "smallint", "Hour of the UTC day, 0-23."),
        _CURRENCY,
        _COUNT,
        _TOTAL,
        _c("unique_accounts", "bigint", "Distinct accounts."),
        _COMPUTED,
    ),
    description="Per day (UTC), hour and currency seen that day: all 24 hours of the day, zeros where an hour had "
    "none.",
)
#: Every daily derived table of the pipeline, in the order their assets are declared.
DERIVED_TABLES: tuple[DerivedTable, ...] = (
    DAILY_MERCHANT_SUMMARY,
    DAILY_CATEGORY_VOLUME,
    CUSTOMER_DAILY_SPEND,
    HOURLY_VOLUME,
)
#: Kept for callers of the first derived table's name.
SUMMARY_TABLE = DAILY_MERCHANT_SUMMARY.name


def rebuild_day(conn: Connection, table: DerivedTable, day: date) -> int:
    """Replace one day of ``table`` in the caller's transaction (DELETE the day, INSERT ... SELECT); rows written."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {} WHERE day = %s").format(sql.Identifier(table.name)), (day,))
        cur.execute(table.insert_sql, {"day": day})
        return int(cur.rowcount)


def read_days(conn: Connection, table: DerivedTable, days: Sequence[date]) -> pd.DataFrame:
    """The rows of ``days`` of ``table`` as a DataFrame (without computed_at), in key order."""
    order = sql.SQL(", ").join(map(sql.Identifier, ("day", *table.key)))
    query = sql.SQL("SELECT * FROM {} WHERE day = ANY(%s) ORDER BY {}").format(sql.Identifier(table.name), order)
    with conn.cursor() as cur:
        cur.execute(query, (list(days),))
        columns = [d.name for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    for column in table.timestamps:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.drop(columns=["computed_at"])


def rebuild_daily_merchant_summary(conn: Connection, day: date) -> int:
    """Replace one day of daily_merchant_summary in the caller's transaction; returns rows written."""
    return rebuild_day(conn, DAILY_MERCHANT_SUMMARY, day)


def read_daily_merchant_summary(conn: Connection, day: date) -> pd.DataFrame:
    """One day of daily_merchant_summary as a pandas DataFrame (without computed_at)."""
    return read_days(conn, DAILY_MERCHANT_SUMMARY, [day])


_NON_NEGATIVE = pa.Check.ge(0)


def _money(positive: bool = False) -> pa.Column:
    # Decimal values are checked as floats: the schema judges ranges, the reconciliation judges exact sums
    return pa.Column("float64", pa.Check.gt(0) if positive else _NON_NEGATIVE)


def _ordered(df: pd.DataFrame) -> pd.Series:
    return df["first_event_time"] <= df["last_event_time"]


@cache
def derived_schema(name: str) -> pa.DataFrameSchema:
    """The Pandera schema of the rows of one or more days of derived table ``name``."""
    currencies = pa.Column(str, pa.Check.isin(sorted(currency_codes())))
    mcc = pa.Column(str, pa.Check.str_matches(python_full_match("[0-9]{4}")))
    counts = pa.Column("int64", pa.Check.gt(0))
    columns: dict[str, pa.Column]
    checks: list[pa.Check]
    if name == DAILY_MERCHANT_SUMMARY.name:
        columns = {
            "merchant_id": pa.Column(str),
            "merchant_category": mcc,
            "country": pa.Column(str, pa.Check.isin(sorted(country_codes()))),
            "transaction_count": counts,
            "purchase_count": pa.Column("int64", _NON_NEGATIVE),
            "refund_count": pa.Column("int64", _NON_NEGATIVE),
            "total_amount": _money(positive=True),
            "purchase_amount": _money(),
            "refund_amount": _money(),
            "avg_amount": _money(positive=True),
            "unique_cards": counts,
            "first_event_time": pa.Column("datetime64[ns, UTC]"),
            "last_event_time": pa.Column("datetime64[ns, UTC]"),
        }
        checks = [
            pa.Check(
                lambda df: df["purchase_count"] + df["refund_count"] <= df["transaction_count"], name="counts_add_up"
            ),
            pa.Check(lambda df: df["unique_cards"] <= df["transaction_count"], name="cards_le_transactions"),
            pa.Check(_ordered, name="time_range_ordered"),
            pa.Check(
                lambda df: (df["purchase_amount"] + df["refund_amount"]) <= df["total_amount"] + 0.005,
                name="amounts_add_up",
            ),
        ]
    elif name == DAILY_CATEGORY_VOLUME.name:
        columns = {
            "merchant_category": mcc,
            "transaction_count": counts,
            "purchase_count": pa.Column("int64", _NON_NEGATIVE),
            "refund_count": pa.Column("int64", _NON_NEGATIVE),
            "total_amount": _money(positive=True),
            "purchase_amount": _money(),
            "refund_amount": _money(),
            "unique_merchants": counts,
            "unique_cards": counts,
        }
        checks = [
            pa.Check(
                lambda df: df["purchase_count"] + df["refund_count"] <= df["transaction_count"], name="counts_add_up"
            ),
            pa.Check(lambda df: df["unique_merchants"] <= df["transaction_count"], name="merchants_le_transactions"),
            pa.Check(lambda df: df["unique_cards"] <= df["transaction_count"], name="cards_le_transactions"),
        ]
    elif name == CUSTOMER_DAILY_SPEND.name:
        columns = {
            "customer_id": pa.Column(str),
            "transaction_count": counts,
            "total_amount": _money(positive=True),
            "spend_amount": _money(),
            "refund_amount": _money(),
            "unique_merchants": counts,
            "unique_cards": counts,
            "first_event_time": pa.Column("datetime64[ns, UTC]"),
            "last_event_time": pa.Column("datetime64[ns, UTC]"),
        }
        checks = [
            pa.Check(
                lambda df: (df["spend_amount"] + df["refund_amount"] - df["total_amount"]).abs() < 0.005,
                name="spend_plus_refunds_is_total",
            ),
            pa.Check(_ordered, name="time_range_ordered"),
        ]
    elif name == HOURLY_VOLUME.name:
        columns = {
            "hour": pa.Column("int64", pa.Check.in_range(0, 23)),
            "transaction_count": pa.Column("int64", _NON_NEGATIVE),
            "total_amount": _money(),
            "unique_accounts": pa.Column("int64", _NON_NEGATIVE),
        }
        checks = [
            pa.Check(lambda df: df["unique_accounts"] <= df["transaction_count"], name="accounts_le_transactions"),
            # each (day, currency) has its 24 hours
            pa.Check(lambda df: df.groupby(["day", "currency"])["hour"].nunique() == 24, name="twenty_four_hours"),
        ]
    else:
        msg = f"no derived table {name!r}"
        raise KeyError(msg)
    return pa.DataFrameSchema(
        {"day": pa.Column("object"), "currency": currencies, **columns},
        checks=checks,
        unique=["day", *next(t.key for t in DERIVED_TABLES if t.name == name)],
        strict=True,
        coerce=True,
        name=name,
    )


def daily_merchant_summary_schema() -> pa.DataFrameSchema:
    """One partition (day) of ``daily_merchant_summary``."""
    return derived_schema(DAILY_MERCHANT_SUMMARY.name)


@dataclass(frozen=True)
class DailyReconciliation:
    """Counts and amounts per (day, currency) in `transactions` and in a derived table."""

    raw: dict[tuple[date, str], tuple[int, Decimal]]
    derived: dict[tuple[date, str], tuple[int, Decimal]]

    @property
    def matches(self) -> bool:
        """True when every day and currency has the same count and amount in both."""
        return self.raw == self.derived

    @property
    def summary(self) -> dict[tuple[date, str], tuple[int, Decimal]]:
        """The derived table's side (the name the first derived table's callers use)."""
        return self.derived

    def mismatches(self) -> list[dict[str, object]]:
        """The (day, currency) groups that differ, with both sides, in key order."""
        rows = []
        for day, currency in sorted(self.raw.keys() | self.derived.keys()):
            raw = self.raw.get((day, currency), (0, Decimal(0)))
            got = self.derived.get((day, currency), (0, Decimal(0)))
            if raw != got:
                rows.append(
                    {
                        "day": day.isoformat(),
                        "currency": currency,
                        "transactions_count": raw[0],
                        "derived_count": got[0],
                        "transactions_amount": str(raw[1]),
                        "derived_amount": str(got[1]),
                    }
                )
        return rows


def reconcile_days(conn: Connection, table: DerivedTable, days: Iterable[date]) -> DailyReconciliation:
    """Per day and currency: count and sum(amount) in `transactions` against the derived table's sums."""
    raw: dict[tuple[date, str], tuple[int, Decimal]] = {}
    derived: dict[tuple[date, str], tuple[int, Decimal]] = {}
    derived_query = sql.SQL(
        "SELECT currency, sum({count}), sum({amount}) FROM {table} WHERE day = %(day)s GROUP BY currency"
    ).format(
        count=sql.Identifier(table.count_column),
        amount=sql.Identifier(table.amount_column),
        table=sql.Identifier(table.name),
    )
    with conn.cursor() as cur:
        for day in days:
            cur.execute(_DAY_TOTALS, {"day": day})
            raw |= {(day, c): (int(n), Decimal(a)) for c, n, a in cur.fetchall()}
            cur.execute(derived_query, {"day": day})
            derived |= {(day, c): (int(n), Decimal(a)) for c, n, a in cur.fetchall()}
    return DailyReconciliation(raw, derived)


def daily_reconciliation(conn: Connection, day: date) -> DailyReconciliation:
    """Per-currency count and amount of ``day`` in transactions vs daily_merchant_summary."""
    return reconcile_days(conn, DAILY_MERCHANT_SUMMARY, [day])


def days_with_data(conn: Connection, first: date, last: date) -> list[date]:
    """UTC days between ``first`` and ``last`` (inclusive) that have rows in `transactions`."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT (event_time AT TIME ZONE 'UTC')::date AS d FROM transactions "
            "WHERE event_time >= %s::date AT TIME ZONE 'UTC' AND event_time < (%s::date + 1) AT TIME ZONE 'UTC' "
            "ORDER BY d",
            (first, last),
        )
        return [row[0] for row in cur.fetchall()]
