"""Each streaming query's progress as Prometheus metrics, pushed to the Pushgateway.

The sink registers a :class:`ProgressListener` on its session (every mode: AvailableNow runs
launched by Dagster as well as the continuous ``spark_jobs/sink/main.py``). Its ``onQueryProgress``
runs on py4j's callback thread: it only turns the progress into plain numbers under a lock and asks
the :class:`~tx_platform.metrics.Pusher` for a push, which happens on the pusher's own thread with a
bounded timeout. A missing gateway costs one warning, never the sink's time or its run.

The group is ``{job="txp_sink", pipeline}``, pushed with PUT like the producer's: it holds the
current run's figures; ``txp_spark_batches_total`` counts the micro-batches of this run.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric as MetricFamily
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
)

from tx_platform.metrics import (
    SINK_JOB,
    SPARK_BATCH_DURATION,
    SPARK_BATCH_ROWS,
    SPARK_BATCHES_TOTAL,
    SPARK_INPUT_ROWS_PER_SECOND,
    SPARK_PROCESSED_ROWS_PER_SECOND,
    SPARK_STATE_ROWS,
    SPARK_WATERMARK_DELAY,
    Pusher,
)

log = logging.getLogger(__name__)

#: The watermark Spark reports before any event time was seen: no watermark yet.
_EPOCH = "1970-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class ProgressFigures:
    """What one micro-batch's progress says, in the units of the metrics (``None``: not reported)."""

    batch_id: int
    batch_rows: int
    batch_duration_seconds: float
    input_rows_per_second: float | None
    processed_rows_per_second: float | None
    watermark_delay_seconds: float | None = None
    state_rows: int | None = None


def _finite(value: Any) -> float | None:  # noqa: ANN401 - number, None or whatever the JSON holds
    """A finite float, or None (Spark leaves rates out, or NaN/Infinity, when it cannot compute them)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def progress_figures(progress: Mapping[str, Any]) -> ProgressFigures:
    """Figures of a progress: its JSON (``json.loads(progress.json)``) or a ``StreamingQueryProgress``.

    The watermark delay is the trigger's timestamp minus ``eventTime.watermark`` (only when the
    query has a watermark and it has moved past the epoch); state rows are the sum of
    ``numRowsTotal`` over the state operators (only when there are any).
    """
    sources = progress.get("sources") or []
    rows = progress.get("numInputRows")
    if rows is None:
        rows = sum(int(s["numInputRows"]) for s in sources)
    event_time = progress.get("eventTime") or {}
    watermark = event_time.get("watermark")
    delay = None
    if watermark and watermark != _EPOCH:
        delay = (_instant(progress["timestamp"]) - _instant(watermark)).total_seconds()
    operators = progress.get("stateOperators") or []
    state_rows = sum(int(op["numRowsTotal"]) for op in operators) if operators else None
    return ProgressFigures(
        batch_id=int(progress["batchId"]),
        batch_rows=int(rows),
        batch_duration_seconds=int(progress["batchDuration"]) / 1000,
        input_rows_per_second=_finite(progress.get("inputRowsPerSecond")),
        processed_rows_per_second=_finite(progress.get("processedRowsPerSecond")),
        watermark_delay_seconds=delay,
        state_rows=state_rows,
    )


class ProgressMetrics:
    """A collector over one run of a streaming query: the last batch's figures and the batches seen."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.last: ProgressFigures | None = None
        self.batches = 0
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, progress: Mapping[str, Any]) -> bool:
        """Take a progress in; False when its batch was already counted (a repeat or an older one)."""
        figures = progress_figures(progress)
        with self._lock:
            if self.last is not None and figures.batch_id <= self.last.batch_id:
                return False
            self.last = figures
            self.batches += 1
        return True

    def samples(self) -> dict[str, float]:
        """Metric name -> value for this pipeline, as they are pushed (unreported figures left out)."""
        with self._lock:
            last, batches = self.last, self.batches
        out: dict[str, float] = {SPARK_BATCHES_TOTAL.name: float(batches)}
        if last is None:
            return out
        values = {
            SPARK_BATCH_ROWS.name: last.batch_rows,
            SPARK_BATCH_DURATION.name: last.batch_duration_seconds,
            SPARK_INPUT_ROWS_PER_SECOND.name: last.input_rows_per_second,
            SPARK_PROCESSED_ROWS_PER_SECOND.name: last.processed_rows_per_second,
            SPARK_WATERMARK_DELAY.name: last.watermark_delay_seconds,
            SPARK_STATE_ROWS.name: last.state_rows,
        }
        out |= {name: float(value) for name, value in values.items() if value is not None}
        return out

    def collect(self) -> Iterator[MetricFamily]:
        samples = self.samples()
        for metric in (
            SPARK_INPUT_ROWS_PER_SECOND, SPARK_PROCESSED_ROWS_PER_SECOND, SPARK_BATCH_DURATION, SPARK_BATCH_ROWS,
            SPARK_BATCHES_TOTAL, SPARK_WATERMARK_DELAY, SPARK_STATE_ROWS,
        ):  # fmt: skip
            name = metric.name
            if name in samples:
                family = metric.family()
                family.add_metric([self.pipeline], samples[name])
                yield family


class ProgressListener(StreamingQueryListener):
    """Feeds one query's progress events to :class:`ProgressMetrics` and asks for a push; never raises.

    Events of other queries of the session are ignored: the query is recognised by its name until
    :meth:`attach` tells its id.
    """

    def __init__(self, metrics: ProgressMetrics, pusher: Pusher | None, query_name: str) -> None:
        self.metrics = metrics
        self.pusher = pusher
        self.query_name = query_name
        self.query_id: str | None = None
        self.errors = 0

    def attach(self, query: StreamingQuery) -> None:
        self.query_id = str(query.id)

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        pass

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        try:
            progress = event.progress
            if self.query_id is not None and progress["id"] != self.query_id:
                return
            if self.query_id is None and progress.name != self.query_name:
                return
            if self.metrics.observe(progress) and self.pusher is not None:
                self.pusher.request()
        except Exception as exc:  # noqa: BLE001 - a listener must never break the query's listener bus
            self.errors += 1
            if self.errors == 1:
                log.warning("metrics: could not read a streaming query progress (%s); the sink goes on", exc)

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        pass

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        pass


class SinkProgressReporter:
    """Registers the listener on the session and pushes its metrics while the sink runs.

    ``close`` takes in what the listener bus has not delivered yet (``query.recentProgress``), so the
    final push holds the run's last batch, removes the listener and stops the pusher (bounded).
    """

    def __init__(self, spark: SparkSession, pipeline: str, url: str | None, query_name: str) -> None:
        self.spark = spark
        self.metrics = ProgressMetrics(pipeline)
        self.pusher = (
            Pusher(url, self.metrics.registry, {"pipeline": pipeline}, job=SINK_JOB, interval=15.0) if url else None
        )
        self.listener = ProgressListener(self.metrics, self.pusher, query_name)
        self.query: StreamingQuery | None = None
        spark.streams.addListener(self.listener)
        if self.pusher is not None:
            self.pusher.start()

    @classmethod
    def for_pipeline(
        cls, spark: SparkSession, pipeline: str, url: str | None, query_name: str
    ) -> SinkProgressReporter | None:
        """The reporter of ``pipeline``'s sink; None (one warning) when it cannot be set up."""
        try:
            return cls(spark, pipeline, url, query_name)
        except Exception as exc:  # noqa: BLE001 - metrics are never a reason for the sink not to run
            log.warning("metrics: streaming progress is not reported (%s); the sink goes on", exc)
            return None

    def attach(self, query: StreamingQuery) -> None:
        """The query started: from now on only its events count."""
        self.query = query
        self.listener.attach(query)

    def close(self) -> None:
        """Catch up on undelivered progress, unregister, push the final figures; never raises."""
        try:
            if self.query is not None:
                for progress in self.query.recentProgress:
                    self.metrics.observe(progress)
        except Exception as exc:  # noqa: BLE001
            log.debug("metrics: could not read the query's recent progress: %s", exc)
        try:
            self.spark.streams.removeListener(self.listener)
        except Exception as exc:  # noqa: BLE001
            log.debug("metrics: could not remove the progress listener: %s", exc)
        if self.pusher is not None:
            self.pusher.stop()
