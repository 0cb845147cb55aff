"""Rules as data, compiled to Spark: a pipeline's :class:`~tx_platform.contract.Rule` -> a column condition.

Only Spark SQL expressions (no Python UDFs): validation runs in the JVM, on the executors.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from tx_platform.contract import Rule, RuleKind, java_full_match
from tx_platform.errors import ContractError

#: Characters of an offending value quoted in a reason (a reason must stay readable and small).
REASON_VALUE_CHARS = 64


def quoted(value: Column) -> Column:
    """A value for a reason: at most REASON_VALUE_CHARS characters, with an ellipsis when cut."""
    text = value.cast("string")
    cut = F.concat(F.substring(text, 1, REASON_VALUE_CHARS), F.lit("…"))
    return F.when(F.length(text) > REASON_VALUE_CHARS, cut).otherwise(text)


def violation(rule: Rule, value: Column) -> Column:
    """True where ``value`` breaks ``rule`` (null where the value is null: the caller treats that as no)."""
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
            return value > F.timestamp_millis(_clock_millis() + F.lit(int(rule.arg) * 1000))
    msg = f"rule {rule.code}: kind {rule.kind!r} has no Spark form"
    raise ContractError(msg)


def _clock_millis() -> Column:
    """The clock, read as the row is checked (milliseconds since the epoch).

    Not ``current_timestamp()``: Spark folds that into a literal when it plans each micro-batch,
    and a literal timestamp is written into the generated code, so every batch compiled its whole
    decode stage again (about half a second) and the JIT never kept a compiled copy of it. A
    method call stays the same code from batch to batch.
    """
    return F.expr("java_method('java.lang.System', 'currentTimeMillis')").cast("long")


def compile_rule(rule: Rule, record: Column) -> tuple[Column, str, Column]:
    """``(violated, error code, reason)`` of ``rule`` on the decoded struct ``record``."""
    value = record[rule.field]
    return violation(rule, value), rule.code, F.concat(F.lit(f"{rule.reason}: "), quoted(value))
