"""Grafana as code: the committed dashboards are the generated ones, and they fit the provisioning."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tx_platform.config import PROJECT_ROOT
from tx_platform.metrics import ALL_METRICS
from tx_platform.pipelines.crypto_trades._metrics import MARKET_METRICS

pytestmark = pytest.mark.unit

GRAFANA = PROJECT_ROOT / "monitoring" / "grafana"
PROVISIONING = GRAFANA / "provisioning"
PROMETHEUS_RULES = PROJECT_ROOT / "monitoring" / "prometheus" / "rules"
#: Grafana's built-in variables and macros; anything else a query uses must be a dashboard variable
BUILTIN = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__timeFilter", "__all"}
VARIABLE = re.compile(r"\$\{?(\w+)")
CRITICAL_ALERTS = {
    "KafkaActiveControllerCountNotOne",
    "KafkaOfflinePartitions",
    "KafkaUnderMinIsrPartitions",
    "PostgresDown",
    "SinkNoProgress",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("txp_grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def _datasources() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    return {ds["uid"]: ds for ds in config["datasources"]}


def _alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted((PROVISIONING / "alerting").glob("*.yml")):
        config = yaml.safe_load(path.read_text())
        assert config["apiVersion"] == 1, path
        rules += [rule for group in config["groups"] for rule in group["rules"]]
    return rules


def _query(target: dict[str, Any]) -> str:
    return target.get("expr") or target.get("rawSql") or ""


def test_committed_dashboards_are_the_generated_ones() -> None:
    rendered = _generator().render()
    committed = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert set(committed) == set(rendered), "run: python monitoring/grafana/dashboards.py"
    for name, text in rendered.items():
        assert committed[name] == text, (
            f"{name} differs from the generator: run python monitoring/grafana/dashboards.py"
        )


def test_the_expected_dashboards_exist_with_unique_uids() -> None:
    boards = _dashboards()
    titles = {b["title"] for b in boards.values()}
    assert {"Kafka cluster", "Pipeline SLO overview", "Dead letters", "Business KPIs", "Crypto market"} <= titles
    uids = [b["uid"] for b in boards.values()]
    assert len(uids) == len(set(uids))


def test_panel_ids_are_unique_per_dashboard_and_every_panel_queries() -> None:
    for name, board in _dashboards().items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{name}: {panel['title']}"
            assert all(_query(t) for t in panel["targets"]), f"{name}: {panel['title']}"


def test_every_datasource_used_is_provisioned() -> None:
    datasources = _datasources()
    assert datasources["prometheus"]["url"] == "http://prometheus:9090"
    warehouse = datasources["warehouse"]
    assert warehouse["user"] == "txp_analyst"
    assert warehouse["secureJsonData"]["password"].startswith("$"), "the password comes from the environment"
    for name, board in _dashboards().items():
        refs = [v["datasource"] for v in board["templating"]["list"] if "datasource" in v]
        for panel in board["panels"]:
            refs += [panel["datasource"]] if "datasource" in panel else []
            refs += [t["datasource"] for t in panel.get("targets", [])]
        for ref in refs:
            assert ref["uid"] in datasources, f"{name}: unknown datasource {ref}"
            assert ref["type"] == datasources[ref["uid"]]["type"], f"{name}: {ref}"


def test_every_variable_used_is_defined() -> None:
    for name, board in _dashboards().items():
        defined = {v["name"] for v in board["templating"]["list"]}
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                used = set(VARIABLE.findall(_query(target))) - BUILTIN
                assert used <= defined, f"{name}: {panel['title']} uses undefined {used - defined}"


def test_pipeline_metrics_are_filtered_by_the_pipeline_variable() -> None:
    labelled = {m.name for m in (*ALL_METRICS, *MARKET_METRICS) if "pipeline" in m.labels}
    for name, board in _dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for metric in re.findall(r"\b(txp_(?:sink|e2e|kafka_to_commit|dead_letter|producer|crypto)\w*)", expr):
                    assert re.search(rf'{metric}\{{[^}}]*pipeline=~"\$pipeline"', expr), (
                        f"{name}: {panel['title']}: {metric} without the $pipeline filter"
                    )
                    if metric.startswith("txp_crypto_"):
                        assert re.search(rf'{metric}\{{[^}}]*symbol=~"\$symbol"', expr), (
                            f"{name}: {panel['title']}: {metric} without the $symbol filter"
                        )
        variables = {v["name"]: v for v in board["templating"]["list"]}
        if "pipeline" in variables:
            # the pipelines that report what the board shows: every pipeline, or the crypto ones
            assert variables["pipeline"]["definition"] in {
                "label_values(txp_sink_rows_total, pipeline)",
                "label_values(txp_crypto_trades_total, pipeline)",
            }, name
            metric = re.fullmatch(r"label_values\((\w+), pipeline\)", variables["pipeline"]["definition"])
            assert metric and metric[1] in labelled, name
            assert variables["pipeline"]["allValue"] == ".+" and variables["pipeline"]["multi"], name


def test_warehouse_panels_of_pipeline_boards_read_the_selected_topics() -> None:
    """Shared tables are keyed by topic: a board's SQL follows its $pipeline through $topic."""
    for name, board in _dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        sql_targets = [t["rawSql"] for p in board["panels"] for t in p.get("targets", []) if "rawSql" in t]
        if "pipeline" not in variables or not sql_targets:
            continue
        topic = variables["topic"]
        assert topic["definition"] == 'label_values(txp_sink_lag_records{pipeline=~"$pipeline"}, topic)', name
        for raw in sql_targets:
            assert re.search(r"\b(kafka_topic|source_topic) IN \(\$\{topic:sqlstring\}\)", raw), f"{name}: {raw}"
        # All must expand to the list of values: a catch-all regex would be a literal in SQL
        for variable in variables.values():
            if any(f"${{{variable['name']}:sqlstring}}" in raw for raw in sql_targets):
                assert "allValue" not in variable and variable["includeAll"] and variable["multi"], variable["name"]


def test_the_crypto_market_board_covers_the_market() -> None:
    board = _dashboards()["crypto-market.json"]
    exprs = " ".join(t.get("expr", "") + t.get("rawSql", "") for p in board["panels"] for t in p.get("targets", []))
    for metric in MARKET_METRICS:
        assert metric.name in exprs, f"no panel shows {metric.name}"
    for table in ("crypto_candles_1m", "crypto_whale_alerts", "crypto_price_anomalies", "crypto_spread_1m"):
        assert f"FROM {table}" in exprs, table
    (candles,) = [p for p in board["panels"] if p["type"] == "candlestick"]
    assert candles["repeat"] == "symbol"  # one chart per selected symbol: prices of two symbols never share axes
    assert {v["name"] for v in board["templating"]["list"]} == {"pipeline", "topic", "symbol"}


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((PROJECT_ROOT / "infra" / "docker-compose.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert f"../monitoring/grafana/dashboards:{provider['options']['path']}:ro" in volumes
    assert "../monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes


def test_grafana_alert_rules_mirror_the_critical_prometheus_alerts() -> None:
    rules = _alert_rules()
    titles = [r["title"] for r in rules]
    assert sorted(titles) == sorted(CRITICAL_ALERTS)
    prometheus = {
        r["alert"]: r
        for path in PROMETHEUS_RULES.glob("*.yml")
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    datasources = _datasources()
    uids = [r["uid"] for r in rules]
    assert len(uids) == len(set(uids))
    for rule in rules:
        title = rule["title"]
        assert prometheus[title]["labels"]["severity"] == rule["labels"]["severity"] == "critical", title
        assert rule["for"] == prometheus[title].get("for", "0m"), title
        data = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in data, title
        queries = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
        expressions = [d for d in rule["data"] if d["datasourceUid"] == "__expr__"]
        assert queries and all(q["datasourceUid"] in datasources for q in queries), title
        for q in queries:
            assert q["model"]["refId"] == q["refId"] and q["relativeTimeRange"]["from"] > 0, title
        kinds = {e["model"]["type"] for e in expressions}
        assert {"reduce", "threshold"} <= kinds, title
        for e in expressions:
            assert e["model"]["expression"] in data, f"{title}: {e['refId']} reads an unknown refId"
        assert data[rule["condition"]]["model"]["type"] == "threshold", title


def test_no_environment_variable_syntax_in_alert_rules() -> None:
    # Grafana expands $VARS in provisioning files: a `$labels` template would be emptied
    for path in (PROVISIONING / "alerting").glob("*.yml"):
        assert "$" not in path.read_text(), path


def test_grafana_alert_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    exprs = [d["model"]["expr"] for r in _alert_rules() for d in r["data"] if d["datasourceUid"] == "prometheus"]
    panel_exprs = [
        t["expr"]
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$pipeline", "transactions")
        .replace("$symbol", "BTC-USD")
        for board in _dashboards().values()
        for panel in board["panels"]
        for t in panel.get("targets", [])
        if "expr" in t
    ]
    rules = [{"record": f"grafana:check_{i}", "expr": e} for i, e in enumerate([*exprs, *panel_exprs])]
    path = tmp_path / "grafana_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)  # noqa: S603
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
