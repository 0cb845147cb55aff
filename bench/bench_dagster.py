"""Benchmark: a Dagster-launched sink run over a backlog vs the plain ``PipelineSink.run_available_now()``.

Runs against the Kafka, registry and Postgres of the running stack (`make up`). One backlog of the
transactions pipeline (``--records``, default 1M, ``--partitions`` partitions) is produced to a fresh
topic ``bench_dagster_*``; then, each into an empty warehouse schema of its own (see ``_common``):

- Dagster: the definitions ``build_definitions(settings, [spec])`` build for that topic, job
  ``transactions_sink_job`` executed in process (``execute_in_process``): the sink asset, the
  unpartitioned derived assets downstream of its table (none for transactions) and every check, as
  the lag sensor launches it. Reported: the job's seconds and the sink step's own (STEP_START ->
  STEP_SUCCESS);
- Dagster, the fraud query: then ``transactions_fraud_job`` over the same backlog, in the same schema,
  as ``transactions_fraud_sensor`` requests it after a sink run (its own run, not in the sink job's
  seconds);
- plain: ``PipelineSink(spark, spec, settings).run_available_now()`` on the same session.

The Spark session (the configuration ``build_resources`` gives the ``pyspark`` resource) is started
and warmed up first by a sink run over 5,000 records of another topic, reported on its own line:
both runs then find it running and warm (the Dagster resource's ``getOrCreate`` returns it).
Prints a table, then one JSON line per figure. Usage:

    .venv/bin/python bench/bench_dagster.py [--records 1000000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import Figure, bench_schema, fresh_topic, out, produce_backlog, scalar, settings_for
from dagster import DagsterInstance
from pyspark.sql import SparkSession

from spark_jobs.session import spark_config
from spark_jobs.sink import PipelineSink
from tx_platform.assets import sink_job_name
from tx_platform.config import Settings, load_settings
from tx_platform.definitions import build_definitions
from tx_platform.pipelines import TRANSACTIONS, PipelineSpec
from tx_platform.pipelines.transactions._fraud_assets import fraud_job_name
from tx_platform.stack import resolve_artifacts
from tx_platform.warehouse import ensure_schema

BENCH = "dagster"
TARGET_SECONDS = 60
WARM_UP_RECORDS = 5_000


def session(settings: Settings, work: Path) -> tuple[SparkSession, float]:
    """The session Dagster's ``pyspark`` resource would build, started and warmed up by a sink run over
    a small backlog of its own (Kafka source, Avro, the sink's expressions, its Python workers); its seconds."""
    started = time.perf_counter()
    jars = resolve_artifacts(settings.jars_dir).spark_jars()
    builder = SparkSession.builder
    for key, value in spark_config(settings, jars).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spec = TRANSACTIONS.with_topic(fresh_topic(settings, "bench_dagster_warmup", 4))
    produce_backlog(settings, spec, WARM_UP_RECORDS, seed=99)
    with bench_schema(settings, "warmup") as dsn:
        ensure_schema(dsn, [spec])
        PipelineSink(spark, spec, settings_for(dsn, checkpoint_dir=work / "ck_warmup")).run_available_now()
    return spark, time.perf_counter() - started


def _rows(dsn: str, spec: PipelineSpec) -> int:
    return int(scalar(dsn, f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s", spec.topic))  # noqa: S608


def dagster_run(settings: Settings, spec: PipelineSpec, records: int, work: Path) -> tuple[Figure, Figure, Figure]:
    """``transactions_sink_job`` then ``transactions_fraud_job`` in process: (the sink job, its sink step,
    the fraud job)."""
    saved = os.environ.get("TXP_POSTGRES_DSN")
    instance = DagsterInstance.ephemeral()
    with bench_schema(settings, "dagster") as dsn:
        ensure_schema(dsn, [spec])
        # the DSN reaches the resources as a variable (secrets are never resource config)
        os.environ["TXP_POSTGRES_DSN"] = dsn
        try:
            definitions = build_definitions(settings_for(dsn, checkpoint_dir=work / "ck_dagster"), [spec])
            seconds = {}
            results = {}
            for name in (sink_job_name(spec), fraud_job_name(spec)):
                job_def = definitions.resolve_job_def(name)
                started = time.perf_counter()
                results[name] = job_def.execute_in_process(instance=instance)
                seconds[name] = time.perf_counter() - started
                assert results[name].success, name  # noqa: S101
                if name == sink_job_name(spec):
                    rows = _rows(dsn, spec)
                    assert rows == records, (rows, records)  # noqa: S101
        finally:
            if saved is None:
                os.environ.pop("TXP_POSTGRES_DSN", None)
            else:
                os.environ["TXP_POSTGRES_DSN"] = saved
    figures = []
    for name, result in results.items():
        steps = {
            stat.step_key: round(stat.end_time - stat.start_time, 3)
            for stat in instance.get_run_step_stats(result.run_id)
            if stat.start_time is not None and stat.end_time is not None
        }
        method = "dagster_job" if name == sink_job_name(spec) else "dagster_fraud_job"
        figures.append(Figure(BENCH, method, f"Dagster: {name} (execute_in_process)", rows, seconds[name],
                              {"steps": steps}))  # fmt: skip
    job, fraud = figures
    sink_step = next(k for k in job.extra["steps"] if spec.query_name in k)
    step = Figure(BENCH, "dagster_sink_step", "  of which the sink step", rows, job.extra["steps"][sink_step])
    return job, step, fraud


def plain_run(spark: SparkSession, settings: Settings, spec: PipelineSpec, records: int, work: Path) -> Figure:
    """``PipelineSink.run_available_now()`` on the same session."""
    with bench_schema(settings, "plain") as dsn:
        ensure_schema(dsn, [spec])
        started = time.perf_counter()
        stats = PipelineSink(spark, spec, settings_for(dsn, checkpoint_dir=work / "ck_plain")).run_available_now()
        elapsed = time.perf_counter() - started
        rows = _rows(dsn, spec)
        assert rows == records == stats.inserted, (rows, records, stats)  # noqa: S101
    return Figure(BENCH, "plain_run_available_now", "plain PipelineSink.run_available_now()", rows, elapsed)


def main() -> None:
    """Produce the backlog, run both, print them side by side, then JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="backlog records")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the backlog's topic")
    parser.add_argument("--seed", type=int, default=3, help="generator seed")
    args = parser.parse_args()
    settings = load_settings()
    spec = TRANSACTIONS.with_topic(fresh_topic(settings, "bench_dagster", args.partitions))
    produced = produce_backlog(settings, spec, args.records, args.seed)
    out(f"backlog: {args.records:,} records in {spec.topic} x{args.partitions}, produced in {produced:.1f} s")
    with tempfile.TemporaryDirectory(prefix="bench_dagster_") as tmp:
        work = Path(tmp)
        spark, started = session(settings, work)
        job, step, fraud = dagster_run(settings, spec, args.records, work)
        plain = plain_run(spark, settings, spec, args.records, work)
        spark.stop()
    label = f"Spark session start + warm-up sink run ({settings.spark_master})"
    start = Figure(BENCH, "spark_session_start", label, 0, started)

    out(f"dagster: transactions pipeline, a backlog of {args.records:,} records, one run (target {TARGET_SECONDS} s)")
    out(f"  {'method':<52} {'seconds':>10} {'rows/s':>10}  beside the plain run")
    for figure in (job, step, plain, fraud):
        beside = "  1.00x" if figure is plain else f"  {figure.seconds / plain.seconds:5.2f}x its seconds"
        if figure is job:
            met = figure.seconds <= TARGET_SECONDS
            beside += f"  (target <= {TARGET_SECONDS} s: {'met' if met else 'NOT met'})"
        if figure is fraud:
            beside += "  (its own run, after the sink job's)"
        out(f"  {figure.label:<52} {figure.seconds:8.2f} s {figure.rate:>10,.0f}{beside}")
    out(f"  {start.label:<52} {start.seconds:8.2f} s  (before both, not in their seconds)")
    for figure in (job, fraud):
        out(f"  steps of {figure.label}:")
        for name, seconds in figure.extra["steps"].items():
            out(f"    {name}: {seconds:.2f} s")
    for figure in (job, step, plain, fraud, start):
        out(figure.json())


if __name__ == "__main__":
    main()
