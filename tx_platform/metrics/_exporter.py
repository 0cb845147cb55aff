"""The sink's metrics, derived at scrape time from Postgres (the ledger is the truth) and Kafka.

Nothing is counted in a process that can die: every figure is read from tables the sink's commit
writes in the same transaction as the rows (``sink_batches``, ``quarantine``, ``sink_offsets``,
``sink_latency``), so a restart of the sink or of this exporter loses nothing and counts nothing
twice. Lag is ``compute_lag`` of Kafka's end offsets and the committed offsets, as the sensor does.

A scrape reads Kafka and Postgres each in a worker thread under one deadline: a source that fails
or does not answer in time is reported with ``txp_exporter_up{source=...} 0`` and its metrics are
left out; the rest is served. At most one read per source is in flight, so a hung source costs
one thread, not one per scrape.

Every pipeline of the deployment (``PIPELINES``) is reported under its ``pipeline`` label, each
read from its own topic: the shared tables are keyed by topic. A pipeline may add its own families
(``PipelineSpec.derived_metrics``, e.g. market figures read from its derived tables): they are read
inside the Postgres read, and one that fails is logged and left out of that scrape, nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psycopg2
from prometheus_client.core import Metric as MetricFamily
from psycopg2.extensions import connection as Connection

from tx_platform.config import Settings
from tx_platform.errors import ConfigError, TopicNotFoundError
from tx_platform.metrics._definitions import (
    COMMIT_BUCKETS,
    DEAD_LETTER_RATIO_THRESHOLD,
    E2E_LATENCY,
    E2E_LATENCY_SLO,
    EXPORTER_SCRAPE_DURATION,
    EXPORTER_UP,
    KAFKA_TO_COMMIT_LATENCY,
    LATENCY_BUCKETS,
    SINK_BATCHES_TOTAL,
    SINK_COMMIT_DURATION,
    SINK_DEAD_LETTERED_TOTAL,
    SINK_LAG_RECORDS,
    SINK_LAST_COMMIT_TIMESTAMP,
    SINK_QUARANTINED_TOTAL,
    SINK_ROWS_TOTAL,
    histogram_sample,
)
from tx_platform.pipelines import PIPELINES, PipelineSpec, resolve_ref

log = logging.getLogger(__name__)

#: ``sink_latency.kind`` of each histogram, with its metric and buckets.
LATENCY_KINDS = (
    ("event_time", E2E_LATENCY, LATENCY_BUCKETS),
    ("kafka_timestamp", KAFKA_TO_COMMIT_LATENCY, LATENCY_BUCKETS),
    ("commit", SINK_COMMIT_DURATION, COMMIT_BUCKETS),
)
OUTCOMES = ("inserted", "quarantined", "skipped")


@dataclass(frozen=True)
class Thresholds:
    """Alerting thresholds, exported as gauges so that alert rules read them from configuration."""

    e2e_latency_slo_seconds: float = 5.0
    dead_letter_ratio: float = 0.05


@dataclass
class Histogram:
    """Non-cumulative counts by upper bound ``le`` and the sum of the observations (seconds)."""

    counts: dict[float, int] = field(default_factory=dict)
    total: float = 0.0


@dataclass
class SinkFigures:
    """What Postgres holds about one topic."""

    committed: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    last_commit: float | None = None
    quarantined: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    latency: dict[str, Histogram] = field(default_factory=dict)


def _rows(cur: Any, query: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:  # noqa: ANN401 - a cursor
    """Rows of ``query``; none when its table does not exist yet (a warehouse the sink never ran on)."""
    try:
        cur.execute(query, params)
    except psycopg2.errors.UndefinedTable:
        return []
    return list(cur.fetchall())


def read_sink_figures(conn: Connection, topics: Sequence[str]) -> dict[str, SinkFigures]:
    """The sink's figures for ``topics`` in four grouped queries (autocommit, each its own snapshot).

    Each query filters on the leading column of an index (``sink_offsets``, ``quarantine`` and
    ``sink_latency`` primary keys); ``sink_batches`` is summed per topic, one row per batch.
    """
    figures = {t: SinkFigures() for t in topics}
    wanted = list(topics)
    with conn.cursor() as cur:
        for topic, partition, next_offset in _rows(
            cur, "SELECT topic, partition, next_offset FROM sink_offsets WHERE topic = ANY(%s)", (wanted,)
        ):
            figures[topic].committed[int(partition)] = int(next_offset)
        for topic, batches, inserted, quarantined, skipped, last in _rows(
            cur,
            "SELECT topic, count(*), sum(inserted), sum(quarantined), sum(skipped), "
            "extract(epoch FROM max(committed_at))::float8 FROM sink_batches WHERE topic = ANY(%s) GROUP BY topic",
            (wanted,),
        ):
            f = figures[topic]
            f.batches = int(batches)
            f.outcomes = {"inserted": int(inserted), "quarantined": int(quarantined), "skipped": int(skipped)}
            f.last_commit = float(last)
        for topic, code, count, delivered in _rows(
            cur,
            "SELECT kafka_topic, error_code, count(*), count(dlq_offset) FROM quarantine "
            "WHERE kafka_topic = ANY(%s) GROUP BY 1, 2",
            (wanted,),
        ):
            figures[topic].quarantined[code] = int(count)
            figures[topic].dead_lettered += int(delivered)
        for topic, kind, le, count, total in _rows(
            cur, "SELECT topic, kind, le, count, sum FROM sink_latency WHERE topic = ANY(%s)", (wanted,)
        ):
            hist = figures[topic].latency.setdefault(kind, Histogram())
            hist.counts[float(le)] = int(count)
            hist.total += float(total)
    return figures


def sink_families(
    pipelines: Sequence[PipelineSpec],
    figures: Mapping[str, SinkFigures] | None,
    end_offsets: Mapping[str, dict[int, int] | None] | None,
    thresholds: Thresholds,
) -> list[MetricFamily]:
    """The pipelines' metric families from what could be read (``None``: that source was down).

    Pure, so that the exposition can be tested with fixed rows. Lag needs both sources; a topic
    that does not exist in Kafka (``None`` in ``end_offsets``) has no lag series.
    """
    from tx_platform.resources import compute_lag  # what the Dagster sensor uses, so both agree

    families: list[MetricFamily] = []
    slo, ratio = E2E_LATENCY_SLO.family(), DEAD_LETTER_RATIO_THRESHOLD.family()
    for p in pipelines:
        slo.add_metric([p.name], thresholds.e2e_latency_slo_seconds)
        ratio.add_metric([p.name], thresholds.dead_letter_ratio)
    families += [slo, ratio]
    if figures is None:
        return families
    lag = SINK_LAG_RECORDS.family()
    if end_offsets is not None:
        for p in pipelines:
            ends = end_offsets.get(p.topic)
            if ends is not None:
                for partition, value in sorted(compute_lag(ends, figures[p.topic].committed).by_partition.items()):
                    lag.add_metric([p.name, p.topic, str(partition)], value)
    rows, codes, dead, batches = (
        SINK_ROWS_TOTAL.family(), SINK_QUARANTINED_TOTAL.family(),
        SINK_DEAD_LETTERED_TOTAL.family(), SINK_BATCHES_TOTAL.family(),
    )  # fmt: skip
    last = SINK_LAST_COMMIT_TIMESTAMP.family()
    histograms = {kind: metric.histogram_family() for kind, metric, _ in LATENCY_KINDS}
    for p in pipelines:
        f = figures[p.topic]
        for outcome in OUTCOMES:
            rows.add_metric([p.name, outcome], f.outcomes.get(outcome, 0))
        # every known code from 0, so that increase() sees the first record of a new code
        for code in sorted({*p.error_codes, *f.quarantined}):
            codes.add_metric([p.name, code], f.quarantined.get(code, 0))
        dead.add_metric([p.name], f.dead_lettered)
        batches.add_metric([p.name], f.batches)
        if f.last_commit is not None:
            last.add_metric([p.name], f.last_commit)
        for kind, _metric, buckets in LATENCY_KINDS:
            hist = f.latency.get(kind, Histogram())
            histogram_sample(histograms[kind], [p.name], hist.counts, hist.total, buckets)
    return [*families, lag, rows, codes, dead, batches, last, *histograms.values()]


T = TypeVar("T")


class _Source(Generic[T]):
    """Reads one source in a daemon thread; a read still running from an earlier scrape is not repeated."""

    def __init__(self, name: str, read: Callable[[], T]) -> None:
        self.name = name
        self._read = read
        self._lock = threading.Lock()
        self._done: threading.Event | None = None
        self._result: list[T] = []
        self._failed = False

    def start(self) -> None:
        with self._lock:
            if self._done is not None and not self._done.is_set():
                return  # the previous read still hangs: do not pile up threads
            done, result = threading.Event(), list[T]()
            self._done, self._result = done, result
        threading.Thread(target=self._run, args=(done, result), name=f"txp-metrics-{self.name}", daemon=True).start()

    def _run(self, done: threading.Event, result: list[T]) -> None:
        try:
            result.append(self._read())
        except Exception as exc:  # noqa: BLE001 - a failing source must never crash the exporter
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("metrics: reading %s failed: %s", self.name, first_line)
        finally:
            done.set()

    def wait(self, deadline: float) -> T | None:
        """The value read, or None when the read failed or did not finish by ``deadline`` (monotonic)."""
        with self._lock:
            done, result = self._done, self._result
        if done is None or not done.wait(max(0.0, deadline - time.monotonic())):
            log.warning("metrics: %s did not answer in time", self.name)
            return None
        return result[0] if result else None


def derived_families(pipelines: Sequence[PipelineSpec], conn: Connection) -> list[MetricFamily]:
    """The families of every pipeline that declares ``derived_metrics``, read on ``conn``.

    A pipeline whose function fails (a query error, a bug) is logged with the first line of its
    error and contributes nothing to this scrape; the other pipelines' families are kept whole.
    """
    families: list[MetricFamily] = []
    by_name: dict[str, MetricFamily] = {}
    for spec in pipelines:
        if spec.derived_metrics is None:
            continue
        try:
            # materialised here, so that a failure half-way through leaves no partial family behind
            own: Iterable[MetricFamily] = list(resolve_ref(spec.derived_metrics)(spec, conn))
        except Exception as exc:  # noqa: BLE001 - one pipeline's figures must never cost the others theirs
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("metrics: the %s pipeline's own metrics failed: %s", spec.name, first_line)
            if conn.closed:
                break  # the connection is gone: the next scrape reopens it
            continue
        for family in own:
            # two pipelines with the same own metrics (one spec on two topics): one family, both samples
            same = by_name.get(family.name)
            if same is None:
                by_name[family.name] = family
                families.append(family)
            else:
                same.samples.extend(family.samples)
    return families


@dataclass
class PostgresFigures:
    """One Postgres read: the sink's figures per topic and the pipelines' own families."""

    sink: dict[str, SinkFigures]
    derived: list[MetricFamily] = field(default_factory=list)


class PostgresReader:
    """One connection to the warehouse, reused across scrapes, reopened after an error."""

    def __init__(self, dsn: str, timeout: float = 3.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            ms = int(self._timeout * 1000)
            conn = psycopg2.connect(
                self._dsn,
                connect_timeout=max(1, int(self._timeout)),
                application_name="txp_metrics",
                options=f"-c statement_timeout={ms} -c lock_timeout={ms} -c default_transaction_read_only=on",
                # a server that vanished without a reset must not hold a scrape: the kernel gives up
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2, tcp_user_timeout=ms,
            )  # fmt: skip
            conn.autocommit = True
            self._conn = conn
        return self._conn

    def read(self, pipelines: Sequence[PipelineSpec]) -> PostgresFigures:
        """The sink's figures of every pipeline's topic, then the pipelines' own families."""
        try:
            conn = self._connection()
            sink = read_sink_figures(conn, sorted({p.topic for p in pipelines}))
        except psycopg2.Error:
            self.close()
            raise
        return PostgresFigures(sink, derived_families(pipelines, conn))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def read_end_offsets(bootstrap: str, topics: Sequence[str], timeout: float) -> dict[str, dict[int, int] | None]:
    """End offset per partition of each topic (None for a topic that does not exist)."""
    from tx_platform.kafka_admin import end_offsets

    ends: dict[str, dict[int, int] | None] = {}
    for topic in topics:
        try:
            ends[topic] = end_offsets(bootstrap, topic, timeout)
        except TopicNotFoundError:
            ends[topic] = None
    return ends


class PipelineCollector:
    """A prometheus_client collector: every scrape reads Postgres and Kafka under one deadline."""

    def __init__(
        self,
        pipelines: Iterable[PipelineSpec],
        dsn: str,
        kafka_bootstrap: str,
        thresholds: Thresholds | None = None,
        timeout: float = 4.0,
    ) -> None:
        import tx_platform.resources  # noqa: F401 - imports Dagster (about 1 s): now, not in the first scrape

        self.pipelines = tuple(pipelines)
        topics = [p.topic for p in self.pipelines]
        if len(set(topics)) != len(topics):
            # the shared tables are keyed by topic: two pipelines on one topic would count each record twice
            msg = f"two pipelines read the same topic: {sorted(t for t in topics if topics.count(t) > 1)}"
            raise ConfigError(msg)
        self.thresholds = thresholds or Thresholds()
        self.timeout = timeout
        self._postgres = PostgresReader(dsn, timeout=max(1.0, timeout - 1))
        self._pg: _Source[PostgresFigures] = _Source("postgres", lambda: self._postgres.read(self.pipelines))
        self._kafka: _Source[dict[str, dict[int, int] | None]] = _Source(
            "kafka", lambda: read_end_offsets(kafka_bootstrap, sorted(topics), max(1.0, timeout - 1))
        )
        #: scrapes are serialised: concurrent ones would only wait on the same reads
        self._scrape = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, pipelines: Iterable[PipelineSpec] | None = None, timeout: float = 4.0
    ) -> PipelineCollector:
        """The collector of a deployment: every shipped pipeline unless ``pipelines`` are given (tests)."""
        return cls(
            PIPELINES.values() if pipelines is None else pipelines,
            settings.dsn(),
            settings.kafka_bootstrap,
            Thresholds(settings.e2e_latency_slo_seconds, settings.dead_letter_ratio_threshold),
            timeout,
        )

    def collect(self) -> Iterator[MetricFamily]:
        with self._scrape:
            started = time.monotonic()
            deadline = started + self.timeout
            self._pg.start()
            self._kafka.start()
            postgres = self._pg.wait(deadline)
            ends = self._kafka.wait(deadline)
            figures = None if postgres is None else postgres.sink
            families = sink_families(self.pipelines, figures, ends, self.thresholds)
            if postgres is not None:
                families += postgres.derived
            up = EXPORTER_UP.family()
            up.add_metric(["kafka"], 0 if ends is None else 1)
            up.add_metric(["postgres"], 0 if postgres is None else 1)
            duration = EXPORTER_SCRAPE_DURATION.family()
            duration.add_metric([], time.monotonic() - started)
        yield from families
        yield up
        yield duration

    def close(self) -> None:
        self._postgres.close()
