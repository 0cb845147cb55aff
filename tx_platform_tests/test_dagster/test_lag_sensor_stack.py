"""A pipeline's lag sensor against a real Dagster instance, Kafka and Postgres: retries and a recreated topic."""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from dagster import AssetKey, DagsterInstance, OpExecutionContext, SensorResult, build_sensor_context, job, op

from tx_platform.config import Settings
from tx_platform.pipelines import PipelineSpec
from tx_platform.resources import KafkaResource, PostgresResource, SettingsResource
from tx_platform.sensors import build_lag_sensor
from tx_platform.warehouse import ensure_schema, transaction

pytestmark = pytest.mark.integration


@op
def sink_fails() -> None:
    """Stands in for a sink that cannot reach a service."""
    msg = "sink down"
    raise RuntimeError(msg)


@op
def sink_succeeds(context: OpExecutionContext) -> None:
    """Stands in for a sink run that worked."""
    context.log.info("sink ok")


# named like the real job: the sensor finds its runs by job name
@job(name="transactions_sink_job")
def failing_sink_job() -> None:
    """Always fails."""
    sink_fails()


@job(name="transactions_sink_job")
def working_sink_job() -> None:
    """Always succeeds."""
    sink_succeeds()


def _produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, value=f"r{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _evaluate(
    instance: DagsterInstance, spec: PipelineSpec, settings: Settings, backoff: float, backoff_max: float = 86_400.0
) -> SensorResult:
    resources = {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap),
        "postgres": PostgresResource(dsn=settings.dsn()),
        "settings": SettingsResource(
            overrides={"sink_retry_backoff_seconds": str(backoff), "sink_retry_backoff_max_seconds": str(backoff_max)}
        ),
    }
    sensor = build_lag_sensor(spec, failing_sink_job)
    assert sensor.name == "transactions_lag_sensor"
    result = sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, SensorResult)
    return result


def _requested(result: SensorResult) -> list[tuple[str | None, dict[str, str]]]:
    """(run key, tags) of each run request."""
    return [(r.run_key, dict(r.tags)) for r in result.run_requests or []]


def _fail_run(instance: DagsterInstance, tags: Mapping[str, str]) -> tuple[str, datetime]:
    """Run the failing job as the sensor's request would; return its id and end time."""
    result = failing_sink_job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)
    assert not result.success
    record = instance.get_run_record_by_id(result.run_id)
    assert record is not None and record.end_time is not None
    return result.run_id, datetime.fromtimestamp(record.end_time, tz=UTC)


def test_failed_sink_run_is_retried_after_backoff(
    spec: PipelineSpec, settings: Settings, create_topic: Callable[[str], None]
) -> None:
    create_topic(spec.topic)
    _produce(settings.kafka_bootstrap, spec.topic, {0: 3, 1: 2, 2: 0})
    ensure_schema(settings.dsn())
    instance = DagsterInstance.ephemeral()
    backlog_key = "end-0:3-1:2-2:0"

    first = _requested(_evaluate(instance, spec, settings, backoff=3600))
    assert first == [(backlog_key, {"txp/lag": "5"})]
    failed_id, ended = _fail_run(instance, first[0][1])

    # same backlog, one failure: wait the base backoff, and say so
    waiting = _evaluate(instance, spec, settings, backoff=3600)
    assert _requested(waiting) == []
    assert waiting.skip_reason is not None
    retry_at = (ended + timedelta(seconds=3600)).isoformat(timespec="seconds")
    assert waiting.skip_reason.skip_message == (
        f"lag 5; sink run {failed_id} ended FAILURE, 1 failed/cancelled run(s) in a row: "
        f"retry 1 at {retry_at} (3600 s after it ended)"
    )

    # backoff over: one retry, with its own run key (Dagster would never launch the first key again)
    retry = _requested(_evaluate(instance, spec, settings, backoff=0))
    assert retry == [
        (f"{backlog_key}-retry-of-{failed_id}", {"txp/lag": "5", "txp/retry": "1", "txp/retry_of": failed_id})
    ]
    assert retry[0][0] != first[0][0]
    second_id, second_ended = _fail_run(instance, retry[0][1])

    # two failures in a row: base * 2 = 7200 s, capped at 5000 s
    waiting = _evaluate(instance, spec, settings, backoff=3600, backoff_max=5000)
    assert waiting.skip_reason is not None
    retry_at = (second_ended + timedelta(seconds=5000)).isoformat(timespec="seconds")
    assert waiting.skip_reason.skip_message == (
        f"lag 5; sink run {second_id} ended FAILURE, 2 failed/cancelled run(s) in a row: "
        f"retry 2 at {retry_at} (5000 s after it ended)"
    )
    assert _requested(_evaluate(instance, spec, settings, backoff=0)) == [
        (f"{backlog_key}-retry-of-{second_id}", {"txp/lag": "5", "txp/retry": "2", "txp/retry_of": second_id})
    ]

    # a success ends the streak: the next backlog is requested at once, as a plain run
    assert working_sink_job.execute_in_process(instance=instance).success
    assert _requested(_evaluate(instance, spec, settings, backoff=3600)) == [(backlog_key, {"txp/lag": "5"})]


def test_topic_behind_committed_offsets_requests_no_run(
    spec: PipelineSpec, settings: Settings, create_topic: Callable[[str], None]
) -> None:
    create_topic(spec.topic)
    # partition 2 has a backlog, but partition 0 ends before what the sink committed: a recreated topic
    _produce(settings.kafka_bootstrap, spec.topic, {0: 2, 1: 0, 2: 4})
    ensure_schema(settings.dsn())
    with transaction(settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO sink_offsets (topic, partition, first_offset, next_offset, batch_id) "
            "VALUES (%s, 0, 0, 5, 0), (%s, 1, 0, 0, 0)",
            (spec.topic, spec.topic),
        )
    instance = DagsterInstance.ephemeral()

    result = _evaluate(instance, spec, settings, backoff=0)

    assert _requested(result) == []
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message == (
        f"topic '{spec.topic}' ends before the offsets the sink committed to Postgres on partition(s) "
        "0 (committed 5, end 2): it was deleted and recreated, or truncated, after the sink read it. "
        "No sink run requested: the sink refuses such a topic with [TOPIC_RECREATED]. Restore the original "
        "topic, or, to load the new one from its start, run "
        f"`txp topics forget --pipeline transactions --topic {spec.topic}` (deletes its rows, quarantine, offsets "
        "and checkpoint: their Kafka coordinates would collide with the new records)."
    )
    [observation] = result.asset_events
    assert observation.asset_key == AssetKey(["kafka", spec.topic])  # tx_<unique>: no dots to replace
    metadata = {k: v.value for k, v in observation.metadata.items()}
    assert metadata == {
        "lag": 4,
        "lag_by_partition": '{"0": -3, "1": 0, "2": 4}',
        "end_offsets_total": 6,
        "ahead_partitions": '{"0": {"committed": 5, "end": 2}}',
    }
