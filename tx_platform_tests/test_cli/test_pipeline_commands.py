"""`txp` with --pipeline crypto_trades against the real stack: topics, produce, sink, dlq show, audit, forget."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tx_platform.config import PROJECT_ROOT, Settings
from tx_platform.pipelines import CRYPTO_TRADES
from tx_platform_tests.conftest import fetch_one

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 300


def _txp(env: dict[str, str], *args: str, exit_code: int = 0) -> str:
    done = subprocess.run(  # noqa: S603 - our own CLI
        [str(PROJECT_ROOT / ".venv" / "bin" / "txp"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == exit_code, f"txp {' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
    return output


def test_crypto_trades_through_the_cli(settings: Settings, unique: str, tmp_path: Path) -> None:
    topic = f"crypto_{unique}"
    env = {**os.environ, "TXP_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "COLUMNS": "200"}
    env.pop("TXP_PIPELINE", None)
    on_topic = ["--pipeline", "crypto_trades", "--topic", topic]

    created = _txp(env, "topics", "create", *on_topic)
    assert f"{topic}: created (3 partitions" in created and f"{topic}.dlq: created (3 partitions" in created

    produced = _txp(env, "produce", *on_topic, "--count", str(COUNT), "--span-hours", "0.5", "--bad-ratio", "0.05")
    assert f"schema: subject {topic}-value version 1" in produced
    delivered = rf"delivered {COUNT} of {COUNT}, failed 0, injected bad (\d+) → topic {re.escape(topic)}"
    match = re.search(delivered, produced)
    assert match, produced
    injected = int(match[1])
    assert injected > 0

    _txp(env, "sink", *on_topic, "--available-now")
    dsn = settings.dsn()
    (rows,) = fetch_one(dsn, "SELECT count(*) FROM crypto_trades WHERE kafka_topic = %s", topic)
    (quarantined,) = fetch_one(dsn, "SELECT count(*) FROM quarantine WHERE kafka_topic = %s", topic)
    assert (rows, quarantined) == (COUNT - injected, injected)
    assert Path(CRYPTO_TRADES.with_topic(topic).checkpoint(tmp_path / "checkpoints")).is_dir()

    shown = _txp(env, "dlq", "show", *on_topic, "-n", "5")
    assert f"{injected} records in {topic}.dlq" in shown

    audit = json.loads(_txp(env, "audit", *on_topic).strip().splitlines()[-1])
    assert audit | {"samples": {}} == {
        "topic": topic, "records": COUNT, "rows": COUNT - injected, "quarantined": injected, "dlq": injected,
        "lost": 0, "duplicated": 0, "unexplained": 0, "samples": {}, "ok": True,
    }  # fmt: skip

    forgotten = _txp(env, "topics", "forget", *on_topic, "--yes")
    assert f"{topic}: deleted {COUNT - injected} from crypto_trades" in forgotten
    assert f"{injected} from quarantine" in forgotten
    assert fetch_one(dsn, "SELECT count(*) FROM crypto_trades WHERE kafka_topic = %s", topic) == (0,)
    assert not Path(CRYPTO_TRADES.with_topic(topic).checkpoint(tmp_path / "checkpoints")).exists()
    # the topic still holds every record, the warehouse none: the audit says so and fails
    after = json.loads(_txp(env, "audit", *on_topic, exit_code=1).strip().splitlines()[-1])
    assert (after["records"], after["lost"], after["unexplained"], after["ok"]) == (COUNT, COUNT, injected, False)
    assert len(after["samples"]["lost"]) == 5
