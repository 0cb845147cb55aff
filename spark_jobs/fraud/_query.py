"""The fraud query: the transactions topic -> ``fraud_alerts`` and the topic ``fraud.alerts``, exactly once.

Spark Structured Streaming on event time. Records are decoded exactly as the sink decodes them
(``spark_jobs.sink._decode.decode``: the same rules; rejects are the sink's business and are
skipped here), a watermark of the pipeline's allowed lateness is set on ``event_time``, and the
rules run in ``applyInPandasWithState`` grouped by account (the Kafka key): one state per account
holds its recent transactions, its running average and its cards' last card-present places.
Windowed aggregations would fit velocity alone; the running average, the pairwise travel check
and "alert once per burst" need arbitrary per-account state, so one stateful function does all four.
Records older than the watermark are dropped by Spark before the state function (counted in the
query's ``numRowsDroppedByWatermark``); they still reach ``transactions`` through the sink.

Each micro-batch's alerts are inserted (``ON CONFLICT DO NOTHING``: an alert id is uuid5 of the
rule and its transactions, so a replayed batch inserts nothing) in one Postgres transaction with
the query's offsets (``fraud_offsets``, keyed by query, topic and partition) under the query's
lease; then the alerts not yet delivered are published to the alerts topic through the outbox
(:class:`~spark_jobs.sink._dlq.OutboxPublisher`): ``fraud_alerts.published_offset`` and a scan
of the topic before sending, so each alert is in the topic once, whatever crashed where.
The Spark checkpoint holds the state: a restart resumes from it (without one, from the earliest offset).
After a crash, batches planned but not committed are re-planned (as the sink does, SPARK-55271): with
events in order per account an alert fires on the same transactions whatever the batch boundaries, so
a re-planned batch gives the same alert ids, and what its first attempt committed is not written again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor
from psycopg2.extras import Json, execute_values
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from spark_jobs.fraud._rules import AccountState, Detector, Tx
from spark_jobs.session import kafka_source
from spark_jobs.sink._decode import decode
from spark_jobs.sink._dlq import OutboxPublisher, Outgoing
from spark_jobs.sink._query import await_query, drop_uncommitted_batches, set_aside_damaged_checkpoint
from spark_jobs.sink._registry import WriterSchemas
from tx_platform.config import Settings
from tx_platform.errors import SinkError, TxPlatformError
from tx_platform.kafka_admin import ensure_topic, partition_count
from tx_platform.pipelines import PipelineSpec
from tx_platform.pipelines.transactions._fraud import USD_PER_UNIT, FraudRules, load_rules
from tx_platform.warehouse import SinkLease, acquire_lease, check_lease, connect

log = logging.getLogger(__name__)

#: The alerts topic of the pipeline's own topic; another source topic gets ``<topic>.fraud.alerts``.
ALERTS_TOPIC = "fraud.alerts"
#: Headers of an alert record: its id (the outbox's identity) and the topic it was detected on.
H_ALERT_ID = "txp.fraud.alert_id"
H_SOURCE_TOPIC = "txp.source.topic"

#: Rows out of the state function: alerts, and per Kafka partition the highest offset it saw.
OUTPUT_SCHEMA = StructType(
    [
        StructField("kind", StringType()),  # "alert" or "offset"
        StructField("alert_id", StringType()),
        StructField("rule", StringType()),
        StructField("account_id", StringType()),
        StructField("card_id", StringType()),
        StructField("transaction_ids", StringType()),  # comma-separated, sorted
        StructField("event_ms", LongType()),
        StructField("details", StringType()),
        StructField("kafka_partition", IntegerType()),
        StructField("max_offset", LongType()),
    ]
)
STATE_SCHEMA = StructType([StructField("state", StringType())])


def alerts_topic(spec: PipelineSpec) -> str:
    """``fraud.alerts`` for the pipeline's own topic, ``<topic>.fraud.alerts`` for another (tests, environments)."""
    return ALERTS_TOPIC if spec.topic == "transactions" else f"{spec.topic}.fraud.alerts"


def detect_function(rules: FraudRules, lateness: timedelta) -> Any:  # noqa: ANN401 - the state function
    """The ``applyInPandasWithState`` function: the rules over one account's rows of a micro-batch."""
    rules_json = rules.model_dump_json()
    lateness_ms = int(lateness.total_seconds() * 1000)
    ttl_ms = int(rules.state_ttl_hours * 3_600_000)

    def detect(key: tuple[Any, ...], frames: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        if state.hasTimedOut:  # idle past the TTL: forget the account
            state.remove()
            return
        detector = Detector(FraudRules.model_validate_json(rules_json), lateness_ms)
        account = AccountState.from_json(state.get[0]) if state.exists else AccountState()
        txs: list[Tx] = []
        offsets: dict[int, int] = {}
        for frame in frames:
            for row in frame.itertuples(index=False):
                txs.append(
                    Tx(row.transaction_id, row.card_id, int(row.event_ms), float(row.amount) * USD_PER_UNIT.get(
                        row.currency, 1.0), row.channel, row.country, float(row.latitude), float(row.longitude))
                )  # fmt: skip
                partition = int(row.partition)
                offsets[partition] = max(offsets.get(partition, -1), int(row.offset))
        alerts = detector.process(account, txs)
        state.update((account.to_json(),))
        state.setTimeoutTimestamp(account.max_ms + ttl_ms)
        partition = next(iter(offsets), 0)  # one account, one key: one partition
        out: list[tuple[Any, ...]] = [
            ("alert", a.alert_id, a.rule, key[0], a.card_id, ",".join(a.transaction_ids), a.event_ms,
             json.dumps(a.details, sort_keys=True), partition, None)
            for a in alerts
        ]  # fmt: skip
        out += [("offset", None, None, key[0], None, None, None, None, p, o) for p, o in offsets.items()]
        if out:
            yield pd.DataFrame(out, columns=OUTPUT_SCHEMA.fieldNames())

    return detect


class AlertPublisher(OutboxPublisher):
    """Publishes ``fraud_alerts`` of one source topic to its alerts topic (partition = the source partition)."""

    kind = "fraud_alerts"

    def __init__(self, bootstrap: str, source_topic: str, topic: str, replication: int = 1) -> None:
        self.source_topic = source_topic
        ensure_topic(bootstrap, topic, partition_count(bootstrap, source_topic), replication)
        super().__init__(bootstrap, topic)

    def identity(self, headers: Mapping[str, Any]) -> str | None:
        """The alert id of a record of our source topic."""
        alert = headers.get(H_ALERT_ID)
        if alert is None or headers.get(H_SOURCE_TOPIC) != self.source_topic.encode():
            return None
        return bytes(alert).decode()

    def confirm(self, cur: Cursor, partition: int, found: Mapping[str, int]) -> None:
        """Set ``fraud_alerts.published_offset`` of the delivered alerts."""
        cur.execute(
            """
            UPDATE fraud_alerts a SET published_offset = v.published_offset
            FROM unnest(%s::uuid[], %s::bigint[]) AS v(alert_id, published_offset)
            WHERE a.alert_id = v.alert_id AND a.published_offset IS NULL
            """,
            (list(found), list(found.values())),
        )

    def pending(self, conn: Connection, partition: int) -> Iterator[Outgoing]:
        """Alerts of the source partition not delivered yet, by event time; the value is the alert as JSON."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT alert_id::text, rule, account_id, card_id, transaction_ids, event_time, details, detected_at "
                "FROM fraud_alerts WHERE topic = %s AND kafka_partition = %s AND published_offset IS NULL "
                "ORDER BY event_time, alert_id",
                (self.source_topic, partition),
            )
            rows = cur.fetchall()
        for alert, rule, account, card, tx_ids, event_time, details, detected_at in rows:
            value = {
                "alert_id": alert, "rule": rule, "account_id": account, "card_id": card,
                "transaction_ids": list(tx_ids), "event_time": event_time.isoformat(), "details": details,
                "detected_at": detected_at.isoformat(), "source_topic": self.source_topic,
            }  # fmt: skip
            headers: list[tuple[str, str | bytes | None]] = [
                (H_ALERT_ID, alert.encode()),
                (H_SOURCE_TOPIC, self.source_topic.encode()),
            ]
            yield alert, account.encode(), json.dumps(value, sort_keys=True).encode(), headers


@dataclass
class FraudStats:
    """Totals over the batches of one run of the query."""

    batches: int = 0
    alerts: int = 0
    inserted: int = 0
    published: int = 0
    seconds: float = 0.0


class FraudQuery:
    """Builds and runs the fraud query of a pipeline (``transactions``)."""

    def __init__(
        self, spark: SparkSession, spec: PipelineSpec, settings: Settings, rules: FraudRules | None = None
    ) -> None:
        self.spark = spark
        self.spec = spec
        self.settings = settings
        self.rules = rules or load_rules()
        self.lateness = spec.allowed_lateness  # the watermark; the sink's `late` flag uses the same value
        self.query_name = f"{spec.name}_fraud"
        self.topic = alerts_topic(spec)
        self.checkpoint = f"{str(settings.checkpoint_root).rstrip('/')}/fraud-{spec.topic}"
        self.stats = FraudStats()
        self._lease: SinkLease | None = None
        self._publisher: AlertPublisher | None = None
        #: the error a batch raised on purpose, re-raised by wait() instead of Spark's wrapper
        self.batch_error: TxPlatformError | None = None

    @property
    def lease_key(self) -> str:
        """The query's lease in ``sink_leases`` (the sink's lease of the same topic is another)."""
        return f"{self.query_name}:{self.spec.topic}"

    @property
    def publisher(self) -> AlertPublisher:
        """The alerts' outbox publisher, created on first use (it makes sure the alerts topic exists)."""
        if self._publisher is None:
            self._publisher = AlertPublisher(
                self.settings.kafka_bootstrap, self.spec.topic, self.topic, self.settings.topic_replication
            )
        return self._publisher

    def alerts(self) -> DataFrame:
        """The streaming DataFrame of the state function's rows (alerts and offsets)."""
        schemas = WriterSchemas(self.settings.schema_registry_url, self.spec.subject).refresh()
        records = (
            kafka_source(self.spark, self.settings.kafka_bootstrap, self.spec.topic)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", self.settings.max_offsets_per_trigger)
            .option("failOnDataLoss", "false")
            .load()
        )
        decoded = decode(records, self.spec, schemas).where(F.col("error_code").isNull())
        rows = decoded.select(
            F.col("r.transaction_id").alias("transaction_id"),
            F.col("r.account_id").alias("account_id"),
            F.col("r.card_id").alias("card_id"),
            F.col("r.event_time").alias("event_time"),
            F.unix_millis(F.col("r.event_time")).alias("event_ms"),
            F.col("r.amount").cast("double").alias("amount"),
            F.col("r.currency").alias("currency"),
            F.col("r.channel").alias("channel"),
            F.col("r.country").alias("country"),
            F.col("r.latitude").alias("latitude"),
            F.col("r.longitude").alias("longitude"),
            F.col("partition"),
            F.col("offset"),
        )
        seconds = int(self.lateness.total_seconds())
        return (
            rows.withWatermark("event_time", f"{seconds} seconds")
            .groupBy("account_id")
            .applyInPandasWithState(
                detect_function(self.rules, self.lateness),
                OUTPUT_SCHEMA,
                STATE_SCHEMA,
                "append",
                GroupStateTimeout.EventTimeTimeout,
            )
        )

    def _process_batch(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self._commit_batch(batch, batch_id)
        except TxPlatformError as exc:
            self.batch_error = exc
            raise

    def _commit_batch(self, batch: DataFrame, batch_id: int) -> None:
        rows = batch.collect()
        alerts = [r for r in rows if r.kind == "alert"]
        offsets: dict[int, int] = {}
        for r in rows:
            if r.kind == "offset":
                offsets[r.kafka_partition] = max(offsets.get(r.kafka_partition, -1), r.max_offset)
        inserted = 0
        with closing(connect(self.settings.dsn())) as conn:
            with conn, conn.cursor() as cur:
                if self._lease is not None:
                    check_lease(cur, self.lease_key, self._lease.epoch, batch_id)
                inserted = self._insert(cur, alerts, batch_id)
                if offsets:
                    execute_values(
                        cur,
                        """
                        INSERT INTO fraud_offsets (query_name, topic, partition, next_offset, batch_id) VALUES %s
                        ON CONFLICT (query_name, topic, partition) DO UPDATE
                        SET next_offset = GREATEST(fraud_offsets.next_offset, EXCLUDED.next_offset),
                            batch_id = EXCLUDED.batch_id, updated_at = now()
                        """,
                        [(self.query_name, self.spec.topic, p, o + 1, batch_id) for p, o in sorted(offsets.items())],
                    )
            published = self.publisher.publish(conn) if inserted or alerts else 0
        s = self.stats
        s.batches += 1
        s.alerts += len(alerts)
        s.inserted += inserted
        s.published += published
        if alerts or offsets:
            log.info("fraud batch %d: %d alerts (%d new, %d published), offsets %s", batch_id, len(alerts), inserted,
                     published, offsets)  # fmt: skip

    def _insert(self, cur: Cursor, alerts: list[Any], batch_id: int) -> int:
        if not alerts:
            return 0
        values = [
            (a.alert_id, a.rule, self.spec.topic, a.kafka_partition, a.account_id, a.card_id,
             a.transaction_ids.split(","), pd.Timestamp(a.event_ms, unit="ms", tz="UTC").to_pydatetime(),
             Json(json.loads(a.details)), batch_id)
            for a in alerts
        ]  # fmt: skip
        inserted = execute_values(
            cur,
            "INSERT INTO fraud_alerts (alert_id, rule, topic, kafka_partition, account_id, card_id, transaction_ids, "
            "event_time, details, batch_id) VALUES %s ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id",
            values,
            fetch=True,
        )
        return len(inserted)

    def start(
        self, available_now: bool = True, processing_time: str = "5 seconds", lease_wait: float = 0.0
    ) -> StreamingQuery:
        """Start the query; AvailableNow processes what is there and stops, else runs continuously.

        ``lease_wait``: seconds to wait for another query holding the topic's lease (0: fail at once).
        """
        self._lease = acquire_lease(connect(self.settings.dsn()), self.lease_key, lease_wait)
        try:
            # a checkpoint whose logs do not parse is moved aside (the query then replays from the earliest
            # offset: the same alert ids, inserted and sent nothing twice); batches planned but never committed
            # are re-planned (SPARK-55271, as the sink does): the state store re-runs them from the last commit
            set_aside_damaged_checkpoint(self.checkpoint)
            drop_uncommitted_batches(self.checkpoint)
            # catch up on publication a crash may have interrupted (no-op when up to date)
            with closing(connect(self.settings.dsn())) as conn:
                self.stats.published += self.publisher.publish(conn)
            writer = (
                self.alerts()
                .writeStream.queryName(self.query_name)
                .outputMode("append")
                .foreachBatch(self._process_batch)
                .option("checkpointLocation", self.checkpoint)
            )
            trigger = {"availableNow": True} if available_now else {"processingTime": processing_time}
            return writer.trigger(**trigger).start()  # type: ignore[arg-type]
        except BaseException:
            self.close()
            raise

    def run_available_now(self, lease_wait: float = 0.0) -> FraudStats:
        """Process every record available now, then stop. Raises SinkError if the query failed.

        ``lease_wait``: as for ``start``.
        """
        started = time.monotonic()
        self.stats = FraudStats()
        try:
            self.wait(self.start(available_now=True, lease_wait=lease_wait))
        finally:
            self.close()
        self.stats.seconds = round(time.monotonic() - started, 3)
        return self.stats

    def wait(self, query: StreamingQuery) -> None:
        """Wait for the query; a batch's own error is raised as itself."""
        try:
            await_query(query)
        except SinkError:
            if self.batch_error is not None:
                raise self.batch_error from None
            raise

    def close(self) -> None:
        """Release the lease and the publisher's Kafka clients."""
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
