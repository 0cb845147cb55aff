"""The continuous sink stops gracefully on SIGINT/SIGTERM and loses nothing."""

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tx_platform.config import Settings
from tx_platform.producer import generate, open_producer, produce
from tx_platform.warehouse import connect
from tx_platform_tests.conftest import assert_eventually, start_continuous_sink

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_continuous_sink_finishes_its_batch_and_exits_cleanly(
    settings: Settings,
    create_topic,
    tmp_path: Path,
    signum: int,  # noqa: ANN001
) -> None:
    create_topic(settings.topic)
    log = tmp_path / "sink.log"
    proc = start_continuous_sink(settings, log)
    try:
        assert_eventually(lambda: "sink running" in log.read_text(), timeout=90, what="the sink to start")
        producer, _ = open_producer(settings.kafka_bootstrap, settings.topic, settings.schema_registry_url)
        produce(
            generate(
                500, seed=700 + int(signum), start=datetime.now(UTC) - timedelta(hours=1), span=timedelta(minutes=30)
            ),
            producer,
        )

        def stored() -> int:
            conn = connect(settings.dsn())
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM transactions WHERE kafka_topic = %s", (settings.topic,))
                (n,) = cur.fetchone()
            conn.close()
            return int(n)

        assert_eventually(lambda: stored() == 500, timeout=60, what="500 rows from the running sink")
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 30
        text = log.read_text()
        assert f"signal {int(signum)}: stopping the query; a batch in flight commits whole" in text
        assert "sink stopped" in text
        assert "Traceback" not in text
        assert stored() == 500
    finally:
        if proc.poll() is None:
            proc.kill()
