"""Dagster resources: Kafka, the warehouse and the platform's settings (Spark's is dagster-pyspark's).

Their values come from the environment (``TXP_*``, ``EnvVar`` for secrets), so the same definitions
run anywhere. Resource keys, as assets and sensors ask for them: ``kafka``, ``postgres``,
``pyspark``, ``settings`` (see ``tx_platform.definitions.build_resources``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dagster import ConfigurableResource
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from pydantic import Field

from tx_platform import kafka_admin
from tx_platform.config import Settings, load_settings
from tx_platform.errors import ConfigError
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

    def scalar(self, query: str | sql.Composable, params: tuple[object, ...] = ()) -> Any:  # noqa: ANN401 - any SQL value
        """First column of the first row of ``query``."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
            return None if row is None else row[0]


class SettingsResource(ConfigurableResource):
    """The platform's :class:`~tx_platform.config.Settings`, built where the run happens.

    ``settings`` reads the ``TXP_*`` variables (then the local stack's ``stack.env``, then the
    defaults) each time it is asked, so a run worker on another machine uses its own environment;
    ``overrides`` win over all of them. Secrets are never overrides: the UI shows resource config.
    """

    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Settings fields given here rather than by TXP_* variables (e.g. checkpoint_dir); no secrets.",
    )

    @property
    def settings(self) -> Settings:
        """The settings object the sink, producer and checks take."""
        return load_settings(**self.overrides)

    @classmethod
    def for_settings(cls, settings: Settings) -> SettingsResource:
        """The resource that yields ``settings``: the fields the environment would give otherwise become overrides.

        Raises ConfigError when ``settings`` differ from the environment in a secret (the DSN):
        that must come from ``TXP_POSTGRES_DSN``.
        """
        environment = load_settings()
        if settings.dsn() != environment.dsn():
            msg = "the settings' Postgres DSN differs from TXP_POSTGRES_DSN: set the variable, secrets are no overrides"
            raise ConfigError(msg)
        overrides = {}
        for name in Settings.model_fields:
            value = getattr(settings, name)
            if name != "postgres_dsn" and value is not None and value != getattr(environment, name):
                overrides[name] = str(value).lower() if isinstance(value, bool) else str(value)
        return cls(overrides=overrides)


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
