"""Dagster assets of fraud detection: ``warehouse/fraud_alerts`` and ``kafka/fraud_alerts`` (topic ``fraud.alerts``).

One multi-asset runs the fraud query (``spark_jobs/fraud``) once over everything new in the transactions
topic (AvailableNow): it writes both assets together, the alerts in Postgres and each exactly once in
the topic, so they cannot be materialized apart. One run at a time (pool ``fraud_<pipeline>``): two
would race on the query's checkpoint (the query's lease would refuse the second anyway).

The query reads the topic, not the sink's table, so it is not part of the sink job (it would double that
run's time: 87 s of fraud query next to 31 s of sink over a 1M backlog). It has a job of its own,
``<pipeline>_fraud_job``, which ``<pipeline>_fraud_sensor`` (a run-status sensor, RUNNING by default) requests
after each successful run that materialized the sink's table: fraud alerts follow the loads the lag sensor
starts, in a run of their own.
"""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    DagsterRunStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SkipReason,
    define_asset_job,
    multi_asset,
    run_status_sensor,
)
from dagster_pyspark import LazyPySparkResource

from tx_platform.assets import pipeline_keys, sink_job_name
from tx_platform.pipelines import PipelineSpec, asset_name
from tx_platform.resources import PostgresResource, SettingsResource

OWNERS = ["team:data-platform"]


#: Runs of the fraud job not started yet: one is enough, it reads everything new when it starts.
_WAITING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]


def fraud_job_name(spec: PipelineSpec) -> str:
    """``<pipeline>_fraud_job``: the fraud query's job."""
    return f"{spec.name}_fraud_job"


def fraud_assets(spec: PipelineSpec) -> list[Any]:
    """``warehouse/fraud_alerts`` and ``kafka/<alerts topic>``, downstream of ``kafka/<topic>``; their job and the
    sensor that requests it after each sink run."""
    from spark_jobs.fraud._query import alerts_topic  # no Spark session here: the names only

    topic = alerts_topic(spec)
    alerts_key = AssetKey(["warehouse", "fraud_alerts"])
    topic_key = AssetKey(["kafka", asset_name(topic)])
    source_key = AssetKey(["kafka", asset_name(spec.topic)])
    tags = {"txp/pipeline": spec.name, "txp/layer": "fraud"}

    @multi_asset(
        name=f"{spec.name}_fraud",
        specs=[
            AssetSpec(
                alerts_key,
                deps=[source_key],
                group_name=spec.name,
                kinds={"spark", "postgres"},
                owners=OWNERS,
                tags=tags,
                metadata={"dagster/table_name": "txp.public.fraud_alerts"},
                description=f"Postgres `fraud_alerts`: velocity, amount-spike, impossible-travel and card-testing "
                f"alerts of the streaming fraud query over `{spec.topic}` (event time, watermark of the allowed "
                "lateness; alert ids uuid5 of rule and transactions, offsets in `fraud_offsets`).",
            ),
            AssetSpec(
                topic_key,
                deps=[alerts_key],
                group_name=spec.name,
                kinds={"kafka"},
                owners=OWNERS,
                tags=tags,
                description=f"Kafka `{topic}`: each row of `fraud_alerts` once (JSON, keyed by account), published "
                "from Postgres through an outbox (`published_offset` and a scan before sending).",
            ),
        ],
        can_subset=False,
        pool=f"fraud_{spec.name}",
    )
    def _fraud(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        postgres: PostgresResource,
        settings: SettingsResource,
    ) -> Iterator[MaterializeResult]:
        """Run the fraud query once over everything new, then report recall and precision against the ground truth."""
        from spark_jobs.fraud import FraudQuery
        from tx_platform.pipelines.transactions._fraud import fraud_report

        config = settings.settings  # a run waits for another holding the query's lease, as the sink's do
        stats = FraudQuery(pyspark.spark_session, spec, config).run_available_now(config.sink_lease_wait_seconds)
        with postgres.connection() as conn:
            report = fraud_report(conn, topic=spec.topic)
        context.log.info(f"fraud: {stats}; report {report}")
        total = postgres.scalar("SELECT count(*) FROM fraud_alerts WHERE topic = %s", (spec.topic,))
        yield MaterializeResult(
            asset_key=alerts_key,
            metadata={
                "alerts_new": stats.inserted,
                "batches": stats.batches,
                "seconds": stats.seconds,
                "recall": report["recall"],
                "precision": report["precision"],
                "injected": report["injected"],
                "detected": report["detected"],
                "dagster/row_count": MetadataValue.int(int(total or 0)),
            },
        )
        yield MaterializeResult(asset_key=topic_key, metadata={"published": stats.published})

    job = define_asset_job(
        fraud_job_name(spec),
        selection=AssetSelection.assets(alerts_key, topic_key),
        description=f"Run the fraud query once over everything new in `{spec.topic}` (AvailableNow), then publish "
        f"its new alerts to `{topic}`.",
        tags={"txp/pipeline": spec.name},
    )
    table = pipeline_keys(spec).table

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name=f"{spec.name}_fraud_sensor",
        request_job=job,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description=f"Runs {job.name} after each successful run that materialized {table.to_user_string()} "
        f"({sink_job_name(spec)}, or the table materialized by hand); at most one such run waits at a time.",
    )
    def fraud_sensor(context: RunStatusSensorContext) -> RunRequest | SkipReason:
        run = context.dagster_run
        # the table's latest materialization is this run's: a sink job run, the table materialized by hand or with
        # others (a run of every asset has no explicit asset selection to look at)
        latest = context.instance.get_latest_materialization_event(table)
        if latest is None or latest.run_id != run.run_id:
            return SkipReason(f"run {run.run_id} ({run.job_name}) did not materialize {table.to_user_string()}")
        waiting = context.instance.get_runs(filters=RunsFilter(job_name=job.name, statuses=_WAITING), limit=1)
        if waiting:
            return SkipReason(
                f"fraud run {waiting[0].run_id} has not started yet: it will read what run {run.run_id} loaded"
            )
        return RunRequest(run_key=f"after-{run.run_id}", tags={"txp/after_run": run.run_id})

    return [_fraud, job, fraud_sensor]
