"""Each pipeline's table, generated from its spec, on the real PostgreSQL: good records go in, each
rule's bad example is refused by its CHECK; the generated `transactions` table keeps the columns,
types, keys and NOT NULLs of the hand-written one it replaced."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest
from psycopg2 import errors, sql

from tx_platform.config import Settings
from tx_platform.contract import Rule, RuleKind, one_of
from tx_platform.pipelines import PIPELINES, TRANSACTIONS, PipelineSpec
from tx_platform.warehouse import MAX_CHECK_VALUES, connect, sync_constraints, table_columns, table_ddl

pytestmark = pytest.mark.integration

#: `transactions` as written by hand before tables were generated from specs (schema.sql at 715d440).
HAND_WRITTEN_TRANSACTIONS = """
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id    uuid             PRIMARY KEY,
    account_id        text             NOT NULL,
    customer_id       text             NOT NULL,
    card_id           text             NOT NULL,
    merchant_id       text             NOT NULL,
    merchant_category text             NOT NULL CHECK (merchant_category ~ '^[0-9]{4}$'),
    amount            numeric(18,2)    NOT NULL,
    currency          text             NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    channel           text             NOT NULL CHECK (channel IN ('POS', 'ECOM', 'ATM', 'TRANSFER')),
    transaction_type  text             NOT NULL CHECK (transaction_type IN ('PURCHASE', 'REFUND', 'WITHDRAWAL', 'TRANSFER')),
    country           text             NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    city              text             NOT NULL,
    latitude          double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude         double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    event_time        timestamptz      NOT NULL,
    kafka_topic       text             NOT NULL,
    kafka_partition   integer          NOT NULL,
    kafka_offset      bigint           NOT NULL,
    ingested_at       timestamptz      NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS transactions_event_time_idx ON transactions (event_time);
"""  # noqa: E501 - kept as it was written


@pytest.fixture
def scratch(settings: Settings, unique: str) -> Iterator[Any]:
    """A cursor whose tables go to a scratch schema of this test; everything is rolled back after."""
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"scratch_{unique}")))
            cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(f"scratch_{unique}")))
            yield cur
    finally:
        conn.rollback()
        conn.close()


def _insert(cur: Any, spec: PipelineSpec, record: dict[str, Any], offset: int) -> None:  # noqa: ANN401
    columns = table_columns(spec)
    values = [*(record[f] for f in spec.contract.field_names), spec.topic, 0, offset]
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(spec.table), sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(
            sql.Placeholder() * len(columns))
    )  # fmt: skip
    cur.execute(statement, values)


def _refusal(cur: Any, spec: PipelineSpec, record: dict[str, Any], offset: int) -> psycopg2.Error | None:  # noqa: ANN401
    """The error Postgres refuses ``record`` with (None when it is stored), leaving the transaction usable."""
    cur.execute("SAVEPOINT attempt")
    try:
        _insert(cur, spec, record, offset)
    except psycopg2.Error as exc:
        cur.execute("ROLLBACK TO SAVEPOINT attempt")
        return exc
    cur.execute("RELEASE SAVEPOINT attempt")
    return None


def _good(spec: PipelineSpec, count: int) -> list[dict[str, Any]]:
    start = datetime.now(UTC) - timedelta(hours=2)
    return list(spec.generate(count, 31, start, span=timedelta(hours=1)))


@pytest.mark.parametrize("spec", PIPELINES.values(), ids=PIPELINES)
def test_good_records_go_in_and_each_rule_s_bad_example_is_refused_by_its_check(
    scratch: Any,  # noqa: ANN401
    spec: PipelineSpec,
) -> None:
    scratch.execute(table_ddl(spec))
    scratch.execute(table_ddl(spec))  # idempotent
    records = _good(spec, 50)
    for offset, record in enumerate(records):
        assert _refusal(scratch, spec, record, offset) is None, record
    good, offset = records[0], len(records)
    refused = {}
    for n, rule in enumerate(spec.rules):
        offset += 1
        bad = {**good, spec.natural_key: str(uuid.uuid4()), rule.field: rule.bad_example}
        error = _refusal(scratch, spec, bad, offset)
        if not rule.persistent:
            # judged by the clock when the record arrives: no table constraint, the sink alone enforces it
            assert error is None, rule.code
            continue
        if _long_list(rule):
            # no CHECK (MAX_CHECK_VALUES): the sink and the Pandera check enforce it
            assert error is None, rule.code
            continue
        assert error is not None, f"{rule.code}: {rule.bad_example!r} was stored"
        if spec.contract.field(rule.field).postgres_type == "uuid":
            assert isinstance(error, errors.InvalidTextRepresentation), error  # the type is the check
        else:
            assert isinstance(error, errors.CheckViolation), error
            assert error.diag.constraint_name.startswith(f"rule{n}_{rule.code.lower()}_")
        refused[rule.code] = rule.field
    assert set(refused) == {r.code for r in spec.rules if r.persistent and not _long_list(r)}
    for field in spec.contract.fields:
        offset += 1
        assert isinstance(_refusal(scratch, spec, {**good, field.name: None}, offset), errors.NotNullViolation)
        if field.enum_symbols:
            error = _refusal(scratch, spec, {**good, field.name: field.enum_symbols[0].lower()}, offset)
            assert isinstance(error, errors.CheckViolation)
            assert error.diag.constraint_name.startswith(f"enum_{field.name}_")
    same_key = _refusal(scratch, spec, good, offset + 1)
    assert isinstance(same_key, errors.UniqueViolation) and same_key.diag.constraint_name == f"{spec.table}_pkey"
    same_record = _refusal(scratch, spec, {**good, spec.natural_key: str(uuid.uuid4())}, 0)
    assert isinstance(same_record, errors.UniqueViolation)
    assert same_record.diag.constraint_name == f"{spec.table}_kafka_topic_kafka_partition_kafka_offset_key"
    scratch.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table)))
    assert scratch.fetchone()[0] == 50 + sum(not r.persistent or _long_list(r) for r in spec.rules)


def _long_list(rule: Rule) -> bool:
    """A one_of rule over more values than a CHECK takes (the ISO code lists)."""
    return rule.kind is RuleKind.ONE_OF and len(rule.arg) > MAX_CHECK_VALUES


def _shape(cur: Any, schema: str) -> dict[str, Any]:  # noqa: ANN401
    """Columns (name, type, NOT NULL, default), keys and indexes of ``transactions`` in ``schema``."""
    cur.execute(
        "SELECT column_name, data_type, numeric_precision, numeric_scale, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = 'transactions' "
        "ORDER BY ordinal_position",
        (schema,),
    )
    columns = cur.fetchall()
    cur.execute(
        "SELECT c.contype, array_agg(a.attname ORDER BY k.n) FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k (attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = %s::regclass GROUP BY c.oid, c.contype ORDER BY 1, 2",
        (f"{schema}.transactions",),
    )
    constraints = cur.fetchall()
    cur.execute(
        "SELECT replace(indexdef, %s, '') FROM pg_indexes WHERE schemaname = %s ORDER BY 1", (f"{schema}.", schema)
    )
    return {
        "columns": columns,
        "keys": [c for c in constraints if c[0] in ("p", "u")],
        "checked": sorted({column for kind, cols in constraints if kind == "c" for column in cols}),
        "indexes": [row[0] for row in cur.fetchall()],
    }


def test_generated_transactions_table_keeps_the_hand_written_shape(scratch: Any, unique: str) -> None:  # noqa: ANN401
    scratch.execute(table_ddl(TRANSACTIONS))
    scratch.execute(f"CREATE SCHEMA old_{unique}; SET LOCAL search_path TO old_{unique}")
    scratch.execute(HAND_WRITTEN_TRANSACTIONS)
    new, old = _shape(scratch, f"scratch_{unique}"), _shape(scratch, f"old_{unique}")
    assert new["columns"] == old["columns"] and len(new["columns"]) == 19
    assert new["keys"] == old["keys"] == [
        ("p", ["transaction_id"]), ("u", ["kafka_topic", "kafka_partition", "kafka_offset"]),
    ]  # fmt: skip
    assert (
        new["indexes"]
        == old["indexes"]
        == [
            "CREATE INDEX transactions_event_time_idx ON transactions USING btree (event_time)",
            "CREATE UNIQUE INDEX transactions_kafka_topic_kafka_partition_kafka_offset_key ON transactions USING btree "
            "(kafka_topic, kafka_partition, kafka_offset)",
            "CREATE UNIQUE INDEX transactions_pkey ON transactions USING btree (transaction_id)",
        ]
    )
    # CHECKs: what the rules add (a positive amount, the first partition); the uuid's form needs none, the type
    # enforces it; the ISO code lists are too long for a CHECK (MAX_CHECK_VALUES), where the old table had a
    # format check: the sink and Pandera enforce them
    assert old["checked"] == ["channel", "country", "currency", "latitude", "longitude", "merchant_category",
                              "transaction_type"]  # fmt: skip
    assert new["checked"] == sorted([*(set(old["checked"]) - {"country", "currency"}), "amount", "event_time"])
    # what the old CHECKs let through and the rules' CHECKs refuse: a zero amount, an event before the first
    # daily partition
    [good] = _good(TRANSACTIONS, 1)
    differ = {"amount": 0, "event_time": datetime(2024, 12, 31, tzinfo=UTC)}
    for n, (field, value) in enumerate(differ.items()):
        record = {**good, "transaction_id": str(uuid.uuid4()), field: value}
        assert _refusal(scratch, TRANSACTIONS, record, n) is None, field  # the hand-written table (search_path)
        scratch.execute(f"SET LOCAL search_path TO scratch_{unique}")
        assert isinstance(_refusal(scratch, TRANSACTIONS, record, n), errors.CheckViolation), field
        scratch.execute(f"SET LOCAL search_path TO old_{unique}")


def test_changed_rules_replace_the_checks_of_an_existing_table(scratch: Any) -> None:  # noqa: ANN401
    crypto = PIPELINES["crypto_trades"]
    scratch.execute(table_ddl(crypto))
    assert sync_constraints(scratch, crypto) == ([], [])  # created from this very spec: nothing to do
    [good] = _good(crypto, 1)
    listed = {**good, "symbol": "ADA-USD"}
    assert isinstance(_refusal(scratch, crypto, listed, 1), errors.CheckViolation)  # not listed yet
    # the market lists a new instrument: the spec's rule changes, the table's CHECK follows
    rules = tuple(
        one_of("symbol", {*r.arg, "ADA-USD"}, r.code, r.reason, r.bad_example) if r.code == "UNKNOWN_SYMBOL" else r
        for r in crypto.rules
    )
    wider = dataclasses.replace(crypto, rules=rules)
    added, dropped = sync_constraints(scratch, wider)
    assert [a.rsplit("_", 1)[0] for a in added] == [d.rsplit("_", 1)[0] for d in dropped] == ["rule1_unknown_symbol"]
    assert _refusal(scratch, wider, listed, 1) is None
    assert isinstance(_refusal(scratch, wider, {**good, "symbol": "LUNA-USD"}, 2), errors.CheckViolation)
    assert sync_constraints(scratch, wider) == ([], [])
