"""The Dagster instance of a profile: its home folder, configuration and storage. Kept free of the
rest of the package (no torch, no assets), so that creating a home is cheap."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import dagster as dg

from .core.files import write_bytes_atomic
from .profiles import Profile

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


def ensure_dagster_home(profile: Profile) -> Path:
    """The profile's Dagster home, holding a copy of the repository's ``dagster.yaml``, with its
    storage created. Processes started together on a fresh home (a command, ``augassets ui``, the
    daemon) would each create the SQLite tables and stamp their schema version, leaving tables
    half-made or two version rows that break every later start; the first to take the home's
    ``instance.lock`` creates them, the others wait and find them made."""
    home = Path(os.environ.get("DAGSTER_HOME") or profile.home / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    if REPO_DAGSTER_YAML.is_file() and not (home / "dagster.yaml").exists():
        write_bytes_atomic(REPO_DAGSTER_YAML.read_bytes(), home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    with open(home / "instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        dg.DagsterInstance.get().get_runs(limit=1)  # opening the storage creates or migrates it
    return home
