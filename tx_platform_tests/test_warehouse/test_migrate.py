"""Versioned migrations on the real PostgreSQL, each test in a scratch schema of its own (search_path):
applied in order and recorded once, a second run applies nothing, an edited applied file is refused,
run-time code refuses an unmigrated warehouse, and a warehouse made by the previous code (``ensure_schema``
before migrations, frozen in ``previous_schema.sql``) is recognised and upgraded with every row kept."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from tx_platform.config import Settings
from tx_platform.pipelines import CRYPTO_TRADES, PIPELINES, TRANSACTIONS
from tx_platform.warehouse import (
    MigrationChangedError,
    SchemaNotMigratedError,
    known_migrations,
    migrate,
    migration_status,
    table_columns,
    verify_migrated,
)
from tx_platform_tests.test_warehouse.conftest import rows as _rows

pytestmark = pytest.mark.integration

PREVIOUS_SCHEMA = Path(__file__).with_name("previous_schema.sql")


def test_migrate_applies_every_file_once_in_order_and_a_second_run_applies_nothing(scratch_dsn: str) -> None:
    specs = list(PIPELINES.values())
    expected = [m.label for m in known_migrations(specs)]
    assert expected[0] == "warehouse/0001_baseline"
    assert "transactions/0001_baseline" in expected
    assert "crypto_trades/0001_baseline" in expected

    applied = migrate(scratch_dsn, specs)
    assert [m.label for m in applied] == expected
    recorded = _rows(scratch_dsn, "SELECT scope, version, name, checksum FROM schema_migrations")
    assert sorted(recorded) == sorted((m.scope, m.version, m.name, m.checksum) for m in known_migrations(specs))
    assert migrate(scratch_dsn, specs) == []  # idempotent
    done, pending = migration_status(scratch_dsn, specs)
    assert (len(done), pending) == (len(expected), [])
    # every table the baselines name exists, the pipeline tables with their generated columns
    tables = {
        name for (name,) in _rows(scratch_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }
    assert {"quarantine", "sink_offsets", "sink_leases", "sink_gaps", "dlq_progress", "sink_batches"} <= tables
    assert {"sink_latency", "transactions", "crypto_trades", "daily_merchant_summary"} <= tables
    columns = _rows(
        scratch_dsn,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'crypto_trades' ORDER BY ordinal_position",
    )
    assert [c for (c,) in columns][: len(table_columns(CRYPTO_TRADES))] == list(table_columns(CRYPTO_TRADES))


def test_an_applied_migration_edited_afterwards_is_refused(scratch_dsn: str, tmp_path: Path) -> None:
    assert TRANSACTIONS.migrations is not None
    folder = tmp_path / "migrations"
    shutil.copytree(str(TRANSACTIONS.migrations), folder)
    spec = dataclasses.replace(TRANSACTIONS, migrations=folder)
    migrate(scratch_dsn, [spec])
    baseline = folder / "0001_baseline.sql"
    baseline.write_text(baseline.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationChangedError, match=r"\[MIGRATION_CHANGED\] transactions/0001_baseline"):
        migrate(scratch_dsn, [spec])
    with pytest.raises(MigrationChangedError, match=r"\[MIGRATION_CHANGED\]"):
        verify_migrated(scratch_dsn, [spec])
    # a new file is the way to change the schema: it is applied, the others stay as they were
    (folder / "0019_note.sql").write_text("COMMENT ON TABLE transactions IS 'noted';\n")
    baseline.write_text(baseline.read_text().replace("\n-- edited after it was applied\n", ""))
    assert [m.label for m in migrate(scratch_dsn, [spec])] == ["transactions/0019_note"]
    assert _rows(scratch_dsn, "SELECT obj_description('transactions'::regclass)") == [("noted",)]


def test_run_time_code_refuses_an_unmigrated_warehouse(scratch_dsn: str) -> None:
    with pytest.raises(SchemaNotMigratedError, match=r"^\[SCHEMA_NOT_MIGRATED\] run txp db migrate: .*warehouse/0001"):
        verify_migrated(scratch_dsn, [TRANSACTIONS])
    migrate(scratch_dsn, [TRANSACTIONS])
    verify_migrated(scratch_dsn, [TRANSACTIONS])  # now it passes, and the pipeline's table is there
    assert _rows(scratch_dsn, "SELECT count(*) FROM transactions") == [(0,)]


def _fill_previous(dsn: str) -> dict[str, int]:
    """A warehouse as the previous code made it, with rows in every table the pipelines wrote; counts by table."""
    start = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)  # 3 records an hour over 4 days: rows on 5 calendar days
    records = list(TRANSACTIONS.generate(300, 7, start, span=timedelta(days=4)))
    columns = table_columns(TRANSACTIONS)
    insert = sql.SQL("INSERT INTO transactions ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns))
    )
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(PREVIOUS_SCHEMA.read_text())
            for offset, record in enumerate(records):
                cur.execute(
                    insert, [*(record[f] for f in TRANSACTIONS.contract.field_names), "transactions", 0, offset]
                )
            cur.execute(
                "INSERT INTO quarantine (kafka_topic, kafka_partition, kafka_offset, error_code, reason) "
                "SELECT 'transactions', 1, n, 'INVALID_UUID', 'bad' FROM generate_series(0, 9) n"
            )
            cur.execute(
                "INSERT INTO sink_offsets (topic, partition, first_offset, next_offset, batch_id) "
                "VALUES ('transactions', 0, 0, 300, 4), ('transactions', 1, 0, 10, 4)"
            )
            cur.execute(
                "INSERT INTO daily_merchant_summary SELECT (event_time AT TIME ZONE 'UTC')::date, merchant_id, "
                "currency, min(merchant_category), min(country), count(*), count(*), 0, sum(amount), sum(amount), 0, "
                "avg(amount), count(DISTINCT card_id), min(event_time), max(event_time) FROM transactions "
                "GROUP BY 1, 2, 3"
            )
            counts = {}
            for table in ("transactions", "quarantine", "sink_offsets", "daily_merchant_summary"):
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                counts[table] = cur.fetchone()[0]
    finally:
        conn.close()
    return counts


def test_a_warehouse_made_by_the_previous_code_is_upgraded_with_every_row_kept(scratch_dsn: str) -> None:
    counts = _fill_previous(scratch_dsn)
    assert counts["transactions"] == 300
    assert counts["quarantine"] == 10
    assert counts["daily_merchant_summary"] > 0
    before = _rows(scratch_dsn, "SELECT transaction_id, amount, event_time, kafka_offset FROM transactions ORDER BY 1")
    summary = _rows(scratch_dsn, "SELECT * FROM daily_merchant_summary ORDER BY 1, 2, 3")

    applied = migrate(scratch_dsn, list(PIPELINES.values()))
    assert [m.label for m in applied] == [m.label for m in known_migrations(PIPELINES.values())]
    after = _rows(scratch_dsn, "SELECT transaction_id, amount, event_time, kafka_offset FROM transactions ORDER BY 1")
    assert after == before
    assert _rows(scratch_dsn, "SELECT * FROM daily_merchant_summary ORDER BY 1, 2, 3") == summary
    assert _rows(scratch_dsn, "SELECT count(*) FROM quarantine") == [(10,)]
    assert _rows(scratch_dsn, "SELECT topic, partition, next_offset FROM sink_offsets ORDER BY 2") == [
        ("transactions", 0, 300),
        ("transactions", 1, 10),
    ]
    assert migrate(scratch_dsn, list(PIPELINES.values())) == []


def test_the_sink_and_the_candle_job_stop_on_an_unmigrated_warehouse_and_run_no_ddl(
    spark,  # noqa: ANN001 - SparkSession
    settings: Settings,
    scratch_dsn: str,
    unique: str,
) -> None:
    from pydantic import SecretStr

    from spark_jobs.sink import PipelineSink
    from spark_jobs.transforms.candles import CandleStream

    unmigrated = settings.model_copy(update={"postgres_dsn": SecretStr(scratch_dsn)})
    for job in (
        PipelineSink(spark, TRANSACTIONS.with_topic(f"tx_{unique}"), unmigrated),
        CandleStream(spark, CRYPTO_TRADES.with_topic(f"crypto_{unique}"), unmigrated),
    ):
        with pytest.raises(SchemaNotMigratedError, match=r"^\[SCHEMA_NOT_MIGRATED\] run txp db migrate"):
            job.start()
    # they created nothing: the scratch schema is as empty as it was
    assert _rows(scratch_dsn, "SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace") == [
        (0,)
    ]


def test_txp_db_migrate_prints_what_it_applied_and_what_is_pending(scratch_dsn: str) -> None:
    from click.testing import CliRunner

    from tx_platform.cli import cli

    labels = [m.label for m in known_migrations(PIPELINES.values())]
    status = CliRunner().invoke(cli, ["db", "migrate", "--dsn", scratch_dsn, "--status"])
    assert status.exit_code == 0, status.output
    assert status.output.splitlines() == [
        *(f"pending  {label}" for label in labels),
        f"0 applied, {len(labels)} pending",
    ]
    first = CliRunner().invoke(cli, ["db", "migrate", "--dsn", scratch_dsn])
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [
        *(f"applied {label}" for label in labels),
        f"{len(labels)} migration(s) applied",
    ]
    again = CliRunner().invoke(cli, ["db", "migrate", "--dsn", scratch_dsn])
    assert again.output == "nothing to apply: the warehouse is up to date\n"
    status = CliRunner().invoke(cli, ["db", "migrate", "--dsn", scratch_dsn, "--status"])
    assert status.output.splitlines()[-1] == f"{len(labels)} applied, 0 pending"
