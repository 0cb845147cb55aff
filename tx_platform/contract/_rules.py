"""Validation rules as data: declared once in a pipeline's spec, compiled for each engine.

A :class:`Rule` names a field, a kind, an argument, an error code and a reason. The sink compiles
it to a Spark column expression (``spark_jobs.sink._rules``), the asset checks to a Pandera check
(``tx_platform.checks``) and the warehouse to a SQL ``CHECK`` (``tx_platform.warehouse``); no
engine names a field itself. Rules that follow from the contract's types alone (wire format,
decoding, UTF-8, enums, decimal ranges, empty required text) are the same for every pipeline and
are listed in :data:`CONTRACT_ERROR_CODES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any

import pycountry

from tx_platform.errors import ContractError

#: Error codes every pipeline can give, from the record's bytes and the contract's types, in the
#: order they are checked (before the pipeline's own rules).
CONTRACT_ERROR_CODES = (
    "NULL_VALUE",
    "NOT_WIRE_FORMAT",
    "UNKNOWN_SCHEMA_ID",
    "UNDECODABLE_AVRO",
    "INVALID_UTF8",
    "NUL_CHARACTER",
    "MISSING_FIELD",
    "INVALID_ENUM",
    "FIELD_TOO_LONG",
    "DECIMAL_OUT_OF_RANGE",
)
#: A safety net, never expected: Postgres refused a record that passed every rule.
WAREHOUSE_REJECTED = "WAREHOUSE_REJECTED"

#: Unanchored regular expressions; each engine anchors them with its own full-match syntax.
UUID_REGEX = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: How far in the future an event time may be (clock skew between producers and the sink).
MAX_FUTURE_SECONDS = 300
#: The earliest event time accepted: the first daily partition of the derived tables. An older
#: record could never be summarised (and one before year 1 cannot even be written as a timestamp).
EARLIEST_EVENT_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def java_full_match(regex: str) -> str:
    r"""``regex`` anchored for Java (Spark's ``rlike``): ``\A...\z``.

    Java's ``$`` also matches before a final line terminator, so ``^[0-9]{4}$`` accepts ``"5411\n"``,
    which Postgres' CHECK then refuses; ``\z`` is the very end of the input.
    """
    return rf"\A(?:{regex})\z"


def python_full_match(regex: str) -> str:
    r"""``regex`` anchored for Python's ``re`` (Pandera): ``\A...\Z`` (Python's ``$`` has the same trap)."""
    return rf"\A(?:{regex})\Z"


def postgres_full_match(regex: str) -> str:
    r"""``regex`` anchored for PostgreSQL's ``~``: ``^...$`` (outside newline-sensitive mode, ``$`` is the end)."""
    return f"^(?:{regex})$"


class RuleKind(StrEnum):
    """What a rule asks of its field(s); each engine compiles every kind."""

    MATCHES = "matches"  # text fully matches ``arg`` (an unanchored regex)
    ONE_OF = "one_of"  # value is in ``arg`` (a frozenset)
    POSITIVE = "positive"  # number > 0
    BETWEEN = "between"  # low <= number <= high, ``arg`` = (low, high); NaN violates
    NOT_BEFORE = "not_before"  # timestamp >= ``arg`` (an aware datetime)
    NOT_IN_FUTURE = "not_in_future"  # timestamp <= now + ``arg`` seconds (checked when the record arrives)


@dataclass(frozen=True)
class Rule:
    """One validation rule: ``field`` must satisfy ``kind(arg)``, else the record gets ``code``.

    ``reason`` starts the quarantine reason; engines append the offending value where it helps.
    ``bad_example`` is a value that violates the rule: the bad-input corpus makes a faulty record
    of every rule from it, so each rule is exercised end to end.
    """

    field: str
    kind: RuleKind
    code: str
    reason: str
    arg: Any = None
    bad_example: Any = None

    def __post_init__(self) -> None:
        if not self.code.isupper() or not self.code.replace("_", "").isalnum():
            msg = f"rule on {self.field}: error code {self.code!r} must be UPPER_SNAKE_CASE"
            raise ContractError(msg)
        if self.kind is RuleKind.BETWEEN and (not isinstance(self.arg, tuple) or len(self.arg) != 2):
            msg = f"rule {self.code}: between needs (low, high)"
            raise ContractError(msg)
        if self.kind is RuleKind.NOT_BEFORE and (not isinstance(self.arg, datetime) or self.arg.tzinfo is None):
            msg = f"rule {self.code}: not_before needs a timezone-aware datetime"
            raise ContractError(msg)

    @property
    def persistent(self) -> bool:
        """Whether the rule holds for ever once it held (so a table constraint can enforce it).

        ``NOT_IN_FUTURE`` depends on the clock when the record arrives: no stored row ever breaks it again.
        """
        return self.kind is not RuleKind.NOT_IN_FUTURE

    def check(self, value: Any, now: datetime | None = None) -> bool:  # noqa: ANN401 - any field value
        """Plain-Python reference semantics: True when ``value`` satisfies the rule (None never does)."""
        if value is None:
            return False
        match self.kind:
            case RuleKind.MATCHES:
                import re

                return isinstance(value, str) and re.fullmatch(self.arg, value) is not None
            case RuleKind.ONE_OF:
                return value in self.arg
            case RuleKind.POSITIVE:
                return value > 0
            case RuleKind.BETWEEN:
                low, high = self.arg
                return bool(low <= value <= high)  # NaN compares false both ways
            case RuleKind.NOT_BEFORE:
                return bool(value >= self.arg)
            case RuleKind.NOT_IN_FUTURE:
                limit = (now or datetime.now(UTC)).timestamp() + float(self.arg)
                return bool(value.timestamp() <= limit)
        msg = f"unknown rule kind {self.kind!r}"
        raise ContractError(msg)


def matches(field: str, regex: str, code: str, reason: str, bad_example: str) -> Rule:
    """``field`` (text) fully matches ``regex``."""
    return Rule(field, RuleKind.MATCHES, code, reason, regex, bad_example)


def one_of(field: str, values: Iterable[Any], code: str, reason: str, bad_example: Any) -> Rule:  # noqa: ANN401
    """``field`` is one of ``values``."""
    return Rule(field, RuleKind.ONE_OF, code, reason, frozenset(values), bad_example)


def positive(field: str, code: str, reason: str, bad_example: Any) -> Rule:  # noqa: ANN401 - a number
    """``field`` > 0."""
    return Rule(field, RuleKind.POSITIVE, code, reason, None, bad_example)


def between(field: str, low: float, high: float, code: str, reason: str, bad_example: float) -> Rule:
    """``low`` <= ``field`` <= ``high`` (NaN violates)."""
    return Rule(field, RuleKind.BETWEEN, code, reason, (low, high), bad_example)


def not_before(field: str, earliest: datetime, code: str, reason: str, bad_example: datetime) -> Rule:
    """``field`` (a timestamp) is at or after ``earliest``."""
    return Rule(field, RuleKind.NOT_BEFORE, code, reason, earliest, bad_example)


def not_in_future(field: str, seconds: float, code: str, reason: str, bad_example: datetime) -> Rule:
    """``field`` (a timestamp) is at most ``seconds`` ahead of the clock when the record arrives."""
    return Rule(field, RuleKind.NOT_IN_FUTURE, code, reason, seconds, bad_example)


def event_time_rules(field: str, bad_old: datetime, bad_future: datetime) -> tuple[Rule, Rule]:
    """The two time rules every event stream has: not before the first partition, not in the future."""
    return (
        not_before(field, EARLIEST_EVENT_TIME, "EVENT_TIME_TOO_OLD",
                   f"{field} before {EARLIEST_EVENT_TIME:%Y-%m-%d}, the first daily partition", bad_old),
        not_in_future(field, MAX_FUTURE_SECONDS, "EVENT_TIME_IN_FUTURE",
                      f"{field} more than {MAX_FUTURE_SECONDS} s in the future", bad_future),
    )  # fmt: skip


@cache
def currency_codes() -> frozenset[str]:
    """ISO 4217 alphabetic codes."""
    return frozenset(c.alpha_3 for c in pycountry.currencies)


@cache
def country_codes() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes."""
    return frozenset(c.alpha_2 for c in pycountry.countries)
