"""What the sink, end-to-end and Dagster benchmarks share: figures, fresh topics and warehouse schemas.

Each method of a benchmark writes into a Postgres schema of its own (``bench_<hex>``, created empty,
the sink's tables built there by ``ensure_schema`` and dropped at the end), reached through the DSN's
``search_path``: every method starts from empty, identically indexed tables, and the same Kafka
backlog can be sunk more than once without its second reading turning into duplicates.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from tx_platform.config import Settings, load_settings
from tx_platform.kafka_admin import ensure_topic, watermarks
from tx_platform.pipelines import PipelineSpec
from tx_platform.producer import open_producer, produce
from tx_platform.warehouse import connect

#: inside the transactions pipeline's event-time rules, as the sink would see the records
SPAN = timedelta(hours=2)


@dataclass(frozen=True)
class Figure:
    """One measured method: what it is, over how many records, in how long (and what else was seen)."""

    bench: str
    method: str
    label: str
    records: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def json(self) -> str:
        return json.dumps(
            {
                "bench": self.bench,
                "method": self.method,
                "records": self.records,
                "seconds": round(self.seconds, 4),
                "records_per_s": round(self.rate, 1),
                **self.extra,
            }
        )


def median_run(runs: list[Figure], label: str) -> Figure:
    """The run of median seconds among an odd number of ``runs`` (an even count has no middle run, and
    either one beside it would favour one side of a comparison), as ``label``, with every run's seconds,
    in the order they ran, in its ``runs_seconds``."""
    if len(runs) % 2 == 0:
        msg = f"the median run of {len(runs)} runs: give an odd number of runs"
        raise ValueError(msg)
    chosen = sorted(runs, key=lambda f: f.seconds)[len(runs) // 2]
    extra = {**chosen.extra, "runs_seconds": [round(f.seconds, 2) for f in runs]}
    return Figure(chosen.bench, chosen.method, label, chosen.records, chosen.seconds, extra)


def out(line: str = "") -> None:
    """Print a line of the report now (the runs are long: show progress as it happens)."""
    print(line, flush=True)  # noqa: T201


def fresh_topic(settings: Settings, prefix: str, partitions: int) -> str:
    """A new topic ``<prefix>_<hex>`` with ``partitions`` partitions."""
    topic = f"{prefix}_{uuid.uuid4().hex[:8]}"
    ensure_topic(settings.kafka_bootstrap, topic, partitions, settings.topic_replication)
    return topic


def produce_backlog(settings: Settings, spec: PipelineSpec, count: int, seed: int) -> float:
    """Produce ``count`` records of ``spec`` to its topic (all acknowledged); the seconds it took."""
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=seed)
    start = datetime.now(UTC) - timedelta(hours=3)
    started = time.perf_counter()
    report = produce(spec.generate(count, seed, start, span=SPAN), producer)
    elapsed = time.perf_counter() - started
    assert report.delivered == count, report  # noqa: S101 - a benchmark of lost records measures nothing
    return elapsed


def topic_records(settings: Settings, topic: str) -> int:
    """Records in ``topic`` now (sum of high minus low watermarks)."""
    return sum(high - low for low, high in watermarks(settings.kafka_bootstrap, topic).values())


def schema_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with its sessions' ``search_path`` set to ``schema`` alone."""
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def bench_schema(settings: Settings, label: str) -> Iterator[str]:
    """A fresh schema ``bench_<label>_<hex>`` for one method; yields its DSN and drops it (CASCADE) after."""
    schema = f"bench_{label}_{uuid.uuid4().hex[:6]}"
    base = settings.dsn()
    with closing(connect(base)) as conn:
        conn.autocommit = True
        conn.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_dsn(base, schema)
    finally:
        with closing(connect(base)) as conn:
            conn.autocommit = True
            conn.cursor().execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def settings_for(dsn: str, **overrides: Any) -> Settings:  # noqa: ANN401
    """The running stack's settings with the warehouse at ``dsn`` (a benchmark schema)."""
    return load_settings(postgres_dsn=dsn, **overrides)


def scalar(dsn: str, query: str, *params: object) -> Any:  # noqa: ANN401 - any SQL value
    """The first column of the first row of ``query``."""
    with closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
        return None if row is None else row[0]


@dataclass(frozen=True)
class SliceTimeline:
    """What ``sink_batches`` says of a sink run: rows committed, and the steady state after the first batch."""

    records: int
    batches: int
    first_end: float  # epoch seconds: the last slice of the first batch committed
    last_end: float
    steady_records: int

    @property
    def steady_seconds(self) -> float:
        return self.last_end - self.first_end

    @property
    def steady_rate(self) -> float:
        return self.steady_records / self.steady_seconds if self.steady_seconds > 0 else 0.0


def slice_timeline(dsn: str, topic: str) -> SliceTimeline:
    """Read the run's ``sink_batches`` rows (one per committed partition slice) for ``topic``.

    A slice's end is its ``committed_at`` (the transaction's start) plus its ``seconds``.
    """
    with closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT batch_id, records, extract(epoch FROM committed_at)::float8 + seconds FROM sink_batches "
            "WHERE topic = %s AND records > 0 ORDER BY batch_id",
            (topic,),
        )
        rows = cur.fetchall()
    if not rows:
        return SliceTimeline(0, 0, 0.0, 0.0, 0)
    first = rows[0][0]
    first_end = max(end for batch, _, end in rows if batch == first)
    return SliceTimeline(
        records=sum(r for _, r, _ in rows),
        batches=len({b for b, _, _ in rows}),
        first_end=first_end,
        last_end=max(end for _, _, end in rows),
        steady_records=sum(r for b, r, _ in rows if b != first),
    )


#: Process groups of :class:`CpuSampler`, by command line (first match wins); the rest is "other".
CPU_GROUPS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    # a backend's title ("postgres: <user> <db> ..."), or, just after its fork, the server's own command line
    ("PostgreSQL", lambda cmd: cmd.startswith("postgres:") or cmd.split(" ", 1)[0].endswith("/bin/postgres")),
    ("Python workers", lambda cmd: "pyspark.daemon" in cmd or "pyspark.worker" in cmd),
    ("Kafka broker", lambda cmd: "kafka.Kafka" in cmd),
    ("Spark JVM", lambda cmd: "org.apache.spark" in cmd),
)


class CpuSampler:
    """CPU seconds each group of processes (:data:`CPU_GROUPS`) spent while the sampler ran.

    Reads every process's user + system time from ``/proc`` every ``interval`` seconds: a process
    running before the start counts from then, one started later from zero; one that ends between
    two samples loses at most ``interval`` of its time (the sink's Python workers and their
    Postgres connections live for the whole run). Linux only; elsewhere the groups stay empty.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._seen: dict[int, list[Any]] = {}  # pid -> [group, CPU seconds at the start, last seen]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _cpu(self, pid: str) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self._ticks

    @staticmethod
    def _group(pid: str) -> str | None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                cmd = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        return next((name for name, matches in CPU_GROUPS if matches(cmd)), "other")

    def _scan(self, first: bool) -> None:
        if not os.path.isdir("/proc"):
            return
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            cpu = self._cpu(pid)
            if cpu is None:
                continue
            known = self._seen.get(int(pid))
            if known is None:
                group = self._group(pid)
                if group is None:
                    continue
                known = self._seen[int(pid)] = [group, cpu if first else 0.0, cpu]
            known[2] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._scan(first=False)

    def __enter__(self) -> CpuSampler:
        self.started = time.monotonic()
        self._scan(first=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._scan(first=False)
        self.seconds = time.monotonic() - self.started

    def groups(self) -> dict[str, float]:
        """CPU seconds per group, largest first (rounded to 0.1 s)."""
        totals: Counter[str] = Counter()
        for group, start, last in self._seen.values():
            totals[group] += last - start
        return {group: round(cpu, 1) for group, cpu in totals.most_common() if round(cpu, 1) > 0}
