"""Sensors: run a pipeline's sink job when its Kafka lag reaches a threshold, retry failed runs with backoff;
log every failed run and count it on the Pushgateway.

Public Dagster API only (``@sensor(target=...)``, ``@run_failure_sensor``): nothing from ``dagster._``.
"""

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRecord,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import push_to_gateway

from tx_platform.assets import PipelineDefinitions, pipeline_keys
from tx_platform.errors import TopicNotFoundError
from tx_platform.pipelines import PipelineSpec
from tx_platform.resources import KafkaResource, Lag, PostgresResource, SettingsResource, compute_lag

_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
_FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
_FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
#: Failures looked at to count a streak; the backoff reaches its cap long before, so more changes nothing.
_MAX_COUNTED_FAILURES = 100


def retry_delay_seconds(failures: int, base_seconds: float, max_seconds: float) -> float:
    """Wait before retrying after ``failures`` consecutive failed runs: base * 2^(failures-1), capped.

    No failure means no wait. The exponent is bounded so a long streak cannot overflow the float.
    """
    if failures < 1:
        return 0.0
    return min(base_seconds * 2.0 ** min(failures - 1, 64), max_seconds)


@dataclass(frozen=True)
class FailureStreak:
    """The newest run of the job failed or was cancelled, and so did ``count - 1`` before it."""

    latest: RunRecord
    count: int

    @property
    def run_id(self) -> str:
        """Id of the newest failed or cancelled run."""
        return self.latest.dagster_run.run_id

    @property
    def status(self) -> DagsterRunStatus:
        """FAILURE or CANCELED."""
        return self.latest.dagster_run.status

    @property
    def ended_at(self) -> datetime:
        """When the newest failed run ended (UTC); its last update if the storage has no end time."""
        if self.latest.end_time is not None:
            return datetime.fromtimestamp(self.latest.end_time, tz=UTC)
        updated = self.latest.update_timestamp
        # run storages write naive UTC timestamps
        return updated.replace(tzinfo=UTC) if updated.tzinfo is None else updated.astimezone(UTC)


def failure_streak(instance: DagsterInstance, job_name: str) -> FailureStreak | None:
    """Consecutive failed/cancelled finished runs of ``job_name``, newest first, up to the last success."""
    records = instance.get_run_records(
        filters=RunsFilter(job_name=job_name, statuses=_FINISHED), limit=_MAX_COUNTED_FAILURES
    )
    count = 0
    for record in records:  # newest first
        if record.dagster_run.status not in _FAILED:
            break
        count += 1
    return FailureStreak(latest=records[0], count=count) if count else None


def _ahead_message(spec: PipelineSpec, lag: Lag) -> str:
    topic = spec.topic
    partitions = ", ".join(f"{p} (committed {c}, end {e})" for p, (c, e) in lag.ahead.items())
    return (
        f"topic {topic!r} ends before the offsets the sink committed to Postgres on partition(s) {partitions}: "
        "it was deleted and recreated, or truncated, after the sink read it. No sink run requested: the sink "
        "refuses such a topic with [TOPIC_RECREATED]. Restore the original topic, or, to load the new one from "
        f"its start, run `txp topics forget --pipeline {spec.name} --topic {topic}` (deletes its rows, quarantine, "
        "offsets and checkpoint: their Kafka coordinates would collide with the new records)."
    )


def build_lag_sensor(spec: PipelineSpec, sink_job: Any, minimum_interval_seconds: int = 30) -> SensorDefinition:  # noqa: ANN401 - a @job or what define_asset_job returns
    """A sensor ``<name>_lag_sensor`` that requests ``sink_job`` when the pipeline's lag >= TXP_LAG_THRESHOLD.

    Lag = end offsets of ``spec.topic`` - offsets the sink committed to Postgres. Each evaluation
    records the lag as an observation of ``kafka/<topic>`` when it changed, so the UI plots it.
    After a failed or cancelled run of the job it waits ``sink_retry_backoff_seconds * 2^(n-1)``
    (capped at ``sink_retry_backoff_max_seconds``) after the n-th consecutive failure, then requests
    a retry with its own run key. When Postgres holds offsets past the topic's end it requests nothing.
    """
    topic_key = pipeline_keys(spec).topic

    @sensor(
        name=f"{spec.name}_lag_sensor",
        target=sink_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Runs {sink_job.name} when the lag of `{spec.topic}` (end offsets - offsets committed to "
        "Postgres) reaches TXP_LAG_THRESHOLD, retries failed runs with exponential backoff, refuses a topic that "
        f"ends before the committed offsets; records lag on {topic_key.to_user_string()}.",
    )
    def lag_sensor(
        context: SensorEvaluationContext, kafka: KafkaResource, postgres: PostgresResource, settings: SettingsResource
    ) -> SensorResult:
        s = settings.settings
        try:
            end_offsets = kafka.end_offsets(spec.topic)
        except TopicNotFoundError as exc:
            return SensorResult(skip_reason=SkipReason(str(exc)))
        lag = compute_lag(end_offsets, postgres.committed_offsets(spec.topic))
        ahead = lag.ahead
        events = []
        state = {"lag": lag.total, "ahead": sorted(ahead)}
        if context.cursor is None or json.loads(context.cursor) != state:
            events.append(
                AssetObservation(
                    asset_key=topic_key,
                    metadata={
                        "lag": lag.total,
                        "lag_by_partition": json.dumps(lag.by_partition),
                        "end_offsets_total": sum(end_offsets.values()),
                        "ahead_partitions": json.dumps({p: {"committed": c, "end": e} for p, (c, e) in ahead.items()}),
                    },
                )
            )
        cursor = json.dumps(state)

        def skip(message: str) -> SensorResult:
            return SensorResult(skip_reason=SkipReason(message), asset_events=events, cursor=cursor)

        # a negative lag is not "caught up": the committed offsets belong to records this topic no longer has
        if ahead:
            return skip(_ahead_message(spec, lag))
        if lag.total < s.lag_threshold:
            return skip(f"caught up: lag {lag.total} < threshold {s.lag_threshold}")
        active = context.instance.get_runs(filters=RunsFilter(job_name=sink_job.name, statuses=_ACTIVE), limit=1)
        if active:
            return skip(f"lag {lag.total}, but sink run {active[0].run_id} is still in progress")
        # one run per end-offset position: re-evaluating the same backlog never queues a second run
        run_key = "end-" + "-".join(f"{p}:{o}" for p, o in sorted(end_offsets.items()))
        tags = {"txp/lag": str(lag.total)}
        streak = failure_streak(context.instance, sink_job.name)
        if streak is not None:
            # the same backlog gives the same run key, which Dagster would never launch again
            delay = retry_delay_seconds(streak.count, s.sink_retry_backoff_seconds, s.sink_retry_backoff_max_seconds)
            retry_at = streak.ended_at + timedelta(seconds=delay)
            if datetime.now(UTC) < retry_at:
                return skip(
                    f"lag {lag.total}; sink run {streak.run_id} ended {streak.status.value}, "
                    f"{streak.count} failed/cancelled run(s) in a row: retry {streak.count} at "
                    f"{retry_at.isoformat(timespec='seconds')} ({delay:g} s after it ended)"
                )
            # one retry per failed run: the key names the run it retries
            run_key = f"{run_key}-retry-of-{streak.run_id}"
            tags |= {"txp/retry": str(streak.count), "txp/retry_of": streak.run_id}
        return SensorResult(run_requests=[RunRequest(run_key=run_key, tags=tags)], asset_events=events, cursor=cursor)

    return lag_sensor


#: The failed-runs counter, pushed to the Pushgateway under grouping key ``{job=<Dagster job>, pipeline}``.
FAILED_RUNS_METRIC = "txp_dagster_failed_runs_total"
#: Runs whose pipeline no tag or asset tells.
UNKNOWN_PIPELINE = "unknown"
#: Failed runs of one job counted at most (the counter is recomputed from the instance at each failure).
_MAX_COUNTED_RUNS = 10_000


def pipeline_of_run(run: DagsterRun, pipelines_by_key: Mapping[AssetKey, str]) -> str:
    """The pipeline a run belongs to: its ``txp/pipeline`` or ``txp/sink`` tag, else the pipeline of the first of
    its selected assets (runs of ``dagster asset materialize`` carry no tags of ours)."""
    tagged = run.tags.get("txp/pipeline") or run.tags.get("txp/sink")
    if tagged:
        return tagged
    keys = sorted(run.asset_selection or (), key=lambda k: k.to_user_string())
    return next((pipelines_by_key[k] for k in keys if k in pipelines_by_key), UNKNOWN_PIPELINE)


def failed_runs_total(
    instance: DagsterInstance, job_name: str, pipeline: str, pipelines_by_key: Mapping[AssetKey, str]
) -> int:
    """Failed runs of ``job_name`` for ``pipeline`` the instance holds: the counter's value, recomputed.

    Counting from the instance (not adding one per failure in memory) keeps the total right across
    sensor restarts and daemon crashes, and a restarted Pushgateway gets it back at the next failure.
    """
    runs = instance.get_runs(
        filters=RunsFilter(job_name=job_name, statuses=[DagsterRunStatus.FAILURE]), limit=_MAX_COUNTED_RUNS
    )
    return sum(1 for run in runs if pipeline_of_run(run, pipelines_by_key) == pipeline)


def push_failed_runs(gateway_url: str, job_name: str, pipeline: str, total: int, timeout: float = 5.0) -> None:
    """PUT ``txp_dagster_failed_runs_total`` = ``total`` to the group ``{job=job_name, pipeline}``.

    The group's labels become the sample's labels on the gateway:
    ``txp_dagster_failed_runs_total{job="<job>",pipeline="<pipeline>"}``.
    """

    class _Collector:
        def collect(self) -> Iterator[CounterMetricFamily]:
            family = CounterMetricFamily(
                FAILED_RUNS_METRIC.removesuffix("_total"), "Dagster runs that ended in failure, per pipeline and job."
            )
            family.add_metric([], total)
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    push_to_gateway(gateway_url, job=job_name, grouping_key={"pipeline": pipeline}, registry=registry, timeout=timeout)


def build_run_failure_sensor(pipelines: Iterable[PipelineDefinitions]) -> SensorDefinition:
    """``txp_run_failure_sensor`` (RUNNING by default): logs each failed run of the code location and pushes
    ``txp_dagster_failed_runs_total{pipeline,job}`` to the Pushgateway (``TXP_PUSHGATEWAY_URL``).

    A gateway that is down costs one warning in the sensor's log, never the sensor.
    """
    pipelines_by_key = {
        key: p.spec.name for p in pipelines for key in (*p.keys.sink, p.keys.topic, p.keys.dlq, *p.derived_keys)
    }

    @run_failure_sensor(
        name="txp_run_failure_sensor",
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description=f"Logs every failed run and pushes {FAILED_RUNS_METRIC}{{pipeline,job}} (failed runs the "
        "instance holds, per pipeline and job) to the Pushgateway.",
    )
    def txp_run_failure_sensor(context: RunFailureSensorContext, settings: SettingsResource) -> None:
        run = context.dagster_run
        pipeline = pipeline_of_run(run, pipelines_by_key)
        reason = context.failure_event.message or "(no message)"
        context.log.error(f"run {run.run_id} of {run.job_name} ({pipeline}) failed: {reason}")
        total = failed_runs_total(context.instance, run.job_name, pipeline, pipelines_by_key)
        url = settings.settings.pushgateway_url
        try:
            push_failed_runs(url, run.job_name, pipeline, total)
        except OSError as exc:
            context.log.warning(f"could not push {FAILED_RUNS_METRIC} to {url}: {exc}")
        else:
            context.log.info(f"{FAILED_RUNS_METRIC}{{job={run.job_name!r},pipeline={pipeline!r}}} = {total}")

    return txp_run_failure_sensor
