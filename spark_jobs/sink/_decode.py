"""Decode Confluent wire-format Avro records and split them into good rows and rejects.

Spark's ``from_avro`` does not understand the 5-byte header, so the header is checked here: magic
byte, then the schema id, which selects the writer's schema (fetched from the registry by the
driver, see ``_registry``); the body is decoded with it and resolved to the reader's schema, the
packaged contract. Spark-only expressions (no Python UDFs): decoding runs in the JVM everywhere.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.avro.functions import from_avro
from pyspark.sql.types import DecimalType, StructField, StructType

from spark_jobs.sink._rules import CLOCK_COLUMN, compile_rule, quoted, with_clock
from tx_platform.contract import Contract
from tx_platform.errors import ContractError
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import QUARANTINE_COLUMNS, latency_instants, staged_columns

#: Longest text accepted in any string field (a guard against oversized records).
MAX_TEXT_LENGTH = 256
#: Decimals are decoded at Spark's widest precision, then range-checked against the contract's.
#: Decoded at the contract's own precision (<= 18 digits), Spark's Avro reader keeps the unscaled
#: value in a long and silently wraps anything wider: 10^20 would be stored as another amount.
DECODE_PRECISION = 38
#: Kafka record timestamps outside this range are kept as NULL in quarantine (any long is a valid
#: CreateTime, but not every one is a timestamp Postgres can store).
_KAFKA_TS_RANGE = ("0001-01-01 00:00:00", "9999-12-31 23:59:59")


def contract_struct(contract: Contract) -> StructType:
    """The Spark struct of the contract, derived from the .avsc (never hand-copied)."""
    struct = StructType.fromDDL(contract.spark_ddl())
    if not isinstance(struct, StructType):  # a one-field DDL parses to that field's type
        msg = "the contract's Spark DDL did not parse to a struct"
        raise ContractError(msg)
    return struct


def _widen_decimals(avro_type: Any) -> Any:  # noqa: ANN401 - any Avro type node
    if isinstance(avro_type, list):
        return [_widen_decimals(t) for t in avro_type]
    if isinstance(avro_type, dict) and avro_type.get("logicalType") == "decimal":
        return {**avro_type, "precision": DECODE_PRECISION}
    return avro_type


def decoding_schema(contract: Contract) -> str:
    """The reader schema Spark decodes with: the contract, with every decimal at precision 38.

    Only the precision differs (the scale, and so the value, is the contract's); the range the
    contract allows is then enforced by the ``DECIMAL_OUT_OF_RANGE`` rule.
    """
    schema = dict(contract.schema)
    schema["fields"] = [{**f, "type": _widen_decimals(f["type"])} for f in contract.schema["fields"]]
    return json.dumps(schema, separators=(",", ":"))


def _decimal_bounds(contract: Contract) -> list[tuple[str, int, int]]:
    """(field, precision, scale) of every decimal field of the contract."""
    bounds = []
    for f in contract.fields:
        match = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", f.spark_type)
        if match:
            bounds.append((f.name, int(match.group(1)), int(match.group(2))))
    return bounds


def wire_schema_id() -> Column:
    """Schema id of Confluent wire-format bytes (bytes 2-5, big-endian); meaningless if not that format."""
    return F.conv(F.hex(F.substring(F.col("value"), 2, 4)), 16, 10).cast("long")


def _schema_id_in(schema_ids: list[int]) -> Column:
    """Whether the wire-format header's schema id is one of ``schema_ids``: its 4 bytes compared as they
    are (per record, cheaper than reading the id as a number through hex and base conversion)."""
    header = F.substring(F.col("value"), 2, 4)
    return header.isin(*[F.lit(bytearray(i.to_bytes(4, "big"))) for i in schema_ids])


def _is_wire_format() -> Column:
    value = F.col("value")
    return (F.length(value) >= 5) & (F.substring(value, 1, 1) == F.lit(bytearray(b"\x00")))


def _avro_struct(writer_schemas: Mapping[int, str], contract: Contract) -> Column:
    """Decode the Avro body with its writer's schema, resolved to the reader's (the contract)."""
    body = F.expr("substring(value, 6)")
    options = {"mode": "PERMISSIVE", "avroSchema": decoding_schema(contract)}
    decoded: Column | None = None
    for schema_id, writer in sorted(writer_schemas.items()):
        branch = from_avro(body, writer, options)
        condition = _schema_id_in([schema_id])
        decoded = F.when(condition, branch) if decoded is None else decoded.when(condition, branch)
    if decoded is None:  # no schema registered yet: nothing can be decoded
        return F.lit(None).cast(decoding_struct(contract))
    return decoded


def decoding_struct(contract: Contract) -> StructType:
    """The Spark struct of a decoded record: the contract's, with decimals at precision 38."""
    return StructType(
        [
            StructField(f.name, DecimalType(DECODE_PRECISION, f.dataType.scale), f.nullable)
            if isinstance(f.dataType, DecimalType)
            else f
            for f in contract_struct(contract).fields
        ]
    )


def _first_field(names: list[str], violates: Callable[[Column], Column]) -> tuple[Column, Column]:
    """Whether any of the fields ``names`` of ``r`` violates, and the name of the first one that does."""
    r = F.col("r")
    checks = [violates(r[name]) for name in names]
    return reduce(operator.or_, checks), F.coalesce(*[F.when(c, F.lit(n)) for c, n in zip(checks, names, strict=True)])


def _text_rules(strings: list[str]) -> list[tuple[Column, str, Column]]:
    """Invalid UTF-8 and U+0000 in any of the text fields ``strings`` (none for a contract without text)."""
    if not strings:
        return []
    not_utf8, not_utf8_field = _first_field(strings, lambda c: ~F.is_valid_utf8(c))
    # contains: a scan of the bytes (U+0000 is the byte 0 alone in UTF-8); instr counts characters as it goes
    has_nul, has_nul_field = _first_field(strings, lambda c: c.contains("\u0000"))
    return [
        # Postgres stores only valid UTF-8; Spark would pass the bytes on as they are
        (not_utf8, "INVALID_UTF8", F.concat(F.lit("text field "), not_utf8_field, F.lit(" is not valid UTF-8"))),
        (
            # Postgres text cannot hold U+0000; the reason names the field, never the value
            has_nul,
            "NUL_CHARACTER",
            F.concat(
                F.lit("text field "),
                has_nul_field,
                F.lit(" contains the character U+0000, which PostgreSQL text cannot store"),
            ),
        ),
    ]


def _rules(spec: PipelineSpec, known_ids: list[int]) -> list[tuple[Column, str, Column]]:
    """(violation condition, error code, reason) in check order; first match wins.

    First what follows from the bytes and the contract's types (the same for every pipeline),
    then the rules of the pipeline's spec.
    """
    contract = spec.contract
    r = F.col("r")
    rules: list[tuple[Column, str, Column]] = [
        (F.col("value").isNull(), "NULL_VALUE", F.lit("record value is null (tombstone)")),
        (
            ~_is_wire_format(),
            "NOT_WIRE_FORMAT",
            F.lit("value is not Confluent wire format (magic byte 0 + 4-byte schema id + Avro body)"),
        ),
        (
            ~_schema_id_in(known_ids) if known_ids else F.lit(True),
            "UNKNOWN_SCHEMA_ID",
            F.concat(
                F.lit("schema id is not a version of the topic's value subject: "), wire_schema_id().cast("string")
            ),
        ),
        (
            # PERMISSIVE from_avro gives a struct of nulls for a body that does not decode; valid Avro
            # cannot leave a required (non-union) field null (any of them: a coalesce would ask the first only)
            reduce(operator.or_, [r[f.name].isNull() for f in contract.fields if not f.nullable], r.isNull()),
            "UNDECODABLE_AVRO",
            F.concat(F.lit("Avro body does not decode with schema id "), wire_schema_id().cast("string")),
        ),
    ]
    strings = [f.name for f in contract.fields if f.spark_type == "STRING"]
    rules += _text_rules(strings)
    for field in contract.fields:
        if not field.nullable and field.spark_type == "STRING":
            rules.append(
                (
                    F.trim(r[field.name]) == F.lit(""),
                    "MISSING_FIELD",
                    F.lit(f"required field {field.name} is empty"),
                )
            )
    for field in contract.fields:
        if field.enum_symbols:
            rules.append(
                (
                    ~r[field.name].isin(*field.enum_symbols),
                    "INVALID_ENUM",
                    F.concat(
                        F.lit(f"{field.name} is not one of {', '.join(field.enum_symbols)}: "), quoted(r[field.name])
                    ),
                )
            )
    if strings:
        lengths = [F.length(r[name]) for name in strings]
        octets = [F.octet_length(r[name]) for name in strings]
        longest = F.greatest(*lengths) if len(lengths) > 1 else lengths[0]
        longest_octets = F.greatest(*octets) if len(octets) > 1 else octets[0]
        rules.append(
            (
                # a text has at most as many characters as bytes: its characters (a scan of every text) are
                # counted only when some text has more bytes than the limit (its byte count is known)
                (longest_octets > F.lit(MAX_TEXT_LENGTH)) & (longest > F.lit(MAX_TEXT_LENGTH)),
                "FIELD_TOO_LONG",
                F.lit(f"a text field is longer than {MAX_TEXT_LENGTH} characters"),
            )
        )
    for name, precision, scale in _decimal_bounds(contract):
        # the limit at the decoded type itself: a DECIMAL(38,0) limit would make Spark widen past 38
        # digits and round the amount (9999999999999999.99 would compare as 10^16)
        limit = F.lit(10 ** (precision - scale)).cast(f"DECIMAL({DECODE_PRECISION},{scale})")
        rules.append(
            (
                F.abs(r[name]) >= limit,
                "DECIMAL_OUT_OF_RANGE",
                F.concat(
                    F.lit(f"{name} does not fit decimal({precision},{scale}) (at most {precision - scale} digits "
                          "before the point): "),
                    quoted(r[name]),
                ),
            )
        )  # fmt: skip
    # the pipeline's own rules, declared in its spec
    rules += [compile_rule(rule, r) for rule in spec.rules]
    return rules


class Decoder:
    """The decode and render expressions of one pipeline for one set of writer schemas, built once.

    Building them asks the JVM for every rule's expression (about a second of py4j calls for the
    transactions contract); a streaming sink builds them once and applies them to every micro-batch,
    building again only when the subject gets a new schema version.
    """

    def __init__(self, spec: PipelineSpec, writer_schemas: Mapping[int, str]) -> None:
        self.spec = spec
        self.schema_ids = tuple(sorted(writer_schemas))
        self._r = _avro_struct(writer_schemas, spec.contract)
        rules = _rules(spec, list(self.schema_ids))
        # the number of the first violated rule (0: none). Every condition is evaluated (an array
        # of booleans, then its first true): less generated code than a 30-deep CASE chain (the
        # stage's method is still over the JIT's size limit: see JVM_OPTIONS in spark_jobs/session.py)
        first = F.array_position(
            F.array(*[F.coalesce(condition, F.lit(False)) for condition, _code, _why in rules]), True
        ).cast("int")
        # Behind a nondeterministic expression (always true), so that Spark's optimizer pushes no filter
        # below this projection: a consumer's ``where(error_code IS NULL)`` (the fraud query's, the
        # candles') would otherwise be rewritten over the rules' conditions themselves, each reference to
        # ``r`` decoding the Avro body again (79 from_avro calls for one record: the fraud query's JVM
        # time tripled). ``spark_partition_id`` has generated code, so the projection stays in the stage.
        self._violated = F.when(F.spark_partition_id() >= 0, first)
        number = F.col("_violated")
        codes = F.array(*[F.lit(error_code) for _condition, error_code, _why in rules])
        # number > 0 only: element_at with index 0 fails, and with NULL Spark 4.1 answers the last element
        self._code = F.when(number > 0, F.element_at(codes, number))
        reason: Column | None = None
        for n, (_condition, _code, why) in enumerate(rules, start=1):
            reason = F.when(number == n, why) if reason is None else reason.when(number == n, why)
        self._reason = reason if reason is not None else F.lit(None).cast("string")
        self._rendered: list[Column] | None = None

    def decode(self, records: DataFrame) -> DataFrame:
        """Kafka rows -> one row per record with the decoded struct ``r`` and ``error_code``/``reason``.

        ``error_code`` is null for records that satisfy every rule; otherwise it names the first rule
        broken, in check order (bytes and contract types first, then the spec's rules).
        """
        return (
            with_clock(records)
            .withColumn("r", self._r)
            .withColumn("_violated", self._violated)
            .withColumn("error_code", self._code)
            .withColumn("reason", self._reason)
            .drop("_violated", CLOCK_COLUMN)
        )

    def render(self, decoded: DataFrame) -> DataFrame:
        """See :func:`render`."""
        if self._rendered is None:
            self._rendered = _rendered_columns(self.spec)
        return decoded.select(*self._rendered)


def decode(records: DataFrame, spec: PipelineSpec, writer_schemas: Mapping[int, str]) -> DataFrame:
    """Kafka rows -> one row per record with the decoded struct ``r`` and ``error_code``/``reason``.

    ``writer_schemas`` maps every schema id registered under the subject to its schema text.
    ``error_code`` is null for records that satisfy every rule. (One use: a sink keeps a :class:`Decoder`.)
    """
    return Decoder(spec, writer_schemas).decode(records)


def _column_sources(spec: PipelineSpec) -> dict[str, Column]:
    """Spark expression of every column the warehouse stages, by the warehouse's column name."""
    low, high = _KAFKA_TS_RANGE
    kafka_ts = F.when(F.col("timestamp").between(F.lit(low).cast("timestamp"), F.lit(high).cast("timestamp")),
                      F.col("timestamp"))  # fmt: skip
    return {
        **{name: F.col("r")[name] for name in spec.contract.field_names},
        "kafka_topic": F.col("topic"),
        "kafka_partition": F.col("partition"),
        "kafka_offset": F.col("offset"),
        # the record's own bytes (hex, as COPY reads bytea), kept in case it is a duplicate or rejected
        "raw_key": F.concat(F.lit("\\x"), F.hex("key")),
        "raw_value": F.concat(F.lit("\\x"), F.hex("value")),
        # Kafka's timestamp, for the Kafka -> commit latency histogram (staged, not stored)
        "kafka_timestamp": kafka_ts,
        "error_code": F.col("error_code"),
        "reason": F.col("reason"),
    }


def _line(sources: dict[str, Column], columns: tuple[str, ...]) -> Column:
    missing = [c for c in columns if c not in sources]
    if missing:
        msg = f"the warehouse stages columns the sink cannot render: {missing}"
        raise ContractError(msg)
    return F.to_csv(F.struct(*[sources[c].alias(c) for c in columns]), _CSV)


def render(decoded: DataFrame, spec: PipelineSpec) -> DataFrame:
    """One pass over a decoded batch: ``(ok, partition, offset, line, key, value, event_time, kafka_timestamp)``.

    ``line`` is the record as a CSV line for its destination, in the column order the warehouse
    owns: :func:`tx_platform.warehouse.staged_columns` for accepted records, whose raw ``key`` and
    ``value`` bytes travel beside the line (binary, only a duplicate needs them), and
    ``QUARANTINE_COLUMNS`` for rejects, with their raw bytes hex-encoded (``\\x...``) in the line.
    ``event_time`` and ``kafka_timestamp`` are an accepted record's instants (null for a reject).
    """
    return decoded.select(*_rendered_columns(spec))


def _rendered_columns(spec: PipelineSpec) -> list[Column]:
    sources = _column_sources(spec)
    ok = F.col("error_code").isNull()
    line = F.when(ok, _line(sources, staged_columns(spec))).otherwise(_line(sources, QUARANTINE_COLUMNS))
    return [
        ok.alias("ok"),
        F.col("partition"),
        F.col("offset"),
        line.alias("line"),
        F.when(ok, F.col("key")).alias("key"),
        F.when(ok, F.col("value")).alias("value"),
        # an accepted record's instants, for the commit's latency histograms (commit_batch's ``times``)
        *[F.when(ok, sources[column]).alias(kind) for kind, column in latency_instants(spec).items()],
    ]


#: CSV as PostgreSQL's COPY reads it: quotes doubled, NULL unquoted and empty, ISO timestamps.
_CSV = {
    "escape": '"',
    "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
}
