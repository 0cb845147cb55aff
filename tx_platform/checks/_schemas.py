"""Pandera schemas: a pipeline's table derives from its contract and rules; derived tables are declared."""

from __future__ import annotations

from functools import cache

import pandera.pandas as pa

from tx_platform.contract import Rule, RuleKind, country_codes, currency_codes, python_full_match
from tx_platform.errors import ContractError
from tx_platform.pipelines import PipelineSpec

_PANDAS_DTYPES = {
    "text": "str",
    "uuid": "str",
    "double precision": "float64",
    "timestamptz": "datetime64[ns, UTC]",
    "bigint": "int64",
    "integer": "int64",
}


def _dtype(postgres_type: str) -> str:
    # Decimal values stay objects: exactness matters more than vector speed here
    return "object" if postgres_type.startswith("numeric") else _PANDAS_DTYPES[postgres_type]


def pandera_check(rule: Rule) -> pa.Check:
    """Rules as data, compiled to Pandera: the check a stored row of the pipeline must pass."""
    name = rule.code.lower()
    match rule.kind:
        case RuleKind.MATCHES:
            return pa.Check.str_matches(python_full_match(rule.arg), name=name)
        case RuleKind.ONE_OF:
            return pa.Check.isin(sorted(rule.arg), name=name)
        case RuleKind.POSITIVE:
            return pa.Check(lambda v: v > 0, element_wise=True, name=name)
        case RuleKind.BETWEEN:
            low, high = rule.arg
            return pa.Check.in_range(low, high, name=name)
        case RuleKind.NOT_BEFORE | RuleKind.NOT_IN_FUTURE:
            # a stored row passed the rule when it arrived; the plain-Python form judges it now
            return pa.Check(lambda v, r=rule: r.check(v.to_pydatetime()), element_wise=True, name=name)
    msg = f"rule {rule.code}: kind {rule.kind!r} has no Pandera form"
    raise ContractError(msg)


@cache
def pipeline_schema(spec: PipelineSpec) -> pa.DataFrameSchema:
    """Rows of the pipeline's table as read with pandas: one column per contract field, with the
    contract's types, nullability and enums, the spec's rules, and a unique natural key."""
    columns: dict[str, pa.Column] = {}
    for field in spec.contract.fields:
        checks = [pandera_check(rule) for rule in spec.rules if rule.field == field.name]
        if field.enum_symbols:
            checks.append(pa.Check.isin(field.enum_symbols, name="invalid_enum"))
        dtype = _dtype(field.postgres_type)
        # coerce where pandas versions differ in representation (str vs object, us vs ns), never for
        # Decimal values, whose exact values are what is being checked
        columns[field.name] = pa.Column(dtype, checks=checks, nullable=field.nullable, coerce=dtype != "object")
    return pa.DataFrameSchema(columns, unique=[spec.natural_key], strict=False, name=spec.table)


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
        name="daily_merchant_summary",
    )
