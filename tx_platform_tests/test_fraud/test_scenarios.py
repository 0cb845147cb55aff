"""Fraud scenarios and late data in the generator, and the rules over whole seeded streams (no services)."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta

import pytest

from spark_jobs.fraud import AccountState, Detector, Tx
from tx_platform.errors import ConfigError
from tx_platform.pipelines.transactions._fraud import (
    FRAUD_HEADER,
    SCENARIOS,
    FraudRules,
    alert_id,
    load_rules,
    plan_incidents,
    record_headers,
    score,
)
from tx_platform.pipelines.transactions._generator import build_pools, generate

START = datetime(2026, 3, 2, tzinfo=UTC)
LATENESS_MS = 600_000


def _detect(records: list[dict], rules: FraudRules | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every alert of the rules over ``records`` in stream order, one account state each."""
    detector = Detector(rules or load_rules(), LATENESS_MS)
    states: dict[str, AccountState] = collections.defaultdict(AccountState)
    alerts = []
    for record in records:
        for alert in detector.process(states[record["account_id"]], [Tx.of(record)]):
            alerts.append((alert.alert_id, alert.rule, alert.transaction_ids))
    return alerts


def test_without_fraud_or_lateness_the_records_are_unchanged() -> None:
    explicit = list(generate(3_000, 7, START, span=timedelta(hours=3), fraud_ratio=0.0, late_ratio=0.0))
    assert explicit == list(generate(3_000, 7, START, span=timedelta(hours=3)))


def test_incidents_are_planned_deterministically_scenarios_in_turn() -> None:
    pools = build_pools(11)
    plan = plan_incidents(40_000, 11, START, timedelta(hours=6), 0.0005, pools)
    again = plan_incidents(40_000, 11, START, timedelta(hours=6), 0.0005, pools)
    assert [i.incident_id for i in plan] == [i.incident_id for i in again]
    assert len(plan) == 20
    assert collections.Counter(i.scenario for i in plan) == dict.fromkeys(SCENARIOS, 5)
    assert len({i.account_id for i in plan}) == 20  # an account of its own each
    records = list(generate(40_000, 11, START, span=timedelta(hours=6), fraud_ratio=0.0005, pools=pools))
    assert len(records) == 40_000
    ids = {r["transaction_id"] for r in records}
    assert len(ids) == 40_000
    assert all(set(i.transaction_ids) <= ids for i in plan)
    headers = record_headers(plan)
    assert sum(len(i.transaction_ids) for i in plan) == len(headers)
    velocity = next(i for i in plan if i.scenario == "velocity")
    assert headers[velocity.transaction_ids[0]] == [(FRAUD_HEADER, f"velocity/{velocity.incident_id}".encode())]


def test_every_incident_is_detected_and_nothing_else() -> None:
    """Recall 100% and precision 100% over a seeded stream with every scenario, incident by incident."""
    pools = build_pools(5)
    count, span, ratio = 60_000, timedelta(hours=12), 0.0004
    plan = plan_incidents(count, 5, START, span, ratio, pools)
    alerts = _detect(list(generate(count, 5, START, span=span, fraud_ratio=ratio, pools=pools)))
    by_incident = collections.defaultdict(list)
    for alert, rule, tx_ids in alerts:
        owners = {i.incident_id for i in plan if i.scenario == rule and set(tx_ids) & set(i.transaction_ids)}
        assert len(owners) == 1, (alert, rule, tx_ids)  # every alert names exactly one incident of its rule
        by_incident[owners.pop()].append(alert)
    # each incident has exactly one alert; a spike's names exactly its transaction
    assert sorted(by_incident) == sorted(i.incident_id for i in plan)
    assert all(len(found) == 1 for found in by_incident.values())
    spikes = {i.incident_id: alert_id("amount_spike", i.transaction_ids) for i in plan if i.scenario == "amount_spike"}
    assert {k: by_incident[k][0] for k in spikes} == spikes
    report = score([(i.incident_id, i.scenario, i.transaction_ids) for i in plan], alerts)
    assert report["injected"] == report["detected"] == report["alerts"] == 24
    assert report["recall"] == 1.0 and report["precision"] == 1.0 and report["passed"]
    assert {s: v["detected"] for s, v in report["scenarios"].items()} == dict.fromkeys(SCENARIOS, 6)


def test_clean_traffic_raises_no_alert() -> None:
    """200,000 background records (a card present only at home): not one rule fires."""
    records = generate(200_000, 3, START, span=timedelta(hours=24), coherent_travel=True)
    assert _detect(list(records)) == []


def test_the_historical_stream_teleports_cards_abroad() -> None:
    """Without coherent travel a card pays in person in random countries minutes apart: travel alerts only."""
    alerts = _detect(list(generate(20_000, 3, START, span=timedelta(hours=24))))
    assert alerts
    assert {rule for _, rule, _ in alerts} == {"impossible_travel"}


def test_late_records_are_held_back_out_of_order() -> None:
    span, lateness = timedelta(hours=2), timedelta(minutes=20)
    on_time = list(generate(5_000, 9, START, span=span, coherent_travel=True))
    late = list(generate(5_000, 9, START, span=span, coherent_travel=True, late_ratio=0.1, max_lateness=lateness))
    assert sorted(late, key=lambda r: r["transaction_id"]) == sorted(on_time, key=lambda r: r["transaction_id"])
    behind = []
    newest = START
    for record in late:
        newest = max(newest, record["event_time"])
        behind.append(newest - record["event_time"])
    delayed = [b for b in behind if b > timedelta(0)]
    assert 400 <= len(delayed) <= 600  # ~10% of 5,000 (a delay can be shorter than the gap to the next record)
    assert max(behind) <= lateness
    assert max(behind) > lateness * 0.9


def test_a_late_record_is_counted_in_its_window() -> None:
    """A burst's missing transaction arriving after later ones still completes its 10-minute window."""
    rules = load_rules()
    burst = [
        {"transaction_id": f"t{i:02d}", "card_id": "K1", "event_time": START + timedelta(seconds=30 * i),
         "amount": 10, "currency": "USD", "channel": "POS", "country": "US", "latitude": 40.0, "longitude": -74.0}
        for i in range(rules.velocity_count + 1)
    ]  # fmt: skip
    detector = Detector(rules, LATENESS_MS)
    state = AccountState()
    first = burst[:3] + burst[4:]  # t03 is late
    assert detector.process(state, [Tx.of(r) for r in first]) == []
    alerts = detector.process(state, [Tx.of(burst[3])])
    assert [(a.rule, a.transaction_ids) for a in alerts] == [("velocity", tuple(r["transaction_id"] for r in burst))]


def test_rules_are_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXP_FRAUD_VELOCITY_COUNT", "3")
    assert load_rules().velocity_count == 3
    with pytest.raises(ConfigError):
        list(generate(10, 1, START, fraud_ratio=0.5))
