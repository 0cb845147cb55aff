"""`txp produce` pushes its metrics to a real Pushgateway, and goes on without one."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tx_platform.config import Settings
from tx_platform.kafka_admin import end_offsets
from tx_platform.pipelines import CRYPTO_TRADES, PipelineSpec
from tx_platform_tests.conftest import assert_eventually
from tx_platform_tests.test_metrics._scrape import scrape, value

pytestmark = pytest.mark.integration

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
TXP = str(Path(sys.executable).parent / "txp")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if not Path(PUSHGATEWAY).exists():
        pytest.skip("prometheus-pushgateway is not installed (infra/system-deps.sh installs it)")
    port = _free_port()
    log = (tmp_path / "pushgateway.log").open("wb")
    # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: groups of earlier
    # runs (and of other suites) would be served again; this gateway keeps its groups in memory only
    proc = subprocess.Popen(  # noqa: S603 - our own argv
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:  # noqa: S310 - loopback
                return response.status == 200
        except OSError:
            return False

    try:
        assert_eventually(ready, 30, "the Pushgateway to be ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _produce(spec: PipelineSpec, count: int, gateway: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TXP_PUSHGATEWAY_URL": gateway}
    return subprocess.run(  # noqa: S603 - our own argv
        [TXP, "produce", "--pipeline", spec.name, "--topic", spec.topic, "-n", str(count), "--seed", "7",
         "--span-hours", "1"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_produce_pushes_its_delivered_count(
    spec: PipelineSpec, create_topic: Callable[..., None], pushgateway: str
) -> None:
    create_topic(spec.topic)
    result = _produce(spec, 1234, pushgateway)
    assert result.returncode == 0, result.stderr
    assert "could not push" not in result.stderr
    samples = scrape(f"{pushgateway}/metrics")
    group = {"job": "txp_producer", "pipeline": "transactions", "instance": ""}
    assert value(samples, "txp_producer_records_total", result="delivered", **group) == 1234
    assert value(samples, "txp_producer_records_total", result="failed", **group) == 0
    assert value(samples, "txp_producer_delivery_latency_seconds_count", **group) == 1234
    assert value(samples, "txp_producer_bytes_total", **group) > 1234 * 50
    assert value(samples, "push_failure_time_seconds", **group) == 0

    # a second run replaces the group (PUT): its own figures, not a sum
    result = _produce(spec, 100, pushgateway)
    assert result.returncode == 0, result.stderr
    samples = scrape(f"{pushgateway}/metrics")
    assert value(samples, "txp_producer_records_total", result="delivered", **group) == 100


def test_crypto_trades_are_pushed_under_their_pipeline_whatever_the_topic(
    unique: str, settings: Settings, create_topic: Callable[..., None], pushgateway: str
) -> None:
    crypto = CRYPTO_TRADES.with_topic(f"crypto_{unique}")
    create_topic(crypto.topic)
    result = _produce(crypto, 321, pushgateway)
    assert result.returncode == 0, result.stderr
    samples = scrape(f"{pushgateway}/metrics")
    group = {"job": "txp_producer", "pipeline": "crypto_trades", "instance": ""}
    assert value(samples, "txp_producer_records_total", result="delivered", **group) == 321
    assert value(samples, "txp_producer_delivery_latency_seconds_count", **group) == 321
    # the topic is not a label: no group under the topic's name, none under the default pipeline's
    pipelines = {dict(labels).get("pipeline") for name, labels in samples if name == "txp_producer_records_total"}
    assert pipelines == {"crypto_trades"}
    assert sum(end_offsets(settings.kafka_bootstrap, crypto.topic).values()) == 321


def test_produce_succeeds_without_a_pushgateway(
    spec: PipelineSpec, settings: Settings, create_topic: Callable[..., None]
) -> None:
    create_topic(spec.topic)
    started = time.monotonic()
    result = _produce(spec, 500, f"http://127.0.0.1:{_free_port()}")
    assert result.returncode == 0, result.stderr
    assert "delivered 500 of 500" in result.stdout
    assert result.stderr.count("could not push to the Pushgateway") == 1
    assert sum(end_offsets(settings.kafka_bootstrap, spec.topic).values()) == 500
    assert time.monotonic() - started < 120
