"""Kafka admin helpers against the real broker."""

import time

import pytest
from confluent_kafka import KafkaException, TopicPartition

from tx_platform.errors import TopicNotFoundError
from tx_platform.kafka_admin import offset_consumer, partition_count, partition_watermarks, watermarks

pytestmark = pytest.mark.integration


def test_watermarks_of_a_topic_created_a_moment_ago(stack_env: dict[str, str], create_topic, unique: str) -> None:  # noqa: ANN001
    """A new consumer asked right after creation may not know the partitions yet: it asks again."""
    bootstrap = stack_env["TXP_KAFKA_BOOTSTRAP"]
    consumer = offset_consumer(bootstrap)
    try:
        consumer.list_topics(timeout=10)  # metadata cached before the topic exists, as in the sink
        create_topic(f"wm_{unique}", partitions=2)
        assert partition_watermarks(consumer, TopicPartition(f"wm_{unique}", 1)) == (0, 0)
        started = time.monotonic()
        with pytest.raises(KafkaException, match="Unknown partition"):  # a partition that never comes
            partition_watermarks(consumer, TopicPartition(f"wm_{unique}", 7), timeout=1.5)
        assert time.monotonic() - started >= 1.4, "retried until the deadline, not failed at once"
    finally:
        consumer.close()
    assert watermarks(bootstrap, f"wm_{unique}") == {0: (0, 0), 1: (0, 0)}


def test_partition_count_waits_only_when_asked(stack_env: dict[str, str], create_topic, unique: str) -> None:  # noqa: ANN001
    """A missing topic is reported at once by default, after ``appear_within`` seconds of asking otherwise."""
    bootstrap = stack_env["TXP_KAFKA_BOOTSTRAP"]
    create_topic(f"pc_{unique}", partitions=3)
    assert partition_count(bootstrap, f"pc_{unique}", appear_within=5.0) == 3
    started = time.monotonic()
    with pytest.raises(TopicNotFoundError, match="does not exist"):
        partition_count(bootstrap, f"never_{unique}")
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    with pytest.raises(TopicNotFoundError, match="does not exist"):
        partition_count(bootstrap, f"never_{unique}", appear_within=1.0)
    assert time.monotonic() - started >= 1.0, "kept asking until appear_within ran out"
