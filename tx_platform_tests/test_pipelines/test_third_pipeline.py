"""A third pipeline, declared here and nowhere else, flows end to end through the shared machinery.

Everything below is what the README's "add a pipeline in five steps" asks for, written in this
file: a contract (a tiny ``.avsc``), a seeded generator, a spec with its rules, a derived asset
with its table and check. Nothing in ``tx_platform`` or ``spark_jobs`` knows of it: the producer,
the bad-input corpus, the Spark sink, the warehouse writer, the dead-letter path, the Dagster
assets, checks, job and lag sensor are all built from the spec.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetCheckResult,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    asset,
    asset_check,
    build_sensor_context,
    materialize,
)

from tx_platform.config import Settings
from tx_platform.contract import UUID_REGEX, between, event_time_rules, matches
from tx_platform.definitions import build_resources, pipeline_definitions
from tx_platform.kafka_admin import end_offsets
from tx_platform.pipelines import PIPELINES, PipelineSpec
from tx_platform.producer import faults_for, open_producer, produce
from tx_platform.resources import PostgresResource
from tx_platform.warehouse import migrate
from tx_platform_tests.conftest import fetch_one

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COUNT = 1_200
SEED = 7
BAD_RATIO = 0.05

# 1. the contract
READING_SCHEMA = {
    "type": "record",
    "name": "Reading",
    "namespace": "io.example.sensors",
    "fields": [
        {"name": "reading_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "device_id", "type": "string"},
        {"name": "metric", "type": {"type": "enum", "name": "Metric", "symbols": ["TEMPERATURE", "HUMIDITY"]}},
        {"name": "value", "type": "double"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


# 2. a seeded generator: (count, seed, start, **options) -> records
def generate_readings(count: int, seed: int, start: datetime, span: timedelta = timedelta(hours=1)) -> Iterator[dict]:
    """``count`` readings from 20 devices over ``span``; the same seed gives the same readings."""
    rng = random.Random(f"readings-{seed}")  # noqa: S311 - reproducible test data
    for i in range(count):
        metric = rng.choice(["TEMPERATURE", "HUMIDITY"])
        yield {
            "reading_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "device_id": f"dev-{rng.randrange(20):03d}",
            "metric": metric,
            "value": round(rng.gauss(21.0, 3.0) if metric == "TEMPERATURE" else rng.uniform(20, 90), 2),
            "event_time": start + span * (i / count),
        }


# 4. a derived asset with its check, built from the spec's names
def hourly_assets(spec: PipelineSpec) -> list:
    """``warehouse/<table>_hourly``: readings per device, metric and hour, reconciled with the table."""
    hourly = f"{spec.table}_hourly"

    @asset(
        key=AssetKey(["warehouse", hourly]),
        deps=[AssetKey(["warehouse", spec.table])],
        group_name=spec.name,
    )
    def hourly_table(postgres: PostgresResource) -> None:
        with postgres.connection() as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {hourly}")  # noqa: S608 - names from the spec
            cur.execute(
                f"INSERT INTO {hourly} SELECT device_id, metric, date_trunc('hour', event_time), count(*), avg(value) "  # noqa: S608
                f"FROM {spec.table} GROUP BY 1, 2, 3"
            )

    @asset_check(asset=hourly_table, name="hourly_reconciles")
    def hourly_reconciles(postgres: PostgresResource) -> AssetCheckResult:
        source = postgres.scalar(f"SELECT count(*) FROM {spec.table}")  # noqa: S608
        summarised = postgres.scalar(f"SELECT coalesce(sum(readings), 0) FROM {hourly}")  # noqa: S608
        return AssetCheckResult(passed=int(source) == int(summarised), metadata={"source": int(source)})

    return [hourly_table, hourly_reconciles]


@pytest.fixture
def readings(unique: str, tmp_path: Path) -> PipelineSpec:
    """3. the spec (on names of this test's own)."""
    contract = tmp_path / "reading.avsc"
    contract.write_text(json.dumps(READING_SCHEMA))
    table = f"readings_{unique}"
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_baseline.sql").write_text(
        "-- @pipeline_table\n"
        f"CREATE TABLE IF NOT EXISTS {table}_hourly (device_id text, metric text, hour timestamptz, "
        "readings bigint NOT NULL, mean double precision, PRIMARY KEY (device_id, metric, hour));\n"
    )
    return PipelineSpec(
        name=f"readings_{unique}",
        contract_path=contract,
        topic=f"sensors.readings.{unique}",
        table=table,
        natural_key="reading_id",
        kafka_key="device_id",
        time_column="event_time",
        rules=(
            matches("reading_id", UUID_REGEX, "INVALID_UUID", "reading_id is not a UUID", "r-1"),
            matches("device_id", "dev-[0-9]{3}", "UNKNOWN_DEVICE", "device_id is not dev-NNN", "sensor-1"),
            between("value", -50, 150, "VALUE_OUT_OF_RANGE", "value outside the sensors' range", 999.0),
            *event_time_rules("event_time", datetime(2024, 6, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)),
        ),
        generator=generate_readings,
        derived_assets=hourly_assets,
        migrations=migrations,
    )


def test_a_pipeline_declared_in_a_test_flows_end_to_end(spark, readings: PipelineSpec, settings: Settings) -> None:  # noqa: ANN001
    assert readings.name not in PIPELINES  # 5. not even registered: the factories take the spec as it is
    dsn = settings.dsn()
    migrate(os.environ["TXP_OWNER_DSN"], [readings])  # its tables, by their owner: the sink runs no DDL
    instance = DagsterInstance.ephemeral()
    resources = build_resources(settings)
    pipeline = pipeline_definitions(readings)
    keys = pipeline.keys
    hourly = AssetKey(["warehouse", f"{readings.table}_hourly"])
    assert {k.to_user_string() for a in pipeline.materializable for k in getattr(a, "keys", ())} >= {
        f"kafka/{readings.topic.replace('.', '_')}",
        f"kafka/{readings.dlq_topic.replace('.', '_')}",
        f"warehouse/{readings.table}",
        f"warehouse/{readings.name}_quarantine",
        hourly.to_user_string(),
    }

    def run(selection: AssetSelection):  # noqa: ANN202
        result = materialize(pipeline.materializable, selection=selection, resources=resources, instance=instance)
        assert result.success
        return result

    run(AssetSelection.assets(keys.topic, keys.dlq))

    # the generic producer, with the bad-input corpus derived from the spec's rules
    producer, registration = open_producer(
        readings, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio=BAD_RATIO, seed=SEED
    )
    assert registration.subject == f"{readings.topic}-value"
    start = datetime.now(UTC) - timedelta(hours=2)
    report = produce(readings.generate(COUNT, SEED, start), producer)
    assert (report.delivered, report.failed) == (COUNT, 0)
    assert producer.faults is not None
    injected = producer.faults.injected
    bad = sum(injected.values())
    codes = {f.kind: f.expected_code for f in faults_for(readings)}
    assert {"device_id_unknown_device", "value_value_out_of_range"} <= set(codes)
    assert bad > 0 and len(injected) > 10  # the corpus cycles through its kinds

    # the lag sensor built for this pipeline asks for its sink job
    [sensor] = pipeline.sensors
    assert (sensor.name, sensor.job_name) == (f"{readings.name}_lag_sensor", f"{readings.name}_sink_job")
    behind = sensor(build_sensor_context(instance=instance, resources=resources))
    assert [r.tags["txp/lag"] for r in behind.run_requests] == [str(COUNT)]

    # the job: the Spark sink (table + quarantine), then the derived asset, with every check
    result = run(pipeline.sink_job.selection)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "no_unexplained_loss": True,
        f"{readings.table}_match_contract": True,
        "dlq_matches_quarantine": True,
        "hourly_reconciles": True,
    }

    # nothing lost, nothing doubled: rows + quarantined = produced, each bad record with its code
    (rows,) = fetch_one(dsn, f"SELECT count(*) FROM {readings.table}")  # noqa: S608
    assert rows == COUNT - bad
    quarantined = fetch_one(
        dsn,
        "SELECT coalesce(json_object_agg(error_code, n), '{}') FROM "
        "(SELECT error_code, count(*) AS n FROM quarantine WHERE kafka_topic = %s GROUP BY 1) q",
        readings.topic,
    )[0]
    expected = Counter()
    for kind, n in injected.items():
        expected[codes[kind]] += n
    assert quarantined == dict(expected)
    assert sum(end_offsets(settings.kafka_bootstrap, readings.dlq_topic).values()) == bad
    (summarised,) = fetch_one(dsn, f"SELECT sum(readings) FROM {readings.table}_hourly")  # noqa: S608
    assert summarised == rows

    caught_up = sensor(build_sensor_context(instance=instance, resources=resources))
    assert not caught_up.run_requests and "caught up: lag 0" in caught_up.skip_reason.skip_message
