"""`make demo`: stack up, produce seeded records for every pipeline, materialize every asset, run every check.

The daily-partitioned derived assets are not asked for: after each sink job, the demo evaluates the
assets' automation conditions (``dagster.evaluate_automation_conditions``, what the automation sensor
does in ``make dev``) against the stack's Dagster instance and runs what they request; then every
produced day of every partitioned asset must be materialized, or the demo fails.

**Extra figures** (fraud recall/precision, ...) come from :data:`SUMMARY_PROVIDERS`: name -> a
``"module:function"`` reference to ``function(context: DemoContext) -> dict``; its dict lands in the
JSON under ``extra.<name>``, and an ``"ok": false`` in it fails the demo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from tx_platform.config import Settings
from tx_platform.errors import ConfigError, StackError
from tx_platform.pipelines import PIPELINES, PipelineSpec, resolve_ref
from tx_platform.stack import LocalStack

if TYPE_CHECKING:
    from dagster import AssetSelection

#: What each pipeline's records span: (length, end before now). Transactions fill the last day
#: (two daily partitions); trades fill a few minutes, so every symbol trades in every minute of
#: the span at the demo's count (see the simulator's coverage guarantee) and candles have no gaps.
DEMO_WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "transactions": (timedelta(hours=24), timedelta(0)),
    "crypto_trades": (timedelta(minutes=20), timedelta(minutes=3)),
}
#: Records per pipeline when none are given (`txp demo --count/--crypto-count`).
DEFAULT_COUNTS: dict[str, int] = {"transactions": 10_000, "crypto_trades": 3_000}
#: Providers of extra figures for the demo's JSON: name -> "module:function" taking a DemoContext and returning a
#: JSON-able dict (``"ok": False`` in it fails the demo). Fraud detection's recall and precision plug in here.
SUMMARY_PROVIDERS: dict[str, str] = {"fraud": "tx_platform.pipelines.transactions._fraud:demo_summary"}
#: Automation evaluations the demo runs at most after a sink job (one is enough unless a run adds new updates).
MAX_AUTOMATION_ROUNDS = 3

_CREATE_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)", re.IGNORECASE)
_NUMERIC_SCALE = re.compile(r"numeric\(\d+,(\d+)\)")


@dataclass
class PipelineSummary:
    """One pipeline's figures: what was produced against what the warehouse and the DLQ hold."""

    produced: int = 0
    injected_bad: int = 0
    rows: int = 0
    quarantined: int = 0
    dlq: int = 0
    lag: int = 0
    #: per decimal field of the contract: the sum over the good records produced and the sum stored
    sums: dict[str, dict[str, str]] = field(default_factory=dict)
    #: partitions of the pipeline's partitioned assets that were materialized
    partitions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every record accounted for once: stored or quarantined (and dead-lettered), sums equal, no lag."""
        return (
            self.produced > 0
            and self.produced == self.rows + self.quarantined
            and self.quarantined == self.injected_bad
            and self.dlq == self.quarantined
            and all(s["expected"] == s["stored"] for s in self.sums.values())
            and self.lag == 0
        )


@dataclass(frozen=True)
class DemoContext:
    """What a summary provider gets: the stack's settings, the pipelines run, their records' windows and seed."""

    settings: Settings
    specs: Mapping[str, PipelineSpec]
    counts: Mapping[str, int]
    windows: Mapping[str, tuple[datetime, datetime]]
    seed: int


@dataclass
class DemoSummary:
    """What the demo did, printed as its last line (one JSON object)."""

    pipelines: dict[str, PipelineSummary] = field(default_factory=dict)
    checks_passed: int = 0
    checks_failed: int = 0
    failed_checks: list[str] = field(default_factory=list)
    #: runs that failed (a blocking check stops its run: its name is in failed_checks too)
    failed_runs: list[str] = field(default_factory=list)
    #: per automation evaluation after a sink job: asset -> the partitions its condition requested
    automation: list[dict[str, list[str]]] = field(default_factory=list)
    #: per table: rows (per produced day for a daily table) and the partitions materialized
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: produced days of a partitioned asset left unmaterialized ("<asset>[<day>]")
    missing_partitions: list[str] = field(default_factory=list)
    #: figures of the SUMMARY_PROVIDERS, by name
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every pipeline reconciles exactly, every check ran and passed, every run succeeded, every produced day
        of every partitioned asset is materialized, and no extra provider said otherwise."""
        return (
            bool(self.pipelines)
            and all(p.ok for p in self.pipelines.values())
            and self.checks_failed == 0
            and self.checks_passed > 0
            and not self.failed_runs
            and not self.missing_partitions
            and all(e.get("ok", True) is not False for e in self.extra.values())
        )


def _tables_of(ddl: str) -> list[str]:
    return _CREATE_TABLE.findall(ddl)


def demo_tables(specs: Mapping[str, PipelineSpec] | None = None) -> list[str]:
    """Every table the pipelines write: the shared ones, each pipeline's own and derived ones (their migrations)."""
    from tx_platform.warehouse import pipeline_migrations, shared_migrations

    specs = PIPELINES if specs is None else specs
    tables = [t for m in shared_migrations() for t in _tables_of(m.sql)]
    for spec in specs.values():
        tables.append(spec.table)
        tables += [t for m in pipeline_migrations(spec) for t in _tables_of(m.sql)]
    return list(dict.fromkeys(tables))


def _reset(settings: Settings, specs: Mapping[str, PipelineSpec], log: Callable[[str], None]) -> None:
    """Delete the pipelines' topics, every pipeline table's rows and the checkpoints, so counts start from zero."""
    from tx_platform.warehouse import transaction

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    from spark_jobs.fraud import alerts_topic

    wanted = [t for spec in specs.values() for t in (spec.topic, spec.dlq_topic)]
    # the fraud query's alerts: left behind, the next run would find its alerts already published
    wanted += [alerts_topic(spec) for spec in specs.values() if spec.name == "transactions"]
    topics = [t for t in wanted if t in admin.list_topics(timeout=15).topics]
    if topics:
        for future in admin.delete_topics(topics).values():
            future.result(timeout=30)
        deadline = time.monotonic() + 60
        while set(topics) & set(admin.list_topics(timeout=15).topics):
            if time.monotonic() > deadline:
                msg = f"Kafka did not finish deleting {topics} within 60 s"
                raise StackError(msg)
            time.sleep(0.5)
    tables = demo_tables(specs)
    # the tables exist: run_demo starts the stack, which applies every pipeline's schema
    with transaction(settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, tables))))
    # the sinks' and the derived streaming queries' checkpoints: their offsets belong to the deleted topics
    shutil.rmtree(settings.checkpoint_root, ignore_errors=True)
    log(f"reset: deleted topics {topics or '(none)'}, emptied {len(tables)} tables and the checkpoints")


def _scale(spec: PipelineSpec, name: str) -> int:
    match = _NUMERIC_SCALE.fullmatch(spec.contract.field(name).postgres_type)
    if match is None:
        msg = f"pipeline {spec.name!r}: field {name!r} is not a decimal"
        raise ConfigError(msg)
    return int(match[1])


def run_demo(
    stack: LocalStack,
    counts: Mapping[str, int] | None = None,
    seed: int = 42,
    reset: bool = True,
    bad_ratio: float = 0.0,
    log: Callable[[str], None] = print,
) -> DemoSummary:
    """Run every pipeline of ``counts`` (name -> records; default :data:`DEFAULT_COUNTS`) headless against ``stack``.

    Per pipeline: produce ``count`` seeded records (``bad_ratio`` of them deliberately bad) over its
    :data:`DEMO_WINDOWS` span, then, with Dagster, its topics, its ``<name>_sink_job`` (the sink and
    the unpartitioned derived assets downstream of it, with their checks) and the unpartitioned derived
    assets that read the topic themselves (the fraud query, its own job). The partitioned assets then run because
    their automation conditions request them (evaluated against the stack's instance, as the
    automation sensor would); each produced day of each must end up materialized.
    """
    counts = DEFAULT_COUNTS if counts is None else counts
    unknown = sorted(set(counts) - set(PIPELINES))
    if unknown:
        msg = f"no pipeline {', '.join(unknown)}; choose among {', '.join(PIPELINES)}"
        raise ConfigError(msg)
    started = time.monotonic()
    summary = DemoSummary()

    def timed(name: str, fn: Callable[[], Any]) -> Any:  # noqa: ANN401 - whatever fn returns
        t0 = time.monotonic()
        result = fn()
        summary.timings[name] = round(time.monotonic() - t0, 2)
        log(f"{name}: {summary.timings[name]:.1f} s")
        return result

    timed("stack_up", stack.up)
    os.environ.update(stack.env())  # definitions and the Dagster instance point at this stack
    from dagster import (
        AssetKey,
        AssetSelection,
        DagsterInstance,
        Definitions,
        PartitionKeyRange,
        TimeWindowPartitionsDefinition,
        evaluate_automation_conditions,
        materialize,
    )

    from tx_platform.config import load_settings
    from tx_platform.definitions import build_resources, pipeline_definitions
    from tx_platform.kafka_admin import end_offsets
    from tx_platform.metrics import pushing_producer_metrics
    from tx_platform.pipelines.transactions._fraud import demo_generate_options
    from tx_platform.producer import open_producer, produce
    from tx_platform.resources import compute_lag
    from tx_platform.warehouse import committed_offsets, transaction

    settings = load_settings()
    specs = {name: spec for name, spec in PIPELINES.items() if name in counts}
    if reset:
        timed("reset", lambda: _reset(settings, specs, log))
    resources_ = build_resources(settings)
    instance = DagsterInstance.get()
    built = {name: pipeline_definitions(spec) for name, spec in specs.items()}
    everything = [a for p in built.values() for a in p.materializable]

    # what the automation sensor evaluates: every pipeline's assets and checks
    automated = Definitions.merge(*(p.to_definitions() for p in built.values()), Definitions(resources=resources_))
    cursor = evaluate_automation_conditions(automated, instance).cursor  # before any run: the baseline

    def run(selection: AssetSelection, partition_key: str | None = None) -> None:
        result = materialize(
            everything,
            selection=selection,
            resources=resources_,
            instance=instance,
            partition_key=partition_key,
            # a failed blocking check fails its run: counted below, not the end of the demo
            raise_on_error=False,
        )
        if not result.success:
            summary.failed_runs.append(f"{result.run_id}" + (f"[{partition_key}]" if partition_key else ""))
        for evaluation in result.get_asset_check_evaluations():
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            if partition_key:
                name += f"[{partition_key}]"
            if evaluation.passed:
                summary.checks_passed += 1
            else:
                summary.checks_failed += 1
                summary.failed_checks.append(name)

    topic_keys = [k for p in built.values() for k in (p.keys.topic, p.keys.dlq)]
    timed("topics", lambda: run(AssetSelection.assets(*topic_keys)))

    now = datetime.now(UTC)
    producers = {}
    windows = {}
    for name, spec in specs.items():
        length, before = DEMO_WINDOWS.get(name, (timedelta(hours=1), timedelta(0)))
        start = now - before - length
        windows[name] = (start, start + length)
        producer, _registration = open_producer(
            spec, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio=bad_ratio, seed=seed
        )
        # transactions: with fraud incidents (their ground truth is recorded by the "fraud" summary provider)
        scenarios = demo_generate_options(spec, producer, counts[name], seed, start, length)
        records = spec.generate(counts[name], seed, start, span=length, **scenarios)
        # the producer's figures go to the Pushgateway like `txp produce`'s (never in the way if it is down)
        with pushing_producer_metrics(producer.report, spec.name, settings.pushgateway_url):
            report = timed(f"{name}.produce", partial(produce, records, producer))
        summary.pipelines[name] = PipelineSummary(
            produced=report.delivered, injected_bad=producer.faults.injected_total if producer.faults else 0
        )
        producers[name] = producer

    def automate(label: str) -> None:
        """Evaluate the automation conditions and run what they request, until they request nothing."""
        nonlocal cursor
        partitioned = [k for p in built.values() for a in p.partitioned_assets() for k in a.keys]
        for round_no in range(MAX_AUTOMATION_ROUNDS):
            result = evaluate_automation_conditions(automated, instance, cursor=cursor)
            cursor = result.cursor
            requested = {k: sorted(str(p) for p in result.get_requested_partitions(k)) for k in partitioned}
            requested = {k: v for k, v in requested.items() if v}
            if not requested:
                return
            summary.automation.append({k.to_user_string(): v for k, v in requested.items()})
            by_partition: dict[str, list[AssetKey]] = {}
            for key, partition_keys in requested.items():
                for partition_key in partition_keys:
                    by_partition.setdefault(partition_key, []).append(key)
            for partition_key, keys in sorted(by_partition.items()):
                step = f"{label}.automation{round_no}[{partition_key}]"
                timed(step, partial(run, AssetSelection.assets(*keys), partition_key))

    for name, defs in built.items():
        timed(f"{name}.sink_job", partial(run, defs.sink_job.selection))
        # what reads the topic itself (the fraud query) has a job of its own, requested after each sink run
        readers = defs.topic_readers()
        if readers:
            timed(f"{name}.topic_readers", partial(run, AssetSelection.assets(*readers)))
        automate(name)

    # every produced day of every partitioned asset must be materialized now (by automation, never asked for)
    for name, defs in built.items():
        first, last = windows[name]
        for assets_def in defs.partitioned_assets():
            partitions = assets_def.partitions_def
            if not isinstance(partitions, TimeWindowPartitionsDefinition):
                msg = f"{assets_def.key.to_user_string()}: the demo checks time-window partitions only"
                raise ConfigError(msg)
            days = partitions.get_partition_keys_in_range(
                PartitionKeyRange(
                    partitions.get_partition_key_for_timestamp(first.timestamp()),
                    partitions.get_partition_key_for_timestamp(last.timestamp()),
                )
            )
            for key in assets_def.keys:
                done = instance.get_materialized_partitions(key)
                table = key.path[-1]
                summary.tables[table] = {"partitions": sorted(d for d in days if d in done)}
                summary.missing_partitions += [f"{key.to_user_string()}[{d}]" for d in days if d not in done]
                summary.pipelines[name].partitions = sorted({*summary.pipelines[name].partitions, *days})
                summary.tables[table]["rows_by_day"] = _rows_by_day(settings, table, list(days))

    context = DemoContext(settings, specs, dict(counts), windows, seed)
    for provider, ref in SUMMARY_PROVIDERS.items():
        summary.extra[provider] = timed(f"extra.{provider}", partial(resolve_ref(ref), context))

    for name, spec in specs.items():
        figures = summary.pipelines[name]
        totals = producers[name].good_totals
        query = sql.SQL("SELECT {} FROM {} WHERE kafka_topic = %s").format(
            sql.SQL(", ").join(
                [sql.SQL("count(*)"), *(sql.SQL("coalesce(sum({}), 0)").format(sql.Identifier(f)) for f in totals)]
            ),
            sql.Identifier(spec.table),
        )
        with transaction(settings.dsn()) as conn:
            with conn.cursor() as cur:
                cur.execute(query, (spec.topic,))
                rows, *stored = cur.fetchone()
                cur.execute("SELECT count(*) FROM quarantine WHERE kafka_topic = %s", (spec.topic,))
                (quarantined,) = cur.fetchone()
            committed = committed_offsets(conn, spec.topic)
        figures.rows = int(rows)
        figures.quarantined = int(quarantined)
        for (column, expected), value in zip(totals.items(), stored, strict=True):
            scale = _scale(spec, column)
            figures.sums[column] = {"expected": f"{expected:.{scale}f}", "stored": f"{Decimal(value):.{scale}f}"}
        summary.tables[spec.table] = {"rows": figures.rows}
        figures.dlq = sum(end_offsets(settings.kafka_bootstrap, spec.dlq_topic).values())
        figures.lag = compute_lag(end_offsets(settings.kafka_bootstrap, spec.topic), committed).total
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def _rows_by_day(settings: Settings, table: str, days: list[str]) -> dict[str, int]:
    """Rows of a daily table per day (0 for a day without any)."""
    from tx_platform.warehouse import transaction

    query = sql.SQL("SELECT day::text, count(*) FROM {} WHERE day = ANY(%s::date[]) GROUP BY day").format(
        sql.Identifier(table)
    )
    with transaction(settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute(query, (days,))
        found = dict(cur.fetchall())
    return {d: int(found.get(d, 0)) for d in days}


def summary_json(summary: DemoSummary) -> str:
    """The demo's last line: the summary with each pipeline's ``ok`` and the overall one."""
    data = asdict(summary)
    for name, figures in summary.pipelines.items():
        data["pipelines"][name]["ok"] = figures.ok
    data["ok"] = summary.ok
    return json.dumps(data, separators=(",", ":"))
