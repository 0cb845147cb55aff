"""Benchmark: the sink over a Kafka backlog, on local[2] and on a 2-worker standalone cluster, vs raw COPY
(the ceiling) and vs the tutorial pattern (foreachBatch + Spark's JDBC writer, mode append).

Runs against the Kafka, registry and Postgres of the running stack (`make up`). One backlog of the
transactions pipeline (``--records``, default 1M, in ``--partitions`` partitions) is produced once to
a fresh topic ``bench_sink_*``; every method then reads that same backlog, each into an empty
warehouse schema of its own (see ``_common``), in this order:

- the sink, ``PipelineSink(...).run_available_now()`` in this process on ``local[2]``: the first run
  in a new JVM (cold: HotSpot compiles the decode stage's code while it runs), then ``--warm-runs``
  more (3) on the same session, each into another empty schema (warm: what a continuously running
  sink sustains; HotSpot still compiles during the first of them). The median warm run counts;
- the tutorial pattern on the same ``local[2]`` session, likewise: ``from_avro`` of the same
  Avro (Confluent header skipped), the table's columns, ``df.write.jdbc(..., mode="append")`` in
  ``foreachBatch`` (PostgreSQL JDBC driver from ``infra/maven``), into ``CREATE TABLE (LIKE
  transactions INCLUDING ALL)``;
- raw ``COPY`` of the very rows the sink stored (its table's columns as CSV, exported beforehand)
  into such a table, one transaction: the ceiling, ``--warm-runs`` times, the median counting;
- the sink as ``spark_jobs/sink/main.py --available-now`` on a private standalone master with 2
  workers of 1 core each (started here on 127.0.0.1, stopped after), with Spark's event log on: the
  write tasks' Kafka records per executor, and so per worker, are read from it.

Rates: rows / seconds of the whole run (query start, lease and ledger checks included), and the
steady state after the first micro-batch (``sink_batches`` commit times; the JDBC run's own batch
times). During each run, the CPU seconds of each process group (Spark's JVMs, its Python workers,
PostgreSQL, the Kafka broker, the rest: this process among them) are sampled from ``/proc``. Then a
profile of where one sink batch's time goes, on a smaller backlog (``--profile-records``): the batch
re-read to time Kafka alone, Kafka + decode + render (JVM only) and + transfer of the rows to Python,
then the write tasks with every statement of their commit timed. Prints tables, then one JSON line
per figure. Usage:

    .venv/bin/python bench/bench_sink.py [--records 1000000] [--partitions 4] [--profile-records 100000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from _common import (
    CpuSampler,
    Figure,
    SliceTimeline,
    bench_schema,
    fresh_topic,
    median_run,
    out,
    produce_backlog,
    scalar,
    settings_for,
    slice_timeline,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.avro.functions import from_avro

from spark_jobs.session import spark_config
from spark_jobs.sink import PipelineSink
from spark_jobs.sink import _query as query_module
from spark_jobs.sink import _writer as writer_module
from spark_jobs.sink._writer import SliceResult, SliceWriter
from tx_platform.config import PROJECT_ROOT, Settings, load_settings
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.stack import free_port_block, resolve_artifacts

# the private cluster is started from the stack's own building blocks (no second Kafka or Postgres)
from tx_platform.stack._spark import SparkMaster, SparkWorker
from tx_platform.warehouse import connect, ensure_schema, table_columns

BENCH = "sink"
CORES = 2


def _jars(settings: Settings) -> list[str]:
    return [str(j) for j in resolve_artifacts(settings.jars_dir).spark_jars()]


def _steady(timeline: SliceTimeline) -> float | None:
    """Rows/s after the first batch, None when there was only one."""
    return round(timeline.steady_rate, 1) if timeline.batches > 1 else None


def warm_up(spark: SparkSession, settings: Settings, topic: str) -> None:
    """Load what every method's first batch would otherwise load: the Kafka source, Avro, a Python worker."""
    rows = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .load()
        .limit(1_000)
        .select(from_avro(F.expr("substring(value, 6)"), TRANSACTIONS.contract.schema_str).alias("r"))
    )
    rows.rdd.mapPartitions(lambda part: [sum(1 for _ in part)]).collect()


def local_session(settings: Settings, jars: list[str], master: str = f"local[{CORES}]") -> SparkSession:
    """A session in this process configured like the sink's (spark_config), on ``local[2]`` or ``master``."""
    config = spark_config(settings.model_copy(update={"spark_master": master}), jars, app_name="bench_sink")
    builder = SparkSession.builder
    for key, value in config.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ---------------------------------------------------------------- the sink, local[2]


def sink_local(
    spark: SparkSession, settings: Settings, topic: str, records: int, work: Path, *, run: int = 0
) -> tuple[Figure, Path | None]:
    """The sink in this process on ``local[2]``, the CPU of each process group sampled meanwhile.

    The first run (``run=0``) exports the rows it stored (table columns, CSV) for the COPY run; the
    next ones do the same again in the same session, its JVM's code compiled by the runs before.
    """
    export = work / "rows.csv" if run == 0 else None
    label = f"sink, local[{CORES}], {'again: warm JVM' if run else 'first run: cold JVM'}"
    method = "sink_local2_warm" if run else "sink_local2"
    return sink_in_process(spark, settings, topic, records, work, f"local[{CORES}]", method, label, export), export


def sink_in_process(
    spark: SparkSession, settings: Settings, topic: str, records: int, work: Path, master: str, method: str,
    label: str, export: Path | None = None,
) -> Figure:  # fmt: skip
    """``PipelineSink.run_available_now()`` on ``spark`` (whose master is ``master``) into an empty schema,
    with a checkpoint of its own under ``work``; ``export``: where to write the rows it stored, as CSV."""
    spec = TRANSACTIONS.with_topic(topic)
    with bench_schema(settings, method) as dsn:
        checkpoint = Path(tempfile.mkdtemp(prefix="ck_sink_", dir=work))
        run_settings = settings_for(dsn, checkpoint_dir=checkpoint, spark_master=master)
        ensure_schema(dsn, [spec])
        with CpuSampler() as cpu:
            stats = PipelineSink(spark, spec, run_settings).run_available_now()
        timeline = slice_timeline(dsn, topic)
        rows = scalar(dsn, f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s", topic)  # noqa: S608
        assert rows == records == stats.inserted, (rows, records, stats)  # noqa: S101
        if export is not None:
            columns = ", ".join(table_columns(spec))
            with closing(connect(dsn)) as conn, conn.cursor() as cur, export.open("w") as sink_file:
                cur.copy_expert(
                    f"COPY (SELECT {columns} FROM {spec.table} ORDER BY kafka_partition, kafka_offset) "  # noqa: S608
                    "TO STDOUT WITH (FORMAT csv)",
                    sink_file,
                )
    extra = {"batches": stats.batches, "slices": stats.slices, "steady_rows_per_s": _steady(timeline),
             "cpu_seconds": cpu.groups()}  # fmt: skip
    return Figure(BENCH, method, label, rows, stats.seconds, extra)


# ---------------------------------------------------------------- raw COPY, the ceiling


def raw_copy(settings: Settings, csv_path: Path, records: int) -> Figure:
    """COPY the sink's rows into ``(LIKE transactions INCLUDING ALL)``, one transaction."""
    spec = TRANSACTIONS
    with bench_schema(settings, "copy") as dsn:
        ensure_schema(dsn, [spec])
        with closing(connect(dsn)) as conn:
            with conn, conn.cursor() as cur:
                cur.execute(f"CREATE TABLE copy_target (LIKE {spec.table} INCLUDING ALL)")
            with CpuSampler() as cpu:
                started = time.perf_counter()
                with conn, conn.cursor() as cur, csv_path.open() as rows:
                    cur.copy_expert(
                        f"COPY copy_target ({', '.join(table_columns(spec))}) FROM STDIN WITH (FORMAT csv)", rows
                    )
                elapsed = time.perf_counter() - started
        rows = scalar(dsn, "SELECT count(*) FROM copy_target")
        assert rows == records, (rows, records)  # noqa: S101
    # one statement: no first batch to leave out, its steady state is the whole run
    return Figure(
        BENCH,
        "raw_copy",
        "raw COPY, same rows (ceiling)",
        rows,
        elapsed,
        {"steady_rows_per_s": None, "cpu_seconds": cpu.groups()},
    )


# ---------------------------------------------------------------- the tutorial pattern


def _jdbc_url(dsn: str) -> tuple[str, dict[str, str]]:
    parts = psycopg2.extensions.parse_dsn(dsn)
    schema = re.search(r"search_path=(\w+)", parts.get("options", ""))
    url = f"jdbc:postgresql://{parts['host']}:{parts['port']}/{parts['dbname']}"
    if schema:
        url += f"?currentSchema={schema.group(1)}"
    # stringtype=unspecified: Postgres casts the string columns to uuid itself, as tutorials set it
    props = {
        "user": parts["user"],
        "password": parts["password"],
        "driver": "org.postgresql.Driver",
        "stringtype": "unspecified",
    }
    return url, props


def tutorial_jdbc(
    spark: SparkSession, settings: Settings, topic: str, records: int, work: Path, *, run: int = 0
) -> Figure:
    """foreachBatch + from_avro + ``df.write.jdbc(mode="append")`` on the same local session (``run``: how
    many such runs came before on it)."""
    warm = run > 0
    spec = TRANSACTIONS.with_topic(topic)
    fields = spec.contract.field_names
    with bench_schema(settings, "jdbc") as dsn:
        ensure_schema(dsn, [spec])
        with closing(connect(dsn)) as conn, conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE jdbc_target (LIKE {spec.table} INCLUDING ALL)")
        url, props = _jdbc_url(dsn)
        ends: dict[int, float] = {}

        def write(batch: DataFrame, batch_id: int) -> None:
            rows = batch.select(
                # Confluent wire format: magic byte and schema id first, then the Avro body
                from_avro(F.expr("substring(value, 6)"), spec.contract.schema_str).alias("r"),
                F.col("topic").alias("kafka_topic"),
                F.col("partition").alias("kafka_partition"),
                F.col("offset").alias("kafka_offset"),
            ).select(*[F.col(f"r.{f}").alias(f) for f in fields], "kafka_topic", "kafka_partition", "kafka_offset")
            rows.write.jdbc(url, "jdbc_target", mode="append", properties=props)
            ends[batch_id] = time.monotonic()

        with CpuSampler() as cpu:
            started = time.monotonic()
            query = (
                spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
                .option("subscribe", topic)
                .option("startingOffsets", "earliest")
                .option("maxOffsetsPerTrigger", settings.max_offsets_per_trigger)
                .load()
                .writeStream.foreachBatch(write)
                .option("checkpointLocation", str(work / f"ck_jdbc_{run}"))
                .trigger(availableNow=True)
                .start()
            )
            query.awaitTermination()
            elapsed = time.monotonic() - started
        progress = {p["batchId"]: p["numInputRows"] for p in query.recentProgress if p["numInputRows"]}
        rows = scalar(dsn, "SELECT count(*) FROM jdbc_target")
        assert rows == records, (rows, records)  # noqa: S101
    done = sorted(b for b in ends if progress.get(b))
    steady = None
    if len(done) > 1:
        steady = sum(progress[b] for b in done[1:]) / (ends[done[-1]] - ends[done[0]])
    return Figure(
        BENCH,
        "tutorial_jdbc_append_warm" if warm else "tutorial_jdbc_append",
        f"tutorial: foreachBatch + JDBC append{', again' if warm else ''}",
        rows,
        elapsed,
        {
            "batches": len(done),
            "steady_rows_per_s": None if steady is None else round(steady, 1),
            "cpu_seconds": cpu.groups(),
        },
    )


# ---------------------------------------------------------------- the sink on a 2-worker standalone cluster


def _executor_figures(events: Path, workers: list[SparkWorker], app_id: str) -> dict[str, dict[str, int]]:
    """Per worker: its executor's tasks and the Kafka records they read (from the event log)."""
    tasks: Counter[str] = Counter()
    read: Counter[str] = Counter()
    [log] = [p for p in events.iterdir() if app_id in p.name]
    # Spark 4 writes a directory of rolled event files (eventlog_v2_<app>/events_<n>_<app>...)
    files = sorted(log.iterdir()) if log.is_dir() else [log]
    for path in files:
        for line in path.open():
            if '"SparkListenerTaskEnd"' not in line:
                continue
            event = json.loads(line)
            executor = event["Task Info"]["Executor ID"]
            tasks[executor] += 1
            metrics = event.get("Task Metrics") or {}
            read[executor] += int(metrics.get("Input Metrics", {}).get("Records Read", 0))
    figures = {}
    for worker in workers:
        for executor_dir in sorted((worker.root / app_id).iterdir()):
            executor = executor_dir.name
            figures[worker.name] = {"executor": int(executor), "tasks": tasks[executor], "records": read[executor]}
    return figures


def sink_cluster(
    settings: Settings, topic: str, records: int, work: Path, port_base: int, warm_runs: int
) -> list[Figure]:
    """``spark_jobs/sink/main.py --available-now`` against a private master with 2 workers (1 core each);
    then (``warm_runs``) a session in this process on the same cluster runs the sink once to start its
    executors, and ``warm_runs`` times more on them, warm (the median counts)."""
    base = free_port_block(4, first=port_base, step=5, last=65_000 - 4)
    spark_root = work / "spark"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    master = SparkMaster(root=spark_root, port=base, ui_port=base + 1, log_file=logs / "spark-master.log")
    workers = [
        SparkWorker(
            number=n,
            root=spark_root / f"worker-{n}",
            master_url=master.url,
            ui_port=base + 1 + n,
            cores=1,
            memory="2g",
            log_file=logs / f"spark-worker-{n}.log",
        )
        for n in (1, 2)
    ]
    events = work / "events"
    events.mkdir()
    spec = TRANSACTIONS.with_topic(topic)
    try:
        master.start()
        master.process.wait_ready(master.ready, 90, f"master UI on {master.ui_url}")
        for worker in workers:
            worker.start()
        # by count, not UI port: a worker whose UI port was taken meanwhile serves it on the next one
        workers[0].process.wait_ready(lambda: len(master.alive_workers()) >= 2, 120, "2 workers ALIVE")
        with bench_schema(settings, "cluster") as dsn:
            ensure_schema(dsn, [spec])
            command = [
                sys.executable, str(PROJECT_ROOT / "spark_jobs" / "sink" / "main.py"), "--available-now",
                "--pipeline", spec.name, "--topic", topic, "--jars", ",".join(_jars(settings)),
            ]  # fmt: skip
            env = {
                **os.environ,
                "TXP_SPARK_MASTER": master.url,
                "TXP_POSTGRES_DSN": dsn,
                "TXP_CHECKPOINT_DIR": str(work / "ck_cluster"),
                # the event log records every task's executor and input records
                "PYSPARK_SUBMIT_ARGS": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=file://{events} "
                "--conf spark.eventLog.compress=false --conf spark.eventLog.rolling.enabled=false "
                "pyspark-shell",
            }
            with CpuSampler() as cpu:
                started = time.monotonic()
                run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
                wall = time.monotonic() - started
            (logs / "sink.log").write_text(run.stdout + run.stderr)
            assert run.returncode == 0, run.stderr[-4000:]  # noqa: S101
            timeline = slice_timeline(dsn, topic)
            rows = scalar(dsn, f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s", topic)  # noqa: S608
            assert rows == records, (rows, records)  # noqa: S101
        seconds = re.search(r"caught up: SinkStats\(.*seconds=([\d.]+)", run.stderr)
        sink_seconds = float(seconds.group(1)) if seconds else wall
        [app] = master.state()["completedapps"]
        per_worker = _executor_figures(events, workers, app["id"])
        out(f"  done: sink, standalone cluster, spark-submit: {sink_seconds:.1f} s")
        warm = None
        if warm_runs:
            session = local_session(settings, _jars(settings), master.url)
            try:
                method, label = (
                    "sink_cluster_2_workers_warm",
                    "sink, standalone cluster (2 workers x 1 core), warm executors",
                )
                first = sink_in_process(session, settings, topic, records, work, master.url, method, label)
                out(f"  done: sink on the cluster from this process, new executors: {first.seconds:.1f} s")

                def measure(_run: int) -> Figure:
                    return sink_in_process(session, settings, topic, records, work, master.url, method, label)

                warm = repeated(warm_runs, measure)
            finally:
                session.stop()
    finally:
        for worker in workers:
            worker.process.stop(timeout=30)
        master.process.stop(timeout=30)
    cold = Figure(
        BENCH,
        "sink_cluster_2_workers",
        "sink, standalone cluster (2 workers x 1 core), spark-submit",
        rows,
        sink_seconds,
        {
            "process_seconds": round(wall, 3),
            "batches": timeline.batches,
            "steady_rows_per_s": _steady(timeline),
            "app": app["id"],
            "per_worker": per_worker,
            "cpu_seconds": cpu.groups(),
        },
    )
    return [cold] if warm is None else [cold, warm]


# ---------------------------------------------------------------- the profile of one sink batch

_STATEMENTS = (
    ("lock + ledger check", r"^(LOCK TABLE|SELECT partition FROM sink_offsets|SELECT .* FROM sink_leases|"
     r"SELECT .* FROM sink_offsets|INSERT INTO sink_offsets)"),
    ("staging tables", r"^(CREATE TEMP TABLE|ALTER TABLE stage_tx)"),
    ("COPY into staging", r"^COPY stage_tx"),
    ("direct load: COPY into the table", r"^COPY (?!stage_)"),
    ("direct load: claim keys", r"^INSERT INTO \w+_keys "),
    ("COPY quarantine staging", r"^COPY stage_q"),
    ("savepoints", r"^(SAVEPOINT|RELEASE|ROLLBACK TO)"),
    ("replay filter (DELETE)", r"^DELETE FROM stage"),
    ("target's shape (catalog)", r"^SELECT \(SELECT array_agg"),
    ("session settings", r"^SET "),
    ("claim keys + INSERT ... ON CONFLICT", r"^WITH (claimed|inserted) AS"),
    ("quarantine INSERT", r"^INSERT INTO quarantine"),
    ("fence (UPDATE sink_offsets)", r"^UPDATE sink_offsets"),
    ("sink_batches row", r"^(SELECT clock_timestamp|INSERT INTO sink_batches)"),
    ("latency histograms", r"^INSERT INTO sink_latency"),
)  # fmt: skip


def _kind(statement: str) -> str:
    text = " ".join(statement.split())
    for name, pattern in _STATEMENTS:
        if re.match(pattern, text):
            return name
    return "other: " + text[:40]


class TimingConnection(psycopg2.extensions.connection):
    """A connection that keeps (statement kind, seconds) for every statement its cursors run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self.timings: list[tuple[str, float]] = []


class TimingCursor(psycopg2.extensions.cursor):
    def execute(self, query: Any, vars: Any = None) -> None:  # noqa: A002, ANN401
        started = time.perf_counter()
        try:
            super().execute(query, vars)
        finally:
            text = query if isinstance(query, str) else query.decode()
            self.connection.timings.append((_kind(text), time.perf_counter() - started))

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:  # noqa: ANN401
        started = time.perf_counter()
        try:
            super().copy_expert(sql, file, size)
        finally:
            self.connection.timings.append((_kind(sql), time.perf_counter() - started))


class ProfilingSliceWriter(SliceWriter):
    """The sink's write task with its time split: rows arriving (Kafka, decode, render, transfer to
    Python), then the commit, each of its statements timed. The task runs the sink's own code (rows
    or Arrow batches, whichever the writer takes): only the connection it commits on is swapped for
    one that times its statements, and the timings go to ``timings_file`` (local mode: one machine)."""

    timings_file = ""

    def __call__(self, rows: Any) -> Iterator[Any]:  # noqa: ANN401 - Rows or Arrow batches
        self._started = time.perf_counter()
        yield from super().__call__(rows)

    def commit(self, *args: Any, **kwargs: Any) -> SliceResult:  # noqa: ANN401
        arrived = time.perf_counter() - self._started
        connections: list[TimingConnection] = []

        def timed_connect(dsn: str, *_: Any, **__: Any) -> TimingConnection:  # noqa: ANN401
            conn = psycopg2.connect(
                dsn, connection_factory=TimingConnection, cursor_factory=TimingCursor, application_name="bench"
            )
            connections.append(conn)
            return conn

        original = writer_module.connect
        writer_module.connect = timed_connect  # in this task's Python worker only
        # the worker's cached connection (a previous task's) would run the statements untimed: a timed one
        # is opened instead, and dropped after, so that the connection's set-up is part of every task's figure
        writer_module.drop_worker_connection(self.dsn)
        begun = time.perf_counter()
        try:
            result = super().commit(*args, **kwargs)
        finally:
            commit = time.perf_counter() - begun
            writer_module.connect = original
            writer_module.drop_worker_connection(self.dsn)
        timings = [t for conn in connections for t in conn.timings]
        per_kind: dict[str, float] = defaultdict(float)
        for kind, seconds in timings:
            per_kind[kind] += seconds
        per_kind["COMMIT, connect and Python"] = commit - sum(s for _, s in timings)
        task = {"batch_id": self.batch_id, "records": result.records, "rows_arrive": arrived, "commit": commit}
        with open(self.timings_file, "a") as out_file:  # noqa: PTH123 - one line per task, appended
            out_file.write(json.dumps(task | {"statements": per_kind}) + "\n")
        return result


class ProfiledSink(PipelineSink):
    """The sink with each batch's stages timed (bench only: the extra reads make it slower)."""

    def __init__(self, *args: Any, timings_file: Path, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self.profile: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self.timings_file = timings_file

    def _schemas_for(self, batch: DataFrame) -> dict[int, str]:
        started = time.perf_counter()
        schemas = super()._schemas_for(batch)
        self._current["driver: registry refresh"] = time.perf_counter() - started
        started = time.perf_counter()
        batch.write.format("noop").mode("overwrite").save()
        self._current["re-read: Kafka alone"] = time.perf_counter() - started
        return schemas

    def _write(self, rendered: DataFrame, batch_id: int) -> list[SliceResult]:
        current = self._current
        started = time.perf_counter()
        rendered.write.format("noop").mode("overwrite").save()
        current["re-read: Kafka + decode + render (JVM)"] = time.perf_counter() - started
        started = time.perf_counter()
        rendered.mapInArrow(lambda batches: _arrow_count(batches), "n BIGINT").collect()  # as the writer gets them
        current["re-read: + rows to Python"] = time.perf_counter() - started
        ProfilingSliceWriter.timings_file = str(self.timings_file)
        original = query_module.SliceWriter
        query_module.SliceWriter = ProfilingSliceWriter  # type: ignore[misc] # the class the sink's _write instantiates
        started = time.perf_counter()
        try:
            return super()._write(rendered, batch_id)
        finally:
            current["write job (all tasks)"] = time.perf_counter() - started
            query_module.SliceWriter = original  # type: ignore[misc]

    def _commit_batch(self, batch: DataFrame, batch_id: int) -> None:
        self._current = {}
        started = time.perf_counter()
        super()._commit_batch(batch, batch_id)
        current = self._current
        extra = sum(v for k, v in current.items() if k.startswith("re-read"))
        current["batch (without the re-reads)"] = time.perf_counter() - started - extra
        current["batch_id"] = batch_id
        self.profile.append(current)


def _arrow_count(batches: Iterable[Any]) -> Iterator[Any]:
    import pyarrow as pa  # noqa: PLC0415 - in the Python worker

    yield pa.RecordBatch.from_pylist([{"n": sum(b.num_rows for b in batches)}])


def profile_sink(spark: SparkSession, settings: Settings, records: int, partitions: int, work: Path) -> list[str]:
    """Run the profiled sink over a backlog of its own; the report's lines."""
    topic = fresh_topic(settings, "bench_sink_profile", partitions)
    spec = TRANSACTIONS.with_topic(topic)
    produce_backlog(settings, spec, records, seed=7)
    with bench_schema(settings, "profile") as dsn:
        ensure_schema(dsn, [spec])
        timings = work / "profile_tasks.jsonl"
        sink = ProfiledSink(spark, spec, settings_for(dsn, checkpoint_dir=work / "ck_profile"), timings_file=timings)
        stats = sink.run_available_now()
        assert stats.inserted == records, stats  # noqa: S101
    tasks = [json.loads(line) for line in timings.read_text().splitlines()]
    for batch in sink.profile:
        batch["tasks"] = [t for t in tasks if t["batch_id"] == batch["batch_id"]]
    return _profile_lines(sink.profile, records, stats.seconds)


def _profile_lines(batches: list[dict[str, Any]], records: int, seconds: float) -> list[str]:
    lines = [
        f"profile: {records:,} records, {len(batches)} batches, {seconds:.1f} s with the re-reads "
        "(means per batch; task figures are means per task, the tasks of a batch run 2 at a time)"
    ]
    keys = [
        "batch (without the re-reads)", "driver: registry refresh", "write job (all tasks)",
        "re-read: Kafka alone", "re-read: Kafka + decode + render (JVM)", "re-read: + rows to Python",
    ]  # fmt: skip
    for key in keys:
        lines.append(f"  {key:<44} {statistics.mean(b[key] for b in batches):7.3f} s")
    rereads = sum(v for b in batches for k, v in b.items() if k.startswith("re-read"))
    outside = seconds - rereads - sum(b["batch (without the re-reads)"] for b in batches)
    lines.append(f"  {'outside the batches, whole run (start, stop)':<44} {outside:7.3f} s")
    tasks = [t for b in batches for t in b["tasks"]]
    per_task = statistics.mean(t["records"] for t in tasks)
    lines.append(f"  per write task ({len(tasks)} tasks, {per_task:,.0f} records each on average):")
    arrive = statistics.mean(t["rows_arrive"] for t in tasks)
    commit = statistics.mean(t["commit"] for t in tasks)
    lines.append(f"    {'rows arriving in the task (Kafka, decode, render, to Python)':<58} {arrive:7.3f} s")
    lines.append(f"    {'commit_batch (one transaction)':<58} {commit:7.3f} s")
    kinds: dict[str, float] = defaultdict(float)
    for task in tasks:
        for kind, value in task["statements"].items():
            kinds[kind] += value / len(tasks)
    for kind, value in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"      {kind:<56} {value:7.3f} s  {value / commit:5.1%}")
    return lines


# ---------------------------------------------------------------- report


def _odd(text: str) -> int:
    """``--warm-runs``: a positive odd number, so that one run is the median."""
    runs = int(text)
    if runs < 1 or runs % 2 == 0:
        msg = f"{runs}: give a positive odd number of runs"
        raise argparse.ArgumentTypeError(msg)
    return runs


def repeated(runs: int, measure: Callable[[int], Figure]) -> Figure:
    """``measure(run)`` for run 1 .. ``runs``, each printed as it ends; the median run, its label saying so."""
    figures = []
    for run in range(1, runs + 1):
        figures.append(measure(run))
        out(f"  done: {figures[-1].label} ({run} of {runs}): {figures[-1].seconds:.1f} s")
    label = figures[0].label if runs == 1 else f"{figures[0].label}, median of {runs}"
    return median_run(figures, label)


def _row(figure: Figure, beside: str) -> str:
    steady = figure.extra.get("steady_rows_per_s")
    steady_text = f"{steady:>10,.0f}" if steady else f"{'-':>10}"
    return f"  {figure.label:<46} {figure.seconds:8.2f} s {figure.rate:>10,.0f} {steady_text}  {beside}"


def main() -> None:
    """Produce the backlog, run every method on it, print each beside raw COPY, then JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="backlog records")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the backlog's topic")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument("--profile-records", type=int, default=100_000, help="backlog of the profiled run (0: none)")
    parser.add_argument("--spark-port", type=int, default=47_077, help="first port tried for the private cluster")
    parser.add_argument("--skip", action="append", default=[], choices=["cluster", "jdbc", "copy"], help="repeatable")
    parser.add_argument(
        "--warm-runs",
        type=_odd,
        default=3,
        help="warm runs of each method, and runs of raw COPY (odd: the median run counts)",
    )
    parser.add_argument("--verbose", action="store_true", help="the sink's own log lines (one per batch)")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    settings = load_settings()
    jars = _jars(settings)
    topic = fresh_topic(settings, "bench_sink", args.partitions)
    produced = produce_backlog(settings, TRANSACTIONS.with_topic(topic), args.records, args.seed)
    out(f"backlog: {args.records:,} records in {topic} ({args.partitions} partitions), produced in {produced:.1f} s")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench_sink_") as tmp:
        work = Path(tmp)
        spark = local_session(settings, jars)
        warm_up(spark, settings, topic)
        local, csv_path = sink_local(spark, settings, topic, args.records, work)
        out(f"  done: {local.label}: {local.seconds:.1f} s")
        figures.append(local)
        figures.append(
            repeated(args.warm_runs, lambda run: sink_local(spark, settings, topic, args.records, work, run=run)[0])
        )
        if "jdbc" not in args.skip:
            figures.append(tutorial_jdbc(spark, settings, topic, args.records, work))
            out(f"  done: {figures[-1].label}: {figures[-1].seconds:.1f} s")
            figures.append(
                repeated(args.warm_runs, lambda run: tutorial_jdbc(spark, settings, topic, args.records, work, run=run))
            )
        profile: list[str] = []
        if args.profile_records:
            profile = profile_sink(spark, settings, args.profile_records, args.partitions, work)
        spark.stop()
        copy = None
        if "copy" not in args.skip:
            assert csv_path is not None  # noqa: S101 - the first sink run exports its rows
            copy = repeated(args.warm_runs, lambda _run: raw_copy(settings, csv_path, args.records))
            figures.append(copy)
        if "cluster" not in args.skip:
            cluster = sink_cluster(settings, topic, args.records, work / "cluster", args.spark_port, args.warm_runs)
            figures += cluster

    out(f"sink: transactions pipeline, a backlog of {args.records:,} records in {args.partitions} partitions")
    out(f"  {'method':<46} {'seconds':>10} {'rows/s':>10} {'steady/s':>10}  beside raw COPY")
    for figure in figures:
        if copy is None or figure is copy:
            beside = "" if copy is None else "  1.00x (ceiling)"
        else:
            figure.extra["ratio_to_copy"] = round(figure.rate / copy.rate, 3)
            steady = figure.extra.get("steady_rows_per_s")
            steady_ratio = f", steady {steady / copy.rate:.2f}x" if steady else ""
            beside = f"  {figure.rate / copy.rate:5.2f}x{steady_ratio}"
            if steady:
                figure.extra["steady_ratio_to_copy"] = round(steady / copy.rate, 3)
        out(_row(figure, beside))
    for figure in figures:
        if len(figure.extra.get("runs_seconds", ())) > 1:
            runs = ", ".join(f"{seconds:.2f}" for seconds in figure.extra["runs_seconds"])
            out(f"  {figure.label}: runs of {runs} s, in order")
    sampled = [f for f in figures if f.extra.get("cpu_seconds")]
    if sampled:
        out("  CPU seconds of each process group during the run (/proc, every 0.25 s; 2 cores = 2 s per second):")
        for figure in sampled:
            groups = ", ".join(f"{group} {cpu:.1f}" for group, cpu in figure.extra["cpu_seconds"].items())
            out(f"    {figure.label:<46} {groups}")
    for figure in figures:
        if "per_worker" in figure.extra:
            app = figure.extra["app"]
            out(f"  rows written per worker on the cluster (the write tasks' Kafka records, event log of {app}):")
            for worker, seen in figure.extra["per_worker"].items():
                out(f"    {worker}: executor {seen['executor']}, {seen['tasks']} tasks, {seen['records']:,} records")
            both = all(seen["records"] > 0 for seen in figure.extra["per_worker"].values())
            out(f"    both workers' executors wrote rows: {'yes' if both else 'NO'}")
    for line in profile:
        out(line)
    for figure in figures:
        out(figure.json())


if __name__ == "__main__":
    main()
