"""A pipeline, declared: its contract, names, keys and rules. The machinery is built from it."""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from tx_platform.contract import (
    CONTRACT_ERROR_CODES,
    WAREHOUSE_REJECTED,
    Contract,
    Record,
    Rule,
    load_contract,
    subject_for,
)
from tx_platform.errors import ConfigError, ContractError

#: Names that end up in SQL and in Dagster asset keys: lower-case identifiers only.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Kafka's legal topic names.
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")

#: ``(count, seed, start) -> records``: what a pipeline's generator is (extra keywords allowed).
Generator = Callable[..., Iterator[Record]]


class BlockedRecords(Iterator[Record]):
    """A generator's records in independent blocks: ``blocks[b]()`` yields block ``b``'s records, and the
    stream (this iterator) is every block in order.

    What a generator may return when each block depends on its arguments and its number alone (its own
    seeded random source): the producer then generates and encodes the blocks in several processes and
    sends them in order (:mod:`tx_platform.producer._parallel`), the same records whatever the number of
    processes. Iterated here, it is an ordinary iterator.
    """

    def __init__(self, blocks: Iterable[Callable[[], Iterable[Record]]]) -> None:
        self.blocks = tuple(blocks)
        self._stream: Iterator[Record] | None = None

    def __iter__(self) -> Iterator[Record]:
        # the chain itself: a for loop then takes each record without a call of __next__ here
        if self._stream is None:
            self._stream = itertools.chain.from_iterable(block() for block in self.blocks)
        return self._stream

    def __next__(self) -> Record:
        return next(iter(self))

    @property
    def started(self) -> bool:
        """Some records were taken from the stream (the blocks then no longer say what is left)."""
        return self._stream is not None


def resolve_ref(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable, or one named ``"package.module:attribute"`` (imported on first use).

    Specs name their generators and derived assets by reference, so that reading a spec (as the
    Spark sink does) never imports a generator's or Dagster's dependencies.
    """
    if callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    if not module or not attribute:
        msg = f"{ref!r} is not a reference of the form 'package.module:attribute'"
        raise ConfigError(msg)
    try:
        target = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        msg = f"cannot resolve {ref!r}: {exc}"
        raise ConfigError(msg) from exc
    if not callable(target):
        msg = f"{ref!r} is not callable"
        raise ConfigError(msg)
    return target


def asset_name(topic: str) -> str:
    """The asset-key name of a topic: ``crypto.trades`` -> ``crypto_trades`` (keys allow no dots)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", topic)


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that makes one event stream a pipeline; the shared machinery reads only this.

    Producer, sink, warehouse writer, dead-letter publisher, Dagster assets, checks, lag sensor
    and metrics are built from a spec. Names follow one pattern: topic ``topic``, dead-letter topic
    ``topic.dlq``, registry subject ``topic-value``, table ``table`` (upserted on ``natural_key``),
    Spark query ``<name>_sink``, Dagster group ``name``.
    """

    #: The pipeline's name: Dagster group, ``pipeline`` label of its metrics, ``--pipeline`` value.
    name: str
    #: The Avro record schema (``.avsc``) of the topic's values.
    contract_path: Traversable | Path
    topic: str
    #: Postgres table of accepted records: the contract's fields plus their Kafka coordinates.
    table: str
    #: Field that identifies a record; a second record with the same value is quarantined.
    natural_key: str
    #: Field whose value is the Kafka key (records of one key stay in order on one partition).
    kafka_key: str
    #: Event-time field: daily partitions, latency, watermarks.
    time_column: str
    #: Validation rules beyond the contract's types, in the order they are checked.
    rules: tuple[Rule, ...] = ()
    #: ``(count, seed, start) -> records``, or its ``"module:function"`` reference.
    generator: str | Generator = ""
    #: ``(spec) -> Dagster definitions`` of the pipeline's derived assets and checks, or a reference.
    derived_assets: str | Callable[..., Any] | None = None
    #: ``(spec, conn) -> prometheus_client metric families`` the metrics exporter adds at each scrape
    #: (e.g. market figures read from derived tables), or a reference; None when there are none.
    derived_metrics: str | Callable[..., Any] | None = None
    #: Folder of the pipeline's versioned migrations (``NNNN_<name>.sql``: its own table, derived tables,
    #: views), applied by ``txp db migrate`` after the shared ones; None when it has none (then its table
    #: is not managed by migrations). Its baseline renders the table from the contract and rules.
    migrations: Traversable | Path | None = None
    #: How late (Kafka timestamp minus event time) a record may arrive and still count as on time: the
    #: streaming watermark's delay, and the threshold of the warehouse's ``late`` flag (rendered into the
    #: table by ``txp db migrate``, which rebuilds the flag when this changes).
    allowed_lateness: timedelta = timedelta(minutes=10)
    #: Dead-letter topic; default ``<topic>.dlq``.
    dlq_topic: str = ""
    #: Asset-key name of the pipeline's slice of the shared ``quarantine`` table; default ``<name>_quarantine``.
    quarantine_asset: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.dlq_topic:
            object.__setattr__(self, "dlq_topic", f"{self.topic}.dlq")
        if not self.quarantine_asset:
            object.__setattr__(self, "quarantine_asset", f"{self.name}_quarantine")
        for what, value in (("name", self.name), ("table", self.table), ("quarantine_asset", self.quarantine_asset)):
            if not _IDENTIFIER.fullmatch(value):
                msg = f"pipeline {self.name!r}: {what} {value!r} must be a lower-case identifier"
                raise ConfigError(msg)
        for what, value in (("topic", self.topic), ("dlq_topic", self.dlq_topic)):
            if not _TOPIC.fullmatch(value) or value in {".", ".."}:
                msg = f"pipeline {self.name!r}: {what} {value!r} is not a legal Kafka topic name"
                raise ConfigError(msg)
        if self.allowed_lateness < timedelta(0):
            msg = f"pipeline {self.name!r}: allowed_lateness must not be negative"
            raise ConfigError(msg)
        if self.topic == self.dlq_topic:
            msg = f"pipeline {self.name!r}: the dead-letter topic must differ from the topic"
            raise ConfigError(msg)
        self._check_fields()

    def _check_fields(self) -> None:
        contract = self.contract
        names = set(contract.field_names)
        for what, field in (
            ("natural_key", self.natural_key),
            ("kafka_key", self.kafka_key),
            ("time_column", self.time_column),
            *(("rule " + r.code, r.field) for r in self.rules),
        ):
            if field not in names:
                msg = f"pipeline {self.name!r}: {what} names {field!r}, which is not a field of {self.contract_path}"
                raise ContractError(msg)
        if contract.field(self.time_column).spark_type != "TIMESTAMP":
            msg = f"pipeline {self.name!r}: time_column {self.time_column!r} must be a timestamp"
            raise ContractError(msg)
        for field in (self.natural_key, self.kafka_key):
            if contract.field(field).nullable:
                msg = f"pipeline {self.name!r}: {field!r} must not be nullable (it is a key)"
                raise ContractError(msg)

    @property
    def contract(self) -> Contract:
        """The parsed contract (loaded once per file)."""
        return load_contract(self.contract_path)

    @property
    def subject(self) -> str:
        """Registry subject of the topic's values (Confluent's TopicNameStrategy)."""
        return subject_for(self.topic)

    @property
    def query_name(self) -> str:
        """Name of the sink's streaming query (one per pipeline)."""
        return f"{self.name}_sink"

    def checkpoint(self, root: str | Path) -> str:
        """Checkpoint location of the sink's query under ``root`` (a directory or URI)."""
        return f"{str(root).rstrip('/')}/sink-{self.topic}"

    @property
    def duplicate_code(self) -> str:
        """Error code of a record whose natural key is already stored, e.g. ``DUPLICATE_TRANSACTION_ID``."""
        return f"DUPLICATE_{self.natural_key.upper()}"

    @property
    def error_codes(self) -> tuple[str, ...]:
        """Every error code the sink can give this pipeline's records, in the order they are checked."""
        own = dict.fromkeys(r.code for r in self.rules)
        return (*CONTRACT_ERROR_CODES, *own, self.duplicate_code, WAREHOUSE_REJECTED)

    def with_topic(self, topic: str, dlq_topic: str | None = None) -> PipelineSpec:
        """The same pipeline on another topic (``<topic>.dlq`` unless given): tests, per-environment names."""
        return dataclasses.replace(self, topic=topic, dlq_topic=dlq_topic or f"{topic}.dlq")

    def generate(self, count: int, seed: int, start: datetime, **options: Any) -> Iterator[Record]:  # noqa: ANN401
        """``count`` seeded records from the pipeline's generator (same arguments, same records)."""
        if not self.generator:
            msg = f"pipeline {self.name!r} declares no generator"
            raise ConfigError(msg)
        return resolve_ref(self.generator)(count, seed, start, **options)
