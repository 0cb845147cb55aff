"""The sink keeps working from cached schemas while the registry is down, and schemas survive a restart."""

import zlib
from datetime import UTC, datetime, timedelta

import pytest

from spark_jobs.sink import PipelineSink
from tx_platform.config import Settings
from tx_platform.contract import registry_client
from tx_platform.errors import SinkError
from tx_platform.pipelines import PipelineSpec
from tx_platform.producer import open_producer, produce
from tx_platform_tests.test_faults._sink import assert_exact

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_cached_schemas_carry_the_sink_through_a_registry_restart(  # noqa: ANN001
    spark, settings: Settings, spec: PipelineSpec, create_topic, test_stack
) -> None:
    other = spec.with_topic(f"{spec.topic}_b")
    for s in (spec, other):
        create_topic(s.topic)
    url = settings.schema_registry_url
    producer, registration = open_producer(spec, settings.kafka_bootstrap, url)
    producer_b, _ = open_producer(other, settings.kafka_bootstrap, url)
    start = datetime.now(UTC) - timedelta(hours=3)
    # seeded by the topic: the same ids in a later session on a reused stack would be duplicates
    records = list(spec.generate(700, zlib.crc32(spec.topic.encode()), start, span=timedelta(hours=2)))
    produce(records[:300], producer)
    produce(records[600:], producer_b)  # never read before the outage
    sink = PipelineSink(spark, spec, settings)
    assert sink.run_available_now().inserted == 300

    assert test_stack.registry.process.stop(timeout=30)
    try:
        produce(records[300:600], producer)  # the serializer already knows its schema id
        assert sink.run_available_now().inserted == 300  # the running sink knows the writer schema
        assert sink.writer_schemas.last_refresh_failed
        # a sink that never saw the schema must not guess (and must not quarantine valid records)
        with pytest.raises(SinkError, match="REGISTRY_UNAVAILABLE"):
            PipelineSink(spark, other, settings).run_available_now()
    finally:
        test_stack.up()

    # registry storage is durable: the same ids resolve after the restart, and the waiting topic drains
    client = registry_client(settings.schema_registry_url)
    assert client.get_version(spec.subject, registration.version).schema_id == registration.schema_id
    assert PipelineSink(spark, other, settings).run_available_now().inserted == 100
    # both topics, counted independently: every record once, nothing quarantined on a guess
    assert assert_exact(settings, spec, "through a registry restart").rows == 600
    assert assert_exact(settings, other, "held until the registry was back").rows == 100
