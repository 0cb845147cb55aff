"""Fixtures of the UI tests: `dagster dev` on the session's stack, headless Chromium, a page per test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tx_platform.config import PROJECT_ROOT
from tx_platform_tests.conftest import assert_eventually, process_group

VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
#: Debian's Chromium (infra/system-deps.sh); never a downloaded one (`playwright install` is not used).
CHROMIUM = "/usr/bin/chromium"
#: Without the background-networking flags Chromium tries to reach the internet (closed here).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Per-test settings and make's variables must not reach `dagster dev`.
UNSET = ("TXP_PIPELINE", "TXP_CHECKPOINT_DIR", "TXP_DAGSTER_PORT", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
#: The lag sensor would launch the sink itself as soon as there is lag (threshold 1): with this
#: threshold its ticks skip ("caught up: lag N < threshold"), so the only sink run is the UI's.
LAG_THRESHOLD = "1000000000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _txp(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - our own CLI
        [str(VENV_BIN / "txp"), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"txp {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # dagster dev shuts down cleanly on SIGINT only


@pytest.fixture(scope="session")
def dagster_url(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dagster dev` (webserver and daemon) on a free port, with records waiting in `transactions`."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(stack_env)
    env["TXP_LAG_THRESHOLD"] = LAG_THRESHOLD
    _txp(env, "topics", "create")
    produced = _txp(env, "produce", "--count", "500", "--seed", "7")
    assert "delivered 500 of 500, failed 0" in produced, produced

    port = _free_port()
    log = tmp_path_factory.mktemp("dagster") / "dagster-dev.log"
    argv = [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own argv
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_default_sigint,  # noqa: PLW1509
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert proc.poll() is None, f"dagster dev exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=2) as response:  # noqa: S310
                    return "dagster_webserver_version" in json.load(response)
            except OSError:
                return False

        assert_eventually(answers, timeout=180, what=f"Dagster on {base}/server_info")
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"

        def loaded() -> bool:
            request = urllib.request.Request(  # noqa: S310
                f"{base}/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
            return bool(entries) and entries[0]["loadStatus"] == "LOADED"

        assert_eventually(loaded, timeout=120, what="the code location to load")
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # as Ctrl+C: webserver, daemon and code server shut down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while process_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = process_group(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
        assert not left, f"processes of dagster dev left after SIGINT: {left}\n{log.read_text()[-4000:]}"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash infra/system-deps.sh` (never `playwright install`)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # the page fixture screenshots a failed test
    return report


@pytest.fixture
def page(browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:  # noqa: ANN001
    """A 1280x800 page; on failure its screenshot is saved to the test's tmp dir."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    # Dagster's "Join the Dagster community" dialog, shown until dismissed once per instance
    pg.add_locator_handler(pg.get_by_role("button", name="Skip", exact=True), lambda skip: skip.click())
    try:
        yield pg
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            shot = tmp_path / "failure.png"
            try:
                pg.screenshot(path=str(shot))
                print(f"screenshot of the failed page ({pg.url}): {shot}")  # noqa: T201 - shown with the failure
            except Exception as exc:  # noqa: BLE001 - the failure itself matters more
                print(f"no screenshot: {exc}")  # noqa: T201
        context.close()
