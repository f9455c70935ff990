"""`arledger demo` as a new user runs it: a small company, its own broker, reports, charts, nothing left running."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arledger import charts
from arledger.demo import month_ends, start_of_history
from arledger.generate import add_months
from arledger.settings import Settings
from consumers import broker
from tests.support import free_port_pair

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_TIMEOUT_S = 900
REPORT_TITLES = ("Inbound outcomes", "Aging summary as of", "Top exposures as of", "over their credit limit",
                 "Collections worklist for", "KPIs for", "Bad-debt allowance as of", "Charts and report",
                 "Query the tables yourself")


def demo_env(home: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARLEDGER_")}
    return {**env, "ARLEDGER_HOME": str(home), "ARLEDGER_BROKER_PORT": str(port)}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, int]:
    home = tmp_path_factory.mktemp("demo-home")
    port = free_port_pair()
    try:
        result = subprocess.run([sys.executable, "-m", "arledger.cli", "demo", "--customers", "25", "--months", "3"],
                                env=demo_env(home, port), capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    finally:
        broker.stop(Settings(home=home, broker_port=port, kafka_bootstrap=f"127.0.0.1:{port}",
                             store_url=f"sqlite:///{home / 'ledger.sqlite'}"))  # only if the demo left it running
    return result, home, port


@pytest.mark.slow
def test_the_demo_runs_to_the_end_and_prints_every_report(demo_run) -> None:
    result, _, _ = demo_run

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for title in REPORT_TITLES:
        assert title in result.stdout, f"{title!r} not printed:\n{result.stdout[-3000:]}"
    assert re.search(r"accepted [\d,]+, rejected [\d,]+, duplicate [\d,]+", result.stdout)


@pytest.mark.slow
def test_the_demo_writes_png_charts_and_one_self_contained_html_report(demo_run) -> None:
    result, home, _ = demo_run
    reports = home / "reports"

    pngs = sorted(reports.glob("*.png"))
    assert {path.name for path in pngs} >= {"aging-by-month.png", "exposure-vs-limit.png"}
    assert len(pngs) == 3  # and the DSO/CEI trend (or, without KPIs, the overdue-share trend)
    for path in pngs:
        assert path.read_bytes().startswith(PNG_SIGNATURE), path
        assert str(path) in result.stdout
    page = (reports / "arledger-demo.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3
    assert "<table>" in page and "Aging summary" in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "the page must not load anything from outside"


@pytest.mark.slow
def test_the_demo_leaves_no_broker_or_worker_running(demo_run) -> None:
    result, home, port = demo_run

    worker_pid = int(re.search(r"started the workers \(pid (\d+)", result.stderr).group(1))
    assert not pid_alive(worker_pid)
    assert "stopped the local broker" in result.stderr
    assert not (home / "kafka" / "broker.pid").exists()
    assert not broker.port_in_use(port)


@pytest.mark.slow
def test_the_demo_tells_where_the_tables_are_and_how_to_query_them(demo_run) -> None:
    result, home, _ = demo_run

    assert f"duckdb -readonly {home / 'snapshot.duckdb'}" in result.stdout
    assert "arledger sql" in result.stdout
    assert (home / "snapshot.duckdb").exists()


@pytest.mark.slow
def test_a_second_demo_in_the_same_home_starts_over(demo_run) -> None:
    first, home, port = demo_run
    try:
        again = subprocess.run([sys.executable, "-m", "arledger.cli", "demo", "--customers", "25", "--months", "3"],
                               env=demo_env(home, port), capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    finally:
        broker.stop(Settings(home=home, broker_port=port, kafka_bootstrap=f"127.0.0.1:{port}",
                             store_url=f"sqlite:///{home / 'ledger.sqlite'}"))

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resetting" in again.stderr
    outcomes = re.compile(r"accepted [\d,]+, rejected [\d,]+, duplicate [\d,]+")
    assert outcomes.search(again.stdout).group(0) == outcomes.search(first.stdout).group(0)  # nothing left over


def test_the_demo_refuses_a_ledger_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").write_bytes(b"")  # someone's ledger, no demo.json beside it

    result = subprocess.run([sys.executable, "-m", "arledger.cli", "demo"], env=demo_env(tmp_path, free_port_pair()),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 1
    assert "did not make" in result.stderr and "--reset" in result.stderr
    assert not (tmp_path / "kafka").exists()  # refused before any broker was started


def test_the_history_ends_today_or_a_few_days_before_never_after() -> None:
    for today in (dt.date(2026, 3, 31), dt.date(2026, 3, 30), dt.date(2026, 2, 28), dt.date(2024, 2, 29),
                  dt.date(2026, 11, 25), dt.date(2026, 12, 31)):
        for months in (1, 3, 12):
            start = start_of_history(today, months)
            last_day = add_months(start, months) - dt.timedelta(days=1)  # the generator's last day

            assert today - dt.timedelta(days=3) <= last_day <= today, (today, months, start)
    assert add_months(start_of_history(dt.date(2026, 11, 25), 12), 12) == dt.date(2026, 11, 26)


def test_month_ends_run_to_the_as_of_date() -> None:
    ends = month_ends(dt.date(2026, 1, 15), dt.date(2026, 4, 10))

    assert ends == [dt.date(2026, 1, 31), dt.date(2026, 2, 28), dt.date(2026, 3, 31), dt.date(2026, 4, 10)]


def test_charts_are_png_images() -> None:
    months = [dt.date(2026, 1, 31), dt.date(2026, 2, 28)]
    buckets = ["current", "1-30", "31-60", "61-90", "90+"]
    totals = {"EUR": [{"current": 100_00, "1-30": 50_00}, {"current": 80_00, "90+": 10_00}]}
    exposure = [{"customer_id": "C1", "name": "Acme", "exposure": 120_00, "credit_limit": 100_00},
                {"customer_id": "C2", "name": "Bolt", "exposure": 20_00, "credit_limit": 100_00}]

    images = [charts.aging_over_time(months, totals, buckets),
              charts.kpi_trend(months, {"dso": [30.0, None], "cei": [80.0, 90.0]}, "EUR"),
              charts.overdue_share_trend(months, {"EUR": [33.3, 11.1]}),
              charts.exposure_vs_limit(exposure, "EUR")]

    assert all(image.startswith(PNG_SIGNATURE) and len(image) > 1_000 for image in images)


@pytest.mark.slow
def test_the_demo_ends_with_the_workspace_address_and_its_users(demo_run) -> None:
    from arledger.web.auth import DEMO_USERS, UserStore

    result, home, _ = demo_run
    tail = result.stdout[result.stdout.index("Web workspace"):]
    assert "arledger serve" in tail and "http://127.0.0.1:8080/" in tail
    for name, role in DEMO_USERS:
        assert re.search(rf"{name}\s+{role}\s+password \S+", tail), tail
    # another test of this module runs the demo again in the same home: the saved file has the latest passwords
    store = UserStore(home / "web-users.sqlite")
    saved = [line.split("\t") for line in (home / "demo" / "web-users.txt").read_text().splitlines()]
    assert [(name, role) for name, role, _ in saved] == list(DEMO_USERS)
    for name, role, password in saved:
        assert store.authenticate(name, password).role == role
