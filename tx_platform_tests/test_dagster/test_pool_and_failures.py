"""One sink run per pipeline at a time through the stack's concurrency pool; failed runs logged and counted."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterEventType, OpExecutionContext, build_run_status_sensor_context, instance_for_test, job, op

from tx_platform.assets import build_pipeline_assets, sink_pool
from tx_platform.config import Settings
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.resources import SettingsResource
from tx_platform.sensors import FAILED_RUNS_METRIC, build_run_failure_sensor
from tx_platform.stack._launcher import DAGSTER_YAML
from tx_platform_tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

#: A run of a step in the transactions sink's pool that holds it for a few seconds and prints when it did.
RUN = """
import json, sys, time
from dagster import DagsterInstance, asset, materialize
from tx_platform.assets import sink_pool
from tx_platform.pipelines import TRANSACTIONS

@asset(pool=sink_pool(TRANSACTIONS))
def sink_stand_in() -> None:
    began = time.time()
    time.sleep(4)
    print("HELD " + json.dumps([began, time.time()]), flush=True)

sys.exit(0 if materialize([sink_stand_in], instance=DagsterInstance.get()).success else 1)
"""


@pytest.mark.slow
def test_two_runs_in_the_sink_pool_run_one_after_the_other(stack_env: dict[str, str], tmp_path: Path) -> None:
    """Two runs launched at once against an instance configured as the stack's (`DAGSTER_YAML`): the second's step
    waits for the pool's one slot."""
    (tmp_path / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    assert env["TXP_DAGSTER_PG_URL"]  # the stack's Dagster database, as `make dev` uses it
    # one run alone first. Two processes that are the first ever to use a fresh Dagster database race twice:
    # on creating the storages' tables ("Retrying failed database creation"), and on creating the pool's limit
    # row from `default_limit` (dagster-io/dagster#33552: on PostgreSQL the loser's transaction is aborted by the
    # UniqueViolation and its run fails). On a stack both happen once, at the first run; here the lone run does it.
    subprocess.run([sys.executable, "-c", RUN], env=env, cwd=PROJECT_ROOT, check=True, timeout=180)  # noqa: S603
    runs = [
        subprocess.Popen(  # noqa: S603 - our own argv
            [sys.executable, "-c", RUN],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    held = sorted(
        json.loads(line.split("HELD ", 1)[1]) for out in outputs for line in out.splitlines() if "HELD " in line
    )
    assert len(held) == 2
    (first_began, first_ended), (second_began, _) = held
    assert second_began >= first_ended  # never both in the pool at once
    assert sum(f"Step blocked by limit for pool {sink_pool(TRANSACTIONS)}" in out for out in outputs) == 1
    # and the pool is the real sink's
    built = build_pipeline_assets(TRANSACTIONS)
    assert next(a for a in built.materializable if built.keys.table in a.keys).op.pool == "sink_transactions"


def _gateway_samples(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310 - the stack's gateway
        return [line for line in response.read().decode().splitlines() if line.startswith(FAILED_RUNS_METRIC)]


def test_failed_runs_are_logged_and_counted_on_the_pushgateway(settings: Settings, unique: str) -> None:
    job_name = f"txp_failing_{unique}"

    @op
    def breaks(context: OpExecutionContext) -> None:
        """Stands in for a step that fails."""
        context.log.info("about to fail")
        msg = "warehouse unreachable"
        raise RuntimeError(msg)

    @job(name=job_name, tags={"txp/pipeline": "transactions"})
    def failing() -> None:
        """Always fails."""
        breaks()

    sensor = build_run_failure_sensor([build_pipeline_assets(TRANSACTIONS)])
    gateway = settings.pushgateway_url
    group = f"{gateway}/metrics/job/{job_name}/pipeline/transactions"
    try:
        with instance_for_test() as instance:
            for expected in (1, 2):
                result = failing.execute_in_process(instance=instance, raise_on_error=False)
                assert not result.success
                run = instance.get_run_by_id(result.run_id)
                assert run is not None
                failure = next(
                    e for e in instance.all_logs(run.run_id) if e.dagster_event_type == DagsterEventType.RUN_FAILURE
                )
                context = build_run_status_sensor_context(
                    sensor_name=sensor.name,
                    dagster_event=failure.get_dagster_event(),
                    dagster_instance=instance,
                    dagster_run=run,
                    resources={"settings": SettingsResource()},
                ).for_run_failure()
                sensor(context)
                assert _gateway_samples(gateway) and any(
                    line == f'{FAILED_RUNS_METRIC}{{instance="",job="{job_name}",pipeline="transactions"}} {expected}'
                    for line in _gateway_samples(gateway)
                ), _gateway_samples(gateway)
    finally:
        request = urllib.request.Request(group, method="DELETE")  # noqa: S310 - the stack's gateway
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310
