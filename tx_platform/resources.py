"""Dagster resources. Values come from ``EnvVar`` (TXP_*), so the same definitions run anywhere."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from dagster import ConfigurableResource
from psycopg2.extensions import connection as Connection
from pydantic import Field

from tx_platform import kafka_admin
from tx_platform.warehouse import committed_offsets, transaction


class KafkaResource(ConfigurableResource):
    """Admin access to the Kafka cluster: topics and end offsets."""

    bootstrap_servers: str = Field(description="Kafka bootstrap servers (TXP_KAFKA_BOOTSTRAP).")
    timeout_seconds: float = 20.0

    def ensure_topic(self, name: str, partitions: int, replication: int, config: dict[str, str] | None = None) -> bool:
        """Create ``name`` if missing. Returns True when it was created now."""
        return kafka_admin.ensure_topic(
            self.bootstrap_servers, name, partitions, replication, config, self.timeout_seconds
        )

    def end_offsets(self, topic: str) -> dict[int, int]:
        """High watermark per partition (the offset the next record will get)."""
        return kafka_admin.end_offsets(self.bootstrap_servers, topic, self.timeout_seconds)


class PostgresResource(ConfigurableResource):
    """The warehouse database, as the pipeline role."""

    dsn: str = Field(description="libpq URL of the warehouse (TXP_POSTGRES_DSN).")

    def connection(self) -> AbstractContextManager[Connection]:
        """A connection whose transaction commits on success; closed afterwards."""
        return transaction(self.dsn)

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
    schema_registry_url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    topic_partitions: int = 3
    topic_replication: int = 1
    checkpoint_root: str = Field(description="Directory (or URI) of Spark checkpoints.")
    max_offsets_per_trigger: int = 200_000
    lag_threshold: int = 1


def compute_lag(end_offsets: dict[int, int], committed: dict[int, int]) -> dict[int, int]:
    """Lag per partition: end offset minus the offset committed to Postgres (0 when none yet)."""
    return {p: max(0, end - committed.get(p, 0)) for p, end in end_offsets.items()}
