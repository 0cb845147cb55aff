"""Every Grafana panel's query returns data on a live stack (Grafana itself is not needed).

Seeded records, some of them bad, go to the default pipeline's topic `transactions`; the sink runs
once; once Prometheus has scraped the new figures, every PromQL target of every dashboard is
evaluated through Prometheus' HTTP API and every SQL target through psycopg2 as the analyst role,
with Grafana's variables and macros replaced. The test fails listing every panel whose query errors
or returns nothing (or only NaN).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest

from tx_platform.config import PROJECT_ROOT, load_settings
from tx_platform_tests.conftest import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DASHBOARDS = PROJECT_ROOT / "monitoring" / "grafana" / "dashboards"
PIPELINE = "transactions"  # the default pipeline; its label is its topic
COUNT = 600
BAD_RATIO = 0.1
SEED = 20_261_125

#: Grafana's variables as the dashboards' queries use them, replaced longest first
PROM_VARIABLES = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "1h", "$pipeline": PIPELINE}
TIME_FILTER = re.compile(r"\$__timeFilter\((\w+)\)")


def _targets() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(dashboard, panel title, refId, target) of every query target."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((board["title"], panel["title"], target["refId"], target))
    return found


def promql(expr: str) -> str:
    for name in sorted(PROM_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, PROM_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable is left in {expr!r}"
    return expr


def sql(raw: str) -> str:
    # the dashboards' ranges are hours to days; the seeded records are from the last two hours
    text = TIME_FILTER.sub(r"\1 BETWEEN now() - interval '2 days' AND now() + interval '1 hour'", raw)
    assert "$" not in text, f"a Grafana macro is left in {text!r}"
    return text


def query_prometheus(url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query; raises with Prometheus' error for an invalid expression."""
    request = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the stack's loopback URL
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        msg = f"{exc.code}: {body.get('error', exc.reason)}"
        raise RuntimeError(msg) from exc
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", body))
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def _scalar(url: str, expr: str) -> float:
    result = query_prometheus(url, expr)
    return float(result[0]["value"][1]) if result else math.nan


def _records_already_in(analyst_dsn: str) -> int:
    conn = psycopg2.connect(analyst_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM transactions WHERE kafka_topic = %(t)s)"
                " + (SELECT count(*) FROM quarantine WHERE kafka_topic = %(t)s)",
                {"t": PIPELINE},
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


@pytest.fixture(scope="module")
def seeded_pipeline(stack_env: dict[str, str], spark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:  # noqa: ANN001
    """Produce seeded records (10 % bad) to `transactions`, run the sink once, wait for Prometheus."""
    from spark_jobs.sink import SinkConfig, TransactionSink
    from tx_platform.kafka_admin import ensure_topic
    from tx_platform.metrics import pushing_producer_metrics
    from tx_platform.producer import generate, open_producer, produce

    settings = load_settings(
        topic=PIPELINE, dlq_topic=f"{PIPELINE}.dlq", checkpoint_dir=tmp_path_factory.mktemp("graf") / "checkpoints"
    )
    prometheus = stack_env["TXP_PROMETHEUS_URL"]
    ensure_topic(settings.kafka_bootstrap, PIPELINE, 3, 1)
    # the exporter serves the pipeline's counters (zeros until the first commit): scraped before
    # anything is produced, so that rates over the window see the increase
    assert_eventually(
        lambda: query_prometheus(prometheus, f'txp_sink_rows_total{{pipeline="{PIPELINE}"}}'),
        timeout=60,
        what="Prometheus to scrape txp_sink_rows_total from txp metrics serve",
    )
    before = _scalar(prometheus, f'sum(txp_sink_rows_total{{pipeline="{PIPELINE}",outcome!="skipped"}})')

    # SEED on a fresh stack; on a stack reused by a second run, other transaction ids (the same
    # ones again would all be quarantined as duplicates)
    seed = SEED + _records_already_in(stack_env["TXP_ANALYST_DSN"])
    producer, _ = open_producer(
        settings.kafka_bootstrap, PIPELINE, settings.schema_registry_url, bad_ratio=BAD_RATIO, seed=seed
    )
    start = datetime.now(UTC) - timedelta(hours=2)
    with pushing_producer_metrics(producer.report, PIPELINE, settings.pushgateway_url):
        report = produce(generate(COUNT, seed, start, timedelta(hours=2)), producer)
    assert (report.delivered, report.failed) == (COUNT, 0)

    stats = TransactionSink(spark, SinkConfig.from_settings(settings)).run_available_now()
    assert stats.inserted > 0 and stats.quarantined > 0, stats
    committed = stats.inserted + stats.quarantined

    def scraped() -> bool:
        rows = _scalar(prometheus, f'sum(txp_sink_rows_total{{pipeline="{PIPELINE}",outcome!="skipped"}})')
        dead = _scalar(prometheus, f'sum(txp_sink_dead_lettered_total{{pipeline="{PIPELINE}"}})')
        produced = _scalar(prometheus, f'sum(txp_producer_records_total{{pipeline="{PIPELINE}"}})')
        batches = _scalar(prometheus, f'sum(txp_spark_batches_total{{pipeline="{PIPELINE}"}})')
        caught_up = rows >= (0 if math.isnan(before) else before) + committed and dead >= stats.quarantined
        return caught_up and produced > 0 and batches > 0

    assert_eventually(scraped, timeout=90, what="Prometheus to scrape the sink's, Spark's and the producer's figures")
    return {"inserted": stats.inserted, "quarantined": stats.quarantined}


def _failures(prometheus: str, analyst_dsn: str, targets: list[tuple[str, str, str, dict[str, Any]]]) -> list[str]:
    """One line per target whose query errors or has no data (NaN-only counts as none)."""
    failures: list[str] = []
    conn = psycopg2.connect(analyst_dsn)
    conn.set_session(readonly=True, autocommit=True)
    try:
        for board, title, ref, target in targets:
            where = f"{board} / {title} [{ref}]"
            try:
                if "expr" in target:
                    if not _has_number(query_prometheus(prometheus, promql(target["expr"]))):
                        failures.append(f"{where}: no data for {target['expr']}")
                elif "rawSql" in target:
                    with conn.cursor() as cur:
                        cur.execute(sql(target["rawSql"]))
                        if not cur.fetchall():
                            failures.append(f"{where}: no rows")
                else:
                    failures.append(f"{where}: neither PromQL nor SQL")
            except Exception as exc:  # noqa: BLE001 - every failing panel is listed, not the first
                failures.append(f"{where}: {type(exc).__name__}: {exc}".strip())
    finally:
        conn.close()
    return failures


def test_every_panel_query_returns_data(stack_env: dict[str, str], seeded_pipeline: dict[str, int]) -> None:
    targets = _targets()
    assert len({t[0] for t in targets}) >= 4, "dashboards are missing"
    assert any("expr" in t[3] for t in targets) and any("rawSql" in t[3] for t in targets)
    prometheus, analyst = stack_env["TXP_PROMETHEUS_URL"], stack_env["TXP_ANALYST_DSN"]
    # a counter that appeared with its first value needs a second scrape before rate() has a point:
    # poll until every panel has data, or list the ones that still have none at the deadline
    deadline = time.monotonic() + 45
    while (failures := _failures(prometheus, analyst, targets)) and time.monotonic() < deadline:
        time.sleep(2)
    assert not failures, f"{len(failures)} of {len(targets)} panel queries fail:\n" + "\n".join(failures)


def test_grafana_macros_are_all_replaced() -> None:
    """The substitutions above cover every variable and macro the dashboards use."""
    for _board, _title, _ref, target in _targets():
        if "expr" in target:
            promql(target["expr"])
        else:
            sql(target["rawSql"])
