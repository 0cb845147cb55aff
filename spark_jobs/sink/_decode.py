"""Decode Confluent wire-format Avro records and split them into good rows and rejects.

Spark's ``from_avro`` does not understand the 5-byte header, so the header is checked here: magic
byte, then the schema id, which selects the writer's schema (fetched from the registry by the
driver, see ``_registry``); the body is decoded with it and resolved to the reader's schema, the
packaged contract. Spark-only expressions (no Python UDFs): decoding runs in the JVM everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.avro.functions import from_avro
from pyspark.sql.types import StructType

from tx_platform.contract import (
    MAX_FUTURE_SECONDS,
    MCC_PATTERN,
    UUID_PATTERN,
    Contract,
    country_codes,
    currency_codes,
)
from tx_platform.errors import ContractError

#: Longest text accepted in any string field (a guard against oversized records).
MAX_TEXT_LENGTH = 256


def contract_struct(contract: Contract) -> StructType:
    """The Spark struct of the contract, derived from the .avsc (never hand-copied)."""
    struct = StructType.fromDDL(contract.spark_ddl())
    if not isinstance(struct, StructType):  # a one-field DDL parses to that field's type
        msg = "the contract's Spark DDL did not parse to a struct"
        raise ContractError(msg)
    return struct


def wire_schema_id() -> Column:
    """Schema id of Confluent wire-format bytes (bytes 2-5, big-endian); meaningless if not that format."""
    return F.conv(F.hex(F.substring(F.col("value"), 2, 4)), 16, 10).cast("long")


def _is_wire_format() -> Column:
    value = F.col("value")
    return (F.length(value) >= 5) & (F.hex(F.substring(value, 1, 1)) == F.lit("00"))


def _avro_struct(writer_schemas: Mapping[int, str], contract: Contract) -> Column:
    """Decode the Avro body with its writer's schema, resolved to the reader's (the contract)."""
    body = F.expr("substring(value, 6)")
    options = {"mode": "PERMISSIVE", "avroSchema": contract.schema_str}
    decoded: Column | None = None
    for schema_id, writer in sorted(writer_schemas.items()):
        branch = from_avro(body, writer, options)
        condition = wire_schema_id() == F.lit(schema_id)
        decoded = F.when(condition, branch) if decoded is None else decoded.when(condition, branch)
    if decoded is None:  # no schema registered yet: nothing can be decoded
        return F.lit(None).cast(contract_struct(contract))
    return decoded


def _rules(contract: Contract, known_ids: list[int]) -> list[tuple[Column, str, Column]]:
    """(violation condition, error code, reason) in check order; first match wins."""
    r = F.col("r")
    rules: list[tuple[Column, str, Column]] = [
        (F.col("value").isNull(), "NULL_VALUE", F.lit("record value is null (tombstone)")),
        (
            ~_is_wire_format(),
            "NOT_WIRE_FORMAT",
            F.lit("value is not Confluent wire format (magic byte 0 + 4-byte schema id + Avro body)"),
        ),
        (
            ~wire_schema_id().isin(*known_ids) if known_ids else F.lit(True),
            "UNKNOWN_SCHEMA_ID",
            F.concat(
                F.lit("schema id is not a version of the topic's value subject: "), wire_schema_id().cast("string")
            ),
        ),
        (
            # PERMISSIVE from_avro gives a struct of nulls for a body that does not decode; valid Avro
            # cannot leave a required (non-union) field null
            r.isNull() | F.coalesce(*[r[f.name].isNull() for f in contract.fields if not f.nullable]),
            "UNDECODABLE_AVRO",
            F.concat(F.lit("Avro body does not decode with schema id "), wire_schema_id().cast("string")),
        ),
    ]
    for field in contract.fields:
        if not field.nullable and field.spark_type == "STRING":
            rules.append(
                (
                    F.trim(r[field.name]) == F.lit(""),
                    "MISSING_FIELD",
                    F.lit(f"required field {field.name} is empty"),
                )
            )
    rules.append(
        (
            ~r["transaction_id"].rlike(UUID_PATTERN),
            "INVALID_UUID",
            F.concat(F.lit("transaction_id is not a UUID: "), r["transaction_id"]),
        )
    )
    for field in contract.fields:
        if field.enum_symbols:
            rules.append(
                (
                    ~r[field.name].isin(*field.enum_symbols),
                    "INVALID_ENUM",
                    F.concat(F.lit(f"{field.name} is not one of {', '.join(field.enum_symbols)}: "), r[field.name]),
                )
            )
    too_long = [f.name for f in contract.fields if f.spark_type == "STRING"]
    rules += [
        (
            F.greatest(*[F.length(r[name]) for name in too_long]) > F.lit(MAX_TEXT_LENGTH),
            "FIELD_TOO_LONG",
            F.lit(f"a text field is longer than {MAX_TEXT_LENGTH} characters"),
        ),
        (
            r["amount"] <= 0,
            "NON_POSITIVE_AMOUNT",
            F.concat(F.lit("amount must be positive, got "), r["amount"].cast("string")),
        ),
        (
            ~r["currency"].isin(*sorted(currency_codes())),
            "UNKNOWN_CURRENCY",
            F.concat(F.lit("currency is not an ISO 4217 code: "), r["currency"]),
        ),
        (
            ~r["country"].isin(*sorted(country_codes())),
            "UNKNOWN_COUNTRY",
            F.concat(F.lit("country is not an ISO 3166-1 alpha-2 code: "), r["country"]),
        ),
        (
            ~r["merchant_category"].rlike(MCC_PATTERN),
            "INVALID_MERCHANT_CATEGORY",
            F.concat(F.lit("merchant_category is not a 4-digit ISO 18245 code: "), r["merchant_category"]),
        ),
        (
            (F.abs(r["latitude"]) > 90)
            | (F.abs(r["longitude"]) > 180)
            | F.isnan(r["latitude"])
            | F.isnan(r["longitude"]),
            "INVALID_COORDINATES",
            F.lit("latitude/longitude out of range"),
        ),
        (
            r["event_time"] > F.current_timestamp() + F.expr(f"INTERVAL {MAX_FUTURE_SECONDS} SECONDS"),
            "EVENT_TIME_IN_FUTURE",
            F.concat(
                F.lit(f"event_time more than {MAX_FUTURE_SECONDS} s in the future: "), r["event_time"].cast("string")
            ),
        ),
    ]
    return rules


def decode(records: DataFrame, contract: Contract, writer_schemas: Mapping[int, str]) -> DataFrame:
    """Kafka rows -> one row per record with the decoded struct ``r`` and ``error_code``/``reason``.

    ``writer_schemas`` maps every schema id registered under the subject to its schema text.
    ``error_code`` is null for records that satisfy every rule.
    """
    decoded = records.withColumn("r", _avro_struct(writer_schemas, contract))
    code: Column = F.lit(None).cast("string")
    reason: Column = F.lit(None).cast("string")
    for condition, error_code, why in reversed(_rules(contract, sorted(writer_schemas))):
        # built inside-out so that the first rule of the list is checked first
        code = F.when(F.coalesce(condition, F.lit(False)), F.lit(error_code)).otherwise(code)
        reason = F.when(F.coalesce(condition, F.lit(False)), why).otherwise(reason)
    return decoded.withColumn("error_code", code).withColumn("reason", reason)


def render(decoded: DataFrame, contract: Contract) -> DataFrame:
    """One pass over a decoded batch: ``(ok, partition, offset, line)``.

    ``line`` is the record as a CSV line for its destination: accepted records in the staging
    column order of ``tx_platform.warehouse`` (contract fields, then Kafka coordinates), rejects
    in ``QUARANTINE_COLUMNS`` order with the raw key and value hex-encoded (``\\x...``).
    """
    ok = F.col("error_code").isNull()
    good = F.struct(
        *[F.col("r")[f.name].alias(f.name) for f in contract.fields],
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        # the record's own bytes, kept in case it turns out to be a duplicate (decided in Postgres)
        F.concat(F.lit("\\x"), F.hex("key")),
        F.concat(F.lit("\\x"), F.hex("value")),
    )
    reject = F.struct(
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        F.col("timestamp"),
        F.concat(F.lit("\\x"), F.hex("key")),
        F.concat(F.lit("\\x"), F.hex("value")),
        F.col("error_code"),
        F.col("reason"),
    )
    line = F.when(ok, F.to_csv(good, _CSV)).otherwise(F.to_csv(reject, _CSV))
    return decoded.select(ok.alias("ok"), "partition", "offset", line.alias("line"))


#: CSV as PostgreSQL's COPY reads it: quotes doubled, NULL unquoted and empty, ISO timestamps.
_CSV = {
    "escape": '"',
    "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
}
