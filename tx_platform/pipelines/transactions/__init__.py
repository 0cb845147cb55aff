"""The `transactions` pipeline: synthetic card transactions (the default pipeline)."""

from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources

from tx_platform.contract import (
    UUID_REGEX,
    between,
    country_codes,
    currency_codes,
    event_time_rules,
    matches,
    one_of,
    positive,
)
from tx_platform.pipelines._spec import PipelineSpec

_HERE = resources.files(__name__)

TRANSACTIONS = PipelineSpec(
    name="transactions",
    contract_path=_HERE / "transaction.avsc",
    topic="transactions",
    table="transactions",
    natural_key="transaction_id",
    kafka_key="account_id",
    time_column="event_time",
    rules=(
        matches("transaction_id", UUID_REGEX, "INVALID_UUID", "transaction_id is not a UUID", "TX-0001"),
        positive("amount", "NON_POSITIVE_AMOUNT", "amount must be positive", Decimal("0.00")),
        one_of("currency", currency_codes(), "UNKNOWN_CURRENCY", "currency is not an ISO 4217 code", "XQZ"),
        one_of("country", country_codes(), "UNKNOWN_COUNTRY", "country is not an ISO 3166-1 alpha-2 code", "QZ"),
        matches(
            "merchant_category",
            "[0-9]{4}",
            "INVALID_MERCHANT_CATEGORY",
            "merchant_category is not a 4-digit ISO 18245 code",
            "54A1",
        ),
        between("latitude", -90, 90, "INVALID_COORDINATES", "latitude out of range", 91.5),
        between("longitude", -180, 180, "INVALID_COORDINATES", "longitude out of range", -180.5),
        *event_time_rules("event_time", datetime(2024, 12, 31, 23, 59, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)),
    ),  # fmt: skip
    generator="tx_platform.pipelines.transactions._generator:generate",
    derived_assets="tx_platform.pipelines.transactions._assets:derived_assets",
    migrations=_HERE / "migrations",
    quarantine_asset="quarantine",
    description="Card transactions: Kafka key account_id, upserted on transaction_id.",
)

__all__ = ["TRANSACTIONS"]
