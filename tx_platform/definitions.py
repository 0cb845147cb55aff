"""Dagster definitions of tx_platform (`dagster dev -m tx_platform.definitions`): every shipped pipeline, and the
run-failure sensor over all of them.

This module is an edge: it reads the environment once. Unset TXP_* variables fall back to the
running local stack (``<state_dir>/stack.env``) and then to local defaults, so the same code
serves the laptop stack and a cluster. The Spark connector jars are resolved here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from dagster import Definitions, EnvVar
from dagster_pyspark import LazyPySparkResource

from spark_jobs.session import spark_config
from tx_platform.assets import PipelineDefinitions, build_pipeline_assets
from tx_platform.config import Settings, load_settings
from tx_platform.pipelines import PIPELINES, PipelineSpec
from tx_platform.resources import KafkaResource, PostgresResource, SettingsResource
from tx_platform.sensors import build_lag_sensor, build_run_failure_sensor
from tx_platform.stack import resolve_artifacts


def pipeline_definitions(spec: PipelineSpec) -> PipelineDefinitions:
    """Everything of one pipeline: its assets, checks, jobs and schedules, and its lag sensor."""
    built = build_pipeline_assets(spec)
    return built.with_sensors(build_lag_sensor(spec, built.sink_job))


def build_resources(settings: Settings) -> dict[str, object]:
    """The resources every pipeline's assets and sensors take: ``kafka``, ``postgres``, ``pyspark``, ``settings``.

    The DSN stays an EnvVar so the UI never shows the password; the connector jars are resolved
    from the Maven cache here, at the edge (``spark_jobs`` never imports the launcher).
    """
    os.environ.setdefault("TXP_POSTGRES_DSN", settings.dsn())
    jars = resolve_artifacts(settings.jars_dir).spark_jars()
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap),
        "postgres": PostgresResource(dsn=EnvVar("TXP_POSTGRES_DSN")),
        "pyspark": LazyPySparkResource(spark_config=spark_config(settings, jars)),
        "settings": SettingsResource.for_settings(settings),
    }


def build_definitions(settings: Settings, pipelines: Iterable[PipelineSpec] | None = None) -> Definitions:
    """The definitions of ``pipelines`` (default: every shipped one), each its own group, wired to ``settings``."""
    specs = PIPELINES.values() if pipelines is None else pipelines
    built = [pipeline_definitions(spec) for spec in specs]
    return Definitions.merge(
        *(p.to_definitions() for p in built),
        Definitions(sensors=[build_run_failure_sensor(built)], resources=build_resources(settings)),
    )


defs = build_definitions(load_settings())
