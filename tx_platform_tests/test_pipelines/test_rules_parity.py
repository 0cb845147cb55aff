"""Rules as data mean the same in every engine that enforces them.

For every rule of every shipped pipeline: the rule's ``bad_example`` violates it and a generated good
record's value satisfies it in plain Python (:meth:`Rule.check`, the reference), Pandera
(:func:`tx_platform.checks.pandera_check`), Spark (:func:`spark_jobs.sink._rules.violation`, on a
column of the type the sink decodes to) and PostgreSQL (:func:`tx_platform.warehouse.sql_check`,
evaluated by the stack's server, for the rules a table can enforce). Edge values (bounds, a trailing
newline, lower case, NaN, a millisecond too early) must get the same verdict everywhere too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg2
import pytest

from tx_platform.contract import UUID_REGEX, Rule, RuleKind
from tx_platform.pipelines import PIPELINES, PipelineSpec

#: Every rule of every shipped pipeline, with its pipeline.
CASES = [(spec, rule) for spec in PIPELINES.values() for rule in spec.rules]
IDS = [f"{spec.name}-{rule.field}-{rule.code}" for spec, rule in CASES]


@cache
def good_record(spec: PipelineSpec) -> dict[str, Any]:
    """One generated record of ``spec``, an hour old (so that the clock-relative rule holds)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    return next(spec.generate(1, 2_718, start, span=timedelta(minutes=30)))


def _scale(spec: PipelineSpec, field: str) -> int:
    postgres_type = spec.contract.field(field).postgres_type  # numeric(p,s)
    return int(postgres_type.rstrip(")").split(",")[1])


def verdicts(spec: PipelineSpec, rule: Rule) -> list[tuple[str, Any, bool]]:
    """``(label, value, satisfies)``: the good value, the bad example, and edge values of the rule's kind."""
    good = good_record(spec)[rule.field]
    cases: list[tuple[str, Any, bool]] = [("good", good, True), ("bad_example", rule.bad_example, False)]
    match rule.kind:
        case RuleKind.MATCHES:
            cases += [("trailing newline", f"{good}\n", False), ("leading space", f" {good}", False)]
        case RuleKind.ONE_OF:
            cases += [("lower case", good.lower(), False), ("trailing space", f"{good} ", False)]
        case RuleKind.POSITIVE:
            smallest = Decimal(1).scaleb(-_scale(spec, rule.field))
            cases += [
                ("smallest positive", smallest, True),
                ("zero", Decimal(0), False),
                ("negative", -smallest, False),
            ]
        case RuleKind.BETWEEN:
            low, high = rule.arg
            cases += [
                ("low bound", float(low), True), ("high bound", float(high), True),
                ("below", math.nextafter(low, -math.inf), False), ("above", math.nextafter(high, math.inf), False),
                ("NaN", math.nan, False), ("infinity", math.inf, False),
            ]  # fmt: skip
        case RuleKind.NOT_BEFORE:
            cases += [
                ("earliest", rule.arg, True),
                ("a millisecond before", rule.arg - timedelta(milliseconds=1), False),
            ]
        case RuleKind.NOT_IN_FUTURE:
            limit = datetime.now(UTC) + timedelta(seconds=rule.arg)
            # a minute either side: the engines read the clock a few seconds apart
            cases += [
                ("inside the skew", limit - timedelta(minutes=1), True),
                ("past it", limit + timedelta(minutes=1), False),
            ]
    return cases


def _label(spec: PipelineSpec, rule: Rule, label: str, value: Any) -> str:  # noqa: ANN401
    return f"{spec.name} {rule.code} on {rule.field}, {label}: {value!r}"


@pytest.mark.unit
def test_every_rule_has_a_bad_example_and_every_engine_a_form() -> None:
    from spark_jobs.sink import _rules as spark_rules
    from tx_platform.checks import _schemas
    from tx_platform.warehouse import _ddl

    assert len(CASES) == 9 + 8  # transactions, crypto_trades
    for _spec, rule in CASES:
        assert rule.bad_example is not None, rule.code
    kinds = {rule.kind for _, rule in CASES}
    assert kinds == set(RuleKind)  # every kind is shipped, so every compiler branch is exercised below
    for module in (spark_rules, _schemas, _ddl):
        source = Path(module.__file__).read_text("utf-8")
        assert all(f"RuleKind.{kind.name}" in source for kind in RuleKind), module.__name__


@pytest.mark.unit
@pytest.mark.parametrize(("spec", "rule"), CASES, ids=IDS)
def test_python_reference(spec: PipelineSpec, rule: Rule) -> None:
    for label, value, satisfies in verdicts(spec, rule):
        assert rule.check(value) is satisfies, _label(spec, rule, label, value)
    assert rule.check(None) is False


@pytest.mark.unit
@pytest.mark.parametrize(("spec", "rule"), CASES, ids=IDS)
def test_pandera_agrees(spec: PipelineSpec, rule: Rule) -> None:
    from tx_platform.checks import pandera_check

    check = pandera_check(rule)
    for label, value, satisfies in verdicts(spec, rule):
        series = pd.Series([value], dtype="object" if isinstance(value, Decimal) else None)
        assert bool(check(series).check_passed) is satisfies, _label(spec, rule, label, value)


@pytest.mark.integration
@pytest.mark.parametrize(("spec", "rule"), CASES, ids=IDS)
def test_spark_agrees(spark, spec: PipelineSpec, rule: Rule) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    from spark_jobs.sink._decode import decoding_struct
    from spark_jobs.sink._rules import compile_rule, violation, with_clock

    cases = verdicts(spec, rule)
    # the type the sink decodes the field to (decimals at precision 38)
    schema = StructType([decoding_struct(spec.contract)[rule.field]])
    frame = with_clock(spark.createDataFrame([(value,) for _, value, _ in cases], schema))
    violated, code, reason = compile_rule(rule, F.struct(F.col(rule.field)))
    rows = frame.select(violation(rule, F.col(rule.field)).alias("v"), violated.alias("c"), reason.alias("r")).collect()
    assert code == rule.code
    for (label, value, satisfies), row in zip(cases, rows, strict=True):
        assert row.v is (not satisfies), _label(spec, rule, label, value)
        assert row.c is row.v
        assert row.r.startswith(f"{rule.reason}: ") and len(row.r) > len(rule.reason) + 2


def _postgres_verdict(cur: Any, expression: str, spec: PipelineSpec, rule: Rule, value: Any) -> bool:  # noqa: ANN401
    """Whether Postgres keeps ``value`` in a column of the field's type under ``expression`` (a refused value: no)."""
    postgres_type = spec.contract.field(rule.field).postgres_type
    try:
        cur.execute(f"SELECT ({expression}) FROM (VALUES (%s::{postgres_type})) AS v ({rule.field})", (value,))  # noqa: S608
    except psycopg2.DataError:
        # only a uuid column refuses text before any CHECK could run (INVALID_UUID's bad example)
        assert postgres_type == "uuid", _label(spec, rule, "refused by the type", value)
        return False
    (result,) = cur.fetchone()
    assert result is not None, _label(spec, rule, "unknown", value)
    return bool(result)


@pytest.fixture(scope="module")
def postgres(stack_env: dict[str, str]) -> Iterator[Any]:
    """A cursor on the stack's warehouse, in autocommit (a refused value aborts nothing)."""
    from tx_platform.config import load_settings
    from tx_platform.warehouse import connect

    conn = connect(load_settings().dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


@pytest.mark.integration
@pytest.mark.parametrize(("spec", "rule"), CASES, ids=IDS)
def test_postgres_agrees(postgres: Any, spec: PipelineSpec, rule: Rule) -> None:  # noqa: ANN401
    from tx_platform.warehouse import MAX_CHECK_VALUES, sql_check

    column_type = spec.contract.field(rule.field).postgres_type
    expression = sql_check(rule, column_type)
    if not rule.persistent:
        # clock-relative: no table constraint, the sink alone enforces it when the record arrives
        assert expression is None and rule.kind is RuleKind.NOT_IN_FUTURE
        return
    if expression is None and rule.kind is RuleKind.ONE_OF:
        # too long a list for a CHECK (MAX_CHECK_VALUES): the table does not enforce it, the sink and Pandera do
        assert len(rule.arg) > MAX_CHECK_VALUES
        return
    if expression is None:
        # enforced by the column's type alone (a UUID pattern on a uuid column): a value is kept when it casts
        assert (column_type, rule.kind, rule.arg) == ("uuid", RuleKind.MATCHES, UUID_REGEX)
        expression = "TRUE"
    for label, value, satisfies in verdicts(spec, rule):
        assert _postgres_verdict(postgres, expression, spec, rule, value) is satisfies, _label(spec, rule, label, value)
