"""Validation rules of the contract, as data: the sink turns them into Spark expressions.

Each rule has a stable error code (what the quarantine table and the DLQ headers carry).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

import pycountry

#: Error codes of records the sink rejects, in the order they are checked.
ERROR_CODES = (
    "NULL_VALUE",
    "NOT_WIRE_FORMAT",
    "UNKNOWN_SCHEMA_ID",
    "UNDECODABLE_AVRO",
    "INVALID_UTF8",
    "NUL_CHARACTER",
    "MISSING_FIELD",
    "INVALID_UUID",
    "INVALID_ENUM",
    "FIELD_TOO_LONG",
    "DECIMAL_OUT_OF_RANGE",
    "NON_POSITIVE_AMOUNT",
    "UNKNOWN_CURRENCY",
    "UNKNOWN_COUNTRY",
    "INVALID_MERCHANT_CATEGORY",
    "INVALID_COORDINATES",
    "EVENT_TIME_TOO_OLD",
    "EVENT_TIME_IN_FUTURE",
    "DUPLICATE_TRANSACTION_ID",
    # a safety net, never expected: Postgres refused a record that passed every rule above
    "WAREHOUSE_REJECTED",
)

#: Unanchored regular expressions; each engine anchors them with its own full-match syntax.
UUID_REGEX = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
MCC_REGEX = "[0-9]{4}"


def java_full_match(regex: str) -> str:
    r"""``regex`` anchored for Java (Spark's ``rlike``): ``\A...\z``.

    Java's ``$`` also matches before a final line terminator, so ``^[0-9]{4}$`` accepts ``"5411\n"``,
    which Postgres' CHECK then refuses; ``\z`` is the very end of the input.
    """
    return rf"\A(?:{regex})\z"


def python_full_match(regex: str) -> str:
    r"""``regex`` anchored for Python's ``re`` (Pandera): ``\A...\Z`` (Python's ``$`` has the same trap)."""
    return rf"\A(?:{regex})\Z"


#: Python forms of the patterns, for Pandera's ``str_matches``.
UUID_PATTERN = python_full_match(UUID_REGEX)
MCC_PATTERN = python_full_match(MCC_REGEX)
#: How far in the future an event time may be (clock skew between producers and the sink).
MAX_FUTURE_SECONDS = 300
#: The earliest event time accepted: the first daily partition of the derived tables. An older
#: record could never be summarised (and one before year 1 cannot even be written as a timestamp).
EARLIEST_EVENT_TIME = datetime(2025, 1, 1, tzinfo=UTC)


@cache
def currency_codes() -> frozenset[str]:
    """ISO 4217 alphabetic codes."""
    return frozenset(c.alpha_3 for c in pycountry.currencies)


@cache
def country_codes() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes."""
    return frozenset(c.alpha_2 for c in pycountry.countries)
