"""Dagster definitions of tx_platform (`dagster dev -m tx_platform.definitions`).

This module is an edge: it reads the environment once. Unset TXP_* variables fall back to the
running local stack (``<state_dir>/stack.env``) and then to local defaults, so the same code
serves the laptop stack and a cluster.
"""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    Definitions,
    EnvVar,
    build_schedule_from_partitioned_job,
    define_asset_job,
)
from dagster_pyspark import LazyPySparkResource

from spark_jobs.session import spark_config
from tx_platform.assets import (
    DAILY_MERCHANT_SUMMARY,
    WAREHOUSE_QUARANTINE,
    WAREHOUSE_TRANSACTIONS,
    daily_merchant_summary,
    kafka_transactions,
    kafka_transactions_dlq,
    transactions_sink,
)
from tx_platform.checks.asset_checks import dlq_matches_quarantine, no_unexplained_loss, transactions_match_contract
from tx_platform.config import Settings, load_settings
from tx_platform.resources import KafkaResource, PipelineConfig, PostgresResource
from tx_platform.sensors import build_kafka_lag_sensor

ASSETS = [kafka_transactions, kafka_transactions_dlq, transactions_sink, daily_merchant_summary]
ASSET_CHECKS = [no_unexplained_loss, transactions_match_contract, dlq_matches_quarantine]

sink_job = define_asset_job(
    "sink_job",
    selection=AssetSelection.assets(WAREHOUSE_TRANSACTIONS, WAREHOUSE_QUARANTINE),
    description="Run the Spark sink once (AvailableNow) and the checks on its tables.",
    tags={"txp/sink": "transactions"},
)
daily_summary_job = define_asset_job(
    "daily_merchant_summary_job",
    selection=AssetSelection.assets(DAILY_MERCHANT_SUMMARY),
    description="Rebuild one day of daily_merchant_summary.",
)


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources for ``settings``; the DSN stays an EnvVar so the UI never shows the password."""
    os.environ.setdefault("TXP_POSTGRES_DSN", settings.dsn())
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap),
        "postgres": PostgresResource(dsn=EnvVar("TXP_POSTGRES_DSN")),
        "pipeline": PipelineConfig(
            topic=settings.topic,
            dlq_topic=settings.dlq_topic,
            schema_registry_url=settings.schema_registry_url,
            topic_partitions=settings.topic_partitions,
            topic_replication=settings.topic_replication,
            checkpoint_root=str(settings.checkpoint_root),
            max_offsets_per_trigger=settings.max_offsets_per_trigger,
            lag_threshold=settings.lag_threshold,
            retry_backoff_seconds=settings.sink_retry_backoff_seconds,
            retry_backoff_max_seconds=settings.sink_retry_backoff_max_seconds,
            on_data_loss=settings.sink_on_data_loss,
        ),
        "pyspark": LazyPySparkResource(spark_config=spark_config(settings)),
    }


def build_definitions(settings: Settings) -> Definitions:
    """All definitions, wired to ``settings``."""
    return Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[sink_job, daily_summary_job],
        sensors=[build_kafka_lag_sensor(sink_job)],
        schedules=[build_schedule_from_partitioned_job(daily_summary_job, hour_of_day=0, minute_of_hour=30)],
        resources=build_resources(settings),
    )


defs = build_definitions(load_settings())
