"""The command's own process handling: what `augassets ui` leaves behind when it is stopped."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port


def test_stopping_augassets_ui_stops_the_server_it_started(tmp_path):
    """SIGTERM to `augassets ui` (as a service manager or `kill` sends it) stops `dagster dev` and its
    webserver too: the port closes and no process of the group is left."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": "", "AUGASSETS_HOME": str(tmp_path / "home")}
    augassets = Path(sys.executable).with_name("augassets")
    process = subprocess.Popen(
        [str(augassets), "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/server_info"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, "augassets ui did not come up"
                time.sleep(0.5)
        process.send_signal(15)  # the augassets process only, not its group
        assert process.wait(timeout=60) is not None
        deadline = time.time() + 30
        while time.time() < deadline and _group_alive(process.pid):
            time.sleep(0.5)
        assert not _group_alive(process.pid), "processes of `augassets ui` outlived it"
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, 9)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_processes_started_together_on_a_fresh_home_create_its_storage_once(tmp_path):
    """A command, `augassets ui` and the daemon started at once on a fresh home used to create the
    Dagster instance's SQLite tables side by side: "table runs already exists" in one, two rows in
    `alembic_version` in another, and every later start crashed. Now one creates them, the others wait."""
    import sqlite3

    env = {**os.environ, "AUGASSETS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    code = (
        "from augassets.instance import ensure_dagster_home; from augassets.profiles import get_profile; "
        "ensure_dagster_home(get_profile('smoke'))"
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    for start in starts:
        _, err = start.communicate(timeout=120)
        assert start.returncode == 0, err[-2000:]
    databases = sorted((tmp_path / "dagster").rglob("*.db"))
    assert databases
    for database in databases:
        with sqlite3.connect(database) as con:
            if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'").fetchone()[0]:
                assert con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1, database


def test_loading_the_definitions_does_not_import_the_model_libraries():
    """Every Dagster process (the UI's code server, the daemon, each launched run, `dagster` commands)
    loads the definitions first; torch, torchvision, diffusers and transformers take seconds to import, so
    the definitions import them only inside the steps that compute."""
    heavy = ("torch", "torchvision", "diffusers", "transformers")
    code = (
        f"import sys\nimport augassets.cli, augassets.definitions\n"
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "", f"importing augassets.definitions imported {loaded.stdout.strip()}"


@pytest.mark.parametrize(
    "setting, value, says",
    [
        ("AUGASSETS_PROFILE", "nope", "augassets: unknown profile 'nope' (set AUGASSETS_PROFILE to one of smoke, mini"),
        ("AUGASSETS_METHODS", "real_p,bogus", "augassets: AUGASSETS_METHODS=real_p,bogus: "),
        ("AUGASSETS_SCALING_RATIOS", "1,x", "augassets: AUGASSETS_SCALING_RATIOS='1,x': comma-separated"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_status_2(tmp_path, setting, value, says):
    env = {**os.environ, "AUGASSETS_HOME": str(tmp_path / "home"), setting: value}
    env.pop("DAGSTER_HOME", None)
    run = subprocess.run(
        [str(Path(sys.executable).with_name("augassets")), "benchmark"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith(says), run.stderr
    assert not (tmp_path / "home").exists()  # nothing ran
