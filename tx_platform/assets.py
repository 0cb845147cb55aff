"""Software-defined assets, built from a pipeline's spec: Kafka topics -> the Spark sink's tables -> derived assets.

Every pipeline gets the same shape (see :func:`build_pipeline_assets`), in its own asset group:

    kafka/<topic>  ──▶  warehouse/<table>, warehouse/<quarantine_asset>  ──▶  the spec's derived assets
    kafka/<topic>_dlq

Topic names become key names with :func:`~tx_platform.pipelines.asset_name` (``crypto.trades`` ->
``kafka/crypto_trades``).
"""

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, cast

from dagster import (
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    Backoff,
    Definitions,
    FreshnessPolicy,
    JobDefinition,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    ScheduleDefinition,
    SensorDefinition,
    SourceAsset,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
    multi_asset,
    with_source_code_references,
)
from dagster_pyspark import LazyPySparkResource
from psycopg2 import sql

from spark_jobs.sink._dlq import DLQ_MAX_MESSAGE_BYTES
from spark_jobs.sink._query import PipelineSink
from tx_platform.errors import ConfigError
from tx_platform.pipelines import PipelineSpec, asset_name, resolve_ref
from tx_platform.resources import KafkaResource, PostgresResource, SettingsResource, compute_lag


class AssetJob(Protocol):
    """What ``define_asset_job`` returns (resolved by the Definitions later), as far as this module uses it."""

    @property
    def name(self) -> str:
        """The job's name."""
        ...

    @property
    def selection(self) -> AssetSelection:
        """The assets (and checks) it runs."""
        ...


# dagster exports neither class: they are taken from what its public constructors return, never imported from
# its private modules (which move between releases)
_UNRESOLVED_JOB: type = type(define_asset_job("_txp_probe", selection=AssetSelection.assets()))
_UNRESOLVED_SCHEDULE: type = type(build_schedule_from_partitioned_job(define_asset_job("_txp_probe")))

#: A job as the Definitions take it: a ``@job``'s ``JobDefinition`` or ``define_asset_job``'s (resolved later,
#: an :class:`AssetJob`); typed loosely because dagster does not export the latter's class.
Job = Any
#: A schedule as the Definitions take it (``build_schedule_from_partitioned_job``'s is resolved later).
Schedule = Any
#: What a pipeline's ``derived_assets(spec)`` may return, as a sequence (or a whole ``Definitions``).
DerivedDefinition = AssetsDefinition | AssetSpec | SourceAsset | Job | Schedule | SensorDefinition


@dataclass(frozen=True)
class PipelineKeys:
    """The asset keys every pipeline has."""

    topic: AssetKey
    dlq: AssetKey
    table: AssetKey
    quarantine: AssetKey

    @property
    def sink(self) -> tuple[AssetKey, AssetKey]:
        """The two tables the sink writes together."""
        return (self.table, self.quarantine)


def pipeline_keys(spec: PipelineSpec) -> PipelineKeys:
    """``kafka/<topic>``, ``kafka/<dlq topic>``, ``warehouse/<table>``, ``warehouse/<quarantine_asset>``."""
    return PipelineKeys(
        topic=AssetKey(["kafka", asset_name(spec.topic)]),
        dlq=AssetKey(["kafka", asset_name(spec.dlq_topic)]),
        table=AssetKey(["warehouse", spec.table]),
        quarantine=AssetKey(["warehouse", spec.quarantine_asset]),
    )


def sink_job_name(spec: PipelineSpec) -> str:
    """``<name>_sink_job``: the job the lag sensor requests."""
    return f"{spec.name}_sink_job"


@dataclass(frozen=True)
class PipelineDefinitions:
    """One pipeline's Dagster definitions, sorted by kind (what ``Definitions`` takes)."""

    spec: PipelineSpec
    #: assets, multi-assets and asset specs (checks declared with ``check_specs`` come with their asset)
    assets: tuple[AssetsDefinition | AssetSpec | SourceAsset, ...] = ()
    asset_checks: tuple[AssetChecksDefinition, ...] = ()
    jobs: tuple[Job, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    sensors: tuple[SensorDefinition, ...] = ()
    #: keys of the derived assets (the spec's own, beyond topics and the sink's tables)
    derived_keys: frozenset[AssetKey] = field(default_factory=frozenset)

    @property
    def keys(self) -> PipelineKeys:
        """The keys every pipeline has."""
        return pipeline_keys(self.spec)

    @property
    def sink_job(self) -> AssetJob:
        """``<name>_sink_job``: the sink's tables and the unpartitioned derived assets downstream of them, with their
        checks."""
        name = sink_job_name(self.spec)
        job = next(j for j in self.jobs if j.name == name)
        assert isinstance(job, _UNRESOLVED_JOB)  # noqa: S101 - built by _sink_job
        return cast("AssetJob", job)

    @property
    def materializable(self) -> list[AssetsDefinition]:
        """Assets and asset checks, as ``dagster.materialize`` takes them."""
        return [*(a for a in self.assets if isinstance(a, AssetsDefinition)), *self.asset_checks]

    def partitioned_assets(self) -> list[AssetsDefinition]:
        """The pipeline's partitioned assets (materialized per partition, outside the sink job)."""
        return [a for a in self.assets if isinstance(a, AssetsDefinition) and a.partitions_def is not None]

    def topic_readers(self) -> list[AssetKey]:
        """Unpartitioned derived assets outside the sink job: they read the topic themselves (the fraud query),
        and the pipeline runs them with a job and trigger of its own."""
        derived = [
            a
            for a in self.assets
            if isinstance(a, AssetsDefinition) and a.partitions_def is None and a.keys <= self.derived_keys
        ]
        followers = set(sink_followers(self.keys, derived))
        return [k for a in derived for k in a.keys if k not in followers]

    def with_sensors(self, *sensors: SensorDefinition) -> "PipelineDefinitions":
        """The same definitions plus ``sensors``."""
        return PipelineDefinitions(
            self.spec,
            self.assets,
            self.asset_checks,
            self.jobs,
            self.schedules,
            (*self.sensors, *sensors),
            self.derived_keys,
        )

    def to_definitions(self, resources: dict[str, object] | None = None) -> Definitions:
        """A ``Definitions`` of this pipeline alone (merge them with ``Definitions.merge``)."""
        return Definitions(
            assets=list(self.assets),
            asset_checks=list(self.asset_checks),
            jobs=list(self.jobs),
            schedules=list(self.schedules),
            sensors=list(self.sensors),
            resources=resources,
        )


def _sorted(spec: PipelineSpec, items: Iterable[object]) -> PipelineDefinitions:
    """Sort what ``derived_assets`` returned into a PipelineDefinitions; refuse what cannot be one."""
    assets: list[AssetsDefinition | AssetSpec | SourceAsset] = []
    checks: list[AssetChecksDefinition] = []
    jobs: list[Job] = []
    schedules: list[Schedule] = []
    sensors: list[SensorDefinition] = []
    for item in items:
        if isinstance(item, Definitions):
            if item.resources:
                msg = (
                    f"pipeline {spec.name!r}: derived_assets returned Definitions with resources "
                    f"{sorted(item.resources)}; derived assets use the platform's resources (kafka, postgres, "
                    "pyspark, settings) and bring none"
                )
                raise ConfigError(msg)
            nested = _sorted(
                spec,
                [
                    *(item.assets or ()),
                    *(item.asset_checks or ()),
                    *(item.jobs or ()),
                    *(item.schedules or ()),
                    *(item.sensors or ()),
                ],
            )
            assets += nested.assets
            checks += nested.asset_checks
            jobs += nested.jobs
            schedules += nested.schedules
            sensors += nested.sensors
        elif isinstance(item, AssetChecksDefinition):  # before AssetsDefinition: it is a subclass
            checks.append(item)
        elif isinstance(item, AssetsDefinition):
            groups = {g for g in item.group_names_by_key.values()} - {spec.name}
            if groups:
                msg = (
                    f"pipeline {spec.name!r}: derived asset(s) {sorted(k.to_user_string() for k in item.keys)} "
                    f"are in group(s) {sorted(groups)}; put every asset of the pipeline in group_name={spec.name!r}"
                )
                raise ConfigError(msg)
            assets.append(item)
        elif isinstance(item, AssetSpec | SourceAsset):
            assets.append(item)
        elif isinstance(item, JobDefinition | _UNRESOLVED_JOB):
            jobs.append(item)
        elif isinstance(item, ScheduleDefinition | _UNRESOLVED_SCHEDULE):
            schedules.append(item)
        elif isinstance(item, SensorDefinition):
            sensors.append(item)
        else:
            msg = (
                f"pipeline {spec.name!r}: derived_assets returned {item!r} ({type(item).__name__}), which is not "
                "an asset, asset check, job, schedule or sensor"
            )
            raise ConfigError(msg)
    keys = frozenset(k for a in assets if isinstance(a, AssetsDefinition) for k in a.keys) | frozenset(
        a.key for a in assets if isinstance(a, AssetSpec | SourceAsset)
    )
    return PipelineDefinitions(spec, tuple(assets), tuple(checks), tuple(jobs), tuple(schedules), tuple(sensors), keys)


def derived_definitions(spec: PipelineSpec) -> PipelineDefinitions:
    """What the spec's ``derived_assets(spec)`` returns, sorted by kind; empty when it declares none."""
    if spec.derived_assets is None:
        return PipelineDefinitions(spec)
    returned = resolve_ref(spec.derived_assets)(spec)
    return _sorted(spec, [returned] if isinstance(returned, Definitions) else returned)


#: Who answers for the pipelines' assets (shown in the UI).
OWNERS = ["team:data-platform"]
#: ``warehouse/<table>`` is late when no sink run materialized it for this long (warn) or this long (fail).
TABLE_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=6), warn_window=timedelta(hours=1))
#: Creating a topic is idempotent: a broker that was briefly unreachable costs a retry, not the run.
TOPIC_RETRY_POLICY = RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL)


def sink_pool(spec: PipelineSpec) -> str:
    """``sink_<name>``: the Dagster concurrency pool of the pipeline's sink (limit 1 in the stack's instance)."""
    return f"sink_{spec.name}"


def table_column_schema(spec: PipelineSpec) -> TableSchema:
    """The pipeline table's columns: the contract's fields (types, nullability, the natural key), then the
    source columns every row carries (its Kafka coordinates and ingestion time)."""
    columns = [
        TableColumn(
            f.name,
            f.postgres_type,
            description=f"enum: {', '.join(f.enum_symbols)}" if f.enum_symbols else None,
            constraints=TableColumnConstraints(nullable=f.nullable, unique=f.name == spec.natural_key),
        )
        for f in spec.contract.fields
    ]
    columns += [
        TableColumn("kafka_topic", "text", "Topic the row was read from.", TableColumnConstraints(nullable=False)),
        TableColumn("kafka_partition", "integer", "Its partition.", TableColumnConstraints(nullable=False)),
        TableColumn("kafka_offset", "bigint", "Its offset.", TableColumnConstraints(nullable=False)),
        TableColumn(
            "ingested_at", "timestamptz", "When the sink committed it.", TableColumnConstraints(nullable=False)
        ),
    ]
    return TableSchema(columns=columns)


_CREATE = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)\s*\((.*?)\n\);", re.IGNORECASE | re.DOTALL)
_ADD_COLUMN = re.compile(
    r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+([^,;]+)", re.IGNORECASE
)
_TYPE_END = re.compile(
    r"\s+(NOT\s+NULL|NULL|DEFAULT|PRIMARY|UNIQUE|CHECK|REFERENCES|GENERATED|CONSTRAINT)\b", re.IGNORECASE
)


def ddl_column_schema(ddl: str, table: str) -> TableSchema | None:
    """``table``'s columns as its migrations' SQL declares them (``CREATE TABLE IF NOT EXISTS`` then any
    ``ALTER TABLE ... ADD COLUMN``), or None when the SQL does not create it. Comments are ignored; a
    column's type is what follows its name up to its constraints."""
    text = re.sub(r"--[^\n]*", "", ddl)
    columns: list[TableColumn] = []
    found = False
    for name, body in _CREATE.findall(text):
        if name.lower() != table.lower():
            continue
        found = True
        depth, part, parts = 0, "", []
        for char in body:  # split on the commas outside parentheses (numeric(18,2), CHECK (...))
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                parts.append(part)
                part = ""
            else:
                part += char
        parts.append(part)
        for item in (p.strip() for p in parts):
            # a table constraint, not a column (a column named unique_cards is a column)
            if not item or re.match(
                r"(PRIMARY\s+KEY|UNIQUE|CHECK|CONSTRAINT|FOREIGN\s+KEY|EXCLUDE)\s*[(\s]", item, re.I
            ):
                continue
            column, rest = item.split(None, 1)
            type_ = _TYPE_END.split(rest, maxsplit=1)[0].strip()
            nullable = not re.search(r"NOT\s+NULL|PRIMARY\s+KEY", rest, re.IGNORECASE)
            columns.append(TableColumn(column, type_, constraints=TableColumnConstraints(nullable=nullable)))
    for name, column, rest in _ADD_COLUMN.findall(text):
        if name.lower() == table.lower() and column not in {c.name for c in columns}:
            columns.append(TableColumn(column, _TYPE_END.split(rest, maxsplit=1)[0].strip()))
    return TableSchema(columns=columns) if found else None


def migrations_column_schema(spec: PipelineSpec, table: str) -> TableSchema | None:
    """``table``'s column schema from the pipeline's migration files (None when none of them creates it)."""
    if spec.migrations is None:
        return None
    files = sorted((f for f in spec.migrations.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return ddl_column_schema("\n".join(f.read_text("utf-8") for f in files), table)


def derived_metadata(spec: PipelineSpec, table: str, columns: TableSchema | None = None) -> dict[str, Any]:
    """What every derived table's asset carries: ``dagster/table_name`` and ``dagster/column_schema`` (given, or
    read from the pipeline's migrations)."""
    metadata: dict[str, Any] = {"dagster/table_name": f"txp.public.{table}"}
    schema = columns if columns is not None else migrations_column_schema(spec, table)
    if schema is not None:
        metadata["dagster/column_schema"] = schema
    return metadata


def derived_tags(spec: PipelineSpec) -> dict[str, str]:
    """Tags of a pipeline's derived assets."""
    return _tags(spec, "derived")


def _with_table_metadata(
    spec: PipelineSpec, item: AssetsDefinition | AssetSpec | SourceAsset
) -> AssetsDefinition | AssetSpec | SourceAsset:
    """``item`` with ``dagster/table_name`` and ``dagster/column_schema`` on each ``warehouse/<table>`` key that the
    pipeline's migrations create and that lacks them."""

    def add(asset_spec: AssetSpec) -> AssetSpec:
        key = asset_spec.key
        if key.path[0] != "warehouse" or "dagster/column_schema" in asset_spec.metadata:
            return asset_spec
        found = derived_metadata(spec, key.path[-1])
        if "dagster/column_schema" not in found:
            return asset_spec
        return asset_spec.merge_attributes(metadata={k: v for k, v in found.items() if k not in asset_spec.metadata})

    if isinstance(item, AssetsDefinition) and not isinstance(item, AssetChecksDefinition):
        return item.map_asset_specs(add)
    if isinstance(item, AssetSpec):
        return add(item)
    return item


def _tags(spec: PipelineSpec, layer: str) -> dict[str, str]:
    return {"txp/pipeline": spec.name, "txp/layer": layer}


def _topic_asset(
    spec: PipelineSpec, key: AssetKey, topic: str, dead_letter: bool, deps: Sequence[AssetKey] = ()
) -> AssetsDefinition:
    config = {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)} if dead_letter else None
    what = (
        f"Dead-letter topic of `{spec.topic}`: records the sink rejected, sent by the sink after it commits them "
        "to the quarantine table (which holds the same, with reasons)."
        if dead_letter
        else f"Kafka topic of the `{spec.name}` pipeline (key = {spec.kafka_key}, values: {spec.subject})."
    )

    @asset(
        key=key,
        deps=list(deps),
        group_name=spec.name,
        kinds={"kafka"},
        owners=OWNERS,
        tags=_tags(spec, "dead_letter" if dead_letter else "source"),
        metadata={"topic": topic},
        retry_policy=TOPIC_RETRY_POLICY,
        description=f"{what} Materializing creates it if missing and records its partitions and end offsets.",
    )
    def _topic(kafka: KafkaResource, settings: SettingsResource) -> MaterializeResult:
        """The topic, created if missing."""
        s = settings.settings
        created = kafka.ensure_topic(topic, s.topic_partitions, s.topic_replication, config)
        ends = kafka.end_offsets(topic)
        return MaterializeResult(
            metadata={
                "topic": topic,
                "created_now": created,
                "partitions": len(ends),
                "end_offsets_total": sum(ends.values()),
            }
        )

    return _topic


def _sink_asset(spec: PipelineSpec, keys: PipelineKeys) -> AssetsDefinition:
    # said on both tables: the sink is one Spark query whatever the selection
    both = (
        f" The sink writes `{spec.table}` and `quarantine` together (each Kafka record goes to exactly one of "
        f"them), so selecting either table or both runs it once; one sink run at a time (pool `{sink_pool(spec)}`)."
    )

    @multi_asset(
        name=spec.query_name,
        specs=[
            AssetSpec(
                keys.table,
                deps=[keys.topic],
                group_name=spec.name,
                kinds={"spark", "postgres"},
                owners=OWNERS,
                tags=_tags(spec, "warehouse"),
                freshness_policy=TABLE_FRESHNESS,
                metadata={
                    "dagster/column_schema": table_column_schema(spec),
                    "dagster/table_name": f"txp.public.{spec.table}",
                    "natural_key": spec.natural_key,
                },
                description=f"Postgres `{spec.table}`: every valid record of `{spec.topic}` once, upserted on "
                f"{spec.natural_key} by the Spark sink (AvailableNow: each materialization processes everything "
                "new, then stops)." + both,
            ),
            AssetSpec(
                keys.quarantine,
                deps=[keys.topic],
                group_name=spec.name,
                kinds={"postgres"},
                owners=OWNERS,
                tags=_tags(spec, "warehouse"),
                metadata={"dagster/table_name": "txp.public.quarantine"},
                description=f"The rows of Postgres `quarantine` from `{spec.topic}`: records the sink rejected, "
                "with raw bytes, error code and reason (also sent to the dead-letter topic)." + both,
            ),
        ],
        can_subset=True,
        op_tags={"txp/sink": spec.name},
        # whoever launches it (the lag sensor, the UI, the CLI, a backfill), one sink run per pipeline at a time:
        # two would race on the same checkpoint
        pool=sink_pool(spec),
    )
    def _sink(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        kafka: KafkaResource,
        postgres: PostgresResource,
        settings: SettingsResource,
    ) -> Iterator[MaterializeResult]:
        """Run the pipeline's streaming sink once over everything new in Kafka.

        Subsettable, but the work is not divisible: one Kafka record goes to exactly one of the two
        tables, in the same Postgres transaction as the offsets, so the sink always writes both. A
        selection of either table or both runs it once; materializations are reported only for the
        selected keys (``context.selected_asset_keys``).
        """
        # Dagster's pool lets one sink step run at a time, but two claims at the same instant can both win it (the
        # claim is not atomic on PostgreSQL); the topic's lease is the sink's own guarantee: a run waits its turn
        config = settings.settings
        stats = PipelineSink(pyspark.spark_session, spec, config).run_available_now(config.sink_lease_wait_seconds)
        lag = compute_lag(kafka.end_offsets(spec.topic), postgres.committed_offsets(spec.topic)).total
        context.log.info(
            f"sink: {stats.records} records in {stats.batches} batches -> {stats.inserted} rows, "
            f"{stats.quarantined} quarantined, {stats.skipped} replayed; lag now {lag}; {stats.seconds:.1f} s"
        )
        selected = context.selected_asset_keys
        if keys.table in selected:
            total_rows = postgres.scalar(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table)))
            yield MaterializeResult(
                asset_key=keys.table,
                metadata={
                    "records_read": stats.records,
                    "rows_inserted": stats.inserted,
                    "replayed_skipped": stats.skipped,
                    "batches": stats.batches,
                    "seconds": stats.seconds,
                    "lag_after": lag,
                    "dagster/row_count": MetadataValue.int(int(total_rows or 0)),
                },
            )
        if keys.quarantine in selected:
            quarantined = postgres.scalar("SELECT count(*) FROM quarantine WHERE kafka_topic = %s", (spec.topic,))
            yield MaterializeResult(
                asset_key=keys.quarantine,
                metadata={
                    "rows_quarantined": stats.quarantined,
                    "sent_to_dlq": stats.dead_lettered,
                    "dagster/row_count": MetadataValue.int(int(quarantined or 0)),
                },
            )

    return _sink


def sink_followers(keys: PipelineKeys, derived: Sequence[AssetsDefinition | AssetSpec | SourceAsset]) -> list[AssetKey]:
    """The unpartitioned derived assets downstream of the sink's tables (directly or through other derived
    assets), sorted: they run in the sink job, after the sink.

    An asset that reads the topic itself (the fraud query: upstream only ``kafka/<topic>``) needs nothing the
    sink wrote, so it is left to a job and trigger of its own instead of lengthening every sink run.
    """
    upstream: dict[AssetKey, set[AssetKey]] = {}
    for item in derived:
        if isinstance(item, AssetsDefinition) and item.partitions_def is None:
            for spec in item.specs:
                upstream[spec.key] = {d.asset_key for d in spec.deps}
    followers: set[AssetKey] = set()
    reached = set(keys.sink)
    while True:
        new = {k for k, deps in upstream.items() if k not in followers and deps & reached}
        if not new:
            return sorted(followers, key=lambda k: k.to_user_string())
        followers |= new
        reached |= new


def _sink_job(
    spec: PipelineSpec, keys: PipelineKeys, derived: Sequence[AssetsDefinition | AssetSpec | SourceAsset]
) -> AssetJob:
    return define_asset_job(
        sink_job_name(spec),
        selection=AssetSelection.assets(*keys.sink, *sink_followers(keys, derived)),
        description=f"Run the `{spec.name}` sink once (AvailableNow), then the pipeline's unpartitioned derived "
        "assets that read the sink's tables, with every check of those assets.",
        tags={"txp/sink": spec.name},
    )


def build_pipeline_assets(spec: PipelineSpec) -> PipelineDefinitions:
    """The Dagster definitions of one pipeline (all in asset group ``spec.name``), without its lag sensor.

    - ``kafka/<asset_name(topic)>`` and ``kafka/<asset_name(dlq_topic)>``: the topics, created when
      materialized;
    - the sink, one multi-asset (op ``<name>_sink``) writing ``warehouse/<table>`` and
      ``warehouse/<quarantine_asset>``; subsettable, it runs ``PipelineSink(...).run_available_now()``
      once whatever the selection;
    - its checks (:func:`tx_platform.checks.asset_checks.build_sink_checks`): ``no_unexplained_loss``
      (blocking) and ``<table>_match_contract`` on the table, ``dlq_matches_quarantine`` on the quarantine;
    - the spec's derived assets (below);
    - the job ``<name>_sink_job``: the sink's two tables and every *unpartitioned* derived asset
      downstream of them (:func:`sink_followers`), with their checks, so derived tables follow each sink
      run the lag sensor requests. Partitioned derived assets, and unpartitioned ones that read only the
      topic (:meth:`PipelineDefinitions.topic_readers`), bring their own jobs and triggers.

    **Contract for derived-asset authors.** ``spec.derived_assets`` names a function
    ``derived_assets(spec: PipelineSpec) -> Sequence[...]`` (or returning a ``dagster.Definitions``
    without resources). It is called once per spec (tests pass the spec on another topic, so build
    every key and name from ``spec``, never from the shipped constant) and may return:

    - assets (``@asset``/``@multi_asset``, checks declared with ``check_specs`` included), each in
      ``group_name=spec.name`` (anything else is refused), keyed ``warehouse/<table>`` and depending
      on ``pipeline_keys(spec).table`` (``warehouse/<table>``) and/or ``.topic`` (``kafka/<topic>``);
    - asset checks (``@asset_check``), jobs (``define_asset_job``), schedules and sensors; job and
      schedule names must be unique across pipelines.

    Their ops may ask for these resources by parameter name, and for no other:

    - ``kafka``: :class:`~tx_platform.resources.KafkaResource` (``ensure_topic``, ``end_offsets``);
    - ``postgres``: :class:`~tx_platform.resources.PostgresResource` (``connection()``, ``scalar``,
      ``committed_offsets``, ``dsn``), the pipeline role;
    - ``pyspark``: ``dagster_pyspark.LazyPySparkResource`` (``spark_session``; master and connector
      jars already set, shared with the sink);
    - ``settings``: :class:`~tx_platform.resources.SettingsResource` (``settings`` is the
      :class:`~tx_platform.config.Settings` object: checkpoint root, registry URL, ...).

    Unpartitioned derived assets downstream of the sink's tables run in ``<name>_sink_job`` after the sink;
    those that read only the topic run in their own job (``make demo`` runs them after the sink job);
    partitioned ones are materialized per partition.
    """
    from tx_platform.checks.asset_checks import build_sink_checks  # it imports this module for the keys

    keys = pipeline_keys(spec)
    derived = derived_definitions(spec)
    clash = derived.derived_keys & {keys.topic, keys.dlq, *keys.sink}
    if clash:
        msg = f"pipeline {spec.name!r}: derived assets redefine {sorted(k.to_user_string() for k in clash)}"
        raise ConfigError(msg)
    own = (
        _topic_asset(spec, keys.topic, spec.topic, dead_letter=False),
        # the sink writes the DLQ (after committing the quarantine rows): downstream of both its tables
        _topic_asset(spec, keys.dlq, spec.dlq_topic, dead_letter=True, deps=keys.sink),
        _sink_asset(spec, keys),
    )
    # links from the UI to each asset's code; every warehouse table's columns, read from the pipeline's migrations
    # where its author declared none
    assets = with_source_code_references([_with_table_metadata(spec, a) for a in (*own, *derived.assets)])
    return PipelineDefinitions(
        spec,
        assets=tuple(a for a in assets if isinstance(a, AssetsDefinition | AssetSpec | SourceAsset)),
        asset_checks=(*build_sink_checks(spec), *derived.asset_checks),
        jobs=(_sink_job(spec, keys, derived.assets), *derived.jobs),
        schedules=derived.schedules,
        sensors=derived.sensors,
        derived_keys=derived.derived_keys,
    )
