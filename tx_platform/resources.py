"""Dagster resources. Values come from ``EnvVar`` (TXP_*), so the same definitions run anywhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from dagster import ConfigurableResource
from psycopg2.extensions import connection as Connection
from pydantic import Field

from tx_platform.errors import ServiceUnavailableError, TopicNotFoundError
from tx_platform.warehouse import committed_offsets, connect, ensure_schema

#: Errors that mean "ask again shortly": leadership is moving or the broker is busy.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


class KafkaResource(ConfigurableResource):
    """Admin access to the Kafka cluster: topics and end offsets."""

    bootstrap_servers: str = Field(description="Kafka bootstrap servers (TXP_KAFKA_BOOTSTRAP).")
    timeout_seconds: float = 20.0

    def _admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap_servers})

    def ensure_topic(self, name: str, partitions: int, replication: int, config: dict[str, str] | None = None) -> bool:
        """Create ``name`` if missing. Returns True when it was created now."""
        admin = self._admin()
        try:
            existing = admin.list_topics(timeout=self.timeout_seconds).topics
        except KafkaException as exc:
            msg = f"Kafka did not answer on {self.bootstrap_servers} ({exc}) — is the stack up? run `make up`"
            raise ServiceUnavailableError(msg) from exc
        if name in existing:
            return False
        futures = admin.create_topics([NewTopic(name, partitions, replication, config=config or {})])
        try:
            futures[name].result(timeout=self.timeout_seconds)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                return False
            raise
        self._wait_for_leaders(admin, name)
        return True

    def _wait_for_leaders(self, admin: AdminClient, topic: str) -> None:
        """Creation returns before partitions have leaders; reads right after would fail."""
        deadline = time.monotonic() + self.timeout_seconds
        while time.monotonic() < deadline:
            info = admin.list_topics(topic=topic, timeout=self.timeout_seconds).topics.get(topic)
            if info is not None and info.error is None and info.partitions:
                if all(p.leader >= 0 and p.error is None for p in info.partitions.values()):
                    return
            time.sleep(0.2)
        msg = f"topic {topic!r} was created but its partitions got no leader within {self.timeout_seconds:.0f} s"
        raise ServiceUnavailableError(msg)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """High watermark per partition (the offset the next record will get)."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap_servers, "group.id": "txp-offset-probe", "enable.auto.commit": False}
        )
        try:
            metadata = consumer.list_topics(topic=topic, timeout=self.timeout_seconds)
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                msg = f"topic {topic!r} does not exist — materialize kafka/transactions first"
                raise TopicNotFoundError(msg)
            return {p: self._high_watermark(consumer, TopicPartition(topic, p)) for p in sorted(info.partitions)}
        except KafkaException as exc:
            msg = f"Kafka did not answer on {self.bootstrap_servers} ({exc}) — is the stack up? run `make up`"
            raise ServiceUnavailableError(msg) from exc
        finally:
            consumer.close()

    def _high_watermark(self, consumer: Consumer, partition: TopicPartition) -> int:
        # leadership moves (topic just created, broker restart) answer with retriable errors
        deadline = time.monotonic() + self.timeout_seconds
        delay = 0.1
        while True:
            try:
                _low, high = consumer.get_watermark_offsets(partition, timeout=self.timeout_seconds)
                return int(high)
            except KafkaException as exc:
                error = exc.args[0]
                transient = error.retriable() or error.code() in _TRANSIENT_CODES
                if not transient or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class PostgresResource(ConfigurableResource):
    """The warehouse database, as the pipeline role."""

    dsn: str = Field(description="libpq URL of the warehouse (TXP_POSTGRES_DSN).")

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection whose transaction commits on success; closed afterwards."""
        conn = connect(self.dsn)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def ensure_schema(self) -> None:
        """Create the warehouse tables if missing."""
        ensure_schema(self.dsn)

    def committed_offsets(self, topic: str) -> dict[int, int]:
        """Next offset per partition the sink has committed with its rows."""
        with self.connection() as conn:
            return committed_offsets(conn, topic)

    def scalar(self, query: str, params: tuple[object, ...] = ()) -> Any:  # noqa: ANN401 - any SQL value
        """First column of the first row of ``query``."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
            return None if row is None else row[0]


class PipelineConfig(ConfigurableResource):
    """Names and knobs of the pipeline (topics, checkpoints, batch size)."""

    topic: str = "transactions"
    dlq_topic: str = "transactions.dlq"
    topic_partitions: int = 3
    topic_replication: int = 1
    checkpoint_root: str = Field(description="Directory (or URI) of Spark checkpoints.")
    max_offsets_per_trigger: int = 200_000
    lag_threshold: int = 1


def compute_lag(end_offsets: dict[int, int], committed: dict[int, int]) -> dict[int, int]:
    """Lag per partition: end offset minus the offset committed to Postgres (0 when none yet)."""
    return {p: max(0, end - committed.get(p, 0)) for p, end in end_offsets.items()}
