"""The sink keeps working from cached schemas while the registry is down, and schemas survive a restart."""

from datetime import UTC, datetime, timedelta

import pytest

from spark_jobs.sink import SinkConfig, TransactionSink
from tx_platform.config import Settings
from tx_platform.contract import registry_client, subject_for
from tx_platform.errors import SinkError
from tx_platform.producer import generate, open_producer, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_cached_schemas_carry_the_sink_through_a_registry_restart(  # noqa: ANN001
    spark, settings: Settings, create_topic, test_stack, unique: str
) -> None:
    other = settings.model_copy(
        update={
            "topic": f"{settings.topic}_b",
            "dlq_topic": f"{settings.topic}_b.dlq",
            "checkpoint_dir": settings.checkpoint_root.parent / "checkpoints_b",
        }
    )
    for s in (settings, other):
        create_topic(s.topic)
    producer, registration = open_producer(settings.kafka_bootstrap, settings.topic, settings.schema_registry_url)
    producer_b, _ = open_producer(other.kafka_bootstrap, other.topic, other.schema_registry_url)
    start = datetime.now(UTC) - timedelta(hours=3)
    records = list(generate(700, seed=4_242, start=start, span=timedelta(hours=2)))
    produce(records[:300], producer)
    produce(records[600:], producer_b)  # never read before the outage
    sink = TransactionSink(spark, SinkConfig.from_settings(settings))
    assert sink.run_available_now().inserted == 300

    assert test_stack.registry.process.stop(timeout=30)
    try:
        produce(records[300:600], producer)  # the serializer already knows its schema id
        assert sink.run_available_now().inserted == 300  # the running sink knows the writer schema
        assert sink.writer_schemas.last_refresh_failed
        # a sink that never saw the schema must not guess (and must not quarantine valid records)
        with pytest.raises(SinkError, match="REGISTRY_UNAVAILABLE"):
            TransactionSink(spark, SinkConfig.from_settings(other)).run_available_now()
    finally:
        test_stack.up()

    # registry storage is durable: the same ids resolve after the restart, and the waiting topic drains
    client = registry_client(settings.schema_registry_url)
    assert client.get_version(subject_for(settings.topic), registration.version).schema_id == registration.schema_id
    assert TransactionSink(spark, SinkConfig.from_settings(other)).run_available_now().inserted == 100
