"""Pandera schemas: a pipeline's table derives from its contract and rules (derived tables declare theirs)."""

from __future__ import annotations

from functools import cache

import pandera.pandas as pa

from tx_platform.contract import Rule, RuleKind, python_full_match
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
            # NaN violates (as in Spark and SQL); Pandera would skip it as a missing value
            return pa.Check.in_range(low, high, name=name, ignore_na=False)
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
