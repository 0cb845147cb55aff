"""One-minute OHLCV candles of a trade stream: a Spark Structured Streaming query, Kafka -> Postgres.

The query reads the pipeline's topic itself (not its table), decodes each record with the sink's
own decoder (:func:`spark_jobs.sink._decode.decode`: same wire format, writer schemas and rules;
rejected records never reach a candle), and keeps event time:

- ``withWatermark(time, ALLOWED_LATENESS)``, then ``dropDuplicatesWithinWatermark([natural key])``:
  a record delivered twice counts once;
- ``groupBy(window(time, "1 minute"), symbol)``: open and close are the prices of the minute's
  first and last trade by ``(event_time, trade_id)``, high, low, volume (sum of quantity), notional
  (sum of price x quantity), trade count, first and last trade time;
- output mode **update** into ``foreachBatch``: each micro-batch upserts the candles it changed
  and records itself in the ``stream_batches`` ledger in the same Postgres transaction (see
  :mod:`spark_jobs.transforms._candle_store`). The state store holds each minute whole until the
  watermark passes it, so every emitted row is the complete candle and the upsert replaces it.

**Late trades.** A trade whose event time is behind the watermark (the latest event time seen
minus :data:`ALLOWED_LATENESS`) when it is read is dropped from the candles and counted
(``CandleStats.late_rows``, from the query's ``numRowsDroppedByWatermark``); the sink still stores
it in the pipeline's table, and the candle reconciliation check then names its minute. A trade
within the allowed lateness updates its minute's candle, which is upserted again.

**Exactness.** Every figure is exact. ``price x quantity`` of ``decimal(24,10) x decimal(30,18)``
needs up to 55 digits, and Spark's decimals stop at 38 (its product would keep 11 decimals, rounded
half up, and a one-trade candle's VWAP could then fall outside its own [low, high]). So notional is
summed as two integer parts that Spark holds exactly (:class:`NotionalParts`) and joined on the
driver in Python's unbounded decimals; ``vwap = notional / volume`` is computed by Postgres.

**Progress** lives in Spark's checkpoint (``<checkpoint root>/candles-<topic>``: offsets and the
aggregation state) and in the ledger. Without a checkpoint the query starts from the earliest
offsets and recomputes every candle (the ledger rows of the query are deleted first); a checkpoint
that is ahead of the ledger (the warehouse was restored or reset) is deleted for the same reason.
One candle query per topic runs at a time (a session advisory lock in Postgres).

``spark_jobs`` never imports the launcher, the producer or the CLI.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from pathlib import Path
from typing import Any

from psycopg2.extensions import connection as Connection
from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.types import DecimalType, StringType, TimestampType

from spark_jobs.session import kafka_source
from spark_jobs.sink._decode import decode
from spark_jobs.sink._query import drop_uncommitted_batches
from spark_jobs.sink._registry import WriterSchemas
from spark_jobs.transforms._candle_store import (
    BatchOutcome,
    CandleRow,
    commit_candles,
    forget_ledger,
    last_ledger_batch,
)
from tx_platform.config import Settings
from tx_platform.errors import ConfigError, SinkError, TxPlatformError
from tx_platform.kafka_admin import partition_count
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import connect, verify_migrated

log = logging.getLogger(__name__)

#: How far behind the latest event time a trade may arrive and still count in its candle.
ALLOWED_LATENESS = "2 minutes"
#: Candle length.
CANDLE_INTERVAL = "1 minute"
#: Largest Spark decimal precision.
_MAX_PRECISION = 38
#: Restarts of an AvailableNow run when a new writer schema shows up while it runs.
_MAX_SCHEMA_RESTARTS = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CandleQueryError(SinkError):
    """The candle query failed or refused to start; the message says why and what to do."""


class WriterSchemasChangedError(CandleQueryError):
    """A schema version was registered after the query started: it is restarted to decode it.

    The decoder is part of the streaming plan, so its writer schemas are fixed when the query starts;
    the batch that noticed the new version is not committed and is processed again after the restart.
    """


@dataclass(frozen=True)
class CandleSpec:
    """Which fields make a candle and where candles go; the defaults are the crypto pipeline's.

    The pipeline's spec gives the rest: its topic, natural key (deduplication and tie-break) and
    time column (event time).
    """

    symbol: str = "symbol"
    price: str = "price"
    quantity: str = "quantity"
    #: Postgres table of the candles (see tx_platform/pipelines/crypto_trades/derived.sql).
    table: str = "crypto_candles_1m"
    #: Postgres ledger of the query's micro-batches.
    ledger: str = "stream_batches"
    allowed_lateness: str = ALLOWED_LATENESS

    def query_name(self, spec: PipelineSpec) -> str:
        """Name of the candle query of ``spec`` (Spark's query name and the ledger's ``query``)."""
        return f"{spec.name}_candles"

    def checkpoint(self, spec: PipelineSpec, root: str | Path) -> str:
        """Checkpoint of the candle query on ``spec``'s topic under ``root`` (a directory or URI)."""
        return f"{str(root).rstrip('/')}/candles-{spec.topic}"

    def validate(self, spec: PipelineSpec) -> None:
        """ConfigError unless ``spec``'s contract has the fields with usable types (see NotionalParts)."""
        contract = spec.contract
        names = set(contract.field_names)
        for what, name in (("symbol", self.symbol), ("price", self.price), ("quantity", self.quantity)):
            if name not in names:
                msg = f"pipeline {spec.name!r} has no field {name!r} for the candles' {what}"
                raise ConfigError(msg)
        for name in (self.price, self.quantity):
            if not contract.field(name).spark_type.startswith("DECIMAL"):
                msg = f"pipeline {spec.name!r}: candles need {name!r} to be a decimal"
                raise ConfigError(msg)
        NotionalParts.of(spec, self)


def _decimal(spec: PipelineSpec, name: str) -> tuple[int, int]:
    """(precision, scale) of a decimal field of the contract."""
    spark_type = spec.contract.field(name).spark_type  # e.g. DECIMAL(24,10)
    precision, scale = spark_type.removeprefix("DECIMAL(").removesuffix(")").split(",")
    return int(precision), int(scale)


@dataclass(frozen=True)
class NotionalParts:
    """Sum of price x quantity, exact, in 38-digit Spark decimals: two integer sums joined on the driver.

    With ``P`` the price's unscaled integer (``price x 10^price_scale``) and ``Q`` the quantity's,
    ``Q = Qh x 10^k + Ql`` (``Ql < 10^k``), a trade's notional is ``(P x Qh x 10^k + P x Ql) /
    10^(price_scale + quantity_scale)``. ``P x Ql`` stays below ``10^36`` for any contract value
    (``k = 36 - price precision``); ``P x Qh`` below ``10^38`` for any notional under about 10^22 in
    the quote currency (beyond, Spark's ANSI arithmetic raises ``ARITHMETIC_OVERFLOW``).
    """

    price_precision: int
    price_scale: int
    quantity_precision: int
    quantity_scale: int
    k: int

    @classmethod
    def of(cls, spec: PipelineSpec, candles: CandleSpec) -> NotionalParts:
        """The split for ``spec``'s price and quantity types; ConfigError when they are too wide for it."""
        (pp, ps), (qp, qs) = _decimal(spec, candles.price), _decimal(spec, candles.quantity)
        k = max(0, min(_MAX_PRECISION - 2 - pp, qs))
        # floor(quantity x 10^(qs - k)) must be computed without rounding: its type must fit 38 digits
        if qp + (qs - k) + 2 > _MAX_PRECISION:
            msg = (
                f"pipeline {spec.name!r}: decimal({pp},{ps}) x decimal({qp},{qs}) is too wide to sum exactly in "
                "Spark's 38-digit decimals"
            )
            raise ConfigError(msg)
        return cls(pp, ps, qp, qs, k)

    def columns(self, price: Column, quantity: Column) -> tuple[Column, Column]:
        """``(P x Qh, P x Ql)`` of one trade, as DECIMAL(38,0) and DECIMAL(price precision + k + 1, 0)."""
        ten = Decimal(10)
        units = (price * F.lit(ten**self.price_scale)).cast(DecimalType(self.price_precision, 0))
        high = F.floor(quantity * F.lit(ten ** (self.quantity_scale - self.k)))
        quantity_units = (quantity * F.lit(ten**self.quantity_scale)).cast(DecimalType(self.quantity_precision, 0))
        low = (quantity_units - high * F.lit(ten**self.k)).cast(DecimalType(max(self.k, 1), 0))
        return units * high, units * low

    def join(self, high: Decimal, low: Decimal) -> Decimal:
        """The notional of the two sums (exact: Python's decimals have as many digits as asked for)."""
        with localcontext(_EXACT):
            return (high.scaleb(self.k) + low).scaleb(-(self.price_scale + self.quantity_scale))


#: Enough digits for any joined notional; anything inexact raises instead of rounding.
_EXACT = Context(prec=120, traps=[Inexact, InvalidOperation, Overflow])


#: The crypto pipeline's candles.
CANDLES = CandleSpec()


@dataclass
class CandleStats:
    """Totals over one run of the candle query."""

    batches: int = 0  # micro-batches committed to Postgres (replays not counted)
    rows: int = 0  # candle rows upserted
    replayed: int = 0  # batches skipped because the ledger already had them
    input_rows: int = 0  # Kafka records read
    late_rows: int = 0  # trades behind the watermark, dropped from the candles
    restarts: int = 0  # restarts for a new writer schema
    seconds: float = 0.0


def good_trades(
    records: DataFrame, spec: PipelineSpec, writer_schemas: Mapping[int, str], candles: CandleSpec = CANDLES
) -> DataFrame:
    """Kafka rows -> the fields a candle needs, of records that pass every rule (``error_code IS NULL``).

    Decimals are cast back to the contract's own types (the decoder widens them to precision 38 and
    range-checks them), which keeps Spark's product of price and quantity as precise as it can be.
    """
    contract = spec.contract
    r = F.col("r")
    key = r[spec.natural_key]
    if contract.field(spec.natural_key).postgres_type == "uuid":
        # Postgres orders and compares uuids by value: lower case makes Spark agree with it
        key = F.lower(key)
    return (
        decode(records, spec, writer_schemas)
        .where(F.col("error_code").isNull())
        .select(
            key.alias(spec.natural_key),
            r[spec.time_column].alias(spec.time_column),
            r[candles.symbol].alias(candles.symbol),
            r[candles.price].cast(contract.field(candles.price).spark_type).alias(candles.price),
            r[candles.quantity].cast(contract.field(candles.quantity).spark_type).alias(candles.quantity),
        )
    )


def candle_frame(trades: DataFrame, spec: PipelineSpec, candles: CandleSpec = CANDLES) -> DataFrame:
    """Trades -> one row per symbol and minute: OHLC, volume, notional (in two parts, see
    :class:`NotionalParts`), count, first and last trade time; :func:`collect_candles` reads it.

    Streaming or static: on a static frame the watermark is a no-op and deduplication is global.
    """
    time_column, key = spec.time_column, spec.natural_key
    price, quantity = F.col(candles.price), F.col(candles.quantity)
    order = F.struct(F.col(time_column), F.col(key))  # open/close tie-break: event time, then trade id
    notional_high, notional_low = NotionalParts.of(spec, candles).columns(price, quantity)
    watermarked = trades.withWatermark(time_column, candles.allowed_lateness)
    # within the watermark: a duplicate is remembered as long as its trade could still arrive late
    deduplicated = (
        watermarked.dropDuplicatesWithinWatermark([key]) if trades.isStreaming else watermarked.dropDuplicates([key])
    )
    return (
        deduplicated.groupBy(F.window(time_column, CANDLE_INTERVAL).alias("window"), F.col(candles.symbol))
        .agg(
            F.min_by(price, order).alias("open"),
            F.max(price).alias("high"),
            F.min(price).alias("low"),
            F.max_by(price, order).alias("close"),
            F.sum(quantity).alias("volume"),
            F.sum(notional_high).alias("notional_high"),
            F.sum(notional_low).alias("notional_low"),
            # a product that overflowed without ANSI arithmetic is NULL, which a sum would skip
            F.count(notional_high).alias("notional_terms"),
            F.count(F.lit(1)).alias("trade_count"),
            F.min(time_column).alias("first_trade_time"),
            F.max(time_column).alias("last_trade_time"),
        )
        .select(
            F.col(candles.symbol).alias("symbol"),
            F.col("window.start").alias("minute"),
            "open",
            "high",
            "low",
            "close",
            "volume",
            "notional_high",
            "notional_low",
            "notional_terms",
            "trade_count",
            "first_trade_time",
            "last_trade_time",
        )  # fmt: skip
    )


def _utc(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def collect_candles(batch: DataFrame, spec: PipelineSpec, candles: CandleSpec = CANDLES) -> list[CandleRow]:
    """The rows of a candle frame on the driver: notional joined, times as aware UTC datetimes
    (never in the JVM's local zone)."""
    for name, wanted in (("symbol", StringType), ("minute", TimestampType), ("open", DecimalType)):
        if not isinstance(batch.schema[name].dataType, wanted):
            msg = f"not a candle frame: {name} is {batch.schema[name].dataType}"
            raise CandleQueryError(msg)
    parts = NotionalParts.of(spec, candles)
    rows = batch.select(
        "symbol", F.unix_micros("minute"), "open", "high", "low", "close", "volume", "notional_high", "notional_low",
        "notional_terms", "trade_count", F.unix_micros("first_trade_time"), F.unix_micros("last_trade_time"),
    ).collect()  # fmt: skip
    out: list[CandleRow] = []
    for symbol, minute, open_, high, low, close, volume, n_high, n_low, terms, count, first, last in rows:
        if terms != count:
            msg = (
                f"[NOTIONAL_OVERFLOW] {symbol} {_utc(minute)}: {count - terms} of {count} trades have a price x "
                "quantity beyond Spark's 38-digit decimals; run Spark with ANSI arithmetic to see which"
            )
            raise CandleQueryError(msg)
        notional = parts.join(n_high, n_low)
        out.append(
            (symbol, _utc(minute), open_, high, low, close, volume, notional, int(count), _utc(first), _utc(last))
        )
    return out


def _is_local(checkpoint: str) -> bool:
    return "://" not in checkpoint or checkpoint.startswith("file://")


def _local_path(checkpoint: str) -> Path:
    return Path(checkpoint.removeprefix("file://"))


def batch_end_offsets(spark: SparkSession, checkpoint: str, batch_id: int) -> dict[str, Any]:
    """End offsets of micro-batch ``batch_id`` as Spark planned them: ``{topic: {partition: offset}}``.

    Read from the checkpoint's offset log, which Spark writes before it runs the batch: line 1 is
    the log's version, line 2 the batch metadata (watermark, time, conf), then one line per source.
    """
    path = f"{checkpoint.rstrip('/')}/offsets/{batch_id}"
    if _is_local(checkpoint):
        lines = _local_path(path).read_text("utf-8").splitlines()
    else:
        lines = [row.value for row in spark.read.text(path).collect()]
    sources = lines[2:]
    if len(sources) != 1 or not sources[0].startswith("{"):
        msg = f"offset log {path}: expected the offsets of one Kafka source, found {sources!r}"
        raise CandleQueryError(msg)
    return json.loads(sources[0])


class CandleWriter:
    """The ``foreachBatch`` function: a micro-batch's candles and ledger row in one Postgres transaction."""

    def __init__(
        self,
        dsn: str,
        spec: PipelineSpec,
        candles: CandleSpec,
        end_offsets: Callable[[int], dict[str, Any]],
        schemas: WriterSchemas | None = None,
        started_with: set[int] | None = None,
    ) -> None:
        self.dsn = dsn
        self.spec = spec
        self.candles = candles
        self.end_offsets = end_offsets
        self.schemas = schemas
        self.started_with = started_with or set()
        self.stats = CandleStats()
        #: the error a batch raised on purpose, re-raised by the runner instead of Spark's wrapper
        self.batch_error: TxPlatformError | None = None

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self.commit(batch, batch_id)
        except TxPlatformError as exc:
            self.batch_error = exc
            raise

    def _check_schemas(self, batch_id: int) -> None:
        if self.schemas is None:
            return
        known = set(self.schemas.refresh())
        if self.schemas.last_refresh_failed:
            # the batch may hold records of a version this query cannot decode: they would be left
            # out of the candles without a trace, so the batch waits for the registry
            msg = (
                f"[REGISTRY_UNAVAILABLE] batch {batch_id} of {self.candles.query_name(self.spec)} is not committed: "
                f"the schema registry at {self.schemas.url} does not answer, and new schema versions cannot be ruled "
                "out; the next run processes it again"
            )
            raise CandleQueryError(msg)
        new = sorted(known - self.started_with)
        if new:
            msg = (
                f"[SCHEMA_CHANGED] schema ids {new} were registered for {self.spec.subject} after the candle query "
                f"started; batch {batch_id} is not committed and the query restarts to decode them"
            )
            raise WriterSchemasChangedError(msg)

    def commit(self, batch: DataFrame, batch_id: int) -> BatchOutcome:
        """Upsert the batch's candles and record it in the ledger (nothing when it is a replay)."""
        self._check_schemas(batch_id)
        started = time.monotonic()
        rows = collect_candles(batch, self.spec, self.candles)
        conn: Connection = connect(self.dsn)
        try:
            outcome = commit_candles(
                conn, table=self.candles.table, ledger=self.candles.ledger,
                query=self.candles.query_name(self.spec), source_topic=self.spec.topic,
                batch_id=batch_id, end_offsets=self.end_offsets(batch_id), candles=rows,
            )  # fmt: skip
        finally:
            conn.close()
        if outcome.replayed:
            self.stats.replayed += 1
            log.info("candles batch %d: already in the ledger with the same offsets, skipped", batch_id)
        else:
            self.stats.batches += 1
            self.stats.rows += outcome.rows
            log.info(
                "candles batch %d: %d candles upserted%s (%.2f s)", batch_id, outcome.rows,
                " (re-planned after a crash)" if outcome.replanned else "", time.monotonic() - started,
            )  # fmt: skip
        return outcome


class _QueryLock:
    """A session advisory lock in Postgres: one candle query per topic at a time."""

    def __init__(self, dsn: str, name: str) -> None:
        self._conn = connect(dsn)
        self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(hashtext('tx_platform.candles'), hashtext(%s))", (name,))
            row = cur.fetchone()
        if not (row and row[0]):
            self._conn.close()
            msg = (
                f"[CANDLES_ALREADY_RUNNING] another candle query is writing {name}; stop it (a Dagster run, "
                "or spark_jobs/transforms/main.py) first"
            )
            raise CandleQueryError(msg)

    def release(self) -> None:
        # closing the session releases its advisory locks
        self._conn.close()


class CandleStream:
    """Builds and runs the candle query of one pipeline (one topic)."""

    def __init__(
        self, spark: SparkSession, spec: PipelineSpec, settings: Settings, candles: CandleSpec = CANDLES
    ) -> None:
        candles.validate(spec)
        self.spark = spark
        self.spec = spec
        self.settings = settings
        self.candles = candles
        self.query_name = candles.query_name(spec)
        self.checkpoint = candles.checkpoint(spec, settings.checkpoint_root)
        self.writer: CandleWriter | None = None
        self._lock: _QueryLock | None = None

    @property
    def _dsn(self) -> str:
        return self.settings.dsn()

    def _prepare_checkpoint(self) -> None:
        """Start over (no checkpoint, or one ahead of the ledger) or resume; see the module docstring."""
        ledger = {"ledger": self.candles.ledger, "query": self.query_name, "source_topic": self.spec.topic}
        conn = connect(self._dsn)
        try:
            if not self._has_commits():
                if _is_local(self.checkpoint):
                    # planned but never committed: nothing of it can be in the ledger's future
                    shutil.rmtree(_local_path(self.checkpoint), ignore_errors=True)
                forgotten = forget_ledger(conn, **ledger)
                log.info(
                    "%s: no checkpoint at %s; recomputing every candle from the earliest offsets (%d ledger rows "
                    "deleted)", self.query_name, self.checkpoint, forgotten,
                )  # fmt: skip
                return
            last_commit = self._last_commit()
            in_ledger = last_ledger_batch(conn, **ledger)
            # Postgres commits a batch before Spark's commit log does: the ledger is never behind
            if last_commit is not None and (in_ledger is None or in_ledger < last_commit):
                if not _is_local(self.checkpoint):
                    msg = (
                        f"[CHECKPOINT_AHEAD] {self.checkpoint} has committed batch {last_commit} but the ledger "
                        f"{self.candles.ledger} ends at {in_ledger}: the warehouse was restored or reset. Delete "
                        "the checkpoint and run again: the candles are recomputed from the earliest offsets"
                    )
                    raise CandleQueryError(msg)
                log.warning(
                    "%s: checkpoint at batch %s but the ledger at %s (warehouse restored or reset?): deleting the "
                    "checkpoint and recomputing every candle", self.query_name, last_commit, in_ledger,
                )  # fmt: skip
                shutil.rmtree(_local_path(self.checkpoint))
                forget_ledger(conn, **ledger)
                return
        finally:
            conn.close()
        drop_uncommitted_batches(self.checkpoint)

    def _has_commits(self) -> bool:
        if not _is_local(self.checkpoint):
            return True  # a remote checkpoint is trusted as it is (Spark reads what is there)
        return self._last_commit() is not None

    def _last_commit(self) -> int | None:
        if not _is_local(self.checkpoint):
            return None
        commits = _local_path(self.checkpoint) / "commits"
        ids = [int(p.name) for p in commits.iterdir() if p.name.isdigit()] if commits.is_dir() else []
        return max(ids, default=None)

    def start(self, available_now: bool = True, processing_time: str = "10 seconds") -> StreamingQuery:
        """Start the query; AvailableNow processes what is there and stops, else it runs continuously."""
        verify_migrated(self._dsn, [self.spec])  # no DDL at run time: txp db migrate made the tables
        partition_count(self.settings.kafka_bootstrap, self.spec.topic)  # a missing topic fails here, by name
        self._lock = _QueryLock(self._dsn, f"{self.query_name}/{self.spec.topic}")
        try:
            self._prepare_checkpoint()
            schemas = WriterSchemas(self.settings.schema_registry_url, self.spec.subject)
            started_with = schemas.refresh()
            if schemas.last_refresh_failed:
                msg = (
                    f"[REGISTRY_UNAVAILABLE] the schema registry at {self.settings.schema_registry_url} does not "
                    f"answer; the candle query cannot decode {self.spec.topic} without it — is the stack up?"
                )
                raise CandleQueryError(msg)
            self.writer = CandleWriter(
                self._dsn, self.spec, self.candles,
                end_offsets=lambda batch_id: batch_end_offsets(self.spark, self.checkpoint, batch_id),
                schemas=schemas, started_with=set(started_with),
            )  # fmt: skip
            records = (
                kafka_source(self.spark, self.settings.kafka_bootstrap, self.spec.topic)
                # read only when there is no checkpoint: the query then recomputes every candle
                .option("startingOffsets", "earliest")
                # no maxOffsetsPerTrigger: a catch-up reads everything in one batch, so the watermark
                # of a first slice can never drop the trades of a second slice of the same minutes
                .load()
            )
            candles = candle_frame(good_trades(records, self.spec, started_with, self.candles), self.spec, self.candles)
            writer = (
                candles.writeStream.queryName(self.query_name)
                .outputMode("update")
                .foreachBatch(self.writer)
                .option("checkpointLocation", self.checkpoint)
            )
            if available_now:
                return writer.trigger(availableNow=True).start()
            return writer.trigger(processingTime=processing_time).start()
        except BaseException:
            self.close()
            raise

    def wait(self, query: StreamingQuery) -> None:
        """Wait for the query to end; a batch's own error is raised as itself."""
        try:
            query.awaitTermination()
            error = query.exception()
        except StreamingQueryException as exc:
            error = exc
        if error is not None:
            if self.writer is not None and self.writer.batch_error is not None:
                raise self.writer.batch_error from None
            msg = f"[CANDLE_QUERY_FAILED] the candle query {self.query_name} stopped with an error: {error}"
            raise CandleQueryError(msg)

    def collect_figures(self, query: StreamingQuery, total: CandleStats) -> None:
        """Add this run's figures to ``total``: the writer's counts, records read and late trades dropped."""
        progress = query.recentProgress  # every batch of a short run (Spark keeps the last 100)
        total.input_rows += sum(p.numInputRows for p in progress)
        total.late_rows += sum(op.numRowsDroppedByWatermark for p in progress for op in p.stateOperators)
        if self.writer is not None:
            total.batches += self.writer.stats.batches
            total.rows += self.writer.stats.rows
            total.replayed += self.writer.stats.replayed
            self.writer.stats = CandleStats()

    def run_available_now(self) -> CandleStats:
        """Process every record available now, then stop; restarts when a new writer schema shows up."""
        started = time.monotonic()
        total = CandleStats()
        while True:
            query: StreamingQuery | None = None
            try:
                query = self.start(available_now=True)
                self.wait(query)
                break
            except WriterSchemasChangedError:
                if total.restarts == _MAX_SCHEMA_RESTARTS:
                    raise
                log.info("%s: new writer schema; restarting the query", self.query_name)
                total.restarts += 1
            finally:
                if query is not None:
                    self.collect_figures(query, total)
                self.close()
        total.seconds = round(time.monotonic() - started, 3)
        return total

    def close(self) -> None:
        """Release the query's lock (the query itself is stopped by the caller or has ended)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _terminated(query: StreamingQuery, seconds: int) -> bool:
    """Whether the query has ended within ``seconds``, with an error or not (``wait`` raises the error)."""
    try:
        return bool(query.awaitTermination(seconds))
    except StreamingQueryException:
        return True


def run_candles_available_now(
    spark: SparkSession, spec: PipelineSpec, settings: Settings, candles: CandleSpec = CANDLES
) -> CandleStats:
    """Run ``spec``'s candle query over everything in its topic now, then stop (Dagster, tests, catch-up)."""
    return CandleStream(spark, spec, settings, candles).run_available_now()


def start_candles(
    spark: SparkSession,
    spec: PipelineSpec,
    settings: Settings,
    processing_time: str = "10 seconds",
    candles: CandleSpec = CANDLES,
) -> tuple[CandleStream, StreamingQuery]:
    """Start ``spec``'s candle query continuously (a micro-batch every ``processing_time``).

    Returns the stream (``wait``, ``close``) and Spark's query (``stop``). A new writer schema stops
    the query with :class:`WriterSchemasChangedError`; :func:`run_candles` restarts it.
    """
    stream = CandleStream(spark, spec, settings, candles)
    return stream, stream.start(available_now=False, processing_time=processing_time)


def run_candles(
    spark: SparkSession,
    spec: PipelineSpec,
    settings: Settings,
    processing_time: str = "10 seconds",
    should_stop: Callable[[], bool] = lambda: False,
    candles: CandleSpec = CANDLES,
) -> CandleStats:
    """Run the candle query continuously until ``should_stop()`` (polled every second) or an error.

    A new writer schema restarts the query (its batch in flight is processed again); any other error
    is raised.
    """
    total = CandleStats()
    while True:
        stream, query = start_candles(spark, spec, settings, processing_time, candles)
        try:
            while not _terminated(query, 1):
                if should_stop():
                    query.stop()  # a batch in flight commits whole or is replayed on the next start
                    break
            stream.wait(query)
            return total
        except WriterSchemasChangedError:
            log.info("%s: new writer schema; restarting the query", stream.query_name)
            total.restarts += 1
        finally:
            stream.collect_figures(query, total)
            stream.close()
