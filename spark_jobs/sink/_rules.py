"""Rules as data, compiled to Spark: a pipeline's :class:`~tx_platform.contract.Rule` -> a column condition.

Only Spark SQL expressions (no Python UDFs): validation runs in the JVM, on the executors.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tx_platform.contract import Rule, RuleKind, java_full_match
from tx_platform.errors import ContractError

#: Characters of an offending value quoted in a reason (a reason must stay readable and small).
REASON_VALUE_CHARS = 64

#: The clock as each record is checked (milliseconds since the epoch): the column the ``NOT_IN_FUTURE``
#: rules compare against, added by :func:`with_clock` before the rules run.
CLOCK_COLUMN = "_clock_ms"


def quoted(value: Column) -> Column:
    """A value for a reason: at most REASON_VALUE_CHARS characters, with an ellipsis when cut."""
    text = value.cast("string")
    cut = F.concat(F.substring(text, 1, REASON_VALUE_CHARS), F.lit("…"))
    return F.when(F.length(text) > REASON_VALUE_CHARS, cut).otherwise(text)


def violation(rule: Rule, value: Column) -> Column:
    """True where ``value`` breaks ``rule`` (null where the value is null: the caller treats that as no).

    A ``NOT_IN_FUTURE`` rule reads the clock from :data:`CLOCK_COLUMN` (see :func:`with_clock`)."""
    match rule.kind:
        case RuleKind.MATCHES:
            return ~value.rlike(java_full_match(rule.arg))
        case RuleKind.ONE_OF:
            return ~value.isin(*sorted(rule.arg))
        case RuleKind.POSITIVE:
            return value <= 0
        case RuleKind.BETWEEN:
            low, high = rule.arg
            # Spark orders NaN above every number, but say it outright rather than rely on that
            return (value < F.lit(low)) | (value > F.lit(high)) | F.isnan(value)
        case RuleKind.NOT_BEFORE:
            return value < F.lit(rule.arg)
        case RuleKind.NOT_IN_FUTURE:
            return value > F.timestamp_millis(F.col(CLOCK_COLUMN) + F.lit(int(rule.arg) * 1000))
    msg = f"rule {rule.code}: kind {rule.kind!r} has no Spark form"
    raise ContractError(msg)


def with_clock(frame: DataFrame) -> DataFrame:
    """``frame`` with :data:`CLOCK_COLUMN`, the clock read as each row is checked.

    Not ``current_timestamp()``: Spark folds that into a literal when it plans each micro-batch,
    and a literal timestamp is written into the generated code, so every batch compiled its whole
    decode stage again (about half a second) and the JIT never kept a compiled copy of it. A
    method call stays the same code from batch to batch.

    In a projection of its own: ``java_method`` has no generated code, and Spark leaves a projection
    holding such an expression out of whole-stage code generation. Inside the rules' projection it cut
    the decode stage in three, and each record's decoded struct was copied into a row and out again
    twice (a fifth of the sink's JVM time). Alone, it costs one row copy of the Kafka record.
    """
    return frame.withColumn(CLOCK_COLUMN, F.expr("java_method('java.lang.System', 'currentTimeMillis')").cast("long"))


def compile_rule(rule: Rule, record: Column) -> tuple[Column, str, Column]:
    """``(violated, error code, reason)`` of ``rule`` on the decoded struct ``record``."""
    value = record[rule.field]
    return violation(rule, value), rule.code, F.concat(F.lit(f"{rule.reason}: "), quoted(value))
