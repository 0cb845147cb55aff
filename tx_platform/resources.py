"""Dagster resources. Values come from ``EnvVar`` (TXP_*), so the same definitions run anywhere."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
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
    retry_backoff_seconds: float = Field(
        30.0, ge=0, description="Wait before retrying a failed sink run; doubles per consecutive failure."
    )
    retry_backoff_max_seconds: float = Field(600.0, ge=0, description="Upper bound of the retry wait.")
    on_data_loss: str = Field(
        "fail", description="Records deleted by retention before the sink read them: fail, or record the gap."
    )


@dataclass(frozen=True)
class Lag:
    """Lag of a topic behind the offsets the sink committed, partition by partition.

    ``by_partition`` is end offset minus committed offset, unclamped: a negative value means
    Postgres holds offsets beyond the topic's end, i.e. the topic was deleted and recreated (or
    truncated) after the sink read it. Such partitions are never folded into ``total``.
    """

    by_partition: dict[int, int]
    end_offsets: dict[int, int]
    committed: dict[int, int]

    @property
    def total(self) -> int:
        """Records waiting to be sunk: the sum of the positive per-partition lags."""
        return sum(lag for lag in self.by_partition.values() if lag > 0)

    @property
    def ahead(self) -> dict[int, tuple[int, int]]:
        """Partitions whose committed offset is past the topic's end: ``{partition: (committed, end)}``."""
        return {
            p: (self.committed.get(p, 0), self.end_offsets.get(p, 0))
            for p, lag in sorted(self.by_partition.items())
            if lag < 0
        }


def compute_lag(end_offsets: dict[int, int], committed: dict[int, int]) -> Lag:
    """Lag per partition: end offset minus the offset committed to Postgres (0 committed when none yet).

    Nothing is clamped; check ``Lag.ahead`` before trusting ``Lag.total`` as "caught up". A
    partition with committed offsets that the topic no longer has (Kafka never removes partitions,
    so the topic was recreated smaller) counts with end offset 0, so it shows up as ahead too.
    """
    partitions = sorted(end_offsets.keys() | committed.keys())
    return Lag(
        by_partition={p: end_offsets.get(p, 0) - committed.get(p, 0) for p in partitions},
        end_offsets=dict(end_offsets),
        committed=dict(committed),
    )
