"""The four fraud rules over one account's transactions, with the account's state between calls.

Pure Python (no Spark): the streaming query calls :meth:`Detector.process` from its state function
(``applyInPandasWithState``, grouped by account), and tests run it over whole seeded streams.

Transactions may arrive out of order (within the watermark's allowed lateness): the state keeps the
account's recent transactions sorted by event time, and a late one is counted in the windows it
belongs to. An alert is raised once: a transaction already in an alert of a rule is not used by
that rule again (a burst of 13 gives one velocity alert, not three).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tx_platform.pipelines.transactions._fraud import USD_PER_UNIT, FraudRules, alert_id, haversine_km

CARD_PRESENT = frozenset({"POS", "ATM"})


@dataclass(frozen=True)
class Tx:
    """What the rules read of a transaction (event time in epoch milliseconds, amount in USD)."""

    transaction_id: str
    card_id: str
    event_ms: int
    usd: float
    channel: str
    country: str
    latitude: float
    longitude: float

    @classmethod
    def of(cls, record: dict[str, Any]) -> Tx:
        """From a decoded record (``event_time`` a datetime, ``amount`` a Decimal)."""
        return cls(
            str(record["transaction_id"]), str(record["card_id"]), int(record["event_time"].timestamp() * 1000),
            float(record["amount"]) * USD_PER_UNIT.get(str(record["currency"]), 1.0), str(record["channel"]),
            str(record["country"]), float(record["latitude"]), float(record["longitude"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Alert:
    """One alert: the rule, the transactions that triggered it, the latest of them."""

    rule: str
    card_id: str
    transaction_ids: tuple[str, ...]
    event_ms: int
    details: dict[str, Any]

    @property
    def alert_id(self) -> str:
        """uuid5 of the rule and the triggering transaction ids."""
        return alert_id(self.rule, self.transaction_ids)


@dataclass
class AccountState:
    """What the rules remember of one account (JSON in the query's state store)."""

    #: transactions of the last window (+ allowed lateness), sorted by event time: [ms, id, card, usd, channel]
    recent: list[list[Any]] = field(default_factory=list)
    #: card-present transactions of the travel horizon, per card: [ms, id, country, lat, lon], sorted
    present: dict[str, list[list[Any]]] = field(default_factory=dict)
    #: running average of the amount (USD) and how many transactions it is over
    n: int = 0
    mean_usd: float = 0.0
    #: transaction ids already in an alert, per rule, with their event time (pruned with ``recent``)
    alerted: dict[str, dict[str, int]] = field(default_factory=dict)
    max_ms: int = 0

    def to_json(self) -> str:
        """The state as one JSON text."""
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AccountState:
        """The state from :meth:`to_json`."""
        return cls(**json.loads(text))


class Detector:
    """Applies the rules of :class:`FraudRules` to an account's transactions."""

    def __init__(self, rules: FraudRules, allowed_lateness_ms: int) -> None:
        self.rules = rules
        self.window_ms = int(rules.window.total_seconds() * 1000)
        self.keep_ms = self.window_ms * 2 + allowed_lateness_ms
        # farther apart than this, no pair can exceed the speed (half the Earth's circumference)
        self.travel_ms = int(20_037.5 / rules.travel_speed_kmh * 3_600_000) + allowed_lateness_ms

    def process(self, state: AccountState, txs: Iterable[Tx]) -> list[Alert]:
        """Apply the rules to ``txs`` (one account's, sorted here by event time) and update ``state``."""
        alerts: list[Alert] = []
        for tx in sorted(txs, key=lambda t: (t.event_ms, t.transaction_id)):
            if any(row[1] == tx.transaction_id for row in state.recent):
                continue  # a replayed record: already counted
            alerts += self._one(state, tx)
        self._prune(state)
        return alerts

    def _one(self, state: AccountState, tx: Tx) -> list[Alert]:
        alerts = []
        spike = self._spike(state, tx)
        if spike is not None:
            alerts.append(spike)
        else:  # the baseline stays the account's habits, not the outlier
            state.n += 1
            state.mean_usd += (tx.usd - state.mean_usd) / state.n
        row = [tx.event_ms, tx.transaction_id, tx.card_id, tx.usd, tx.channel]
        bisect.insort(state.recent, row)
        state.max_ms = max(state.max_ms, tx.event_ms)
        velocity = self._windowed(state, tx, "velocity", None, self.rules.velocity_count + 1)
        if velocity is not None:
            alerts.append(velocity)
        small_ecom = tx.channel == "ECOM" and tx.usd <= self.rules.card_testing_max_usd
        if small_ecom:
            testing = self._windowed(state, tx, "card_testing", tx.card_id, self.rules.card_testing_count)
            if testing is not None:
                alerts.append(testing)
        if tx.channel in CARD_PRESENT:
            travel = self._travel(state, tx)
            if travel is not None:
                alerts.append(travel)
        return alerts

    def _spike(self, state: AccountState, tx: Tx) -> Alert | None:
        r = self.rules
        if state.n < r.spike_min_history or tx.usd < r.spike_min_usd or tx.usd < r.spike_factor * state.mean_usd:
            return None
        self._mark(state, "amount_spike", [tx.transaction_id], tx.event_ms)
        details = {"usd": round(tx.usd, 2), "average_usd": round(state.mean_usd, 2), "history": state.n}
        return Alert("amount_spike", tx.card_id, (tx.transaction_id,), tx.event_ms, details)

    def _counted(self, row: list[Any], rule: str, card: str | None) -> bool:
        if card is None:
            return True
        return row[2] == card and row[4] == "ECOM" and row[3] <= self.rules.card_testing_max_usd

    def _windowed(self, state: AccountState, tx: Tx, rule: str, card: str | None, at_least: int) -> Alert | None:
        """A window of ``window_ms`` holding ``tx`` with ``at_least`` counted transactions none alerted by ``rule``.

        Windows end at ``tx`` or at a later transaction (``tx`` may be late): the first such end wins.
        """
        alerted = state.alerted.get(rule, {})
        rows = [row for row in state.recent if self._counted(row, rule, card)]
        times = [row[0] for row in rows]
        for end in [row for row in rows if tx.event_ms <= row[0] <= tx.event_ms + self.window_ms]:
            low = bisect.bisect_left(times, end[0] - self.window_ms)
            high = bisect.bisect_right(times, end[0])
            window = rows[low:high]
            if len(window) < at_least or any(row[1] in alerted for row in window):
                continue
            ids = [row[1] for row in window]
            self._mark(state, rule, ids, end[0])
            details = {"count": len(window), "window_minutes": self.rules.window_minutes}
            return Alert(rule, str(tx.card_id if card is None else card), tuple(sorted(ids)), end[0], details)
        return None

    def _travel(self, state: AccountState, tx: Tx) -> Alert | None:
        r = self.rules
        seen = state.present.setdefault(tx.card_id, [])
        alerted = state.alerted.get("impossible_travel", {})
        found: Alert | None = None
        if tx.transaction_id not in alerted:
            for ms, other, country, lat, lon in reversed(seen):  # the nearest in time first: the fastest
                if country == tx.country or other in alerted:
                    continue
                km = haversine_km(lat, lon, tx.latitude, tx.longitude)
                hours = max(abs(tx.event_ms - ms), 60_000) / 3_600_000  # a minute at least: no division by zero
                if km >= r.travel_min_km and km / hours > r.travel_speed_kmh:
                    ids = (other, tx.transaction_id) if ms <= tx.event_ms else (tx.transaction_id, other)
                    self._mark(state, "impossible_travel", list(ids), max(ms, tx.event_ms))
                    details = {"km": round(km), "minutes": round(hours * 60, 1), "kmh": round(km / hours)}
                    found = Alert("impossible_travel", tx.card_id, ids, max(ms, tx.event_ms), details)
                    break
        bisect.insort(seen, [tx.event_ms, tx.transaction_id, tx.country, tx.latitude, tx.longitude])
        return found

    @staticmethod
    def _mark(state: AccountState, rule: str, ids: list[str], ms: int) -> None:
        marks = state.alerted.setdefault(rule, {})
        for tx_id in ids:
            marks[tx_id] = ms

    def _prune(self, state: AccountState) -> None:
        horizon = state.max_ms - self.keep_ms
        state.recent = [row for row in state.recent if row[0] >= horizon]
        travel_horizon = state.max_ms - self.travel_ms
        present = {card: [r for r in rows if r[0] >= travel_horizon] for card, rows in state.present.items()}
        state.present = {card: rows for card, rows in present.items() if rows}
        oldest = min(horizon, travel_horizon)
        alerted = {rule: {k: v for k, v in marks.items() if v >= oldest} for rule, marks in state.alerted.items()}
        state.alerted = {rule: marks for rule, marks in alerted.items() if marks}
