"""Pandera schemas of the warehouse tables. The transactions schema derives from the contract."""

from __future__ import annotations

from functools import cache

import pandera.pandas as pa

from tx_platform.contract import MCC_PATTERN, UUID_PATTERN, country_codes, currency_codes, load_contract

_PANDAS_DTYPES = {
    "text": "str",
    "uuid": "str",
    "numeric(18,2)": "object",  # Decimal values: exactness matters more than vector speed here
    "double precision": "float64",
    "timestamptz": "datetime64[ns, UTC]",
    "bigint": "int64",
    "integer": "int64",
}

#: Extra checks per contract field, beyond type and nullability.
_FIELD_CHECKS: dict[str, list[pa.Check]] = {
    "transaction_id": [pa.Check.str_matches(UUID_PATTERN)],
    "merchant_category": [pa.Check.str_matches(MCC_PATTERN)],
    "amount": [pa.Check(lambda s: s > 0, element_wise=True, name="amount_positive")],
    "latitude": [pa.Check.in_range(-90, 90)],
    "longitude": [pa.Check.in_range(-180, 180)],
}


@cache
def transactions_schema() -> pa.DataFrameSchema:
    """Rows of ``transactions`` as read with pandas: one column per contract field."""
    contract = load_contract()
    columns: dict[str, pa.Column] = {}
    for field in contract.fields:
        checks = list(_FIELD_CHECKS.get(field.name, []))
        if field.enum_symbols:
            checks.append(pa.Check.isin(field.enum_symbols))
        if field.name == "currency":
            checks.append(pa.Check.isin(sorted(currency_codes())))
        if field.name == "country":
            checks.append(pa.Check.isin(sorted(country_codes())))
        dtype = _PANDAS_DTYPES[field.postgres_type]
        # coerce where pandas versions differ in representation (str vs object, us vs ns), never for
        # Decimal amounts, whose exact values are what is being checked
        columns[field.name] = pa.Column(dtype, checks=checks, nullable=field.nullable, coerce=dtype != "object")
    return pa.DataFrameSchema(columns, unique=["transaction_id"], strict=False, name="transactions")


@cache
def daily_merchant_summary_schema() -> pa.DataFrameSchema:
    """One partition (day) of ``daily_merchant_summary``."""
    non_negative = pa.Check.ge(0)
    return pa.DataFrameSchema(
        {
            "day": pa.Column("object"),
            "merchant_id": pa.Column(str),
            "currency": pa.Column(str, pa.Check.isin(sorted(currency_codes()))),
            "merchant_category": pa.Column(str, pa.Check.str_matches(MCC_PATTERN)),
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
        name="daily_merchant_summary",
    )
