"""`daily_merchant_summary`: one day rebuilt from `transactions`, read back, and checked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import cache
from importlib import resources

import pandas as pd
import pandera.pandas as pa
from psycopg2.extensions import connection as Connection

from tx_platform.contract import country_codes, currency_codes, python_full_match

#: The derived table.
SUMMARY_TABLE = "daily_merchant_summary"
#: Where its SQL lives (beside this module).
_PACKAGE = "tx_platform.pipelines.transactions"


def rebuild_daily_merchant_summary(conn: Connection, day: date) -> int:
    """Replace one day of daily_merchant_summary in the caller's transaction; returns rows written."""
    insert = resources.files(_PACKAGE).joinpath("daily_merchant_summary.sql").read_text("utf-8")
    with conn.cursor() as cur:
        cur.execute("DELETE FROM daily_merchant_summary WHERE day = %s", (day,))
        cur.execute(insert, {"day": day})
        return int(cur.rowcount)


def read_daily_merchant_summary(conn: Connection, day: date) -> pd.DataFrame:
    """One day of daily_merchant_summary as a pandas DataFrame (without computed_at)."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM daily_merchant_summary WHERE day = %s ORDER BY merchant_id, currency", (day,))
        columns = [d.name for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    for column in ("first_event_time", "last_event_time"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.drop(columns=["computed_at"])


@cache
def daily_merchant_summary_schema() -> pa.DataFrameSchema:
    """One partition (day) of ``daily_merchant_summary``."""
    non_negative = pa.Check.ge(0)
    return pa.DataFrameSchema(
        {
            "day": pa.Column("object"),
            "merchant_id": pa.Column(str),
            "currency": pa.Column(str, pa.Check.isin(sorted(currency_codes()))),
            "merchant_category": pa.Column(str, pa.Check.str_matches(python_full_match("[0-9]{4}"))),
            "country": pa.Column(str, pa.Check.isin(sorted(country_codes()))),
            "transaction_count": pa.Column("int64", pa.Check.gt(0)),
            "purchase_count": pa.Column("int64", non_negative),
            "refund_count": pa.Column("int64", non_negative),
            "total_amount": pa.Column("float64", pa.Check.gt(0)),
            "purchase_amount": pa.Column("float64", non_negative),
            "refund_amount": pa.Column("float64", non_negative),
            "avg_amount": pa.Column("float64", pa.Check.gt(0)),
            "unique_cards": pa.Column("int64", pa.Check.gt(0)),
            "first_event_time": pa.Column("datetime64[ns, UTC]"),
            "last_event_time": pa.Column("datetime64[ns, UTC]"),
        },
        checks=[
            pa.Check(
                lambda df: df["purchase_count"] + df["refund_count"] <= df["transaction_count"], name="counts_add_up"
            ),
            pa.Check(lambda df: df["unique_cards"] <= df["transaction_count"], name="cards_le_transactions"),
            pa.Check(lambda df: df["first_event_time"] <= df["last_event_time"], name="time_range_ordered"),
            pa.Check(
                lambda df: (df["purchase_amount"] + df["refund_amount"]) <= df["total_amount"] + 0.005,
                name="amounts_add_up",
            ),
        ],
        unique=["day", "merchant_id", "currency"],
        strict=True,
        coerce=True,
        name=SUMMARY_TABLE,
    )


@dataclass(frozen=True)
class DailyReconciliation:
    """Counts and amounts per currency of one day, in the raw table and in the summary."""

    raw: dict[str, tuple[int, Decimal]]
    summary: dict[str, tuple[int, Decimal]]

    @property
    def matches(self) -> bool:
        """True when every currency has the same count and amount in both."""
        return self.raw == self.summary


def daily_reconciliation(conn: Connection, day: date) -> DailyReconciliation:
    """Per-currency count and amount of ``day`` in transactions vs daily_merchant_summary."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT currency, count(*), sum(amount) FROM transactions
            WHERE event_time >= %(d)s::date AT TIME ZONE 'UTC' AND event_time < (%(d)s::date + 1) AT TIME ZONE 'UTC'
            GROUP BY currency
            """,
            {"d": day},
        )
        raw = {c: (int(n), Decimal(a)) for c, n, a in cur.fetchall()}
        cur.execute(
            "SELECT currency, sum(transaction_count), sum(total_amount) FROM daily_merchant_summary "
            "WHERE day = %s GROUP BY currency",
            (day,),
        )
        summary = {c: (int(n), Decimal(a)) for c, n, a in cur.fetchall()}
    return DailyReconciliation(raw, summary)
