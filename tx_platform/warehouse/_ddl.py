"""A pipeline's table, derived from its spec: columns from the contract, CHECKs from its rules.

The third compilation of the rules (after Spark and Pandera): every rule that stays true once it
held becomes a ``CHECK`` (unless the column's type already enforces it), so the table refuses what
the sink would have quarantined. A value the sink let through and the table refuses is quarantined
as ``WAREHOUSE_REJECTED`` (never expected).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from tx_platform.contract import UUID_REGEX, Rule, RuleKind, postgres_full_match
from tx_platform.errors import ContractError
from tx_platform.pipelines import PipelineSpec

#: Where each stored row came from: lets every row be traced to exactly one Kafka record.
SOURCE_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")


def sql_literal(value: Any) -> str:  # noqa: ANN401 - any literal a rule holds
    """``value`` as a SQL literal (rules hold only text, numbers and aware datetimes)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float | Decimal):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            msg = f"naive datetime {value} in a rule"
            raise ContractError(msg)
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    msg = f"no SQL literal for {value!r}"
    raise ContractError(msg)


#: A ``one_of`` rule over more values than this is no CHECK: PostgreSQL tests a CHECK's IN list value by
#: value for every row (the ISO 4217 and 3166 lists made the sink's commit about a third slower, measured
#: by ``make bench``); Spark and Pandera still enforce it, and WAREHOUSE_REJECTED is not at stake (a CHECK
#: that is absent refuses nothing).
MAX_CHECK_VALUES = 32


def sql_check(rule: Rule, column_type: str) -> str | None:
    """The CHECK expression of ``rule``, or None when it is not a table constraint: clock-relative, or
    already enforced by the column's type (a UUID pattern on a ``uuid`` column)."""
    column = rule.field
    match rule.kind:
        case RuleKind.MATCHES:
            if column_type == "uuid" and rule.arg == UUID_REGEX:
                # the type refuses every other text, and a stored uuid reads back in canonical form, which the
                # pattern matches: the CHECK could never fail, yet cost a cast and a regex per row, twice per commit
                return None
            text = column if column_type == "text" else f"CAST({column} AS text)"
            return f"{text} ~ {sql_literal(postgres_full_match(rule.arg))}"
        case RuleKind.ONE_OF:
            if len(rule.arg) > MAX_CHECK_VALUES:
                return None
            return f"{column} IN ({', '.join(sql_literal(v) for v in sorted(rule.arg))})"
        case RuleKind.POSITIVE:
            return f"{column} > 0"
        case RuleKind.BETWEEN:
            low, high = rule.arg
            return f"{column} BETWEEN {sql_literal(low)} AND {sql_literal(high)}"
        case RuleKind.NOT_BEFORE:
            return f"{column} >= {sql_literal(rule.arg)}"
        case RuleKind.NOT_IN_FUTURE:
            return None
    msg = f"rule {rule.code}: kind {rule.kind!r} has no SQL form"
    raise ContractError(msg)


def key_registry(spec: PipelineSpec) -> str:
    """The name of the table holding each natural key of ``spec``'s table once across its partitions
    (when a migration made it, as ``transactions``' 0005 did)."""
    return f"{spec.table}_keys"


def table_columns(spec: PipelineSpec) -> tuple[str, ...]:
    """Columns of the pipeline's table the sink writes: the contract's fields, then the Kafka coordinates."""
    return (*spec.contract.field_names, *SOURCE_COLUMNS)


def rule_constraints(spec: PipelineSpec) -> dict[str, str]:
    """The table's CHECKs by name: ``enum_<field>`` per enum, ``rule<n>_<code>`` per rule a table can enforce.

    Each name ends with a digest of its expression, so a rule that changes (a symbol listed, a range
    widened) gets a new name, and :func:`sync_constraints` can tell by name alone what to replace.
    """
    contract = spec.contract
    checks: list[tuple[str, str]] = []
    for field in contract.fields:
        if field.enum_symbols:
            symbols = ", ".join(sql_literal(s) for s in field.enum_symbols)
            checks.append((f"enum_{field.name}", f"{field.name} IN ({symbols})"))
    for n, rule in enumerate(spec.rules):
        check = sql_check(rule, contract.field(rule.field).postgres_type)
        if check is not None:
            # CHECK names are per table; the number keeps two rules with one code apart
            checks.append((f"rule{n}_{rule.code.lower()}", check))
    return {f"{base[:50]}_{hashlib.sha1(check.encode()).hexdigest()[:8]}": check for base, check in checks}  # noqa: S324


def sync_constraints(cur: Any, spec: PipelineSpec) -> tuple[list[str], list[str]]:  # noqa: ANN401 - a cursor
    """Make the table's rule and enum CHECKs those of the spec now; returns (added, dropped) names.

    ``CREATE TABLE IF NOT EXISTS`` leaves an existing table's constraints as they were, so a rule
    that changed would make Postgres refuse what the sink accepts (a newly listed symbol would be
    quarantined as WAREHOUSE_REJECTED). New CHECKs are added ``NOT VALID``: rows already stored are
    not re-checked (they passed the rules of their day), every new row is.
    """
    cur.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c' "
        "AND conname ~ '^(enum_|rule[0-9]+_)'",
        (spec.table,),
    )
    existing = {name for (name,) in cur.fetchall()}
    wanted = rule_constraints(spec)
    dropped = sorted(existing - wanted.keys())
    added = sorted(wanted.keys() - existing)
    for name in dropped:
        cur.execute(f"ALTER TABLE {spec.table} DROP CONSTRAINT {name}")
    for name in added:
        cur.execute(f"ALTER TABLE {spec.table} ADD CONSTRAINT {name} CHECK ({wanted[name]}) NOT VALID")
    return added, dropped


def table_ddl(spec: PipelineSpec) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of the pipeline's table (and its event-time index)."""
    contract = spec.contract
    lines = []
    for field in contract.fields:
        null = "" if field.nullable else " NOT NULL"
        key = " PRIMARY KEY" if field.name == spec.natural_key else ""
        lines.append(f"{field.name} {field.postgres_type}{null}{key}")
    lines += [
        "kafka_topic text NOT NULL",
        "kafka_partition integer NOT NULL",
        "kafka_offset bigint NOT NULL",
        "ingested_at timestamptz NOT NULL DEFAULT now()",
        "UNIQUE (kafka_topic, kafka_partition, kafka_offset)",
    ]
    lines += [f"CONSTRAINT {name} CHECK ({check})" for name, check in rule_constraints(spec).items()]
    body = ",\n    ".join(lines)
    return (
        f"CREATE TABLE IF NOT EXISTS {spec.table} (\n    {body}\n);\n"
        f"CREATE INDEX IF NOT EXISTS {spec.table}_{spec.time_column}_idx ON {spec.table} ({spec.time_column});\n"
    )


#: Name of the flag of records that arrived later than the pipeline's allowed lateness.
LATE_COLUMN = "late"


def late_column_ddl(spec: PipelineSpec) -> str:
    """``ALTER TABLE`` adding the ``late`` flag: Kafka's timestamp minus the event time beyond the spec's
    ``allowed_lateness`` (NULL when the Kafka timestamp is unknown)."""
    seconds = int(spec.allowed_lateness.total_seconds())
    return (
        f"ALTER TABLE {spec.table} ADD COLUMN {LATE_COLUMN} boolean GENERATED ALWAYS AS "
        f"(kafka_timestamp - {spec.time_column} > interval '{seconds} seconds') STORED;\n"
    )


def sync_late_flag(cur: Any, spec: PipelineSpec) -> bool:  # noqa: ANN401 - a cursor
    """Rebuild the ``late`` flag when its threshold is not the spec's ``allowed_lateness``; True when rebuilt.

    A generated column's expression cannot be altered (PostgreSQL 15): the column is dropped and added
    again, which rewrites the table; rare (a configuration change), and done by the owner in ``migrate``.
    Views that read the flag are dropped first and made again from their definitions (their grants come
    back from the schema's default privileges). Nothing happens when the table has no such column.
    """
    cur.execute(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
        "JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attgenerated = 's'",
        (spec.table, LATE_COLUMN),
    )
    row = cur.fetchone()
    if row is None:
        return False
    match = re.search(r"'([^']*)'::interval", row[0])
    cur.execute("SELECT %s::interval = %s", (match.group(1) if match else "-1 second", spec.allowed_lateness))
    if cur.fetchone()[0]:
        return False
    # views reading the flag (the analyst views) are dropped and made again from their own definitions
    cur.execute(
        "SELECT DISTINCT v.oid, v.oid::regclass::text, pg_get_viewdef(v.oid) FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
        "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "WHERE d.refobjid = to_regclass(%s) AND a.attname = %s AND v.relkind = 'v' ORDER BY v.oid",
        (spec.table, LATE_COLUMN),
    )
    views = [(name, definition) for _, name, definition in cur.fetchall()]
    for name, _ in reversed(views):
        cur.execute(f"DROP VIEW {name}")
    cur.execute(f"ALTER TABLE {spec.table} DROP COLUMN {LATE_COLUMN}")
    cur.execute(late_column_ddl(spec))
    for name, definition in views:
        cur.execute(f"CREATE VIEW {name} AS {definition}")
    return True
