"""The streaming sink of a pipeline: its Kafka topic -> its Postgres table / `quarantine`, exactly once.

One query per pipeline (named ``<pipeline>_sink``, with its own checkpoint), built from the
pipeline's spec; the settings arrive as one :class:`~tx_platform.config.Settings` object.

Each micro-batch is decoded in Spark and written by the executors: each task commits its Kafka
partition's slice with :func:`tx_platform.warehouse.commit_batch`, together with that partition's
offsets, fenced (see ``_writer``); the driver collects only per-task counts. Postgres, not the
Spark checkpoint, is the source of truth for progress: without a checkpoint the query starts
from the offsets committed there, and a batch or task replayed after a crash writes nothing twice.

The sink holds its topic's lease while it runs (a second sink fails at start), checks the
ledger against Kafka before it starts (topic id, offsets past the topic's end, records deleted
by retention), and every commit checks that its batch continues the ledger. Spark's own
``failOnDataLoss`` is off because the ledger check is stricter and names the gap.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg2.extensions import connection as Connection
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming import StreamingQuery

from spark_jobs.session import kafka_source
from spark_jobs.sink._decode import Decoder, wire_schema_id
from spark_jobs.sink._dlq import DeadLetterPublisher
from spark_jobs.sink._progress import SinkProgressReporter
from spark_jobs.sink._registry import WriterSchemas
from spark_jobs.sink._writer import REFUSED_GAP, RESULT_SCHEMA, SliceResult, SliceWriter, unfenced_for_tests
from tx_platform.config import Settings
from tx_platform.errors import SinkError, TxPlatformError
from tx_platform.kafka_admin import partition_count, topic_id, watermarks
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import (
    Gap,
    SinkLease,
    acquire_lease,
    check_batch,
    check_lease,
    committed_offsets,
    connect,
    prepare_ledger,
    read_ledger,
    verify_migrated,
)

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    """Totals over the batches of one run of the query."""

    batches: int = 0
    records: int = 0
    inserted: int = 0
    quarantined: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    #: commits made by the write tasks, one per Kafka partition with records in a batch (a task may make several)
    slices: int = 0


class PipelineSink:
    """Builds and runs the streaming query of one pipeline."""

    def __init__(self, spark: SparkSession, spec: PipelineSpec, settings: Settings) -> None:
        self.spark = spark
        self.spec = spec
        self.settings = settings
        self.checkpoint = spec.checkpoint(settings.checkpoint_root)
        self.stats = SinkStats()
        self.writer_schemas = WriterSchemas(settings.schema_registry_url, spec.subject)
        self._dlq: DeadLetterPublisher | None = None
        #: the decode and render expressions, kept from batch to batch (rebuilt on a new schema version)
        self._decoder: Decoder | None = None
        self._lease: SinkLease | None = None
        self._topic_id: str | None = None
        #: pushes the query's progress (txp_spark_*) to the Pushgateway while it runs
        self._progress: SinkProgressReporter | None = None
        #: the error a batch raised on purpose, re-raised by wait() instead of Spark's wrapper
        self.batch_error: TxPlatformError | None = None

    @property
    def _dsn(self) -> str:
        return self.settings.dsn()

    @property
    def _slots(self) -> int:
        """Tasks Spark runs at once: the cores of ``local[N]``, or of the cluster's executors."""
        return max(1, self.spark.sparkContext.defaultParallelism)

    @property
    def dlq(self) -> DeadLetterPublisher:
        """The DLQ publisher, created on first use (it makes sure the DLQ topic exists)."""
        if self._dlq is None:
            self._dlq = DeadLetterPublisher(
                self.settings.kafka_bootstrap, self.spec.topic, self.spec.dlq_topic, self.settings.topic_replication
            )
        return self._dlq

    def _schemas_for(self, batch: DataFrame) -> dict[int, str]:
        """Writer schemas for this batch; refuses to guess while the registry is down and ids are new."""
        schemas = self.writer_schemas.refresh()
        if self.writer_schemas.last_refresh_failed:
            ids = {
                int(row[0]) for row in batch.where(F.length("value") >= 5).select(wire_schema_id()).distinct().collect()
            }
            unknown = sorted(ids - set(schemas))
            if unknown:
                msg = (
                    f"[REGISTRY_UNAVAILABLE] schema ids {unknown} are not cached and the registry at "
                    f"{self.settings.schema_registry_url} does not answer; the batch is retried when the sink restarts"
                )
                raise SinkError(msg)
        return schemas

    def starting_offsets(self) -> str:
        """Offsets committed in Postgres for every partition (earliest where none), as Spark JSON."""
        partitions = range(partition_count(self.settings.kafka_bootstrap, self.spec.topic))
        with closing(connect(self._dsn)) as conn:
            committed = committed_offsets(conn, self.spec.topic)
        if not committed:
            return "earliest"
        # -2 is Spark's "earliest" for a partition without committed offsets
        return json.dumps({self.spec.topic: {str(p): committed.get(p, -2) for p in partitions}})

    def _process_batch(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self._commit_batch(batch, batch_id)
        except TxPlatformError as exc:
            self.batch_error = exc
            raise

    def _prepare_ledger(self, conn: Connection) -> list[Gap]:
        """Check the ledger against the topic; record or refuse records deleted by retention."""
        gaps = prepare_ledger(
            conn,
            self.spec.topic,
            self._topic_id,
            watermarks(self.settings.kafka_bootstrap, self.spec.topic),
            record_gaps=self.settings.sink_on_data_loss == "record",
        )
        for gap in gaps:
            log.warning("[DATA_LOSS] recorded in sink_gaps and skipped: %s", gap.describe(self.spec.topic))
        return gaps

    def _write(self, rendered: DataFrame, batch_id: int) -> list[SliceResult]:
        """Run the write tasks: each commits its Kafka partition's slice; only their results come back."""
        lease = self._lease.epoch if self._lease is not None else None
        writer = SliceWriter(
            self.spec, self._dsn, batch_id, topic_id=self._topic_id, lease_epoch=lease, fence=not unfenced_for_tests()
        )
        # one task per Kafka partition would run in waves when there are more partitions than slots, and each
        # PySpark task costs ~0.2 s whatever its size: at most one task per slot, each committing its slices
        tasks = rendered.coalesce(self._slots)
        results = tasks.mapInArrow(writer, from_arrow_schema(RESULT_SCHEMA)).collect()
        return [SliceResult(**row.asDict()) for row in results]

    def _raise_refusal(self, batch_id: int, results: list[SliceResult]) -> None:
        """A slice the ledger refused: raise the typed error the driver's own check names."""
        refused = [r for r in results if r.refused is not None]
        if not refused:
            return
        ranges = {r.partition: r.range for r in results}
        lease = self._lease.epoch if self._lease is not None else None
        with closing(connect(self._dsn)) as conn, conn, conn.cursor() as cur:
            if lease is not None:
                check_lease(cur, self.spec.topic, lease, batch_id)
            check_batch(self.spec.topic, ranges, read_ledger(cur, self.spec.topic), self._topic_id)
        msg = f"[SINK_SLICE_REFUSED] batch {batch_id}: {refused[0].message}"
        raise SinkError(msg)

    def _commit_batch(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        phases = _Phases(started)
        schemas = self._schemas_for(batch)
        phases.mark("schemas")
        if self._decoder is None or self._decoder.schema_ids != tuple(sorted(schemas)):
            self._decoder = Decoder(self.spec, schemas)
        rendered = self._decoder.render(self._decoder.decode(batch))
        phases.mark("plan")
        # the topic's id now, not at start: a topic recreated while the sink runs must not pass as a replay
        self._topic_id = topic_id(self.settings.kafka_bootstrap, self.spec.topic)
        phases.mark("topic id")
        results = self._write(rendered, batch_id)
        phases.mark("write tasks")
        if any(r.refused == REFUSED_GAP for r in results):
            # deleted by retention (DATA_LOSS, or recorded) or skipped by the checkpoint (OFFSET_GAP)?
            with closing(connect(self._dsn)) as conn:
                recorded = self._prepare_ledger(conn)
            if recorded:
                results = self._write(rendered, batch_id)  # the slices committed already write nothing
        self._raise_refusal(batch_id, results)
        if not results:
            return
        quarantined = sum(r.quarantined for r in results)
        with closing(connect(self._dsn)) as conn:
            dead_lettered = self.dlq.publish(conn) if quarantined else 0
        phases.mark("DLQ")
        elapsed = time.monotonic() - started
        s = self.stats
        s.batches += 1
        s.records += sum(r.records for r in results)
        s.inserted += sum(r.inserted for r in results)
        s.quarantined += quarantined
        s.skipped += sum(r.skipped for r in results)
        s.dead_lettered += dead_lettered
        s.slices += len(results)
        log.info(
            "batch %d: %d records in %d partition slices -> %d inserted, %d quarantined (%d sent to the DLQ), "
            "%d already committed (%.2f s: %s; slowest slice: %.2f s reading, %.2f s committing)",
            batch_id, sum(r.records for r in results), len(results), sum(r.inserted for r in results), quarantined,
            dead_lettered, sum(r.skipped for r in results), elapsed, phases, max(r.read_seconds for r in results),
            max(r.seconds for r in results),
        )  # fmt: skip

    def start(
        self, available_now: bool = True, processing_time: str = "5 seconds", lease_wait: float = 0.0
    ) -> StreamingQuery:
        """Start the query; AvailableNow processes what is there and stops, else runs continuously.

        ``lease_wait``: seconds to wait for another query holding the topic's lease (0: fail at once).
        """
        verify_migrated(self._dsn, [self.spec])  # no DDL at run time: txp db migrate made the tables
        self._lease = acquire_lease(connect(self._dsn), self.spec.topic, lease_wait)
        try:
            if self._progress is not None:  # started again without close(): one listener at a time
                self._progress.close()
            self._progress = SinkProgressReporter.for_pipeline(
                self.spark, self.spec.name, self.settings.pushgateway_url, self.spec.query_name
            )
            query = self._start(available_now, processing_time)
            if self._progress is not None:
                self._progress.attach(query)
            return query
        except BaseException:
            self.close()
            raise

    def _start(self, available_now: bool, processing_time: str) -> StreamingQuery:
        self._topic_id = topic_id(self.settings.kafka_bootstrap, self.spec.topic)
        with closing(connect(self._dsn)) as conn:
            self._prepare_ledger(conn)
        set_aside_damaged_checkpoint(self.checkpoint)
        drop_uncommitted_batches(self.checkpoint)
        # catch up on DLQ publication a crash may have interrupted (no-op when up to date)
        with closing(connect(self._dsn)) as conn:
            self.stats.dead_lettered += self.dlq.publish(conn)
        stream = (
            kafka_source(self.spark, self.settings.kafka_bootstrap, self.spec.topic)
            .option("startingOffsets", self.starting_offsets())
            .option("maxOffsetsPerTrigger", self.settings.max_offsets_per_trigger)
            .option("failOnDataLoss", "false")
            .load()
        )
        writer = (
            stream.writeStream.queryName(self.spec.query_name)
            .foreachBatch(self._process_batch)
            .option("checkpointLocation", self.checkpoint)
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=processing_time)
        return writer.start()

    def run_available_now(self, lease_wait: float = 0.0) -> SinkStats:
        """Process every record available now, then stop. Raises SinkError if the query failed.

        ``lease_wait``: as for ``start``.
        """
        started = time.monotonic()
        self.stats = SinkStats()  # figures of this run only
        try:
            query = self.start(available_now=True, lease_wait=lease_wait)
            self.wait(query)
        finally:
            self.close()
        self.stats.seconds = round(time.monotonic() - started, 3)
        return self.stats

    def wait(self, query: StreamingQuery) -> None:
        """Wait for the query; a batch's own error (e.g. ``[OFFSET_GAP]``) is raised as itself."""
        try:
            await_query(query)
        except SinkError:
            if self.batch_error is not None:
                raise self.batch_error from None
            raise

    def close(self) -> None:
        """Release the lease and the DLQ publisher's Kafka clients (new ones are made on next use).

        Also pushes the query's last progress and unregisters its listener.
        """
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._dlq is not None:
            self._dlq.close()
            self._dlq = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


class _Phases:
    """Seconds of each phase of a batch on the driver, for its log line ("schemas 0.00 s, plan 0.08 s, ...")."""

    def __init__(self, started: float) -> None:
        self._last = started
        self._seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """``phase`` ended now."""
        now = time.monotonic()
        self._seconds[phase] = self._seconds.get(phase, 0.0) + now - self._last
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self._seconds.items())


def checkpoint_damage(checkpoint: str) -> str | None:
    """What is unreadable in a local checkpoint's logs (``metadata``, ``offsets/``, ``commits/``,
    ``sources/``), or None when every file parses: a version line, then JSON (``-`` for a source
    without offsets), as Spark writes them. Remote checkpoints are not inspected."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return None
    root = Path(checkpoint.removeprefix("file://"))
    if not root.is_dir():
        return None
    files = [root / "metadata"] if (root / "metadata").exists() else []
    for log_dir in (root / "offsets", root / "commits", *(root / "sources").glob("*")):
        if log_dir.is_dir():
            files += [p for p in log_dir.iterdir() if p.name.isdigit()]
    for path in sorted(files):
        try:
            text = path.read_bytes().decode("utf-8").lstrip("\x00")  # a source's initial offsets start with NUL
            lines = text.splitlines()
            if path.name != "metadata":
                if not lines or not re.fullmatch(r"v\d+", lines[0]):
                    return f"{path}: no version line"
                lines = lines[1:]
            for line in lines:
                if line.strip() and line.strip() != "-":
                    json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{path}: {exc}"
    return None


def set_aside_damaged_checkpoint(checkpoint: str) -> Path | None:
    """Move a checkpoint whose logs do not parse (a torn write, a damaged disk) aside, so the query
    starts from the offsets committed in Postgres instead of failing on Spark's parser error.

    Safe because Postgres, not the checkpoint, holds the sink's progress; the damaged directory is
    kept beside it (``<checkpoint>.damaged-<UTC time>``) for inspection. Returns where it went.
    """
    damage = checkpoint_damage(checkpoint)
    if damage is None:
        return None
    root = Path(checkpoint.removeprefix("file://"))
    aside = root.with_name(f"{root.name}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
    root.rename(aside)
    log.warning(
        "[CHECKPOINT_DAMAGED] %s; the checkpoint was moved to %s and the sink resumes from the offsets "
        "committed in PostgreSQL (delete the moved directory once inspected)", damage, aside,
    )  # fmt: skip
    return aside


def drop_uncommitted_batches(checkpoint: str) -> list[int]:
    """Forget micro-batches that were planned but never committed (local checkpoints only).

    Restarting a Kafka query on such a batch fails in Spark 4.1 (SPARK-55271: a null Option in
    KafkaMicroBatchStream.metrics). The sink's progress lives in Postgres and every commit skips
    offsets already stored, so re-planning those batches from the last committed one is safe.
    """
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return []
    root = Path(checkpoint.removeprefix("file://"))
    offsets, commits = root / "offsets", root / "commits"
    if not offsets.is_dir():
        return []
    committed = [int(p.name) for p in commits.iterdir() if p.name.isdigit()] if commits.is_dir() else []
    last = max(committed, default=-1)
    dropped = sorted(int(p.name) for p in offsets.iterdir() if p.name.isdigit() and int(p.name) > last)
    for batch_id in dropped:
        (offsets / str(batch_id)).unlink()
        (offsets / f".{batch_id}.crc").unlink(missing_ok=True)
    if dropped:
        log.warning("checkpoint %s: dropped uncommitted batches %s; they are re-planned from Postgres", root, dropped)
    return dropped


def await_query(query: StreamingQuery) -> None:
    """Wait for the query; surface its exception instead of hanging or failing silently."""
    try:
        query.awaitTermination()
    except StreamingQueryException as exc:
        msg = f"[SINK_QUERY_FAILED] the streaming sink stopped with an error: {exc}"
        raise SinkError(msg) from exc
    error = query.exception()
    if error is not None:
        msg = f"[SINK_QUERY_FAILED] the streaming sink stopped with an error: {error}"
        raise SinkError(msg)
