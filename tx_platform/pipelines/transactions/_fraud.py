"""Fraud scenarios: the rules' thresholds, the incidents the generator injects, their ground truth, the report.

Four scenarios, each a rule of the streaming detector (``spark_jobs/fraud``):

- ``velocity``: more than ``velocity_count`` transactions on one account within ``window_minutes``;
- ``amount_spike``: an amount (in USD) at least ``spike_factor`` times the account's running average
  and at least ``spike_min_usd``, once the account has ``spike_min_history`` earlier transactions;
- ``impossible_travel``: two card-present (POS/ATM) transactions of one card in different countries,
  at least ``travel_min_km`` apart, whose distance over time exceeds ``travel_speed_kmh``;
- ``card_testing``: at least ``card_testing_count`` e-commerce transactions of at most
  ``card_testing_max_usd`` on one card within ``window_minutes``.

The thresholds are configuration (:class:`FraudRules`, ``TXP_FRAUD_*`` variables). The generator
injects incidents from :func:`plan_incidents` (the same plan for the same arguments), the producer
marks their records with the header :data:`FRAUD_HEADER` and writes the plan to ``fraud_ground_truth``;
:func:`fraud_report` matches ``fraud_alerts`` to it.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tx_platform.contract import Record
from tx_platform.errors import ConfigError
from tx_platform.pipelines.transactions._catalog import COUNTRIES

#: The scenarios, in the order incidents cycle through them.
SCENARIOS = ("velocity", "amount_spike", "impossible_travel", "card_testing")
#: Kafka header of an injected record: ``<scenario>/<incident id>``.
FRAUD_HEADER = "txp-fraud-scenario"
#: Namespace of incident and alert ids (uuid5).
FRAUD_NAMESPACE = uuid.UUID("5b0f3c8e-9a41-4d7e-8c1a-6f2d0e4b7a10")
#: USD per unit of each currency (the generator's rates, inverted): rules compare amounts in USD.
USD_PER_UNIT = {c.currency: 1.0 / c.usd_rate for c in COUNTRIES}
_CENT = Decimal("0.01")


class FraudRules(BaseSettings):
    """Thresholds of the four rules; each is the environment variable ``TXP_FRAUD_<FIELD>``.

    The defaults are chosen so that the generator's background traffic never crosses them (see the
    README's fraud section: measured over 500,000 clean records) and injected incidents always do.
    """

    model_config = SettingsConfigDict(env_prefix="TXP_FRAUD_", frozen=True, extra="ignore")

    window_minutes: float = Field(10.0, gt=0, description="Window of the velocity and card-testing rules.")
    velocity_count: int = Field(15, ge=1, description="Velocity: alert when an account has MORE than this many.")
    spike_factor: float = Field(20.0, gt=1, description="Amount spike: times the account's running average (USD).")
    spike_min_usd: float = Field(50_000.0, ge=0, description="Amount spike: smallest amount (USD) that can alert.")
    spike_min_history: int = Field(5, ge=1, description="Amount spike: earlier transactions the average needs.")
    travel_speed_kmh: float = Field(1_000.0, gt=0, description="Impossible travel: speed above which it alerts.")
    travel_min_km: float = Field(500.0, ge=0, description="Impossible travel: shortest distance that can alert.")
    card_testing_count: int = Field(5, ge=2, description="Card testing: small e-commerce transactions that alert.")
    card_testing_max_usd: float = Field(2.0, gt=0, description="Card testing: largest amount (USD) counted.")
    state_ttl_hours: float = Field(24.0, gt=0, description="An account's state is dropped after this idle time.")

    @property
    def window(self) -> timedelta:
        """The velocity and card-testing window."""
        return timedelta(minutes=self.window_minutes)


def load_rules(**overrides: Any) -> FraudRules:  # noqa: ANN401
    """The thresholds from the environment (``TXP_FRAUD_*``), with ``overrides``."""
    return FraudRules(**overrides)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def alert_id(rule: str, transaction_ids: Iterable[str]) -> str:
    """The alert's id: uuid5 of the rule and its triggering transaction ids (sorted)."""
    return str(uuid.uuid5(FRAUD_NAMESPACE, rule + ":" + ",".join(sorted(transaction_ids))))


@dataclass(frozen=True)
class Incident:
    """One injected incident: its records and the transactions a matching alert must name."""

    incident_id: str
    scenario: str
    account_id: str
    card_id: str
    #: the transactions that are the fraud (the header goes on these)
    transaction_ids: tuple[str, ...]
    #: every record injected for it, the fraud and any history it needs (spike), in event-time order
    records: tuple[Record, ...]

    @property
    def header(self) -> bytes:
        """The value of :data:`FRAUD_HEADER` on its fraudulent records."""
        return f"{self.scenario}/{self.incident_id}".encode()


def incident_count(count: int, fraud_ratio: float) -> int:
    """Incidents injected into ``count`` records: ``round(count * fraud_ratio)``, at least 1 when the ratio is > 0."""
    if not 0 <= fraud_ratio <= 1:
        msg = f"fraud_ratio must be in [0, 1], not {fraud_ratio}"
        raise ConfigError(msg)
    if fraud_ratio == 0 or count == 0:
        return 0
    return max(1, round(count * fraud_ratio))


def plan_incidents(
    count: int,
    seed: int,
    start: datetime,
    span: timedelta,
    fraud_ratio: float,
    pools: Any,  # noqa: ANN401 - the generator's Pools (a cycle-free import)
    rules: FraudRules | None = None,
) -> list[Incident]:
    """The incidents :func:`generate` injects for these arguments (deterministic; scenarios in turn).

    Each incident has an account of its own (no two incidents share one) and sits at
    ``start + span * (k + 0.5) / n``. Records are built like background ones (real merchants,
    their currency and place) with a separate random stream, so the plan alone is cheap to recompute.
    """
    from tx_platform.pipelines.transactions._generator import _sites, _uuid4_text

    n = incident_count(count, fraud_ratio)
    if n == 0:
        return []
    rules = rules or load_rules()
    rng = random.Random(f"fraud-{seed}")  # noqa: S311 - reproducible synthetic data, not secrets
    by_account: dict[str, Any] = {}
    for card in pools.cards:
        by_account.setdefault(card.account_id, card)
    accounts = sorted(by_account)
    if n > len(accounts):
        msg = f"{n} incidents need {n} accounts; the pools have {len(accounts)} (lower the fraud ratio)"
        raise ConfigError(msg)
    chosen = rng.sample(accounts, n)
    sites = _sites(pools)
    start = start.astimezone(UTC)
    incidents = []
    for k, account in enumerate(chosen):
        scenario = SCENARIOS[k % len(SCENARIOS)]
        card = by_account[account]
        at = start + span * ((k + 0.5) / n)
        incident = str(uuid.uuid5(FRAUD_NAMESPACE, f"{seed}/{start.isoformat()}/{span}/{count}/{k}"))
        builder = _Builder(rng, card, sites, pools, _uuid4_text)
        records, fraud = builder.scenario(scenario, at, rules)
        records.sort(key=lambda r: r["event_time"])
        incidents.append(Incident(incident, scenario, account, card.card_id, tuple(fraud), tuple(records)))
    return incidents


class _Builder:
    """Builds one incident's records for one card."""

    def __init__(self, rng: random.Random, card: Any, sites: Any, pools: Any, uuid_text: Any) -> None:  # noqa: ANN401
        self.rng, self.card, self.sites, self.pools, self._uuid = rng, card, sites, pools, uuid_text

    def _merchant(self, country: str, ecom: bool) -> Any:  # noqa: ANN401 - a Merchant
        merchants = [
            m for m in self.pools.merchants_by_country[country]
            if (m.category.ecom_share > 0.5 if ecom else m.category.ecom_share < 0.5)
        ]  # fmt: skip
        return self.rng.choice(merchants or list(self.pools.merchants_by_country[country]))

    def record(self, merchant: Any, at: datetime, channel: str, usd: float | None = None) -> Record:  # noqa: ANN401
        site = self.sites[merchant.merchant_id]
        pricing = site.pricing
        if usd is None:
            amount = pricing.amount(self.rng.gauss)
        else:
            minor = pricing.minor_unit
            amount = max(Decimal(str(round(usd * pricing.usd_rate, 2))).quantize(minor), minor).quantize(_CENT)
        return {
            "transaction_id": self._uuid(self.rng.getrandbits(128)),
            "account_id": self.card.account_id,
            "customer_id": self.card.customer_id,
            "card_id": self.card.card_id,
            "merchant_id": merchant.merchant_id,
            "merchant_category": site.mcc,
            "amount": amount,
            "currency": site.currency,
            "channel": channel,
            "transaction_type": "PURCHASE",
            "country": site.country,
            "city": site.city,
            "latitude": site.latitude,
            "longitude": site.longitude,
            "event_time": at,
        }

    def scenario(self, scenario: str, at: datetime, rules: FraudRules) -> tuple[list[Record], list[str]]:
        """(every record, the fraudulent ones' ids) of one incident around ``at``."""
        home = self.card.home.country
        if scenario == "velocity":
            # more than the threshold, all at one shop at home, 20 s apart (well inside the window)
            shop = self._merchant(home, ecom=False)
            records = [
                self.record(shop, at + timedelta(seconds=20 * i), "POS") for i in range(rules.velocity_count + 3)
            ]
            return records, [r["transaction_id"] for r in records]
        if scenario == "amount_spike":
            # a history the average needs (over the hour before), then one amount far above any average
            history = [
                self.record(self._merchant(home, ecom=False), at - timedelta(minutes=10 * (i + 1)), "POS")
                for i in range(rules.spike_min_history + 1)
            ]
            spike_usd = max(rules.spike_min_usd * 5, 500_000.0)
            spike = self.record(self._merchant(home, ecom=False), at, "POS", usd=spike_usd)
            return [*history, spike], [spike["transaction_id"]]
        if scenario == "impossible_travel":
            first = self._merchant(home, ecom=False)
            far = max(
                (c.code for c in COUNTRIES if c.code != home),
                key=lambda code: haversine_km(first.place.latitude, first.place.longitude,
                                              *_centre(self.pools, code)),
            )  # fmt: skip
            second = self._merchant(far, ecom=False)
            records = [self.record(first, at, "POS"), self.record(second, at + timedelta(minutes=20), "POS")]
            return records, [r["transaction_id"] for r in records]
        if scenario == "card_testing":
            shop = self._merchant(home, ecom=True)
            records = [
                self.record(shop, at + timedelta(seconds=15 * i), "ECOM", usd=0.5 + self.rng.random())
                for i in range(rules.card_testing_count + 1)
            ]
            return records, [r["transaction_id"] for r in records]
        msg = f"unknown fraud scenario {scenario!r}"
        raise ConfigError(msg)


def _centre(pools: Any, country: str) -> tuple[float, float]:  # noqa: ANN401
    first = pools.merchants_by_country[country][0].place
    return first.latitude, first.longitude


def record_headers(incidents: Iterable[Incident]) -> dict[str, list[tuple[str, str | bytes | None]]]:
    """The :data:`FRAUD_HEADER` of every fraudulent record of ``incidents``, by transaction id."""
    return {tx: [(FRAUD_HEADER, i.header)] for i in incidents for tx in i.transaction_ids}


def scenario_options(
    spec: Any,  # noqa: ANN401 - PipelineSpec
    producer: Any,  # noqa: ANN401 - RecordProducer
    count: int,
    seed: int,
    start: datetime,
    span: timedelta,
    fraud_ratio: float,
    late_ratio: float,
    max_lateness_minutes: float,
) -> dict[str, Any]:
    """``txp produce``'s generator options for fraud and late data; tells ``producer`` the incidents' headers."""
    from tx_platform.pipelines.transactions._generator import build_pools

    if spec.name != "transactions":
        msg = f"--fraud-ratio and --late-ratio are options of the transactions pipeline, not {spec.name!r}"
        raise ConfigError(msg)
    pools = build_pools(seed)
    producer.record_headers = record_headers(plan_incidents(count, seed, start, span, fraud_ratio, pools))
    return {
        "pools": pools,
        "fraud_ratio": fraud_ratio,
        "late_ratio": late_ratio,
        "max_lateness": timedelta(minutes=max_lateness_minutes),
    }


def record_ground_truth(
    dsn: str,
    topic: str,
    count: int,
    seed: int,
    start: datetime,
    span: timedelta,
    options: dict[str, Any],
) -> str:
    """Write the incidents ``generate(count, seed, start, span, **options)`` injected to ``fraud_ground_truth``.

    Called by ``txp produce`` once every record was delivered; the DSN is the pipeline's
    (``TXP_POSTGRES_DSN``). Returns a line saying what it wrote.
    """
    from tx_platform.warehouse import connect

    incidents = plan_incidents(count, seed, start, span, options["fraud_ratio"], options["pools"])
    conn = connect(dsn)
    try:
        new = write_ground_truth(conn, topic, seed, incidents)
    finally:
        conn.close()
    per = {s: sum(1 for i in incidents if i.scenario == s) for s in SCENARIOS}
    return f"fraud ground truth: {len(incidents)} incidents ({new} new) {per} → fraud_ground_truth"


#: Incidents per record ``make demo`` injects into its transactions (20 in the default 10,000 records).
DEMO_FRAUD_RATIO = 0.002


def demo_generate_options(
    spec: Any,  # noqa: ANN401 - PipelineSpec
    producer: Any,  # noqa: ANN401 - RecordProducer
    count: int,
    seed: int,
    start: datetime,
    span: timedelta,
) -> dict[str, Any]:
    """The demo's generator options for ``spec``: fraud incidents for ``transactions`` (headers on), none for others."""
    if spec.name != "transactions":
        return {}
    return scenario_options(spec, producer, count, seed, start, span, DEMO_FRAUD_RATIO, 0.0, 0.0)


def demo_summary(context: Any) -> dict[str, Any]:  # noqa: ANN401 - tx_platform.demo.DemoContext
    """``make demo``'s fraud figures (its SUMMARY_PROVIDERS hook): ground truth recorded, then :func:`fraud_report`.

    The fraud query ran in the sink job (``warehouse/fraud_alerts`` follows the sink); ``ok`` is the report's
    ``passed`` (recall 100%, precision >= 99%) over the demo's topic.
    """
    from tx_platform.pipelines.transactions._generator import build_pools
    from tx_platform.warehouse import connect

    spec = context.specs.get("transactions")
    if spec is None:
        return {"ok": True, "skipped": "the transactions pipeline did not run"}
    start, end = context.windows["transactions"]
    count = context.counts["transactions"]
    incidents = plan_incidents(count, context.seed, start, end - start, DEMO_FRAUD_RATIO, build_pools(context.seed))
    conn = connect(context.settings.dsn())
    try:
        write_ground_truth(conn, spec.topic, context.seed, incidents)
        report = fraud_report(conn, topic=spec.topic)
    finally:
        conn.close()
    return {**report, "ok": bool(report["passed"])}


# -- ground truth --------------------------------------------------------------------------------
def write_ground_truth(conn: Any, topic: str, seed: int, incidents: Sequence[Incident]) -> int:  # noqa: ANN401
    """Record ``incidents`` in ``fraud_ground_truth`` (idempotent on the incident id); commits; returns rows new."""
    rows = [
        (
            i.incident_id, i.scenario, topic, seed, i.account_id, i.card_id, list(i.transaction_ids),
            min(r["event_time"] for r in i.records if r["transaction_id"] in i.transaction_ids),
            max(r["event_time"] for r in i.records if r["transaction_id"] in i.transaction_ids),
        )
        for i in incidents
    ]  # fmt: skip
    inserted = 0
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(
                "INSERT INTO fraud_ground_truth (incident_id, scenario, topic, seed, account_id, card_id, "
                "transaction_ids, first_event, last_event) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (incident_id) DO NOTHING",
                row,
            )
            inserted += cur.rowcount
    conn.commit()
    return inserted


# -- report --------------------------------------------------------------------------------------
#: Recall and precision the report requires.
REQUIRED_RECALL = 1.0
REQUIRED_PRECISION = 0.99


def fraud_report(
    conn: Any,  # noqa: ANN401 - a psycopg2 connection
    topic: str | None = None,
    seed: int | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Per-scenario injected/detected, recall and precision of ``fraud_alerts`` against ``fraud_ground_truth``.

    An incident is detected when an alert of its scenario names one of its transactions; an alert
    is a true positive when it names a transaction of an incident of its own scenario. ``topic``,
    ``seed`` and ``since`` (incidents produced, alerts detected, at or after) narrow both sides;
    alerts are narrowed to the topic's. ``passed`` is recall = 100% and precision >= 99%.
    """
    truth_where: list[str] = ["TRUE"]
    truth_args: list[Any] = []
    alert_where: list[str] = ["TRUE"]
    alert_args: list[Any] = []
    if topic is not None:
        truth_where.append("topic = %s")
        truth_args.append(topic)
        alert_where.append("topic = %s")
        alert_args.append(topic)
    if seed is not None:
        truth_where.append("seed = %s")
        truth_args.append(seed)
    if since is not None:
        truth_where.append("produced_at >= %s")
        truth_args.append(since)
        alert_where.append("detected_at >= %s")
        alert_args.append(since)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT incident_id, scenario, transaction_ids FROM fraud_ground_truth WHERE {' AND '.join(truth_where)}",  # noqa: S608 - fixed fragments
            truth_args,
        )
        incidents = cur.fetchall()
        cur.execute(
            f"SELECT alert_id, rule, transaction_ids FROM fraud_alerts WHERE {' AND '.join(alert_where)}",  # noqa: S608 - fixed fragments
            alert_args,
        )
        alerts = cur.fetchall()
    conn.rollback()
    return score(incidents, alerts)


def score(
    incidents: Iterable[tuple[str, str, Sequence[str]]], alerts: Iterable[tuple[str, str, Sequence[str]]]
) -> dict[str, Any]:
    """The report of :func:`fraud_report` from ``(incident id, scenario, tx ids)`` and ``(alert id, rule, tx ids)``."""
    owner: dict[tuple[str, str], str] = {}  # (scenario, transaction id) -> incident id
    injected: dict[str, int] = dict.fromkeys(SCENARIOS, 0)
    for incident_id, scenario, tx_ids in incidents:
        injected[scenario] = injected.get(scenario, 0) + 1
        for tx in tx_ids:
            owner[(scenario, tx)] = incident_id
    detected_ids: set[str] = set()
    alerts_by_rule: dict[str, int] = dict.fromkeys(SCENARIOS, 0)
    true_by_rule: dict[str, int] = dict.fromkeys(SCENARIOS, 0)
    false_alerts: list[str] = []
    for alert, rule, tx_ids in alerts:
        alerts_by_rule[rule] = alerts_by_rule.get(rule, 0) + 1
        matched = {owner[(rule, tx)] for tx in tx_ids if (rule, tx) in owner}
        if matched:
            true_by_rule[rule] = true_by_rule.get(rule, 0) + 1
            detected_ids |= matched
        else:
            false_alerts.append(alert)
    detected_by: dict[str, int] = dict.fromkeys(injected, 0)
    for incident_id, scenario, _tx in incidents:
        if incident_id in detected_ids:
            detected_by[scenario] += 1
    scenarios = {
        s: {
            "injected": injected[s],
            "detected": detected_by.get(s, 0),
            "alerts": alerts_by_rule.get(s, 0),
            "true_alerts": true_by_rule.get(s, 0),
        }
        for s in injected
    }
    total_injected = sum(injected.values())
    total_alerts = sum(alerts_by_rule.values())
    recall = 1.0 if total_injected == 0 else sum(detected_by.values()) / total_injected
    precision = 1.0 if total_alerts == 0 else sum(true_by_rule.values()) / total_alerts
    return {
        "scenarios": scenarios,
        "injected": total_injected,
        "detected": sum(detected_by.values()),
        "alerts": total_alerts,
        "false_alerts": sorted(false_alerts)[:20],
        "recall": round(recall, 6),
        "precision": round(precision, 6),
        "passed": recall >= REQUIRED_RECALL and precision >= REQUIRED_PRECISION,
    }
