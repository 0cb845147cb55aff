"""Typed, frozen settings. The environment is read only here, at the edge (CLI, definitions)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tx_platform.errors import ConfigError

#: The repository root when running from a checkout; used for default state and cache dirs.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_state_dir() -> Path:
    """Where the local stack keeps data, logs and pid files (git-ignored)."""
    return PROJECT_ROOT / ".txp"


class Settings(BaseSettings):
    """Connection settings shared by the CLI, the producer, the sink and Dagster.

    Every field maps to an environment variable ``TXP_<FIELD>``; the defaults point at the
    local stack started by ``txp stack up``. ``txp stack env`` prints the exact values.
    """

    model_config = SettingsConfigDict(env_prefix="TXP_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible schema registry URL."
    )
    postgres_dsn: SecretStr = Field(
        SecretStr("postgresql://txp_pipeline@127.0.0.1:5433/txp"),
        description="libpq URL of the warehouse database (the pipeline's role).",
    )
    spark_master: str = Field("local[*]", description="Spark master URL.")
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus URL.")
    alertmanager_url: str = Field("http://127.0.0.1:9095", description="Alertmanager URL (v2 API under /api/v2).")
    pushgateway_url: str = Field("http://127.0.0.1:9091", description="Pushgateway URL (batch jobs push metrics).")
    topic_partitions: int = Field(3, ge=1, description="Partitions of a topic we create.")
    topic_replication: int = Field(1, ge=1, description="Replication factor of a topic we create.")
    lag_threshold: int = Field(1, ge=1, description="Lag (records) at which the sensor runs the sink.")
    max_offsets_per_trigger: int = Field(200_000, ge=1, description="Upper bound of records in one sink micro-batch.")
    sink_on_data_loss: Literal["fail", "record"] = Field(
        "fail",
        description="When retention deleted records the sink never read: stop with [DATA_LOSS] (fail), or record "
        "the gap in sink_gaps and go on (record).",
    )
    sink_lease_wait_seconds: float = Field(
        600.0,
        ge=0,
        description="How long a sink or fraud run launched by Dagster waits for another one on its topic (holding "
        "the topic's lease) to finish before failing with [SINK_ALREADY_RUNNING]; txp sink and spark-submit ask once.",
    )
    sink_retry_backoff_seconds: float = Field(
        30.0, ge=0, description="Wait before the sensor retries a failed sink run; doubles per consecutive failure."
    )
    sink_retry_backoff_max_seconds: float = Field(600.0, ge=0, description="Upper bound of the sink retry wait.")
    e2e_latency_slo_seconds: float = Field(
        5.0, gt=0, description="End-to-end latency objective (event time -> committed), exported for alert rules."
    )
    dead_letter_ratio_threshold: float = Field(
        0.05, ge=0, le=1, description="Share of records sent to the DLQ above which alerts fire (exported)."
    )
    alerts_log: Path | None = Field(
        None,
        description="JSON-lines file of the alerts Alertmanager posts to the metrics exporter "
        "[default: <state_dir>/logs/alerts.log].",
    )
    spark_ui: bool = Field(False, description="Serve Spark's web UI (on 127.0.0.1 in local mode).")
    spark_ui_port: int = Field(
        4040, ge=1, le=65535,
        description="Port of Spark's web UI in local mode; the continuous sink serves Prometheus metrics there.",
    )  # fmt: skip
    state_dir: Path = Field(default_factory=default_state_dir, description="Local stack state.")
    checkpoint_dir: Path | None = Field(None, description="Spark checkpoint root.")
    jars_dir: Path = Field(PROJECT_ROOT / ".cache" / "jars", description="Maven-resolved jars.")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(","):
            if ":" not in server:
                msg = f"TXP_KAFKA_BOOTSTRAP entry {server!r} needs host:port"
                raise ValueError(msg)
        return value

    @property
    def checkpoint_root(self) -> Path:
        """Spark checkpoints: explicit setting or ``<state_dir>/checkpoints``."""
        return self.checkpoint_dir or self.state_dir / "checkpoints"

    def dsn(self) -> str:
        """The warehouse DSN in clear, for the client libraries that need it."""
        return self.postgres_dsn.get_secret_value()


#: File the local stack writes with the settings of the running stack (passwords included).
STACK_ENV_FILE = "stack.env"


def load_settings(**overrides: Any) -> Settings:
    """Build settings: overrides, then ``TXP_*`` variables, then the running local stack's values.

    The local stack writes ``<state_dir>/stack.env`` when it starts, so commands run beside it
    need no variables at all; any ``TXP_*`` variable set in the environment takes precedence.
    """
    state_dir = Path(os.environ.get("TXP_STATE_DIR") or overrides.get("state_dir") or default_state_dir())
    env_file = state_dir / STACK_ENV_FILE
    try:
        return Settings(_env_file=env_file if env_file.exists() else None, **overrides)  # type: ignore[call-arg]
    except ValueError as exc:
        msg = f"invalid tx_platform settings: {exc}"
        raise ConfigError(msg) from exc
