"""Sensors: run the sink when Kafka lag reaches a threshold."""

import json

from dagster import (
    AssetObservation,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from tx_platform.assets import KAFKA_TRANSACTIONS
from tx_platform.errors import TopicNotFoundError
from tx_platform.resources import KafkaResource, PipelineConfig, PostgresResource, compute_lag

_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def build_kafka_lag_sensor(
    sink_job: JobDefinition | UnresolvedAssetJobDefinition, minimum_interval_seconds: int = 30
) -> SensorDefinition:
    """A sensor that requests ``sink_job`` when lag >= the pipeline's lag_threshold.

    Lag = topic end offsets - offsets the sink committed to Postgres. Each evaluation records the
    lag as an observation of ``kafka/transactions`` when it changed, so the UI plots it.
    """

    @sensor(
        name="kafka_lag_sensor",
        job=sink_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Runs the Spark sink when Kafka lag (end offsets - offsets committed to Postgres) "
        "reaches TXP_LAG_THRESHOLD; records lag on kafka/transactions.",
    )
    def kafka_lag_sensor(
        context: SensorEvaluationContext, kafka: KafkaResource, postgres: PostgresResource, pipeline: PipelineConfig
    ) -> SensorResult:
        try:
            end_offsets = kafka.end_offsets(pipeline.topic)
        except TopicNotFoundError as exc:
            return SensorResult(skip_reason=SkipReason(str(exc)))
        lag_by_partition = compute_lag(end_offsets, postgres.committed_offsets(pipeline.topic))
        lag = sum(lag_by_partition.values())
        events = []
        if context.cursor is None or json.loads(context.cursor).get("lag") != lag:
            events.append(
                AssetObservation(
                    asset_key=KAFKA_TRANSACTIONS,
                    metadata={
                        "lag": lag,
                        "lag_by_partition": json.dumps(lag_by_partition),
                        "end_offsets_total": sum(end_offsets.values()),
                    },
                )
            )
        cursor = json.dumps({"lag": lag})
        if lag < pipeline.lag_threshold:
            return SensorResult(
                skip_reason=SkipReason(f"caught up: lag {lag} < threshold {pipeline.lag_threshold}"),
                asset_events=events,
                cursor=cursor,
            )
        active = context.instance.get_runs(filters=RunsFilter(job_name=sink_job.name, statuses=_ACTIVE), limit=1)
        if active:
            return SensorResult(
                skip_reason=SkipReason(f"lag {lag}, but sink run {active[0].run_id} is still in progress"),
                asset_events=events,
                cursor=cursor,
            )
        # one run per end-offset position: re-evaluating the same backlog never queues a second run
        run_key = "end-" + "-".join(f"{p}:{o}" for p, o in sorted(end_offsets.items()))
        return SensorResult(
            run_requests=[RunRequest(run_key=run_key, tags={"txp/lag": str(lag)})], asset_events=events, cursor=cursor
        )

    return kafka_lag_sensor
