"""The README's shell commands, run as written against the session's test stack.

Every ```bash block of README.md runs, with bash, from the repository root, in the test stack's
environment (``stack_env`` exports its TXP_* variables, TXP_STATE_DIR included, so
``eval "$(.venv/bin/txp stack env)"``, ``make dev`` and ``make demo`` act on the test stack). A
block that cannot run here says so right before its fence, with a reason:

    <!-- docs-test: skip — <reason> -->                 the whole block
    <!-- docs-test: skip `<command>` — <reason> -->     only that command of the block

A block without a marker must run; an unknown or misplaced marker fails. Each command must exit 0,
and where the README shows or implies its output, the output is checked too. Two commands run
until stopped: ``make dev`` (until Dagster answers; then Ctrl+C is what stops it) and the local
``spark-submit … --trigger`` (until its records are committed; then SIGINT to its Python driver).

``make demo`` (its output is the ```json block) resets every pipeline's topics and tables: it
runs first. The rest of the suite uses its own topic names, so nothing else depends on those.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tx_platform.config import PROJECT_ROOT
from tx_platform_tests.conftest import assert_eventually, fetch_one, process_group

README = PROJECT_ROOT / "README.md"
MARKER = re.compile(r"<!--\s*docs-test(?P<body>.*?)-->")
SKIP = re.compile(r":\s*skip(?:\s+`(?P<command>[^`]+)`)?\s+—\s+(?P<reason>\S.*?)\s*")
MARKER_FORMS = "<!-- docs-test: skip — <reason> --> or <!-- docs-test: skip `<command>` — <reason> -->"
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
#: Variables that would move the README's commands off their documented defaults.
#: Variables the commands must not inherit: per-test settings, and make's own when the suite runs
#: under `make test` (a nested make would print "Entering/Leaving directory" around its output).
UNSET = ("TXP_PIPELINE", "TXP_CHECKPOINT_DIR", "TXP_DAGSTER_PORT", "MAKELEVEL", "MAKEFLAGS", "MFLAGS",
         "MAKEOVERRIDES")  # fmt: skip


class MarkerError(ValueError):
    """A docs-test marker the test does not understand, or one that is not right before a bash block."""


@dataclass(frozen=True)
class Unit:
    """What the test does with part of a README block: run a script, or skip (with the reason)."""

    line: int  # line of the block's opening fence (1-based)
    script: str  # the commands, one logical line each
    skip_reason: str | None = None

    @property
    def id(self) -> str:
        if self.line == 0:
            return "README.md:make demo (its output is the json block)"
        first = self.script.splitlines()[0] if self.script else ""
        return f"README.md:{self.line}:{_command(first)[:48].rstrip()}"


@dataclass
class Parsed:
    """The units of README.md and the ```json output of `make demo`."""

    units: list[Unit] = field(default_factory=list)
    demo_json: str | None = None


def _logical_lines(body: list[str]) -> list[str]:
    """Join backslash continuations; drop blank lines."""
    lines: list[str] = []
    pending = ""
    for raw in body:
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1].rstrip() + " "
            continue
        line = (pending + raw.strip()).strip() if pending else raw.rstrip()
        pending = ""
        if line.strip():
            lines.append(line)
    return lines


def _command(line: str) -> str:
    """The command of a logical line without its trailing comment."""
    return re.split(r"\s+#(?:\s|$)", line, maxsplit=1)[0].strip()


def parse_readme(text: str) -> Parsed:
    """Split the README's bash blocks into units; raise MarkerError for a marker it cannot honour."""
    parsed = Parsed()
    lines = text.splitlines()
    pending: list[tuple[int, str | None, str]] = []  # (line, command or None, reason)
    i = 0
    while i < len(lines):
        if "docs-test" in lines[i] and "<!--" in lines[i]:
            marker = MARKER.fullmatch(lines[i].strip())
            skip = SKIP.fullmatch(marker["body"]) if marker else None
            if skip is None:
                msg = f"README.md:{i + 1}: unknown docs-test marker {lines[i].strip()!r}; known: {MARKER_FORMS}"
                raise MarkerError(msg)
            pending.append((i + 1, skip["command"], skip["reason"]))
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if fence is None:
            if pending:
                msg = f"README.md:{pending[0][0]}: a docs-test marker must be right before a ```bash block"
                raise MarkerError(msg)
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[start + 1 : end]
        i = end + 1
        lang = fence["lang"]
        if lang == "json" and any("make demo" in line for line in lines[max(0, start - 3) : start]):
            parsed.demo_json = "\n".join(body)
        if lang != "bash":
            if pending:
                msg = f"README.md:{pending[0][0]}: a docs-test marker must be right before a ```bash block"
                raise MarkerError(msg)
            continue
        script = _logical_lines(body)
        whole = [reason for _, command, reason in pending if command is None]
        if whole:
            parsed.units.append(Unit(start + 1, "\n".join(script), skip_reason=whole[0]))
            pending = []
            continue
        for at, command, reason in pending:
            assert command is not None
            hits = [line for line in script if _command(line) == command or _command(line).startswith(command + " ")]
            if not hits:
                msg = f"README.md:{at}: docs-test marker skips `{command}`, which is not in the block below it"
                raise MarkerError(msg)
            parsed.units.append(Unit(start + 1, "\n".join(hits), skip_reason=reason))
            script = [line for line in script if line not in hits]
        pending = []
        if script:
            parsed.units.append(Unit(start + 1, "\n".join(script)))
    if pending:
        msg = f"README.md:{pending[0][0]}: a docs-test marker must be right before a ```bash block"
        raise MarkerError(msg)
    return parsed


def _units() -> list[Unit]:
    try:
        units = parse_readme(README.read_text()).units
    except MarkerError:
        return []  # test_readme_markers_are_understood says why
    # `make demo` resets the topic and tables the others use: it runs first (see _run_make_demo)
    return [Unit(0, "make demo"), *units]


# -- parser ------------------------------------------------------------------------------------
@pytest.mark.unit
def test_readme_markers_are_understood() -> None:
    parsed = parse_readme(README.read_text())
    assert parsed.demo_json is not None, "the ```json block after `make demo` is gone"
    assert [u for u in parsed.units if u.skip_reason is None], "nothing of the README would run"


@pytest.mark.unit
def test_markers_are_read_strictly() -> None:
    block = "```bash\nmake dev   # a comment\nmake test\nlong \\\n  --option x\n```\n"
    units = parse_readme("<!-- docs-test: skip `make test` — why -->\n" + block).units
    assert [(u.script, u.skip_reason) for u in units] == [
        ("make test", "why"),
        ("make dev   # a comment\nlong --option x", None),
    ]
    assert [u.skip_reason for u in parse_readme("<!-- docs-test: skip — no engine -->\n" + block).units] == [
        "no engine"
    ]
    assert [u.skip_reason for u in parse_readme(block).units] == [None]  # no marker: it runs
    for bad in (
        "<!-- docs-test: ignore — why -->\n" + block,  # unknown verb
        "<!-- docs-test: skip -->\n" + block,  # no reason
        "<!-- docs-test skip — why -->\n" + block,  # malformed
        "text <!-- docs-test: skip — why -->\n" + block,  # not on a line of its own
        "<!-- docs-test: skip `make up` — why -->\n" + block,  # not in the block
        "<!-- docs-test: skip — why -->\n\n" + block,  # not right before it
        "<!-- docs-test: skip — why -->\n```json\n{}\n```\n",  # not a bash block
    ):
        with pytest.raises(MarkerError):
            parse_readme(bad)


# -- running -----------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What the checks need: the environment the commands see and a place for logs."""

    env: dict[str, str]
    logs: Path
    readme: Parsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(script: str, ctx: Ctx, name: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    log = ctx.logs / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: S603 - the README's own commands
            ["bash", "-e", "-o", "pipefail", "-c", script],  # noqa: S607
            cwd=PROJECT_ROOT,
            env=env or ctx.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )
    return proc, log


def _stop_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a process group the test started (after a failure)."""
    if proc.poll() is None or process_group(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _run(script: str, ctx: Ctx, name: str, timeout: float = 600) -> str:
    """Run ``script`` to completion; assert exit 0; return its output."""
    proc, log = _start(script, ctx, name)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        _stop_group(proc)
    output = log.read_text(errors="replace")
    assert code == 0, f"`{script}` exited {code}:\n{output[-4000:]}"
    return output


def _lag(ctx: Ctx, topic: str = "transactions") -> int:
    from tx_platform.kafka_admin import end_offsets

    ends = end_offsets(ctx.env["TXP_KAFKA_BOOTSTRAP"], topic)
    (committed,) = fetch_one(
        ctx.env["TXP_POSTGRES_DSN"], "SELECT coalesce(sum(next_offset), 0) FROM sink_offsets WHERE topic = %s", topic
    )
    return sum(ends.values()) - int(committed)


def _produce_more(ctx: Ctx, count: int) -> None:
    """Records for a sink to read (not a README command: the input of the next one)."""
    from tx_platform.pipelines import TRANSACTIONS
    from tx_platform.producer import open_producer, produce

    producer, _ = open_producer(
        TRANSACTIONS, ctx.env["TXP_KAFKA_BOOTSTRAP"], ctx.env["TXP_SCHEMA_REGISTRY_URL"], bad_ratio=0.02, seed=7
    )
    seed = uuid.uuid4().int % 1_000_000  # new transaction ids every time
    start = datetime.now(UTC) - timedelta(hours=2)
    report = produce(TRANSACTIONS.generate(count, seed, start, span=timedelta(hours=1)), producer)
    assert report.delivered == count


def _readme_error_codes() -> set[str]:
    section = README.read_text().split("Error codes", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"`([A-Z][A-Z_]+)`", section))


# -- long-running commands -----------------------------------------------------------------------
def _run_make_dev(script: str, ctx: Ctx) -> None:
    """`make dev` until the UI answers and the code location loaded; then stop it as Ctrl+C would."""
    port = _free_port()  # `txp dev` reads TXP_DAGSTER_PORT: the README's command, another port than 3000
    proc, log = _start(script, ctx, "make-dev", env={**ctx.env, "TXP_DAGSTER_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    dagster_pid_file = Path(ctx.env["TXP_STATE_DIR"]) / "dagster.pid"  # `dagster dev` runs in its own session
    try:

        def answers() -> dict | None:
            assert proc.poll() is None, f"make dev exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=2) as response:  # noqa: S310
                    return json.load(response)
            except OSError:
                return None

        info = assert_eventually(answers, timeout=180, what=f"Dagster on {base}/server_info")
        assert "dagster_webserver_version" in info

        query = (
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )

        def loaded() -> dict | None:
            request = urllib.request.Request(  # noqa: S310
                f"{base}/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
            return entries[0] if entries and entries[0]["loadStatus"] == "LOADED" else None

        entry = assert_eventually(loaded, timeout=120, what="the code location to load")
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

        # Ctrl+C: `txp dev` forwards it to Dagster and waits for its clean shutdown. (A terminal's
        # Ctrl+C reaches make too, which then reports "Interrupt" whatever its child did; signalling
        # `txp dev`, the process that owns Dagster, lets make's exit status show how it ended.)
        txp = [pid for pid, argv in process_group(proc.pid) if argv[1:3] == [".venv/bin/txp", "dev"]]
        assert len(txp) == 1, process_group(proc.pid)
        os.kill(txp[0], signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
        output = log.read_text()
        assert f"Dagster UI: http://127.0.0.1:{port}" in " ".join(output.split())
        assert "Dagster services shut down" in output
        assert not dagster_pid_file.exists()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "Dagster still listens after it was stopped"
    finally:
        _stop_group(proc)
        if dagster_pid_file.exists():  # only after a failure: the Dagster this test started
            try:
                os.killpg(int(dagster_pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
            dagster_pid_file.unlink(missing_ok=True)


def _run_streaming_sink(script: str, ctx: Ctx) -> None:
    """The continuous sink: wait until it committed what is new, then SIGINT its Python driver."""
    if _lag(ctx) == 0:
        _produce_more(ctx, 500)
    proc, log = _start(script, ctx, "spark-submit")
    try:

        def caught_up() -> bool:
            assert proc.poll() is None, f"spark-submit exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            return _lag(ctx) == 0

        assert_eventually(caught_up, timeout=240, what="the running sink to commit every record")
        # README: it "stops gracefully on … a SIGINT/SIGTERM to its Python driver"
        drivers = [
            pid
            for pid, argv in process_group(proc.pid)
            if argv
            and Path(argv[0]).name.startswith("python")
            and any(a.endswith("spark_jobs/sink/main.py") for a in argv)
        ]
        assert len(drivers) == 1, process_group(proc.pid)
        os.kill(drivers[0], signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-4000:]
        output = log.read_text(errors="replace")
        assert "sink running (trigger 2 seconds" in output
        assert "stopping the query; a batch in flight is let finish" in output and "sink stopped" in output
        assert "Traceback" not in output
        assert_eventually(lambda: not process_group(proc.pid), timeout=15, what="spark-submit's processes to exit")
        assert _lag(ctx) == 0
    finally:
        _stop_group(proc)


LONG_RUNNING: list[tuple[re.Pattern[str], Callable[[str, Ctx], None]]] = [
    (re.compile(r"^make dev\b", re.MULTILINE), _run_make_dev),
    (re.compile(r"^spark-submit .*--master 'local\[2\]'.*--trigger ", re.MULTILINE), _run_streaming_sink),
]


# -- checks of the output of commands that finish ---------------------------------------------------
def _check_stack_env(_script: str, ctx: Ctx, _output: str) -> None:
    printed = subprocess.run(  # noqa: S603
        [".venv/bin/txp", "stack", "env"], cwd=PROJECT_ROOT, env=ctx.env, capture_output=True, text=True, check=True
    ).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in printed.splitlines())
    assert exports["TXP_KAFKA_BOOTSTRAP"] == shlex.quote(ctx.env["TXP_KAFKA_BOOTSTRAP"])
    assert exports["TXP_STATE_DIR"] == shlex.quote(ctx.env["TXP_STATE_DIR"])
    assert {"TXP_POSTGRES_DSN", "TXP_ANALYST_DSN", "TXP_SCHEMA_REGISTRY_URL", "DAGSTER_HOME"} <= exports.keys()


def _pipeline_of(script: str) -> str:
    """The ``--pipeline`` a README command names (the default pipeline when it names none)."""
    from tx_platform.pipelines import DEFAULT_PIPELINE

    named = re.search(r"--pipeline[ =](\S+)", script)
    return named[1] if named else DEFAULT_PIPELINE


def _check_produce(script: str, _ctx: Ctx, output: str) -> None:
    from tx_platform.pipelines import get_pipeline

    count = int(re.search(r"--count (\d+)", script)[1])  # type: ignore[index]
    assert f"delivered {count} of {count}, failed 0" in output
    assert f"→ topic {get_pipeline(_pipeline_of(script)).topic}" in output


def _check_dagster_materialize(script: str, _ctx: Ctx, output: str) -> None:
    selected = re.search(r"dagster asset materialize .*--select (\S+)", script)[1].split(",")  # type: ignore[index]
    assert "RUN_SUCCESS" in output
    for key in selected:
        assert f"ASSET_MATERIALIZATION - Materialized value {key.replace('/', ' ')}." in output, key
    if "warehouse/transactions" in selected:
        assert "Asset check 'no_unexplained_loss' on 'warehouse/transactions' passed" in output
        assert "Asset check 'transactions_match_contract' on 'warehouse/transactions' passed" in output


def _dsn(ctx: Ctx) -> str:
    return ctx.env["TXP_POSTGRES_DSN"]


def _check_dlq_show(_script: str, ctx: Ctx, output: str) -> None:
    (quarantined,) = fetch_one(
        ctx.env["TXP_POSTGRES_DSN"], "SELECT count(*) FROM quarantine WHERE kafka_topic = 'transactions'"
    )
    assert f"{quarantined} records in transactions.dlq" in output


def _check_quarantine_query(_script: str, _ctx: Ctx, output: str) -> None:
    assert re.search(r"^\s*error_code\s*\|\s*count\s*\|\s*min\s*$", output, re.MULTILINE), output
    rows = int(re.search(r"^\((\d+) rows?\)$", output, re.MULTILINE)[1])  # type: ignore[index]
    assert rows >= 1, "the demo and the produce command inject bad records: quarantine is not empty"
    codes = set(re.findall(r"^ ([A-Z][A-Z_]+)\s+\|", output, re.MULTILINE))
    assert len(codes) == rows
    assert codes <= _readme_error_codes(), (
        f"error codes missing from the README's table: {codes - _readme_error_codes()}"
    )


def _check_load_dimensions(script: str, ctx: Ctx, output: str) -> None:
    from tx_platform.pipelines.transactions._generator import build_pools

    assert re.search(r"merchants written \d+, customers added \d+, closed \d+, renamed \d+, cards added \d+", output)
    cards = build_pools(int(re.search(r"--seed (\d+)", script)[1])).cards  # type: ignore[index]
    dsn = ctx.env["TXP_POSTGRES_DSN"]
    ids = [c.card_id for c in cards]
    assert fetch_one(dsn, "SELECT count(*) FROM cards WHERE card_id = ANY(%s)", ids) == (len(cards),)
    holders = sorted({c.customer_id for c in cards})
    current = "SELECT count(*) FROM customers WHERE is_current AND customer_id = ANY(%s)"
    assert fetch_one(dsn, current, holders) == (len(holders),)


# a command's own line, not a comment that names it (`# the entities txp produce --seed 42 samples`)
CHECKS: list[tuple[re.Pattern[str], Callable[[str, Ctx, str], None]]] = [
    (re.compile(r"^[^#\n]*txp stack env", re.MULTILINE), _check_stack_env),
    (re.compile(r"^[^#\n]*txp produce ", re.MULTILINE), _check_produce),
    (re.compile(r"^[^#\n]*dagster asset materialize ", re.MULTILINE), _check_dagster_materialize),
    (re.compile(r"^[^#\n]*txp db load-dimensions ", re.MULTILINE), _check_load_dimensions),
    (re.compile(r"^[^#\n]*txp dlq show", re.MULTILINE), _check_dlq_show),
    (re.compile(r"^psql .*GROUP BY", re.MULTILINE), _check_quarantine_query),
]


def _run_make_demo(ctx: Ctx) -> None:
    """`make demo`; its last line has the shape of the README's ```json block, and it passed."""
    output = _run("make demo", ctx, "make-demo", timeout=1200)
    summary = json.loads(output.strip().splitlines()[-1])
    assert ctx.readme.demo_json is not None
    documented = json.loads(ctx.readme.demo_json)
    assert summary.keys() == documented.keys()
    assert list(summary["pipelines"]) == list(documented["pipelines"]) == ["transactions", "crypto_trades"]
    for name, figures in summary["pipelines"].items():
        shown = documented["pipelines"][name]
        assert figures.keys() == shown.keys() and figures["sums"].keys() == shown["sums"].keys(), name
        assert figures["ok"] is True, name

    def steps(timings: dict[str, float]) -> set[str]:
        return {re.sub(r"\[.*\]$", "[…]", k) for k in timings}

    assert steps(summary["timings"]) == steps(documented["timings"])
    assert summary["ok"] is True and summary["checks_failed"] == 0
    assert {name: p["produced"] for name, p in summary["pipelines"].items()} == {
        "transactions": 10_000,
        "crypto_trades": 3_000,
    }
    assert summary["checks_passed"] == documented["checks_passed"]


@pytest.fixture(scope="module")
def ctx(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    if os.environ.get("TXP_TEST_STACK") == "existing":
        pytest.skip("the README's commands reset the topic `transactions` and its tables: only on a test stack")
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(stack_env)
    assert env["TXP_STATE_DIR"] == stack_env["TXP_STATE_DIR"]  # every command acts on the test stack
    yield Ctx(env=env, logs=tmp_path_factory.mktemp("docs"), readme=parse_readme(README.read_text()))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("unit", _units(), ids=lambda u: u.id)
def test_readme_command(unit: Unit, ctx: Ctx) -> None:
    if unit.skip_reason is not None:
        pytest.skip(f"{unit.id}: {unit.skip_reason}")
    started = time.monotonic()
    for pattern, runner in LONG_RUNNING:
        if pattern.search(unit.script):
            runner(unit.script, ctx)
            break
    else:
        if unit.line == 0:
            _run_make_demo(ctx)
            print(f"{unit.id}: ok in {time.monotonic() - started:.1f} s")  # noqa: T201
            return
        if "txp produce " in unit.script:
            # in the Quick start, "Materialize all" in the UI creates the topics before this
            _run(f".venv/bin/txp topics create --pipeline {_pipeline_of(unit.script)}", ctx, "topics-create")
        expected_lag = _lag(ctx) if "dagster asset materialize " in unit.script else 0
        if "dagster asset materialize " in unit.script and expected_lag == 0:
            _produce_more(ctx, 500)
            expected_lag = 500
        output = _run(unit.script, ctx, f"line-{unit.line}")
        for pattern, check in CHECKS:
            if pattern.search(unit.script):
                check(unit.script, ctx, output)
        if expected_lag:
            assert f"sink: {expected_lag} records in " in output and "lag now 0" in output
    print(f"{unit.id}: ok in {time.monotonic() - started:.1f} s")  # noqa: T201 - with -s, the timings
