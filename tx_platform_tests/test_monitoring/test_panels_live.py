"""Every Grafana panel's query returns data on a live stack (Grafana itself is not needed).

Both shipped pipelines run on their own topics, as a deployment would: seeded transactions and
simulated crypto trades (some of each bad, plus one whale trade and one price far outside the
previous minute's range) are produced, each pipeline's sink runs once, then the crypto candle query
and the market tables' rebuild. Once Prometheus has scraped the new figures, every PromQL target of
every dashboard is evaluated through Prometheus' HTTP API and every SQL target through psycopg2 as
the analyst role, with Grafana's variables resolved as Grafana does (``label_values`` through
Prometheus' API) and its macros replaced. A board with a ``$pipeline`` variable is evaluated once
per pipeline it lists, and a repeated panel once per value of its variable, so that every
pipeline's and every symbol's panels are proven, not only their sum. The test fails listing every
panel whose query errors or returns nothing (or only NaN).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from tx_platform.config import PROJECT_ROOT, Settings, load_settings
from tx_platform.pipelines import CRYPTO_TRADES, PIPELINES, TRANSACTIONS, PipelineSpec
from tx_platform.pipelines.crypto_trades._market import SYMBOLS
from tx_platform_tests.conftest import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DASHBOARDS = PROJECT_ROOT / "monitoring" / "grafana" / "dashboards"
COUNT = 600
CRYPTO_COUNT = 1500
BAD_RATIO = 0.1
SEED = 20_261_125
#: the simulated market: 20 whole minutes ending two minutes before the test (every symbol trades each minute)
MARKET_MINUTES = 20

#: Grafana's interval variables as the dashboards' queries use them, replaced longest first
PROM_INTERVALS = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "1h"}
TIME_FILTER = re.compile(r"\$__timeFilter\((\w+)\)")
LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")
VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


def _boards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))]


def _targets() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(dashboard, panel title, refId, target) of every query target."""
    return [
        (board["title"], panel["title"], target["refId"], target)
        for board in _boards()
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def _interpolate(text: str, values: dict[str, list[str]], *, sql_text: bool) -> str:
    """Grafana's variable interpolation: one value as it is; several as a regex alternation in PromQL
    and as ``'a','b'`` with ``:sqlstring``."""

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[3]
        fmt = match[2]
        if name not in values:
            return match[0]  # a builtin, replaced elsewhere
        chosen = values[name]
        if fmt == "sqlstring":
            return ",".join("'" + v.replace("'", "''") + "'" for v in chosen)
        assert not sql_text, f"${name} in SQL without a format"
        return chosen[0] if len(chosen) == 1 else "(" + "|".join(chosen) + ")"

    return VARIABLE.sub(one, text)


def promql(expr: str, values: dict[str, list[str]]) -> str:
    for name in sorted(PROM_INTERVALS, key=len, reverse=True):
        expr = expr.replace(name, PROM_INTERVALS[name])
    expr = _interpolate(expr, values, sql_text=False)
    assert "$" not in expr, f"a Grafana variable is left in {expr!r}"
    return expr


def sql(raw: str, values: dict[str, list[str]]) -> str:
    # the dashboards' ranges are hours to days; the seeded records are from the last two hours
    text = TIME_FILTER.sub(r"\1 BETWEEN now() - interval '2 days' AND now() + interval '1 hour'", raw)
    text = _interpolate(text, values, sql_text=True)
    assert "$" not in text, f"a Grafana macro is left in {text!r}"
    return text


def _get(url: str, path: str, params: list[tuple[str, str]]) -> Any:  # noqa: ANN401 - Prometheus' data
    request = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the stack's loopback URL
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        msg = f"{exc.code}: {body.get('error', exc.reason)}"
        raise RuntimeError(msg) from exc
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", body))
    return body["data"]


def query_prometheus(url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query; raises with Prometheus' error for an invalid expression."""
    data = _get(url, "/api/v1/query", [("query", expr)])
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def label_values(url: str, selector: str, label: str) -> list[str]:
    """What Grafana's ``label_values(selector, label)`` lists (sorted)."""
    return sorted(_get(url, f"/api/v1/label/{label}/values", [("match[]", selector)]))


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def _scalar(url: str, expr: str) -> float:
    result = query_prometheus(url, expr)
    return float(result[0]["value"][1]) if result else math.nan


def _fetch(dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def _stored(analyst_dsn: str, spec: PipelineSpec) -> int:
    """Records of ``spec``'s topic already in the warehouse (a stack reused by a second run)."""
    [(n,)] = _fetch(
        analyst_dsn,
        f"SELECT (SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s)"  # noqa: S608 - the spec's table
        " + (SELECT count(*) FROM quarantine WHERE kafka_topic = %s)",
        spec.topic,
        spec.topic,
    )
    return int(n)


def _market(seed: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The simulated trades, then one whale trade and one price anomaly made from them.

    Both made trades are BTC-USD in the market's last minute: the whale 1.5 times the whale notional
    at the last price, the anomaly 5 % above the previous minute's high (the threshold is 2 %).
    """
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=MARKET_MINUTES + 2)
    trades = list(CRYPTO_TRADES.generate(CRYPTO_COUNT, seed, start, span=timedelta(minutes=MARKET_MINUTES)))
    last_minute = start + timedelta(minutes=MARKET_MINUTES - 1)
    btc = [t for t in trades if t["symbol"] == "BTC-USD"]
    previous_high = max(t["price"] for t in btc if last_minute - timedelta(minutes=1) <= t["event_time"] < last_minute)
    last_price = btc[-1]["price"]
    instrument = SYMBOLS["BTC-USD"]
    made = {
        "exchange": "KRAKEN", "symbol": "BTC-USD", "side": "BUY", "quote_currency": instrument.quote,
        "event_time": last_minute + timedelta(seconds=30),
    }  # fmt: skip
    whale = {
        **made,
        "trade_id": str(uuid.UUID(int=seed * 2, version=4)),
        "price": last_price,
        "quantity": (instrument.whale_notional * Decimal("1.5") / last_price).quantize(Decimal("1E-8")),
        "taker_order_id": "o-whale",
    }
    anomaly = {
        **made,
        "trade_id": str(uuid.UUID(int=seed * 2 + 1, version=4)),
        "price": (previous_high * Decimal("1.05")).quantize(Decimal("0.01")),
        "quantity": Decimal("0.01"),
        "taker_order_id": "o-anomaly",
    }
    return trades, whale, anomaly


def _produce(spec: PipelineSpec, settings: Settings, records: list[dict[str, Any]], seed: int, bad: float) -> int:
    """Produce ``records`` (``bad`` of them replaced by bad ones), pushing the producer's metrics; delivered."""
    from tx_platform.metrics import pushing_producer_metrics
    from tx_platform.producer import open_producer, produce

    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio=bad, seed=seed)
    with pushing_producer_metrics(producer.report, spec.name, settings.pushgateway_url):
        report = produce(records, producer)
    assert (report.delivered, report.failed) == (len(records), 0)
    return report.delivered


def _committed(prometheus: str, pipeline: str) -> float:
    total = _scalar(prometheus, f'sum(txp_sink_rows_total{{pipeline="{pipeline}",outcome!="skipped"}})')
    return 0.0 if math.isnan(total) else total


@pytest.fixture(scope="module")
def seeded_pipelines(stack_env: dict[str, str], spark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: ANN001
    """Both pipelines on their own topics: produce, run the sinks, the candles and the rebuild, wait for Prometheus."""
    from spark_jobs.sink import PipelineSink
    from spark_jobs.transforms.candles import run_candles_available_now
    from tx_platform.kafka_admin import ensure_topic
    from tx_platform.pipelines.crypto_trades._derived import rebuild_market_tables
    from tx_platform.warehouse import connect, ensure_schema

    settings = load_settings(checkpoint_dir=tmp_path_factory.mktemp("graf") / "checkpoints")
    prometheus, analyst = stack_env["TXP_PROMETHEUS_URL"], stack_env["TXP_ANALYST_DSN"]
    ensure_schema(settings.dsn(), PIPELINES.values())
    for spec in PIPELINES.values():
        ensure_topic(settings.kafka_bootstrap, spec.topic, 3, 1)
    # the exporter serves every counter from 0 (the market's too): scraped before anything is
    # produced, so that rates and increases over the window see the rise
    for metric in ("txp_sink_rows_total", "txp_crypto_trades_total", "txp_crypto_whale_trades_total"):
        assert_eventually(
            lambda m=metric: (
                {s["metric"]["pipeline"] for s in query_prometheus(prometheus, m)}
                >= ({"crypto_trades"} if "crypto" in m else set(PIPELINES))
            ),
            timeout=60,
            what=f"Prometheus to scrape {metric} of every pipeline from txp metrics serve",
        )
    before = {name: _committed(prometheus, name) for name in PIPELINES}

    # SEED on a fresh stack; on a stack reused by a second run, other record ids (the same ones
    # again would all be quarantined as duplicates)
    seed = SEED + _stored(analyst, TRANSACTIONS)
    start = datetime.now(UTC) - timedelta(hours=2)
    _produce(TRANSACTIONS, settings, list(TRANSACTIONS.generate(COUNT, seed, start, span=timedelta(hours=2))), seed,
             BAD_RATIO)  # fmt: skip
    crypto_seed = SEED + _stored(analyst, CRYPTO_TRADES)
    trades, whale, anomaly = _market(crypto_seed)
    _produce(CRYPTO_TRADES, settings, trades, crypto_seed, BAD_RATIO)
    # the made trades never become bad ones: a producer of their own, without faults
    from tx_platform.producer import open_producer, produce

    producer, _ = open_producer(CRYPTO_TRADES, settings.kafka_bootstrap, settings.schema_registry_url)
    assert produce([whale, anomaly], producer).delivered == 2

    # the candles read the topic itself; the rebuild needs them and the stored trades. The
    # transactions sink runs last: panels of rates over $__rate_interval see both sinks' commits
    candles = run_candles_available_now(spark, CRYPTO_TRADES, settings)
    assert candles.rows > 0, candles
    stats = {CRYPTO_TRADES.name: PipelineSink(spark, CRYPTO_TRADES, settings).run_available_now()}
    conn = connect(settings.dsn())
    try:
        rebuilt = rebuild_market_tables(conn, CRYPTO_TRADES.topic)
    finally:
        conn.close()
    assert all(rebuilt.values()), rebuilt
    stats[TRANSACTIONS.name] = PipelineSink(spark, TRANSACTIONS, settings).run_available_now()
    for name, run in stats.items():
        assert run.inserted > 0 and run.quarantined > 0, (name, run)
    whales = {t for (t,) in _fetch(analyst, "SELECT trade_id::text FROM crypto_whale_alerts WHERE source_topic = %s",
                                   CRYPTO_TRADES.topic)}  # fmt: skip
    anomalies = {t for (t,) in _fetch(analyst, "SELECT trade_id::text FROM crypto_price_anomalies"
                                      " WHERE source_topic = %s", CRYPTO_TRADES.topic)}  # fmt: skip
    assert whale["trade_id"] in whales and anomaly["trade_id"] in anomalies

    def scraped() -> bool:
        for name, run in stats.items():
            dead = _scalar(prometheus, f'sum(txp_sink_dead_lettered_total{{pipeline="{name}"}})')
            produced = _scalar(prometheus, f'sum(txp_producer_records_total{{pipeline="{name}"}})')
            batches = _scalar(prometheus, f'sum(txp_spark_batches_total{{pipeline="{name}"}})')
            caught_up = _committed(prometheus, name) >= before[name] + run.inserted + run.quarantined
            if not (caught_up and dead >= run.quarantined and produced > 0 and batches > 0):
                return False
        market = {
            "whale": _scalar(prometheus, 'sum(txp_crypto_whale_trades_total{pipeline="crypto_trades"})'),
            "anomaly": _scalar(prometheus, 'sum(txp_crypto_price_anomalies_total{pipeline="crypto_trades"})'),
            "spread": _scalar(prometheus, 'count(txp_crypto_spread_bps{pipeline="crypto_trades"})'),
        }
        return market == {"whale": len(whales), "anomaly": len(anomalies), "spread": len(SYMBOLS)}

    assert_eventually(
        scraped, timeout=90, what="Prometheus to scrape the sinks', Spark's, producers' and market figures"
    )
    return {"stats": stats, "whales": len(whales), "anomalies": len(anomalies)}


def _variable_values(prometheus: str, board: dict[str, Any], pipeline: str | None) -> dict[str, list[str]]:
    """The board's variables with ``pipeline`` selected and every other one at All, resolved in order."""
    values: dict[str, list[str]] = {}
    for variable in board["templating"]["list"]:
        match = LABEL_VALUES.fullmatch(variable["definition"])
        assert match, f"{board['title']}: ${variable['name']} is not a label_values query"
        if variable["name"] == "pipeline" and pipeline is not None:
            values["pipeline"] = [pipeline]
            continue
        selector = _interpolate(match[1], values, sql_text=False)
        found = label_values(prometheus, selector, match[2])
        assert found, f"{board['title']}: ${variable['name']} lists nothing for {selector}"
        values[variable["name"]] = found
    return values


def _evaluations(prometheus: str) -> Iterator[tuple[str, dict[str, Any], dict[str, list[str]]]]:
    """(where, target, variable values) of every target, once per pipeline a board lists and per repeat."""
    for board in _boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        if "pipeline" in variables:
            definition = LABEL_VALUES.fullmatch(variables["pipeline"]["definition"])
            assert definition
            pipelines: list[str | None] = list(label_values(prometheus, definition[1], "pipeline"))
        else:
            pipelines = [None]
        for pipeline in pipelines:
            values = _variable_values(prometheus, board, pipeline) if variables else {}
            for panel in board["panels"]:
                repeat = panel.get("repeat")
                for each in values[repeat] if repeat else [None]:
                    chosen = {**values, repeat: [each]} if repeat else values
                    where = f"{board['title']} / {panel['title']}" + "".join(
                        f" [{k}={v}]" for k, v in (("pipeline", pipeline), (repeat, each)) if v
                    )
                    for target in panel.get("targets", []):
                        yield f"{where} [{target['refId']}]", target, chosen


def _failures(prometheus: str, analyst_dsn: str) -> tuple[list[str], int]:
    """One line per evaluation whose query errors or has no data (NaN-only counts as none); how many ran."""
    failures: list[str] = []
    evaluations = list(_evaluations(prometheus))
    conn = psycopg2.connect(analyst_dsn)
    conn.set_session(readonly=True, autocommit=True)
    try:
        for where, target, values in evaluations:
            try:
                if "expr" in target:
                    expr = promql(target["expr"], values)
                    if not _has_number(query_prometheus(prometheus, expr)):
                        failures.append(f"{where}: no data for {expr}")
                elif "rawSql" in target:
                    with conn.cursor() as cur:
                        cur.execute(sql(target["rawSql"], values))
                        if not cur.fetchall():
                            failures.append(f"{where}: no rows")
                else:
                    failures.append(f"{where}: neither PromQL nor SQL")
            except Exception as exc:  # noqa: BLE001 - every failing panel is listed, not the first
                failures.append(f"{where}: {type(exc).__name__}: {exc}".strip())
    finally:
        conn.close()
    return failures, len(evaluations)


def test_every_panel_query_returns_data_for_every_pipeline(
    stack_env: dict[str, str], seeded_pipelines: dict[str, Any]
) -> None:
    targets = _targets()
    assert len({t[0] for t in targets}) >= 6, "dashboards are missing"
    assert any("expr" in t[3] for t in targets) and any("rawSql" in t[3] for t in targets)
    prometheus, analyst = stack_env["TXP_PROMETHEUS_URL"], stack_env["TXP_ANALYST_DSN"]
    # every pipeline reports: each board of pipeline metrics lists both, the market board the crypto one
    for board in _boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        if "pipeline" in variables:
            definition = LABEL_VALUES.fullmatch(variables["pipeline"]["definition"])
            assert definition
            listed = set(label_values(prometheus, definition[1], "pipeline"))
            assert listed == ({"crypto_trades"} if "crypto" in definition[1] else set(PIPELINES)), board["title"]
    # a counter that appeared with its first value needs a second scrape before rate() has a point:
    # poll until every panel has data, or list the ones that still have none at the deadline
    deadline = time.monotonic() + 45
    while True:
        failures, evaluated = _failures(prometheus, analyst)
        if not failures or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert evaluated > len(targets), "the boards of pipeline metrics are evaluated once per pipeline"
    assert not failures, f"{len(failures)} of {evaluated} panel queries fail:\n" + "\n".join(failures)


def test_the_market_board_shows_the_made_whale_and_anomaly(
    stack_env: dict[str, str], seeded_pipelines: dict[str, Any]
) -> None:
    """The exporter's market counters are exactly the derived tables' rows of the shipped topic."""
    prometheus = stack_env["TXP_PROMETHEUS_URL"]
    whales = query_prometheus(prometheus, 'sum by (symbol) (txp_crypto_whale_trades_total{pipeline="crypto_trades"})')
    assert {s["metric"]["symbol"] for s in whales} == set(SYMBOLS)  # every symbol, from 0
    assert sum(float(s["value"][1]) for s in whales) == seeded_pipelines["whales"] >= 1
    anomalies = _scalar(prometheus, 'sum(txp_crypto_price_anomalies_total{pipeline="crypto_trades",symbol="BTC-USD"})')
    assert anomalies >= 1
    assert (
        _scalar(prometheus, 'sum(txp_crypto_price_anomalies_total{pipeline="crypto_trades"})')
        == seeded_pipelines["anomalies"]
    )


def test_grafana_macros_are_all_replaced() -> None:
    """The substitutions above cover every variable and macro the dashboards use."""
    values = {"pipeline": ["transactions"], "topic": ["transactions"], "symbol": ["BTC-USD", "ETH-USD"]}
    for _board, _title, _ref, target in _targets():
        if "expr" in target:
            promql(target["expr"], values)
        else:
            sql(target["rawSql"], values)
