"""Scale-out on real services: the Dagster instance on a real PostgreSQL (Debian's, started here on
127.0.0.1 with a throwaway data folder and stopped at the end)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from augassets.core.warehouse import Warehouse

from .services import free_port, postgres

SCORES = "SELECT method, replicate, test_top1, best_epoch FROM classifier_scores WHERE method IN ('real_p', 'real_2p') ORDER BY method, replicate"


def _augassets(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("augassets")), *args]


def test_the_instance_on_postgres_holds_the_runs_and_the_results_equal_sqlites(benchmark_run, tmp_path):
    """``augassets benchmark`` with AUGASSETS_POSTGRES_URL set: the home's dagster.yaml gains the
    Postgres storage, every run and event lands in Postgres (no SQLite run storage is created), and
    the classifiers score exactly as the embedded instance's run of the same profile did."""
    import psycopg2

    profile, _ = benchmark_run
    home = tmp_path / "home"
    with postgres() as url:
        env = {**os.environ, "AUGASSETS_HOME": str(home), "AUGASSETS_PROFILE": "smoke", "AUGASSETS_METHODS": "real_p,real_2p",
               "AUGASSETS_POSTGRES_URL": url}
        env.pop("DAGSTER_HOME", None)
        done = subprocess.run(_augassets("benchmark"), env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        dagster_home = home / "smoke" / "dagster"
        assert "postgres_url:\n      env: AUGASSETS_POSTGRES_URL" in (dagster_home / "dagster.yaml").read_text()
        assert not (dagster_home / "history" / "runs.db").exists(), "no SQLite run storage beside Postgres"
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
            runs = dict(cursor.fetchall())
            cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
            materializations = cursor.fetchone()[0]
        assert set(runs) == {"SUCCESS"} and runs["SUCCESS"] >= 3, runs
        assert materializations >= 2 * 2 + 2, "every classifier partition, the catalog and the splits"
    expected = Warehouse(profile.tables).query(SCORES)
    got = Warehouse(home / "smoke" / "store" / "tables").query(SCORES)
    assert got.height == 4 and got.equals(expected)


def test_an_unreachable_instance_database_is_one_line_naming_the_setting(tmp_path):
    url = f"postgresql://augassets:secret@127.0.0.1:{free_port()}/augassets"
    env = {**os.environ, "AUGASSETS_HOME": str(tmp_path / "home"), "AUGASSETS_PROFILE": "smoke", "AUGASSETS_POSTGRES_URL": url}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(_augassets("benchmark"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert last.startswith("the Dagster instance's Postgres at AUGASSETS_POSTGRES_URL=postgresql://augassets:***@127.0.0.1:"), last
    assert last.endswith("start it, fix the URL, or unset AUGASSETS_POSTGRES_URL to use the embedded SQLite instance")
    assert "secret" not in done.stdout + done.stderr


@pytest.fixture(autouse=True)
def _no_postgres_left_behind():
    """Every test here stops its server: no PostgreSQL of ours survives a test, failed or not."""
    yield
    left = subprocess.run(["pgrep", "-f", "bin/postgres -D .*augassets-postgres-"], capture_output=True, text=True).stdout.split()
    assert not left, f"PostgreSQL processes left running: {left}"
