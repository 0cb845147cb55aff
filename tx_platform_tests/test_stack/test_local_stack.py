import time

import psycopg2
import pytest
from click.testing import CliRunner

from tx_platform.cli import cli
from tx_platform_tests.conftest import listening_addresses

pytestmark = pytest.mark.integration


def test_every_service_runs_and_listens_on_loopback_only(test_stack) -> None:  # noqa: ANN001
    rows = test_stack.status()
    assert [r.name for r in rows] == [
        "kafka-1", "schema-registry", "postgres", "prometheus", "alertmanager", "pushgateway", "postgres-exporter",
        "metrics-exporter",
    ]  # fmt: skip
    rows = [r for r in rows if not r.not_installed]  # monitoring is optional (infra/system-deps.sh)
    assert all(r.running and r.pid for r in rows)
    for row in rows:
        for port in row.ports:
            assert listening_addresses(port) == {"0100007F"}, f"{row.name} port {port} must bind 127.0.0.1 only"


def test_up_twice_is_harmless(test_stack) -> None:  # noqa: ANN001
    before = {r.name: r.pid for r in test_stack.status()}
    started = time.monotonic()
    test_stack.up()
    assert time.monotonic() - started < 10
    assert {r.name: r.pid for r in test_stack.status()} == before


def test_stack_env_and_status_commands(test_stack, stack_env: dict[str, str]) -> None:  # noqa: ANN001
    env = {"TXP_STATE_DIR": str(test_stack.state_dir)}
    result = CliRunner().invoke(cli, ["stack", "env"], env=env)
    assert result.exit_code == 0
    assert f"export TXP_KAFKA_BOOTSTRAP={stack_env['TXP_KAFKA_BOOTSTRAP']}" in result.output
    status = CliRunner().invoke(cli, ["stack", "status"], env=env, terminal_width=200)
    running = sum(1 for r in test_stack.status() if r.running)
    assert status.exit_code == 0 and status.output.count("running") == running >= 3


def test_roles_pipeline_writes_analyst_reads_only(stack_env: dict[str, str]) -> None:
    with psycopg2.connect(stack_env["TXP_ANALYST_DSN"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM transactions")
        assert cur.fetchone()[0] >= 0
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO sink_batches (topic, batch_id, records, inserted, quarantined, skipped) "
                "VALUES ('x', 0, 0, 0, 0, 0)"
            )
    conn.close()
    with psycopg2.connect(stack_env["TXP_ANALYST_DSN"]) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("CREATE TABLE analyst_scratch (x int)")
    conn.close()
    dagster_db = stack_env["TXP_POSTGRES_DSN"].rsplit("/", 1)[0] + "/dagster"
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        psycopg2.connect(dagster_db)


@pytest.fixture(autouse=True)
def _schema(stack_env: dict[str, str]) -> None:
    from tx_platform.warehouse import ensure_schema

    ensure_schema(stack_env["TXP_POSTGRES_DSN"])
