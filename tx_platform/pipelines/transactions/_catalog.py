"""Reference data for the generator: countries with currencies, merchant categories with amounts."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Country:
    """A country customers live in and merchants trade in."""

    code: str  # ISO 3166-1 alpha-2
    currency: str  # ISO 4217
    locale: str  # Faker locale for names
    usd_rate: float  # units of `currency` per USD, to scale amounts
    minor_unit: Decimal  # smallest amount step: 0.01, or 1 for JPY
    weight: float  # share of customers


COUNTRIES: tuple[Country, ...] = (
    Country("US", "USD", "en_US", 1.0, Decimal("0.01"), 30),
    Country("GB", "GBP", "en_GB", 0.79, Decimal("0.01"), 10),
    Country("DE", "EUR", "de_DE", 0.92, Decimal("0.01"), 10),
    Country("FR", "EUR", "fr_FR", 0.92, Decimal("0.01"), 8),
    Country("ES", "EUR", "es_ES", 0.92, Decimal("0.01"), 5),
    Country("IT", "EUR", "it_IT", 0.92, Decimal("0.01"), 5),
    Country("NL", "EUR", "nl_NL", 0.92, Decimal("0.01"), 3),
    Country("CH", "CHF", "de_CH", 0.88, Decimal("0.01"), 2),
    Country("SE", "SEK", "sv_SE", 10.5, Decimal("0.01"), 2),
    Country("CA", "CAD", "en_CA", 1.36, Decimal("0.01"), 6),
    Country("MX", "MXN", "es_MX", 17.0, Decimal("0.01"), 4),
    Country("BR", "BRL", "pt_BR", 5.0, Decimal("0.01"), 5),
    Country("JP", "JPY", "ja_JP", 150.0, Decimal("1"), 4),
    Country("AU", "AUD", "en_AU", 1.52, Decimal("0.01"), 3),
    Country("IN", "INR", "en_IN", 83.0, Decimal("0.01"), 3),
)

COUNTRY_BY_CODE = {c.code: c for c in COUNTRIES}


@dataclass(frozen=True)
class Category:
    """An ISO 18245 merchant category with a log-normal amount in USD."""

    mcc: str
    label: str
    median_usd: float
    sigma: float
    ecom_share: float  # probability a purchase here is card-not-present
    weight: float  # share of merchants (and so of purchases)


CATEGORIES: tuple[Category, ...] = (
    Category("5411", "Grocery stores, supermarkets", 45.0, 0.7, 0.10, 18),
    Category("5812", "Eating places, restaurants", 35.0, 0.6, 0.05, 14),
    Category("5814", "Fast food restaurants", 12.0, 0.5, 0.15, 10),
    Category("5541", "Service stations", 40.0, 0.5, 0.0, 8),
    Category("5912", "Drug stores, pharmacies", 25.0, 0.7, 0.20, 6),
    Category("5311", "Department stores", 80.0, 0.8, 0.35, 5),
    Category("5691", "Clothing stores", 70.0, 0.7, 0.50, 6),
    Category("5732", "Electronics stores", 250.0, 0.9, 0.60, 3),
    Category("5942", "Book stores", 20.0, 0.6, 0.60, 2),
    Category("5999", "Miscellaneous retail", 40.0, 0.9, 0.40, 5),
    Category("5816", "Digital goods: games", 10.0, 0.8, 1.0, 4),
    Category("4121", "Taxicabs, limousines", 22.0, 0.6, 0.70, 5),
    Category("4511", "Airlines", 420.0, 0.6, 0.95, 2),
    Category("7011", "Hotels, motels, resorts", 180.0, 0.6, 0.70, 3),
    Category("4814", "Telecommunication services", 55.0, 0.4, 0.90, 3),
)

#: Categories used for non-purchase channels.
ATM_MCC = Category("6011", "Automated cash disbursements", 120.0, 0.6, 0.0, 0)
TRANSFER_MCC = Category("4829", "Wire transfer, money orders", 300.0, 1.0, 1.0, 0)

#: Relative volume per UTC hour of day: quiet at night, peaks at lunch and early evening.
HOURLY_PROFILE: tuple[float, ...] = (
    0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.60, 0.85, 0.95, 1.00, 1.10,
    1.30, 1.25, 1.05, 1.00, 1.05, 1.20, 1.35, 1.30, 1.10, 0.85, 0.60, 0.40,
)  # fmt: skip
