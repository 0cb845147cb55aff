"""Decode Kafka records against the contract and split them into good rows and rejects.

Spark-only expressions (no Python UDFs): the decoding runs in the JVM on every executor.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
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

_CORRUPT = "_corrupt_record"


def contract_struct(contract: Contract) -> StructType:
    """The Spark struct of the contract, derived from the .avsc (never hand-copied)."""
    struct = StructType.fromDDL(contract.spark_ddl())
    if not isinstance(struct, StructType):  # a one-field DDL parses to that field's type
        msg = "the contract's Spark DDL did not parse to a struct"
        raise ContractError(msg)
    return struct


def _rules(contract: Contract) -> list[tuple[Column, str, Column]]:
    """(violation condition, error code, reason) in check order; first match wins."""
    r = F.col("r")
    rules: list[tuple[Column, str, Column]] = [
        (F.col("value").isNull(), "NULL_VALUE", F.lit("record value is null (tombstone)")),
        (
            r.isNull() | r[_CORRUPT].isNotNull(),
            "MALFORMED_RECORD",
            F.lit("value is not a JSON object of the contract's field types"),
        ),
    ]
    for field in contract.fields:
        if not field.nullable:
            rules.append((r[field.name].isNull(), "MISSING_FIELD", F.lit(f"required field {field.name} is missing")))
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
    rules += [
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


def decode(records: DataFrame, contract: Contract) -> DataFrame:
    """Kafka rows -> one row per record with the parsed struct ``r`` and ``error_code``/``reason``.

    ``error_code`` is null for records that satisfy every rule.
    """
    schema = contract_struct(contract).add(_CORRUPT, "string")
    parsed = records.withColumn(
        "r",
        F.from_json(
            F.col("value").cast("string"),
            schema,
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT},
        ),
    )
    code: Column = F.lit(None).cast("string")
    reason: Column = F.lit(None).cast("string")
    for condition, error_code, why in reversed(_rules(contract)):
        # build the chain inside-out so the first rule in the list is checked first
        code = F.when(F.coalesce(condition, F.lit(False)), F.lit(error_code)).otherwise(code)
        reason = F.when(F.coalesce(condition, F.lit(False)), why).otherwise(reason)
    return parsed.withColumn("error_code", code).withColumn("reason", reason)


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
