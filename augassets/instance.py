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
POSTGRES_ENV = "AUGASSETS_POSTGRES_URL"
# Appended to the home's dagster.yaml while AUGASSETS_POSTGRES_URL is set: runs, event log and schedules
# in Postgres. Dagster reads the URL from the environment when it opens the instance, so no password
# is written to disk.
POSTGRES_STORAGE = f"""
# augassets: instance storage on Postgres ({POSTGRES_ENV} is set)
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_ENV}
"""


CELERY_ENV = "AUGASSETS_CELERY_BROKER"  # executors.CELERY_BROKER_ENV (executors.py imports this module)
# Appended while AUGASSETS_CELERY_BROKER is set: a run that fails because a Celery worker died (not
# because a step raised) is re-executed from its failure, at most twice, by the daemon; the pool
# slots of the dead step (it never reported its end) are freed 5 s after its run ended.
RUN_RETRIES = f"""
# augassets: runs whose worker died are retried, their pool slots freed ({CELERY_ENV} is set)
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  free_slots_after_run_end_seconds: 5
"""


class InstanceUnreachable(SystemExit):
    """The instance's database did not answer; the message (a command's last line) names the setting."""


def redacted(url: str) -> str:
    """``url`` without its password (for messages)."""
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = f"{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else rest
    return f"{scheme}://{rest}" if scheme else url


def instance_yaml(postgres: bool | None = None, celery: bool | None = None) -> bytes:
    """The ``dagster.yaml`` a profile's Dagster home holds: the repository's, plus Postgres storage
    when ``AUGASSETS_POSTGRES_URL`` is set and run retries when ``AUGASSETS_CELERY_BROKER`` is
    (``postgres``, ``celery``: instead of the environment)."""
    postgres = bool(os.environ.get(POSTGRES_ENV)) if postgres is None else postgres
    celery = bool(os.environ.get(CELERY_ENV)) if celery is None else celery
    text = REPO_DAGSTER_YAML.read_text() if REPO_DAGSTER_YAML.is_file() else ""
    return (text + (POSTGRES_STORAGE if postgres else "") + (RUN_RETRIES if celery else "")).encode()


def ensure_dagster_home(profile: Profile) -> Path:
    """The profile's Dagster home, holding the repository's ``dagster.yaml`` (with Postgres storage
    and run retries as the environment asks, :func:`instance_yaml`), with its storage created. Processes
    started together on
    a fresh home (a command, ``augassets ui``, the daemon) would each create the SQLite tables and
    stamp their schema version, leaving tables half-made or two version rows that break every later
    start; the first to take the home's ``instance.lock`` creates them, the others wait and find them
    made. A ``dagster.yaml`` edited by hand is kept (only the repository's own versions are rewritten)."""
    home = Path(os.environ.get("DAGSTER_HOME") or profile.home / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    config, wanted = home / "dagster.yaml", instance_yaml()
    ours = {
        instance_yaml(postgres, celery) for postgres in (False, True) for celery in (False, True)
    }  # the versions written here
    if not config.exists() or (config.read_bytes() in ours and config.read_bytes() != wanted):
        write_bytes_atomic(wanted, config)
    os.environ["DAGSTER_HOME"] = str(home)
    with open(home / "instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            dg.DagsterInstance.get().get_runs(limit=1)  # opening the storage creates or migrates it
        except Exception as error:
            url = os.environ.get(POSTGRES_ENV)
            if not url:
                raise
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise InstanceUnreachable(
                f"the Dagster instance's Postgres at {POSTGRES_ENV}={redacted(url)} did not answer ({first}): "
                f"start it, fix "
                f"the URL, or unset {POSTGRES_ENV} to use the embedded SQLite instance"
            ) from None
    return home
