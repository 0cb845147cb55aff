"""One sink run per pipeline at a time through the stack's concurrency pool; failed runs logged and counted."""

import json
import os
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from dagster import DagsterEventType, OpExecutionContext, build_run_status_sensor_context, instance_for_test, job, op

from tx_platform.assets import build_pipeline_assets, sink_pool
from tx_platform.config import Settings
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.resources import SettingsResource
from tx_platform.sensors import FAILED_RUNS_METRIC, build_run_failure_sensor
from tx_platform.stack import DAGSTER_YAML
from tx_platform.warehouse import connect
from tx_platform_tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

#: A run of a step in the transactions sink's pool that, as the sink does, takes its topic's lease (waiting for it
#: as long as a Dagster-launched sink would), holds both for a few seconds and prints when it did.
RUN = """
import json, sys, time
from dagster import DagsterInstance, asset, materialize
from tx_platform.assets import sink_pool
from tx_platform.config import load_settings
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.warehouse import acquire_lease, connect

@asset(pool=sink_pool(TRANSACTIONS))
def sink_stand_in() -> None:
    settings = load_settings()
    lease = acquire_lease(connect(settings.dsn()), sys.argv[1], settings.sink_lease_wait_seconds)
    began = time.time()
    time.sleep(4)
    ended = time.time()
    lease.release()
    print("HELD " + json.dumps([began, ended]), flush=True)

sys.exit(0 if materialize([sink_stand_in], instance=DagsterInstance.get()).success else 1)
"""


def _instance(home: Path, config: str) -> dict[str, str]:
    home.mkdir()
    (home / "dagster.yaml").write_text(config)
    return {**os.environ, "DAGSTER_HOME": str(home)}


def _two_at_once(run: list[str], *envs: dict[str, str]) -> list[str]:
    """Start the run once per instance, all at once; their outputs once all succeeded, after checking that they
    never held the lease together."""
    runs = [
        subprocess.Popen(run, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603
        for env in envs
    ]
    outputs = [r.communicate(timeout=180)[0] for r in runs]
    assert [r.returncode for r in runs] == [0] * len(envs), outputs
    held = sorted(
        json.loads(line.split("HELD ", 1)[1]) for out in outputs for line in out.splitlines() if "HELD " in line
    )
    assert len(held) == 2
    (first_began, first_ended), (second_began, _) = held
    assert second_began >= first_ended, outputs  # never both at once
    return outputs


@pytest.mark.slow
def test_two_runs_in_the_sink_pool_run_one_after_the_other(
    stack_env: dict[str, str], settings: Settings, tmp_path: Path, unique: str
) -> None:
    """Two runs launched at once against an instance configured as the stack's (`DAGSTER_YAML`): the second's step
    waits for the pool's one slot or, had both claims won the slot at the same instant, for the topic's lease."""
    stack = _instance(tmp_path / "stack", DAGSTER_YAML)
    assert stack["TXP_DAGSTER_PG_URL"]  # the stack's Dagster database, as `make dev` uses it
    topic = f"pool_test_{unique}"
    run = [sys.executable, "-c", RUN, topic]
    # one run alone first. Two processes that are the first ever to use a fresh Dagster database race twice:
    # on creating the storages' tables ("Retrying failed database creation"), and on creating the pool's limit
    # row from `default_limit` (dagster-io/dagster#33552: on PostgreSQL the loser's transaction is aborted by the
    # UniqueViolation and its run fails). On a stack both happen once, at the first run; here the lone run does it.
    subprocess.run(run, env=stack, cwd=PROJECT_ROOT, check=True, timeout=180)  # noqa: S603
    blocked = f"Step blocked by limit for pool {sink_pool(TRANSACTIONS)}"
    waited = f"waiting for the lease of {topic}, held by "
    # the second waited: for the slot (Dagster's log line) or, when Dagster let both claims win the one slot (its
    # claim is a check and an update in two autocommitted statements), for the lease (the sink's, in the run's log)
    outputs = _two_at_once(run, stack, stack)
    assert sorted(blocked in out or waited in out for out in outputs) == [False, True], outputs
    # that second case, made certain: beside a run in the pool, one whose instance enforces pools per run (so its
    # in-process step claims no slot): exactly one of the two waits for the lease, and its run's log says so
    per_run = _instance(tmp_path / "per_run", DAGSTER_YAML.replace("granularity: op", "granularity: run"))
    outputs = _two_at_once(run, stack, per_run)
    assert sorted(waited in out and f"took the lease of {topic} after waiting " in out for out in outputs) == [
        False,
        True,
    ], outputs
    # and the pool and the wait are the real sink's
    built = build_pipeline_assets(TRANSACTIONS)
    assert next(a for a in built.materializable if built.keys.table in a.keys).op.pool == "sink_transactions"
    assert settings.sink_lease_wait_seconds >= 60
    with closing(connect(settings.dsn())) as conn, conn, conn.cursor() as cur:
        cur.execute("DELETE FROM sink_leases WHERE topic = %s", (topic,))


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
